#!/usr/bin/env bash
# A reward model that tells harmful requests from their benign look-alikes, measured on prompts
# it never saw: train on the bundled safety-train set (239 prompts, tagged harmful/benign),
# score the bundled eval sets (213 other prompts, other answer phrasings).
# Then best-of-4 by the reward model as the candidate of `tenets eval` on those prompts.
# About 20 minutes on 2 cores. MODEL (default: the default model), EPOCHS (3), OUT (out/reward).
set -euo pipefail
cd "$(dirname "$0")/../.."
MODEL=${MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
EPOCHS=${EPOCHS:-3}
OUT=${OUT:-out/reward}
TENETS=${TENETS:-target/release/tenets}
mkdir -p "$OUT"
python3 examples/reward/pairs.py prompts/sets/safety-train.jsonl > "$OUT/train-pairs.jsonl"
python3 examples/reward/pairs.py --eval prompts/sets/eval-harmful.jsonl \
  prompts/sets/eval-benign.jsonl > "$OUT/eval-pairs.jsonl"
"$TENETS" reward train --model "$MODEL" --data "$OUT/train-pairs.jsonl" --out "$OUT/rm.gguf" \
  --max-length 256 --lr 1e-3 --epochs "$EPOCHS" --resume
"$TENETS" reward score --model "$MODEL" --rm "$OUT/rm.gguf" --data "$OUT/eval-pairs.jsonl" \
  -o "$OUT/eval-scored.jsonl"
python3 examples/reward/auroc.py "$OUT/eval-pairs.jsonl" "$OUT/eval-scored.jsonl"
# Best-of-N with it, on the same eval prompts: the base answers each prompt 4 times (T 0.7),
# the reward model keeps one; base vs best-of-4, read by the string patterns.
"$TENETS" eval --model "$MODEL" --constitution harmless-helpful --db "$OUT/eval.db" \
  --best-of 4 --rm "$OUT/rm.gguf" --patterns-only --max-tokens 48 --trained-on safety-train \
  --quiet
