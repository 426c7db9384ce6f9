#!/usr/bin/env bash
# Speed and memory of smolbot against llama.cpp on the same file in the same run, as ratios.
# Development-time: needs llama-cpp-python (see README, "Golden files and benchmarks").
#   scripts/bench.sh [MODEL.gguf]   (default: the full-size synthetic SmolLM3-3B, made on demand)
# Env: THREADS (2), PYTHON (python3), LLAMA_PRELOAD (e.g. the no-AMX shim).
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${THREADS:-2}
py=${PYTHON:-python3}
cargo build --release --quiet
model=${1:-models/smollm3-synthetic-3b.gguf}
if [ ! -s "$model" ]; then
  target/release/smolbot synth --size full --out "$model"
fi
ours=$(target/release/smolbot bench --model "$model" --threads "$threads" --cpu --json)
theirs=$(LD_PRELOAD=${LLAMA_PRELOAD:-} "$py" scripts/bench_llama_cpp.py --model "$model" --threads "$threads")
echo "smolbot:   $ours"
echo "llama.cpp: $theirs"
python3 - "$ours" "$theirs" <<'PY'
import json, sys
a, b = json.loads(sys.argv[1]), json.loads(sys.argv[2])
for k, label in [("prompt_tok_s", "prompt tok/s"), ("gen_tok_s", "generation tok/s"), ("peak_rss_mb", "peak RSS MB")]:
    print(f"{label:18} smolbot {a[k]:9.2f}   llama.cpp {b[k]:9.2f}   ratio {a[k] / b[k]:.2f}")
PY
