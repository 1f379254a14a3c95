#!/usr/bin/env bash
# What `tenets serve`'s input screen catches on held-out prompts: the 213 bundled eval prompts
# (harmful requests and their benign look-alikes; none used to write the rules or fit the
# probe) sent to the server with harmless-helpful's guard, first with its pattern rules alone,
# then with the probe classifier beside them (fitted at start on safety-train). Refused share
# per kind, with 95% Wilson intervals: harmful refused is what the screen stops, benign refused
# is the over-refusal it adds. About 3 minutes on 2 cores.
# MODEL (default: the default model), THRESHOLD (0.5), OUT (out/serve).
set -euo pipefail
cd "$(dirname "$0")/../.."
MODEL=${MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
THRESHOLD=${THRESHOLD:-0.5}
OUT=${OUT:-out/serve}
TENETS=${TENETS:-target/release/tenets}
mkdir -p "$OUT"
name=$(basename "$MODEL" .gguf)
measure() {
  local label=$1; shift
  rm -f "$OUT/$label.db"*
  "$TENETS" serve --model "$MODEL" --constitution harmless-helpful --db "$OUT/$label.db" \
    --port 0 --output-guard off "$@" > "$OUT/$label.address" &
  local pid=$!
  until grep -q listening "$OUT/$label.address" 2>/dev/null; do
    kill -0 "$pid" 2>/dev/null || { echo "serve ($label) stopped" >&2; exit 1; }
    sleep 0.5
  done
  local url
  url=$(grep -o 'http://[^ ]*' "$OUT/$label.address")
  python3 examples/serve/screen_rates.py "$url" "$name" "$label" \
    prompts/sets/eval-harmful.jsonl prompts/sets/eval-benign.jsonl
  kill "$pid"; wait "$pid" || true
}
measure rules
measure rules+probe --classifier probe --classifier-threshold "$THRESHOLD"
"$TENETS" stats --db "$OUT/rules+probe.db"
