#!/usr/bin/env bash
# The overnight recipe: two rounds of generate → label → train → eval on the default model with
# the bundled constitution and prompts, then the report. Resumable: run it again after a crash or
# Ctrl-C and it continues. See README.md beside this file for what it does and what we got.
#
#   examples/overnight/run.sh [OUT_DIR]        (default: out/overnight)
set -euo pipefail
cd "$(dirname "$0")/../.."
# The checkout is the data folder: the models scripts/fetch-model put in models/ (an installed
# tenets uses $TENETS_HOME or ~/.local/share/tenets; `tenets fetch-model` fills it).
export TENETS_HOME="${TENETS_HOME:-$PWD}"
out=${1:-out/overnight}

scripts/setup                      # system packages, the default model, the release build

./target/release/tenets loop \
  --constitution constitutions/harmless-helpful.yaml \
  --prompts prompts/sets/demo.jsonl \
  --dir "$out" \
  --rounds 2 \
  --max-tokens 192 \
  --epochs 2 --lr 5e-4 --max-length 768 --include-truncated \
  --parallel 16 \
  --questions 2 \
  --max-over-refusal-increase 0.15 \
  --no-sft --trust-judge
# --no-sft --trust-judge: the plain iterated-DPO loop on the judge's soft labels that README.md
# measured (the 135M judge fails calibration; examples/safer is the recipe that works).
# held-out evaluation sets: the bundled prompts/sets/eval-harmful.jsonl and eval-benign.jsonl

./target/release/tenets stats --db "$out/loop.db"
echo "report: $out/report.html (charts as PNG in $out/report-png/)"
