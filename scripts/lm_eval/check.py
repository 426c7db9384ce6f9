"""Development-time check (not in CI: lm-eval is heavy): lm-evaluation-harness's
`local-completions` model scores a small local multiple-choice task against a running
`smolbot serve`, and every loglikelihood it reports must equal the server's own scoring of
the same tokens through `/v1/completions` (summed continuation logprobs).

    smolbot serve --model models/SmolLM2-135M-Instruct.Q4_1.gguf --port 8089 &
    python scripts/lm_eval/check.py http://127.0.0.1:8089

Needs `pip install "lm_eval[api]"` (no torch, no transformers: the tokenizer is the server's own,
through lm-eval's `remote` backend).
"""

import json
import math
import sys
import urllib.request

import lm_eval
from lm_eval.tasks import TaskManager


def post(base, path, body):
    request = urllib.request.Request(
        base + path, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request) as reply:
        return json.load(reply)


def encode(base, text):
    return post(base, "/tokenize", {"prompt": text, "add_special_tokens": False})["tokens"]


def server_loglikelihood(base, context, continuation):
    """Scores like lm-eval's `_encode_pair`: trailing spaces move to the continuation, the
    context's tokens are those of the context alone, the rest are the continuation's."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        continuation = context[-spaces:] + continuation
        context = context[:-spaces]
    whole = encode(base, context + continuation)
    context_len = len(encode(base, context))
    reply = post(
        base,
        "/v1/completions",
        {"prompt": whole, "echo": True, "logprobs": 1, "max_tokens": 0, "temperature": 0},
    )
    scores = reply["choices"][0]["logprobs"]["token_logprobs"]
    return sum(scores[context_len:])


def main():
    base = sys.argv[1].rstrip("/")
    model = json.load(urllib.request.urlopen(base + "/v1/models"))["data"][0]["id"]
    results = lm_eval.simple_evaluate(
        model="local-completions",
        model_args=(
            f"base_url={base}/v1/completions,model={model},tokenizer_backend=remote,"
            "tokenized_requests=True,num_concurrent=1,max_retries=1"
        ),
        tasks=["smolbot_mc"],
        task_manager=TaskManager(include_path="scripts/lm_eval"),
        log_samples=True,
    )
    print("lm-eval acc:", results["results"]["smolbot_mc"]["acc,none"])
    worst = 0.0
    count = 0
    for sample in results["samples"]["smolbot_mc"]:
        for (context, continuation), (loglikelihood, _greedy) in zip(
            [a["arguments"] for a in sample["arguments"]] if isinstance(sample["arguments"][0], dict) else sample["arguments"],
            [r[0] for r in sample["resps"]],
        ):
            ours = server_loglikelihood(base, context, continuation)
            worst = max(worst, abs(ours - loglikelihood))
            count += 1
            print(f"{continuation!r:>16}: lm-eval {loglikelihood:10.5f}  server {ours:10.5f}")
    print(f"{count} loglikelihoods, largest |difference| {worst:.2e}")
    sys.exit(0 if count > 0 and worst < 1e-4 else 1)


if __name__ == "__main__":
    main()
