#!/usr/bin/env python3
"""llama.cpp's side of `scripts/bench.sh`: the same prompt rule and lengths as `smolbot
bench`, through llama-cpp-python, printing one JSON line. Development-time only."""
import argparse
import json
import resource
import time

import llama_cpp
from llama_cpp import Llama


# ggml type ids of the KV cache element types both engines offer.
CACHE_TYPES = {"f32": 0, "f16": 1, "q8_0": 8}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--cache-type", choices=sorted(CACHE_TYPES), default="f16")
    a = ap.parse_args()
    cache = CACHE_TYPES[a.cache_type]
    t0 = time.perf_counter()
    # Flash attention on, as llama-server's `-fa auto` picks on the CPU: without it llama.cpp
    # materialises every chunk's scores against the whole context.
    llm = Llama(model_path=a.model, n_ctx=a.prompt_tokens + a.gen_tokens + 8, n_batch=512,
                n_threads=a.threads, n_threads_batch=a.threads, type_k=cache, type_v=cache,
                flash_attn=True, verbose=False)
    load_s = time.perf_counter() - t0
    vocab = llm.n_vocab()
    prompt = [(i * 7919 + 13) % (vocab * 3 // 4) for i in range(a.prompt_tokens)]
    t0 = time.perf_counter()
    llm.eval(prompt)
    prompt_s = time.perf_counter() - t0
    ctx = llm.ctx
    t0 = time.perf_counter()
    for _ in range(a.gen_tokens):
        logits = llama_cpp.llama_get_logits_ith(ctx, -1)
        best = max(range(vocab), key=lambda i: logits[i]) if vocab < 60000 else int(
            __import__("numpy").ctypeslib.as_array(logits, shape=(vocab,)).argmax())
        llm.eval([best])
    gen_s = time.perf_counter() - t0
    print(json.dumps({
        "engine": "llama.cpp " + llama_cpp.__version__,
        "threads": a.threads,
        "cache_type": a.cache_type,
        "load_s": load_s,
        "prompt_tokens": a.prompt_tokens,
        "prompt_tok_s": a.prompt_tokens / prompt_s,
        "gen_tokens": a.gen_tokens,
        "gen_tok_s": a.gen_tokens / gen_s,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3,
    }))


if __name__ == "__main__":
    main()
