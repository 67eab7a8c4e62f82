"""Tiny random Llama-family checkpoints and the PyTorch side of the parity tests of peft.c's own
methods (SVFT, SaRA, HUT, Hydra, NOLA, MoS, bottleneck adapters, LISA, BitFit, CorDA, ...), whose
reference is tools/torch_llama.py because transformers / HF PEFT do not have them. The model and
LoRA oracle proper is transformers + HF PEFT (tests/hf/test_transformers_*.py).

  cfg, params = make_random_model(dir, variant, seed=0, n_layers=None)
  config, lora = make_adapter(cfg, params, rank, alpha, rslora, seed)   # a PEFT LoRA adapter
  loss, grads, final, losses = adamw_reference(loss_fn, leaves, lr, wd, steps)

Variants (VARIANTS): llama_gqa, llama_mha_tied, qwen2_bias, llama3_rope (with an explicit head_dim).
Each writes config.json + model.safetensors into `dir` and returns (cfg dict, float32 params).
"""
import copy
import math
import os
import subprocess
import sys
import tempfile

try:
    import torch
except ImportError as e:  # the oracle itself is missing: every importing test skips
    print(f"SKIP: torch is not importable ({e})")
    sys.exit(77)

_TOOLS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "tools")
if _TOOLS not in sys.path:
    sys.path.insert(0, _TOOLS)

import torch_llama as tl  # noqa: E402
from safetensors_io import read_safetensors, save_hf_model, write_safetensors  # noqa: E402,F401

TOL = 1e-4  # relative error of losses, gradients and parameters: max |a - b| / max |b|
SRC = os.environ.get("PEFT_SRC", os.path.dirname(_TOOLS))
BUILD = os.environ.get("PEFT_BUILD", "build")
DRIVER = os.path.join(BUILD, "driver_train")
PEFT_BIN = os.path.abspath(os.environ.get("PEFT_BIN", os.path.join(BUILD, "peft")))
SITES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

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


VARIANTS = ["llama_gqa", "llama_mha_tied", "qwen2_bias", "llama3_rope"]


def _variant_cfg(variant):
    c = copy.deepcopy(_BASE)
    if variant == "llama_mha_tied":
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
    elif variant != "llama_gqa":
        raise ValueError("unknown variant %r (have %s)" % (variant, ", ".join(VARIANTS)))
    return c


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


def make_random_model(model_dir, variant, seed=0, n_layers=None):
    """Write a tiny random float32 checkpoint of `variant` (n_layers decoder layers if given) into
    model_dir. Returns (cfg, params): exactly what was stored."""
    cfg = _variant_cfg(variant)
    if n_layers:
        cfg["num_hidden_layers"] = n_layers
    params = _random_params(cfg, seed)
    save_hf_model(model_dir, cfg, params)
    return cfg, params


def rel(a, b):
    return (a - b).abs().max().item() / max(b.abs().max().item(), 1e-30)


def make_adapter(cfg, params, rank, alpha, rslora, seed):
    """A PEFT LoRA adapter on every projection of params: A ~ U(-1, 1)/sqrt(in), B ~ N(0, 0.05^2)
    (non-zero, so every gradient is). Returns (adapter_config dict, tensors by PEFT key)."""
    g = torch.Generator().manual_seed(seed)
    lora = {}
    for name, w in params.items():
        mod = name[: -len(".weight")]
        if not name.endswith(".weight") or mod.split(".")[-1] not in SITES:
            continue
        out_f, in_f = w.shape
        lora[f"base_model.model.{mod}.lora_A.weight"] = (torch.rand(rank, in_f, generator=g) * 2 - 1) / math.sqrt(in_f)
        lora[f"base_model.model.{mod}.lora_B.weight"] = torch.randn(out_f, rank, generator=g) * 0.05
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": alpha, "use_rslora": rslora,
              "target_modules": SITES, "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False,
              "base_model_name_or_path": "random", "use_dora": False}
    return config, lora


def adamw_reference(loss_fn, leaves, lr, wd, steps):
    """PyTorch's side of a parity case: the loss and the gradients of loss_fn() at the leaves
    (a dict of tensors requiring grad), then `steps` torch.optim.AdamW updates of them.
    Returns (loss, grads, final leaves, the loss before each update)."""
    loss = loss_fn()
    loss.backward()
    grads = {k: v.grad.detach().clone() for k, v in leaves.items()}
    opt = torch.optim.AdamW(leaves.values(), lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=wd)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        l = loss_fn()
        losses.append(l.item())
        l.backward()
        opt.step()
    return loss.item(), grads, {k: v.detach() for k, v in leaves.items()}, losses


def site_modules(params):
    """(module name, W) of every targeted linear layer."""
    out = []
    for name, w in params.items():
        if name.endswith(".weight") and name[: -len(".weight")].split(".")[-1] in SITES:
            out.append((name[: -len(".weight")], w))
    return out


def write_batch(work, cfg, packed, seed=9):
    """WORK/batch.safetensors for driver_train: ids, targets [2, 12] (-1: no loss; row 0's first
    3 positions are a prompt) and, when packed, positions (row 1: examples of 7 and 5 tokens).
    Returns (ids, targets, pos or None)."""
    g = torch.Generator().manual_seed(seed)
    B, T, V = 2, 12, cfg["vocab_size"]
    ids = torch.randint(0, V, (B, T), generator=g)
    targets = torch.randint(0, V, (B, T), generator=g)
    targets[0, :3] = -1
    pos = None
    if packed:
        pos = torch.stack([torch.arange(T), torch.cat([torch.arange(7), torch.arange(5)])])
        targets[1, 6] = -1
    batch = {"ids": ids.int(), "targets": targets.int()}
    if pos is not None:
        batch["pos"] = pos.int()
    write_safetensors(os.path.join(work, "batch.safetensors"), batch)
    return ids, targets, pos


def run_all(driver, run_case, cases):
    """run_case(tmp, case) for every case in one temporary directory; the exit status."""
    if not os.path.exists(driver):
        print(f"FAIL: driver {driver} not built")
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        results = [run_case(tmp, c) for c in cases]
    print(f"{sum(results)} passed, {len(results) - sum(results)} failed")
    return 0 if all(results) else 1


def run_driver(work, lr, wd, steps, recompute):
    """driver_train on WORK: (its outputs by name, "") or (None, its stderr)."""
    env = dict(os.environ, PEFT_DRIVER_TRAIN=work, PEFT_DRIVER_LR=str(lr), PEFT_DRIVER_WD=str(wd),
               PEFT_DRIVER_STEPS=str(steps), PEFT_DRIVER_RECOMPUTE="1" if recompute else "0")
    r = subprocess.run([DRIVER], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        return None, r.stderr
    return read_safetensors(os.path.join(work, "out.safetensors")), ""
