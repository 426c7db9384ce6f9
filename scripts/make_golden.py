#!/usr/bin/env python3
"""Produce the golden files under tests/golden/ with llama.cpp (PyPI llama-cpp-python).

Development-time only: CI never runs this. Needs `pip install llama-cpp-python numpy` and,
on CPUs that advertise AMX, LD_PRELOAD of the no-AMX shim (see the README's "Golden files").

    python scripts/make_golden.py --tiny tiny.gguf --smollm2 SmolLM2-135M-Instruct.Q4_1.gguf
"""
import argparse
import hashlib
import json
import pathlib

import numpy as np
import llama_cpp
from llama_cpp import Llama

# smolbot keeps K and V in f32; llama.cpp's default f16 cache would add its own rounding.
EXACT = {"type_k": 0, "type_v": 0}
HALF = {"type_k": 1, "type_v": 1}
# GGML_TYPE_Q8_0 for both; llama.cpp needs flash attention for a quantized V cache.
Q8 = {"type_k": 8, "type_v": 8, "flash_attn": True}

ROOT = pathlib.Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden"

# Same rule as smolbot's `perplexity`: consecutive windows, each scoring tokens 2..N.
def token_nll(llm, tokens, window):
    out = []
    for start in range(0, len(tokens), window):
        chunk = tokens[start:start + window]
        if len(chunk) < 2:
            continue
        llm.reset()
        llm.eval(chunk[:-1])
        logits = np.array(llm.scores[: len(chunk) - 1], dtype=np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        out.extend(float(-logp[i, t]) for i, t in enumerate(chunk[1:]))
    return out


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write(name, obj):
    path = GOLDEN / name
    path.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n")
    print("wrote", path)


def tokenizer_cases(llm, texts):
    return [
        {"text": t, "ids": llm.tokenize(t.encode(), add_bos=False, special=False)}
        for t in texts
    ]


TOKENIZER_TEXTS = [
    "Hello world! What is the capital of France?",
    "Le renard brun rapide saute par-dessus le chien paresseux. Ça va ?",
    "¿Dónde está la biblioteca? Mañana será otro día.",
    "Größere Übungen für Straßenbahnfahrer – schön, nicht?",
    "Perché l'Italia è così bella? Città, caffè e però.",
    "A situação não é fácil, mas vamos conseguir: ação!",
    "Emoji: 😀🎉👍🏽 and flags 🇫🇷🇩🇪, CJK: 你好，世界。日本語のテキスト。한국어",
    "fn main() {\n    let v: Vec<u32> = (0..10).map(|x| x * x).collect();\n    println!(\"{v:?}\");\n}\n",
    "    indented\n\n\n\ttabs\t\tand   many    spaces   ",
    "Digits 1234567890 and 3.14159, 1,000,000 and 2026-11-26.",
    "Special text that must stay text: <|im_start|>user <think> </think> <|im_end|>",
    "it's we're they've I'm you'll he'd DON'T",
    # Edge cases of the pre-tokenizer regexes: line endings, Unicode spaces and digits,
    # combining marks, contractions, more scripts, ZWJ emoji, punctuation runs, empty input.
    "Line one\r\nLine two\r\n\r\nEnd\r",
    "Non-breaking\u00a0space, thin\u2009space, ideographic\u3000space, zero\u200bwidth, NEL\u0085end",
    "Combining: e\u0301 n\u0303 a\u0308 — Arabic-Indic ١٢٣٤٥ digits, superscript x² ½ ⅷ ⑤",
    "It’s curly; 'S 'LL 'Re 'VE and 'd at the start, rock'n'roll, o'clock",
    "Trailing spaces   \n   leading and \t mixed \n\n  \n",
    "SELECT * FROM users WHERE id = 42; -- comment\n<div class=\"x\">&amp;</div>\n\t\treturn {'a': [1, 2]}",
    "Ελληνικά Русский текст עברית العربية हिन्दी ไทย tiếng Việt",
    "3141592653589793238462643383279 12 123 1234 12345 0.5 -7 +8 1e10 0x1F",
    "👨‍👩‍👧‍👦 family, ❤️ heart, 🏳️‍🌈 flag, 1️⃣ keycap, 🤖🦀",
    "",
    " ",
    "\n",
    "   ",
    "a\n\n\nb  \n  c\t\n\td",
    "Ça, où, déjà, naïve, cœur, Æsop, ß, ẞ, İstanbul, ǅ",
    "Hello<|im_start|>world<|im_end|>\n<think>\nok\n</think>",
    "!!! ??? ... --- *** ### @@@ $$$ %%% ^^^ &&& ((( ))) ___ +++ === {{{ }}} [[[ ]]] ||| \\\\\\ ;;; ::: ''' \"\"\" <<< >>> ,,, /// ~~~ ```",
]


def dequantize_gguf(src, dst):
    """Copy of `src` with every tensor expanded to F32 (gguf-py's dequantizers)."""
    import gguf
    from gguf.quants import dequantize

    r = gguf.GGUFReader(src)
    w = gguf.GGUFWriter(str(dst), r.fields["general.architecture"].contents())
    for k, f in r.fields.items():
        if k.startswith("GGUF.") or k == "general.architecture":
            continue
        vt = f.types[0]
        if vt == gguf.GGUFValueType.ARRAY:
            sub = f.types[-1]
            if sub == gguf.GGUFValueType.STRING:
                v = [bytes(f.parts[i]).decode("utf-8", "replace") for i in f.data]
            else:
                v = [f.parts[i].tolist()[0] for i in f.data]
            w.add_key_value(k, v, vt, sub_type=sub)
        elif vt == gguf.GGUFValueType.STRING:
            w.add_key_value(k, bytes(f.parts[f.data[0]]).decode("utf-8", "replace"), vt)
        else:
            val = f.parts[f.data[0]].tolist()[0]
            w.add_key_value(k, 0 if k == "general.file_type" else val, vt)
    for t in r.tensors:
        a = dequantize(t.data, t.tensor_type).astype(np.float32)
        w.add_tensor(t.name, a.reshape([int(x) for x in reversed(t.shape)]))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", required=True)
    ap.add_argument("--smollm2")
    args = ap.parse_args()
    GOLDEN.mkdir(parents=True, exist_ok=True)
    meta = {"llama_cpp_python": llama_cpp.__version__}

    window = 64
    tiny = Llama(model_path=args.tiny, logits_all=True, n_ctx=window, n_batch=window, n_threads=2, verbose=False, **EXACT)
    tokens = [(i * 37 + 11) % 500 for i in range(200)]
    nll = token_nll(tiny, tokens, window)
    write("tiny_smollm3_nll.json", {**meta, "model_sha256": sha256(args.tiny), "window": window,
                                    "tokens": tokens, "nll": nll, "ppl": float(np.exp(np.mean(nll)))})
    del tiny
    # llama.cpp's default f16 KV cache, which smolbot's `--cache-type f16` is compared with.
    tiny = Llama(model_path=args.tiny, logits_all=True, n_ctx=window, n_batch=window, n_threads=2, verbose=False, **HALF)
    nll = token_nll(tiny, tokens, window)
    write("tiny_smollm3_f16kv_nll.json", {**meta, "model_sha256": sha256(args.tiny), "window": window,
                                          "kv_cache": "f16", "tokens": tokens, "nll": nll,
                                          "ppl": float(np.exp(np.mean(nll)))})
    write("tiny_smollm3_tokenizer.json", {**meta, "model_sha256": sha256(args.tiny),
                                          "cases": tokenizer_cases(tiny, TOKENIZER_TEXTS)})
    del tiny
    # The tiny model's NLL under llama.cpp settings smolbot has flags for: YaRN as SmolLM3's
    # card prescribes for 128k (`--rope-scaling yarn --rope-scale 2 --yarn-orig-ctx N`, here
    # over the tiny model's own 4,096 positions), and a q8_0 KV cache (`--cache-type q8_0`).
    yarn = {"rope_scaling_type": llama_cpp.LLAMA_ROPE_SCALING_TYPE_YARN, "rope_freq_scale": 0.5,
            "yarn_orig_ctx": 4096, **EXACT}
    variants = [
        ("tiny_smollm3_yarn_nll.json", yarn, {"rope_scaling": "yarn", "rope_scale": 2, "yarn_orig_ctx": 4096}),
        ("tiny_smollm3_q8kv_nll.json", Q8, {"kv_cache": "q8_0"}),
    ]
    for name, settings, described in variants:
        tiny = Llama(model_path=args.tiny, logits_all=True, n_ctx=window, n_batch=window, n_threads=2,
                     verbose=False, **settings)
        nll = token_nll(tiny, tokens, window)
        write(name, {**meta, "model_sha256": sha256(args.tiny), "window": window, **described,
                     "tokens": tokens, "nll": nll, "ppl": float(np.exp(np.mean(nll)))})
        del tiny
    if not args.smollm2:
        return

    window = 128
    text = (ROOT / "tests" / "fixtures" / "smollm2_text.txt").read_text()
    s2 = Llama(model_path=args.smollm2, logits_all=True, n_ctx=window, n_batch=window, n_threads=2, verbose=False, **EXACT)
    tokens = s2.tokenize(text.encode(), add_bos=False, special=False)
    nll = token_nll(s2, tokens, window)
    write("smollm2_nll.json", {**meta, "model_sha256": sha256(args.smollm2), "window": window,
                               "text_file": "tests/fixtures/smollm2_text.txt", "tokens": tokens,
                               "nll": nll, "ppl": float(np.exp(np.mean(nll)))})
    write("smollm2_tokenizer.json", {**meta, "model_sha256": sha256(args.smollm2),
                                     "cases": tokenizer_cases(s2, TOKENIZER_TEXTS)})

    # The same tokens on the same weights expanded to F32: no activation quantization on
    # either side, so this isolates the forward pass from the kernels' rounding.
    f32_path = pathlib.Path(args.smollm2).with_suffix(".f32.gguf")
    dequantize_gguf(args.smollm2, f32_path)
    exact = Llama(model_path=str(f32_path), logits_all=True, n_ctx=window, n_batch=window, n_threads=2, verbose=False, **EXACT)
    nll = token_nll(exact, tokens, window)
    write("smollm2_f32_nll.json", {**meta, "model_sha256": sha256(args.smollm2), "dequantized": True,
                                   "window": window, "tokens": tokens, "nll": nll,
                                   "ppl": float(np.exp(np.mean(nll)))})
    del exact
    f32_path.unlink()

    # Greedy answer to the question, in ChatML as the model was trained.
    prompt = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    ids = s2.tokenize(prompt.encode(), add_bos=False, special=True)
    s2.reset()
    out = []
    for tok in s2.generate(ids, temp=0.0, top_k=1):
        if tok == s2.token_eos() or len(out) >= 30:
            break
        out.append(tok)
    write("smollm2_greedy.json", {**meta, "prompt": prompt, "prompt_ids": ids, "generated_ids": out,
                                  "text": s2.detokenize(out).decode("utf-8", "replace")})


if __name__ == "__main__":
    main()
