#!/usr/bin/env bash
# Speed and memory of smolbot's own kernels against candle's QMatMul path and, when
# llama-cpp-python is installed (development only), llama.cpp, on the same file in the same
# run, alternating engines: a warm-up, then medians of ROUNDS runs, printed as ratios.
#   scripts/bench.sh [MODEL.gguf]   (default: the full-size synthetic SmolLM3-3B, made on demand)
# Env: THREADS (2), ROUNDS (3), PROMPT (512), GEN (128), PYTHON (python3),
#      LLAMA_PRELOAD (e.g. the no-AMX shim), CANDLE (1; 0 skips candle's path, slow on long prompts),
#      CACHE_TYPE (KV cache element type for both engines: f16, f32, q8_0; default each engine's).
# Long context (issue #16's table): for n in 1024 8192 16384 32768; do
#      CACHE_TYPE=f16 CANDLE=0 ROUNDS=1 PROMPT=$n GEN=32 scripts/bench.sh; done
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${THREADS:-2}
rounds=${ROUNDS:-3}
prompt=${PROMPT:-512}
gen=${GEN:-128}
py=${PYTHON:-python3}
candle=${CANDLE:-1}
cache_type=${CACHE_TYPE:-}
cargo build --release --quiet
model=${1:-models/smollm3-synthetic-3b.gguf}
if [ ! -s "$model" ]; then
  target/release/smolbot synth --size full --out "$model"
fi
llama=0
if "$py" -c "import llama_cpp" 2>/dev/null; then llama=1; fi
ours() {
  SMOLBOT_KERNELS=$1 target/release/smolbot bench --model "$model" --threads "$threads" --cpu \
    ${cache_type:+--cache-type "$cache_type"} --prompt-tokens "${3:-$prompt}" \
    --gen-tokens "${4:-$gen}" --json | tail -1
}
theirs() {
  LD_PRELOAD=${LLAMA_PRELOAD:-} "$py" scripts/bench_llama_cpp.py --model "$model" --threads "$threads" \
    ${cache_type:+--cache-type "$cache_type"} --prompt-tokens "$prompt" --gen-tokens "$gen" | tail -1
}
out=$(mktemp)
trap 'rm -f "$out"' EXIT
ours auto - 16 1 >/dev/null # warm-up: the file into the page cache
for _ in $(seq "$rounds"); do
  ours auto >>"$out"
  if [ "$candle" = 1 ]; then ours candle >>"$out"; fi
  if [ "$llama" = 1 ]; then theirs >>"$out"; fi
done
python3 - "$out" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
def name(r):
    return r.get("kernels", "llama.cpp") if r["engine"] == "smolbot" else "llama.cpp"
first = next(r for r in rows if r["engine"] == "smolbot")
print(f"host: {first['cpu']} ({' '.join(first['cpu_flags'])}), {first['threads']} threads, "
      f"read bandwidth {first['read_bandwidth_gb_s']:.1f} GB/s")
engines = list(dict.fromkeys(name(r) for r in rows))
med = {e: {k: statistics.median(r[k] for r in rows if name(r) == e and r.get(k) is not None)
           for k in ("prompt_tok_s", "gen_tok_s", "peak_rss_mb", "load_s")} for e in engines}
ours = engines[0]
for k, label in [("prompt_tok_s", "prompt tok/s"), ("gen_tok_s", "generation tok/s"), ("peak_rss_mb", "peak RSS MB"),
                 ("load_s", "load s (warm cache)")]:
    cells = "   ".join(f"{e} {med[e][k]:9.2f}" for e in engines)
    ratios = "   ".join(f"{ours}/{e} {med[ours][k] / med[e][k]:.2f}" for e in engines[1:])
    print(f"{label:18} {cells}   {ratios}")
PY
