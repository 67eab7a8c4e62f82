#!/usr/bin/env python3
"""Load test of `peft serve` (bounded): for each concurrency C, C client threads send a fixed
number of completion requests over loopback, spread over the base model and two adapters;
reports throughput (requests/s, generated tokens/s) and latency percentiles, against C = 1
(one request at a time: what the server does without batching).

    python bench/bench_serve.py [--build build] [--requests 96] [--max-tokens 32] [--conc 1,4,16]
                                [--out bench/results_serve.log]

Model: models/demo with LoRA adapters trained for a few steps (tests/serve/serve_util.py).
Each request: temperature 0.8, its own seed, max_tokens fixed and EOS ignored by counting only
completion_tokens from the response's usage. Prints a markdown table; --out appends JSON lines.
"""
import argparse
import concurrent.futures
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(SRC, "tests", "serve"))


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100.0 * (len(xs) - 1))))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(SRC, "build"))
    ap.add_argument("--requests", type=int, default=96)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--conc", default="1,4,16")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    os.environ.setdefault("PEFT_BIN", os.path.join(os.path.abspath(a.build), "peft"))
    os.environ.setdefault("PEFT_BUILD", os.path.abspath(a.build))
    import serve_util as su
    import httpx2 as httpx
    work = os.path.join(su.BUILD, "bench_serve")
    os.makedirs(work, exist_ok=True)
    ad = su.train_adapters(work, 2)
    conc = [int(c) for c in a.conc.split(",")]
    srv = su.Server(["--adapter", "a1=" + ad[0], "--adapter", "a2=" + ad[1], "--max-batch", str(max(conc)),
                     "--max-queue", str(max(conc) * 2)])
    models = ["demo", "a1", "a2"]
    rows = []
    try:
        for c in conc:
            clients = [httpx.Client(base_url=srv.url, timeout=300) for _ in range(c)]

            def one(i):
                t = time.time()
                r = clients[i % c].post("/v1/completions", json={
                    "model": models[i % 3], "prompt": "ROMEO:", "max_tokens": a.max_tokens, "temperature": 0.8,
                    "seed": i})
                r.raise_for_status()
                return time.time() - t, r.json()["usage"]["completion_tokens"]

            one(0)  # warm-up
            t0 = time.time()
            with concurrent.futures.ThreadPoolExecutor(c) as pool:
                res = list(pool.map(one, range(a.requests)))
            wall = time.time() - t0
            for cl in clients:
                cl.close()
            lat = [r[0] * 1000 for r in res]
            toks = sum(r[1] for r in res)
            rows.append({"concurrency": c, "requests": a.requests, "max_tokens": a.max_tokens, "wall_s": round(wall, 3),
                         "req_per_s": round(a.requests / wall, 2), "tokens_per_s": round(toks / wall, 1),
                         "p50_ms": round(pct(lat, 50), 1), "p95_ms": round(pct(lat, 95), 1),
                         "p99_ms": round(pct(lat, 99), 1)})
    finally:
        rc, _ = srv.stop()
    base = rows[0]["tokens_per_s"]
    print("| concurrency | requests | wall s | req/s | tokens/s | vs C=1 | p50 ms | p95 ms | p99 ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print("| %d | %d | %.2f | %.1f | %.0f | %.2fx | %.1f | %.1f | %.1f |" % (
            r["concurrency"], r["requests"], r["wall_s"], r["req_per_s"], r["tokens_per_s"], r["tokens_per_s"] / base,
            r["p50_ms"], r["p95_ms"], r["p99_ms"]))
    if a.out:
        with open(a.out, "a") as f:
            for r in rows:
                f.write(json.dumps(dict(r, date=time.strftime("%Y-%m-%d"), server_exit=rc)) + "\n")
    return 0 if rc == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
