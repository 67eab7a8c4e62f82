#!/usr/bin/env python3
"""Writes a random-weight Llama checkpoint (f32 safetensors + config.json) for bench_train.

  /usr/bin/python3 bench/make_bench_model.py --shape small|smollm2-135m --out CACHE_DIR [--seed 0]

The model lands in CACHE_DIR/<shape>/ and is reused when its config.json already matches
(the file is about 540 MB for smollm2-135m). Prints the model directory on stdout.

Shapes:
  smollm2-135m  HuggingFaceTB/SmolLM2-135M: hidden 576, 30 layers, 9 heads, 3 KV heads,
                FFN 1536, vocab 49152, tied embeddings, rope_theta 100000.
  small         hidden 256, 8 layers, 4 heads, 2 KV heads, FFN 704, vocab 8192, tied.
"""
import argparse
import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tools"))
import torch_llama as tl  # noqa: E402
from safetensors_io import save_hf_model  # noqa: E402

_BASE = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_act": "silu",
    "attention_bias": False,
    "mlp_bias": False,
    "initializer_range": 0.02,
    "rms_norm_eps": 1e-5,
    "bos_token_id": 0,
    "eos_token_id": 0,
    "torch_dtype": "float32",
    "tie_word_embeddings": True,
}

SHAPES = {
    "smollm2-135m": dict(_BASE, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, head_dim=64, vocab_size=49152,
                         max_position_embeddings=8192, rope_theta=100000.0),
    "small": dict(_BASE, hidden_size=256, intermediate_size=704, num_hidden_layers=8,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=64, vocab_size=8192,
                  max_position_embeddings=2048, rope_theta=10000.0),
}


def ensure_model(shape, cache, seed=0):
    cfg = SHAPES[shape]
    d = os.path.join(cache, shape)
    cp = os.path.join(d, "config.json")
    if os.path.exists(cp) and os.path.exists(os.path.join(d, "model.safetensors")):
        with open(cp) as f:
            if json.load(f) == cfg:
                return d
    params = tl.init_random(cfg, seed=seed, dtype=torch.float32)
    save_hf_model(d, cfg, params)
    return d


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="small")
    ap.add_argument("--out", required=True, help="cache directory")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    print(ensure_model(a.shape, a.out, a.seed))


if __name__ == "__main__":
    main()
