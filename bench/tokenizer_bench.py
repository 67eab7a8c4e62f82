#!/usr/bin/env python3
"""Encoding throughput on Tiny Shakespeare (1.1 MB): peft.c against Hugging Face `tokenizers`
(the Rust library transformers runs), on the same tokenizer.json files.

Usage: .venv/bin/python bench/tokenizer_bench.py [PEFT_BIN] (default build/peft); needs
../shared (or PEFT_SHARED). peft.c: `peft tokenize --file F --time` (one thread, its own timer,
load excluded). HF: Tokenizer.encode of the whole text in this process, one thread
(RAYON_NUM_THREADS=1; a single encode does not use more anyway), load excluded, a fresh
Tokenizer per run so that its BPE cache starts cold as peft.c's does. Best of 3 runs each.
Prints a Markdown table; the ids are checked to be identical.
"""
import os
import re
import subprocess
import sys
import time

os.environ.setdefault("RAYON_NUM_THREADS", "1")
from tokenizers import Tokenizer  # noqa: E402 (after the thread setting)

SRC = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("PEFT_BIN", os.path.join(SRC, "build", "peft"))
SHARED = os.environ.get("PEFT_SHARED", os.path.join(SRC, "..", "shared"))
TEXT = os.path.join(SHARED, "data", "tinyshakespeare", "input.txt")
MODELS = [
    ("gpt2 (tiny-gpt2)", os.path.join(SHARED, "models", "tiny-gpt2")),
    ("llama2", os.path.join(SHARED, "tokenizers", "llama2")),
    ("llama3", os.path.join(SHARED, "tokenizers", "llama3")),
    ("qwen3", os.path.join(SHARED, "tokenizers", "qwen3")),
]

text = open(TEXT, encoding="utf-8").read()
nbytes = len(text.encode("utf-8"))
print(f"Tiny Shakespeare, {nbytes} bytes; best of 3, load excluded")
print("| tokenizer | tokens | peft.c ms | peft.c MB/s | HF ms | HF MB/s | peft.c / HF |")
print("|---|---:|---:|---:|---:|---:|---:|")
for name, d in MODELS:
    hf_best, ids = float("inf"), None
    for _ in range(3):
        tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
        t0 = time.perf_counter()
        ids = tok.encode(text).ids
        hf_best = min(hf_best, (time.perf_counter() - t0) * 1e3)
    c_best, c_ids = float("inf"), None
    for _ in range(3):
        p = subprocess.run([BIN, "tokenize", "--model", d, "--file", TEXT, "--time"], capture_output=True, text=True)
        m = re.search(r"in ([\d.]+) ms", p.stderr)
        if p.returncode or not m:
            sys.exit(f"{BIN} failed: {p.stderr}")
        c_best = min(c_best, float(m.group(1)))
        c_ids = [int(x) for x in p.stdout.strip().split(",")]
    if c_ids != ids:
        sys.exit(f"{name}: peft.c's ids differ from HF's")
    mbs = lambda ms: f"{nbytes / ms / 1e3:.1f}"  # noqa: E731
    print(f"| {name} | {len(ids):,} | {c_best:.1f} | {mbs(c_best)} | {hf_best:.1f} | {mbs(hf_best)} | {hf_best / c_best:.2f}x |")
