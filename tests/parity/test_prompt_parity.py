"""Prompt and prefix tuning parity with PyTorch (Debian python3-torch).

PROMPT_TUNING (prompt_embeddings [n_virtual, hidden]): PyTorch runs the model on
cat(prompt, embed(ids)) exactly as HF PEFT does for causal LMs (virtual tokens first,
positions 0..n_virtual+T-1, no loss on them).
PREFIX_TUNING (prompt_embeddings [n_virtual, layers * 2 * kv_dim], PEFT's layout): every layer's
first n_virtual keys/values are the prefix, unrotated, and the real tokens sit at positions
n_virtual.. — as HF does with a prefix cache. PyTorch builds it through the k/v projections'
hook: the prefix rows of k are given the inverse rotation of their position, so that after
RoPE they equal the prefix exactly.
In both, peft.c's loss, the gradient of prompt_embeddings and its value after 3 AdamW steps
must match within 1e-4 relative.
"""
import json
import os
import subprocess
import sys
import tempfile

try:
    import torch
except Exception as e:  # noqa: BLE001
    print(f"SKIP: torch is not importable ({e})")
    sys.exit(77)

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), "tools"))
import llama_models  # noqa: E402
import torch_llama as tl  # noqa: E402
from safetensors_io import read_safetensors, write_safetensors  # noqa: E402
from test_lora_parity import DRIVER, TOL, adamw_reference, rel  # noqa: E402

CASES = [("prompt-gqa", "llama_gqa", 4, 0.0, "PROMPT_TUNING"), ("prompt-tied+wd", "llama_mha_tied", 6, 0.1, "PROMPT_TUNING"),
         ("prompt-qwen2", "qwen2_bias", 2, 0.0, "PROMPT_TUNING"), ("prefix-gqa", "llama_gqa", 4, 0.0, "PREFIX_TUNING"),
         ("prefix-qwen2+wd", "qwen2_bias", 3, 0.1, "PREFIX_TUNING"), ("prefix-llama3rope", "llama3_rope", 2, 0.0, "PREFIX_TUNING")]


def prefix_hook(cfg, leaf, nv):
    """linear_hook putting the prefix into k and v rows t < nv of every layer."""
    H, nh, nkv, hd = tl.dims(cfg)
    L, KD = cfg["num_hidden_layers"], nkv * hd

    def hook(name, x, W, b):
        y = torch.nn.functional.linear(x, W, b)
        kind = name.split(".")[-1]
        if kind not in ("k_proj", "v_proj"):
            return y
        layer = int(name.split(".")[2])
        j = 2 * layer + (kind == "v_proj")
        rows = leaf[:, j * KD:(j + 1) * KD]  # [nv, KD]
        B = y.shape[0]
        if kind == "k_proj":  # undo the rotation RoPE will apply at positions 0..nv-1
            pos = torch.arange(nv)[None]
            cos, sin = tl.rope_cos_sin(cfg, pos, rows.dtype)  # [1, nv, hd]
            r = rows.view(nv, nkv, hd)
            rows = (r * cos[0][:, None] - tl.rotate_half(r) * sin[0][:, None]).reshape(nv, KD)
        return torch.cat([rows[None].expand(B, nv, KD), y[:, nv:]], 1)

    return hook


def run_case(tmp, case):
    name, variant, nv, wd, peft_type = case
    work = os.path.join(tmp, name.replace("+", "_"))
    os.makedirs(os.path.join(work, "adapter"))
    cfg, params = llama_models.make_random_model(os.path.join(work, "model"), variant, seed=3)
    H, nh, nkv, hd = tl.dims(cfg)
    width = H if peft_type == "PROMPT_TUNING" else cfg["num_hidden_layers"] * 2 * nkv * hd
    g = torch.Generator().manual_seed(5)
    prompt = torch.randn(nv, width, generator=g) * 0.5
    with open(os.path.join(work, "adapter", "adapter_config.json"), "w") as f:
        json.dump({"peft_type": peft_type, "task_type": "CAUSAL_LM", "num_virtual_tokens": nv, "token_dim": width,
                   "num_transformer_submodules": 1, "base_model_name_or_path": "random"}, f)
    write_safetensors(os.path.join(work, "adapter", "adapter_model.safetensors"), {"prompt_embeddings": prompt},
                      {"format": "pt"})
    B, T, V = 2, 10, cfg["vocab_size"]
    data = torch.randint(0, V, (B, T), generator=g)
    tgt = torch.randint(0, V, (B, T), generator=g)
    tgt[1, :4] = -1
    ids = torch.cat([torch.zeros(B, nv, dtype=torch.long), data], 1)       # placeholders first
    targets = torch.cat([torch.full((B, nv), -1, dtype=torch.long), tgt], 1)  # no loss on them
    write_safetensors(os.path.join(work, "batch.safetensors"), {"ids": ids.int(), "targets": targets.int()})
    lr, steps = 1e-2, 3
    env = dict(os.environ, PEFT_DRIVER_TRAIN=work, PEFT_DRIVER_LR=str(lr), PEFT_DRIVER_WD=str(wd),
               PEFT_DRIVER_STEPS=str(steps), PEFT_DRIVER_RECOMPUTE="0")
    r = subprocess.run([DRIVER], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        print(f"{name}: driver failed: {r.stderr}")
        return False
    out = read_safetensors(os.path.join(work, "out.safetensors"))

    leaf = prompt.clone().requires_grad_(True)

    def loss_fn():
        if peft_type == "PROMPT_TUNING":
            embeds = torch.cat([leaf[None].expand(B, nv, H), torch.nn.functional.embedding(data, params["model.embed_tokens.weight"])], 1)
            logits = tl.forward(cfg, params, None, inputs_embeds=embeds)
        else:
            logits = tl.forward(cfg, params, ids, linear_hook=prefix_hook(cfg, leaf, nv))
        return torch.nn.functional.cross_entropy(logits.reshape(-1, V), targets.reshape(-1), ignore_index=-1)

    loss, grads, final, _ = adamw_reference(loss_fn, {"prompt_embeddings": leaf}, lr, wd, steps)
    loss_err = abs(out["loss"].item() - loss) / abs(loss)
    grad_err = rel(out["grad.prompt_embeddings"], grads["prompt_embeddings"])
    final_err = rel(out["final.prompt_embeddings"], final["prompt_embeddings"])
    ok = loss_err <= TOL and grad_err <= TOL and final_err <= TOL
    print(f"{name:18s} n_virtual {nv}  loss {loss_err:.1e}  grad {grad_err:.1e}  after {steps} AdamW steps {final_err:.1e}  "
          f"{'ok' if ok else 'FAIL'}")
    return ok


def main():
    if not os.path.exists(DRIVER):
        print(f"FAIL: driver {DRIVER} not built")
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        results = [run_case(tmp, c) for c in CASES]
    print(f"{sum(results)} passed, {len(results) - sum(results)} failed")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
