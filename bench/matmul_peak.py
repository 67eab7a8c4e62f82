#!/usr/bin/env python3
"""Measures the machine's peak matmul throughput, the denominator of MFU in bench_train.

  .venv/bin/python bench/matmul_peak.py [--threads 2] [--sizes 1024,2048,3072] [--seconds 2]

Runs large square C = A @ B in PyTorch (the benchmark peers' torch: PyPI's) for
  bf16  torch.bfloat16 tensors (oneDNN bf16 gemm; AVX512-BF16 where the CPU has it, a slow
        emulation on AVX2-only CPUs such as AMD Zen 3)
  f32   torch.float32 tensors (torch's BLAS: MKL in PyPI's wheels)
and reports the best GFLOP/s over the sizes (2*n^3 flops per matmul). Sizes are tried in
increasing order and a dtype stops at the first size whose best matmul takes longer than
--seconds (bf16 without hardware support: minutes at n = 3072 otherwise). Prints one JSON line:
  {"bf16_gflops": .., "f32_gflops": .., "threads": .., "by_size": {...}, "openblas_env": {...}}
"""
import argparse
import json
import os
import time

import torch


def bench(n, dtype, seconds):
    g = torch.Generator().manual_seed(n)
    a = torch.randn(n, n, generator=g).to(dtype)
    b = torch.randn(n, n, generator=g).to(dtype)
    c = torch.empty(n, n, dtype=dtype)
    torch.mm(a, b, out=c)  # warm up (packing buffers, thread pool)
    best = float("inf")
    t_end = time.perf_counter() + seconds
    reps = 0
    while reps < 1 or time.perf_counter() < t_end:  # at least one timed matmul, else ~seconds of them
        t0 = time.perf_counter()
        torch.mm(a, b, out=c)
        best = min(best, time.perf_counter() - t0)
        reps += 1
    return 2.0 * n ** 3 / best / 1e9


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sizes", default="1024,2048,3072")
    ap.add_argument("--seconds", type=float, default=2.0)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    sizes = [int(s) for s in a.sizes.split(",")]
    by = {"bf16": {}, "f32": {}}
    for name, dt in (("bf16", torch.bfloat16), ("f32", torch.float32)):
        for n in sorted(sizes):
            gflops = bench(n, dt, a.seconds)
            by[name][n] = round(gflops, 1)
            if 2.0 * n ** 3 / gflops / 1e9 > a.seconds:
                break
    out = {"bf16_gflops": max(by["bf16"].values()), "f32_gflops": max(by["f32"].values()),
           "threads": torch.get_num_threads(), "by_size": by,
           "openblas_env": {k: v for k, v in os.environ.items() if k.startswith("OPENBLAS_")}}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
