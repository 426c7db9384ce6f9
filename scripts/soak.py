#!/usr/bin/env python3
"""Bounded soak of `smolbot serve --stub` on loopback: a mix of streaming chat completions,
conversation sends, page renders, client disconnects mid-stream and tokenize calls from several
threads for a fixed time, then a report: requests/s, p50/p99 latency of the non-generation
routes, errors by kind, the server's RSS and open file descriptors at start and end.

    python3 scripts/soak.py [--seconds 600] [--workers 8] [--binary target/release/smolbot]

Exits non-zero on any 5xx other than the documented 503 "busy", on a connection error, on leaked
file descriptors, or (runs of 150 s and more) when RSS grew by more than --max-rss-growth-mb
(default 64) after the first minute and a half, by which time finished runs' kept logs (60 s)
have reached their steady state.
Standard library only (CI runs a short one).
"""
import argparse
import collections
import http.client
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def open_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


class Soak:
    def __init__(self, port):
        self.port = port
        self.lock = threading.Lock()
        self.latency = collections.defaultdict(list)
        self.status = collections.Counter()
        self.errors = collections.Counter()
        self.requests = 0
        self.conversations = []

    def record(self, route, status, seconds):
        with self.lock:
            self.requests += 1
            self.status[(route, status)] += 1
            self.latency[route].append(seconds)

    def request(self, route, method, path, body=None, read=True, abort_after=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        started = time.perf_counter()
        try:
            headers = {"Content-Type": "application/json"} if body is not None else {}
            conn.request(method, path, body=json.dumps(body) if body is not None else None,
                         headers=headers)
            resp = conn.getresponse()
            if abort_after is not None:
                resp.read(abort_after)  # a client that goes away mid-stream
                conn.sock.close()
                data = b""
            elif read:
                data = resp.read()
            self.record(route, resp.status, time.perf_counter() - started)
            return resp.status, data
        except (OSError, http.client.HTTPException) as e:
            with self.lock:
                self.errors[f"{route}: {type(e).__name__}"] += 1
            return None, b""
        finally:
            conn.close()

    def chat_stream(self, abort=False):
        body = {"model": self.model, "stream": True, "max_tokens": 24,
                "messages": [{"role": "user", "content": f"soak {random.random()}"}]}
        self.request("chat stream" if not abort else "chat disconnect", "POST",
                     "/v1/chat/completions", body, abort_after=64 if abort else None)

    def conversation_send(self):
        with self.lock:
            known = list(self.conversations)
        if not known or random.random() < 0.2:
            status, data = self.request("conversation create", "POST", "/api/conversations",
                                        {"title": "soak"})
            if status == 201 or status == 200:
                cid = json.loads(data).get("id")
                if cid:
                    with self.lock:
                        self.conversations.append(cid)
            return
        cid = random.choice(known)
        self.request("conversation send", "POST", f"/api/conversations/{cid}/messages",
                     {"content": f"soak {random.random()}"})

    def page(self):
        self.request("page", "GET", "/")

    def tokenize(self):
        self.request("tokenize", "POST", "/tokenize", {"content": "hello " * random.randint(1, 200)})

    def actions(self, mix):
        every = {"chat": self.chat_stream, "disconnect": lambda: self.chat_stream(abort=True),
                 "send": self.conversation_send, "page": self.page, "tokenize": self.tokenize}
        return [every[name] for name in mix]

    def worker(self, deadline, mix=("chat", "disconnect", "send", "page", "page", "tokenize",
                                    "tokenize")):
        actions = self.actions(mix)
        while time.monotonic() < deadline:
            random.choice(actions)()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=600)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--binary", default="target/release/smolbot")
    ap.add_argument("--max-rss-growth-mb", type=float, default=64)
    ap.add_argument("--mix", default="chat,disconnect,send,page,page,tokenize,tokenize",
                    help="actions drawn at random, repeated to weight them")
    args = ap.parse_args()
    port = free_port()
    data = tempfile.mkdtemp()
    server = subprocess.Popen(
        [args.binary, "serve", "--stub", "--port", str(port), "--data-dir", data,
         "--stub-tokens-per-second", "0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    soak = Soak(port)
    try:
        for _ in range(200):
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        else:
            sys.exit("server did not come up")
        status, models = soak.request("models", "GET", "/v1/models")
        soak.model = json.loads(models)["data"][0]["id"]
        mix = args.mix.split(",")
        # RSS is sampled every second. Finished runs stay readable for a minute (for browsers
        # that reconnect), so memory ramps for the first 60 s of load and must be flat after:
        # growth is measured from the sample at `settle` on, once the run is long enough.
        samples = []
        settle = min(90.0, args.seconds / 3)
        begun = time.perf_counter()
        deadline = time.monotonic() + args.seconds
        threads = [threading.Thread(target=soak.worker, args=(deadline, mix))
                   for _ in range(args.workers)]
        for t in threads:
            t.start()
        start_fds = open_fds(server.pid)
        while any(t.is_alive() for t in threads):
            samples.append((time.perf_counter() - begun, rss_mb(server.pid)))
            time.sleep(1.0)
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - begun
        time.sleep(1.0)
        end_rss, end_fds = rss_mb(server.pid), open_fds(server.pid)
        settled = next((r for t, r in samples if t >= settle), samples[0][1])
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
    print(f"{soak.requests} requests in {elapsed:.0f} s: {soak.requests / elapsed:.1f}/s, "
          f"{args.workers} workers")
    for route, times in sorted(soak.latency.items()):
        if route.startswith("chat") or route == "conversation send":
            continue
        times = sorted(times)
        p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
        print(f"  {route:20} n={len(times):6}  p50 {statistics.median(times) * 1000:7.1f} ms"
              f"  p99 {p99 * 1000:7.1f} ms")
    print("status:", dict(sorted((f"{r} {s}", n) for (r, s), n in soak.status.items())))
    print("errors:", dict(soak.errors) or "none")
    print(f"server RSS {samples[0][1]:.1f} MB at start, {settled:.1f} at {settle:.0f} s, "
          f"{max(r for _, r in samples):.1f} peak, {end_rss:.1f} at the end; "
          f"open fds {start_fds} -> {end_fds}")
    checked = args.seconds >= 150
    bad = {k: n for k, n in soak.status.items() if k[1] >= 500 and k[1] != 503}
    if not checked:
        print("(RSS growth not judged: runs shorter than 150 s are still in the first minute's ramp)")
    grew = checked and end_rss - settled > args.max_rss_growth_mb
    failed = bool(bad) or bool(soak.errors) or grew or end_fds > start_fds + 8
    if failed:
        print("FAILED:", bad or "", soak.errors or "", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
