#!/usr/bin/env bash
# A refusal direction, and what it does to held-out prompts at three strengths: `tenets steer`
# on the bundled safety-train set's harmful prompts (a refusal opener chosen over a compliance
# opener, 117 pairs), then `tenets eval --control-vector` on the bundled eval sets (213 other
# prompts: harmful ones and their benign look-alikes), base vs steered at SCALES, read by the
# string patterns (the default 135M judge fails its calibration). One database, one report:
# the scales side by side. About 12 minutes on 2 cores.
# MODEL (default: the default model), SCALES ("0.05 0.1 0.2"), LAYERS (all), OUT (out/steer).
set -euo pipefail
cd "$(dirname "$0")/../.."
MODEL=${MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
SCALES=${SCALES:-0.05 0.1 0.2}
OUT=${OUT:-out/steer}
TENETS=${TENETS:-target/release/tenets}
mkdir -p "$OUT"
python3 examples/reward/pairs.py prompts/sets/safety-train.jsonl \
  | grep '"kind": "harmful"' > "$OUT/harmful-pairs.jsonl"
"$TENETS" steer --model "$MODEL" --data "$OUT/harmful-pairs.jsonl" --out "$OUT/refusal.gguf" \
  --max-length 256 --quiet
layers=()
if [ -n "${LAYERS:-}" ]; then layers=(--control-layers "$LAYERS"); fi
for scale in $SCALES; do
  # Answers only need their opening to be read as a refusal or not: 48 tokens.
  "$TENETS" eval --model "$MODEL" --constitution harmless-helpful --db "$OUT/eval.db" \
    --control-vector "$OUT/refusal.gguf:$scale" "${layers[@]}" --patterns-only \
    --max-tokens 48 --trained-on safety-train --quiet
done
"$TENETS" report --db "$OUT/eval.db" -o "$OUT/report.html" --no-png
