"""Helpers for the parity tests: tiny random HF-format Llama-family checkpoints + reference logits.

  cfg, params = make_random_model(dir, variant, seed=0)
  logits      = reference_logits(dir, ids)      # float32 [B,T,V] from tools/torch_llama.py

Variants (VARIANTS): llama_gqa, llama_mha_tied, qwen2_bias, llama3_rope, mistral, llama_bf16,
llama_sharded, llama_f16, llama_attn_bias (extra: attention_bias + mlp_bias).
Each writes config.json + safetensors (model.safetensors, or 3 shards + model.safetensors.index.json)
into `dir` and returns (cfg dict, params as float32 tensors after rounding to the stored dtype),
so comparisons against the stored weights are exact.
"""
import copy
import math
import os
import sys

import torch

_TOOLS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "tools")
if _TOOLS not in sys.path:
    sys.path.insert(0, _TOOLS)

import torch_llama as tl  # noqa: E402
from safetensors_io import save_hf_model  # noqa: E402

_BASE = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "hidden_act": "silu",
    "hidden_size": 64,
    "initializer_range": 0.02,
    "intermediate_size": 160,
    "max_position_embeddings": 256,
    "mlp_bias": False,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "num_key_value_heads": 2,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-5,
    "rope_scaling": None,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "float32",
    "transformers_version": "4.44.0",
    "use_cache": True,
    "vocab_size": 256,
}


def _variant_cfg(variant):
    c = copy.deepcopy(_BASE)
    shards = None
    dtype = torch.float32
    if variant == "llama_gqa":
        pass
    elif variant == "llama_mha_tied":
        c.update(hidden_size=48, intermediate_size=128, num_key_value_heads=4, tie_word_embeddings=True,
                 vocab_size=259, rms_norm_eps=1e-6)
    elif variant == "qwen2_bias":
        c.update(architectures=["Qwen2ForCausalLM"], model_type="qwen2", tie_word_embeddings=True,
                 rope_theta=1000000.0, rms_norm_eps=1e-6, vocab_size=300, use_sliding_window=False,
                 sliding_window=4096, max_window_layers=2)
        del c["attention_bias"], c["mlp_bias"], c["pretraining_tp"]
    elif variant == "llama3_rope":
        # explicit head_dim (16) != hidden/heads (48/4 = 12); original_max_position_embeddings small
        # so that all three frequency bands (kept / smoothed / divided by factor) occur.
        c.update(hidden_size=48, intermediate_size=96, head_dim=16, rope_theta=500000.0,
                 rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                               "high_freq_factor": 4.0, "original_max_position_embeddings": 64})
    elif variant == "mistral":
        c.update(architectures=["MistralForCausalLM"], model_type="mistral", sliding_window=4096,
                 rope_theta=1000000.0)
        del c["attention_bias"], c["mlp_bias"], c["pretraining_tp"]
    elif variant == "llama_bf16":
        c.update(torch_dtype="bfloat16")
        dtype = torch.bfloat16
    elif variant == "llama_f16":
        c.update(torch_dtype="float16")
        dtype = torch.float16
    elif variant == "llama_sharded":
        c.update(vocab_size=200)
        shards = 3
    elif variant == "llama_attn_bias":
        c.update(attention_bias=True, mlp_bias=True)
    else:
        raise ValueError("unknown variant %r (have %s)" % (variant, ", ".join(VARIANTS)))
    return c, dtype, shards


VARIANTS = ["llama_gqa", "llama_mha_tied", "qwen2_bias", "llama3_rope", "mistral", "llama_bf16",
            "llama_sharded", "llama_f16", "llama_attn_bias"]


def _random_params(cfg, seed):
    """Weights scaled ~1/sqrt(fan_in) (so activations and logits are O(1) and parity tests are
    sensitive), embeddings std 0.5, norm weights 1 + N(0, 0.1), biases N(0, 0.1)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in tl.param_shapes(cfg).items():
        if name.endswith("norm.weight"):
            t = 1.0 + 0.1 * torch.randn(shape, generator=g)
        elif name.endswith(".bias"):
            t = 0.1 * torch.randn(shape, generator=g)
        elif name == "model.embed_tokens.weight":
            t = 0.5 * torch.randn(shape, generator=g)
        else:
            t = torch.randn(shape, generator=g) / math.sqrt(shape[1])
        out[name] = t
    return out


def make_random_model(model_dir, variant, seed=0):
    """Write a tiny random checkpoint of `variant` into model_dir.
    Returns (cfg, params): params are float32 copies of exactly what was stored."""
    cfg, dtype, shards = _variant_cfg(variant)
    params = _random_params(cfg, seed)
    stored = {k: v.to(dtype).contiguous() for k, v in params.items()}
    save_hf_model(model_dir, cfg, stored, shards=shards)
    return cfg, {k: v.float() for k, v in stored.items()}


def reference_logits(model_dir, ids, position_ids=None, linear_hook=None):
    """float32 logits [B,T,V] of the checkpoint in model_dir (weights upcast to f32, f32 math).
    ids: LongTensor [B,T] or nested list; position_ids: optional [B,T] (packed sequences)."""
    cfg = tl.load_config(model_dir)
    params = tl.load_params(model_dir, dtype=torch.float32)
    ids = torch.as_tensor(ids, dtype=torch.long)
    if ids.dim() == 1:
        ids = ids[None]
    if position_ids is not None:
        position_ids = torch.as_tensor(position_ids, dtype=torch.long)
        if position_ids.dim() == 1:
            position_ids = position_ids[None]
    with torch.no_grad():
        return tl.forward(cfg, params, ids, position_ids=position_ids, linear_hook=linear_hook)


if __name__ == "__main__":
    import tempfile
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as td:
        for v in VARIANTS:
            d = os.path.join(td, v)
            cfg, params = make_random_model(d, v, seed=1)
            ids = torch.randint(0, cfg["vocab_size"], (2, 7), generator=torch.Generator().manual_seed(0))
            lg = reference_logits(d, ids)
            lg2 = tl.forward(cfg, params, ids)
            assert torch.equal(lg, lg2), v
            print("%-16s files=%s logits %s std %.3f" % (v, sorted(os.listdir(d)), tuple(lg.shape),
                                                         float(lg.std())))
