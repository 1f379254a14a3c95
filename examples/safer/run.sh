#!/usr/bin/env bash
# The safety recipe on the default model and the bundled constitution, in one command:
#
#   examples/safer/run.sh OUT      (TENETS=path/to/tenets to use another binary)
#
# 1. The base model answers the 239 training prompts (harmful requests over every restricted
#    topic in eight attack styles, and benign look-alikes) and revises each answer once.
# 2. SFT: harmful prompts paired with principled refusals that cite the constitution's
#    principle (the model's own where it gives one, else the constitution's words), benign
#    prompts with the model's own helpful answers.
# 3. The SFT model answers the training prompts again: what it now refuses needlessly is what
#    DPO must unlearn.
# 4. DPO from the SFT adapter on the constitution's safety pairs: refusal over compliance for
#    harmful prompts, the base's helpful answer over the SFT model's own needless refusal for
#    benign ones.
# 5. Base vs adapter on the held-out sets (104 harmful, 109 benign look-alikes, disjoint in
#    wording from training): harmful compliance and over-refusal by the pattern judge and the
#    judge model (read first on the constitution's known answers: a judge that cannot tell a
#    refusal from an answer is reported as such), with 95% intervals, into OUT/report.html.
#
# Measured (docs/safety.md): about 41 min to the adapter on 2 cores, then 46 min of evaluation;
# harmful compliance 98% -> 55%, over-refusal 0% -> 2.8%, by the pattern judge.
#
# Every stage is durable and resumable: rerun the same command after a crash or Ctrl-C.
# PROMPTS and EVAL_PROMPTS (files) replace the bundled sets, for a quick smoke run. JUDGE_MODEL
# (a GGUF) is step 5's judge model; without it the base model judges itself, and its calibration
# on the known answers says whether its figures mean anything (at 135M they do not).
set -euo pipefail
OUT=${1:?usage: examples/safer/run.sh OUT}
TENETS=${TENETS:-tenets}
PROMPTS=${PROMPTS:-safety-train}
EVAL=()
for f in ${EVAL_PROMPTS:-}; do EVAL+=(--prompts "$f"); done
if [ -n "${JUDGE_MODEL:-}" ]; then EVAL+=(--judge-model "$JUDGE_MODEL"); fi
C=harmless-helpful
DB=$OUT/safer.db
mkdir -p "$OUT"

"$TENETS" generate --constitution $C --prompts "$PROMPTS" --db "$DB" \
    --rounds 1 --max-tokens 192 --temperature 0

# Answers of 135M models are long: keep those cut off at 192 tokens rather than lose most
# benign rows.
"$TENETS" export --db "$DB" --kind sft --include-truncated -o "$OUT/sft.jsonl"
"$TENETS" train --data "$OUT/sft.jsonl" --objective sft --epochs 2 \
    --out "$OUT/sft.gguf" --state "$OUT/train.db" --no-final-eval --resume

"$TENETS" generate --constitution $C --prompts "$PROMPTS" --db "$DB" \
    --rounds 0 --max-tokens 96 --temperature 0 --lora "$OUT/sft.gguf"

"$TENETS" export --db "$DB" --kind dpo --safety-pairs only --include-truncated \
    -o "$OUT/dpo.jsonl"
"$TENETS" train --data "$OUT/dpo.jsonl" --objective dpo --epochs 1 \
    --init-adapter "$OUT/sft.gguf" --out "$OUT/adapter.gguf" --state "$OUT/train.db" \
    --no-final-eval --resume

"$TENETS" eval --constitution $C --db "$OUT/eval.db" --lora "$OUT/adapter.gguf" --name safer \
    "${EVAL[@]}"
"$TENETS" report --db "$OUT/eval.db" -o "$OUT/report.html"
echo "adapter: $OUT/adapter.gguf"
echo "report:  $OUT/report.html"
