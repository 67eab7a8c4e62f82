#!/usr/bin/env python3
"""Writes a random-weight Llama checkpoint for the training benchmark, through transformers.

  .venv/bin/python bench/make_bench_model.py --shape small|smollm2-135m --out CACHE_DIR [--seed 0]

transformers' LlamaForCausalLM(LlamaConfig(...)) with its own random initialisation (normal,
std initializer_range; RMSNorm weights 1), written by save_pretrained in f32: config.json
(transformers 5 layout, rope_parameters) + model.safetensors (tied: embed_tokens only). peft.c
(bench_train) and bench/hf_peer.py (from_pretrained) read these identical files.

The model lands in CACHE_DIR/<shape>/ and is reused when its config.json was written by
transformers and matches the shape (the file is about 540 MB for smollm2-135m). Prints the
model directory on stdout.

Shapes:
  smollm2-135m  HuggingFaceTB/SmolLM2-135M: hidden 576, 30 layers, 9 heads, 3 KV heads,
                FFN 1536, vocab 49152, tied embeddings, rope_theta 100000.
  small         hidden 256, 8 layers, 4 heads, 2 KV heads, FFN 704, vocab 8192, tied.
"""
import argparse
import json
import os

_BASE = dict(hidden_act="silu", attention_bias=False, mlp_bias=False, initializer_range=0.02,
             rms_norm_eps=1e-5, bos_token_id=0, eos_token_id=0, tie_word_embeddings=True)

SHAPES = {
    "smollm2-135m": dict(_BASE, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, head_dim=64, vocab_size=49152,
                         max_position_embeddings=8192, rope_theta=100000.0),
    "small": dict(_BASE, hidden_size=256, intermediate_size=704, num_hidden_layers=8,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=64, vocab_size=8192,
                  max_position_embeddings=2048, rope_theta=10000.0),
}


def _matches(saved, shape):
    """saved config.json (transformers 5: rope_theta inside rope_parameters) against a shape."""
    if "transformers_version" not in saved:  # an older cache written without transformers
        return False
    theta = (saved.get("rope_parameters") or {}).get("rope_theta", saved.get("rope_theta"))
    return theta == shape["rope_theta"] and all(
        saved.get(k) == v for k, v in shape.items() if k != "rope_theta")


def ensure_model(shape, cache, seed=0):
    d = os.path.join(cache, shape)
    cp = os.path.join(d, "config.json")
    if os.path.exists(cp) and os.path.exists(os.path.join(d, "model.safetensors")):
        with open(cp) as f:
            if _matches(json.load(f), SHAPES[shape]):
                return d
    import torch  # imported only when a model is written: transformers takes ~10 s to import
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging

    logging.disable_progress_bar()
    fields = dict(SHAPES[shape])
    theta = fields.pop("rope_theta")
    cfg = LlamaConfig(**fields, rope_parameters={"rope_type": "default", "rope_theta": theta})
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).to(torch.float32)
    model.save_pretrained(d)  # one model.safetensors: 135M f32 params = 538 MB < the 5 GB shard size
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
