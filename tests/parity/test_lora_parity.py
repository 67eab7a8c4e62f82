"""LoRA training parity with PyTorch (Debian python3-torch).

For random Llama-family models (GQA, tied embeddings, Qwen2 biases, packed sequences, gradient
checkpointing) with LoRA on every linear layer, peft.c's loss, every lora_A/lora_B gradient, and
the adapter weights after 3 AdamW steps must match a PyTorch reference (tools/torch_llama.py +
torch.optim.AdamW) within 1e-4 relative error (max |a-b| / max |b| per tensor).
"""
import json
import math
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

TOL = 1e-4
BUILD = os.environ.get("PEFT_BUILD", "build")
DRIVER = os.path.join(BUILD, "driver_train")
SITES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

CASES = [
    # name, variant, rank, alpha, rslora, packed, recompute, weight_decay
    ("gqa", "llama_gqa", 4, 8, False, False, False, 0.0),
    ("tied+rslora+wd", "llama_mha_tied", 4, 8, True, False, False, 0.1),
    ("qwen2-bias+packed", "qwen2_bias", 3, 6, False, True, False, 0.0),
    ("gqa+recompute", "llama_gqa", 2, 4, False, True, True, 0.0),
]


def rel(a, b):
    return (a - b).abs().max().item() / max(b.abs().max().item(), 1e-30)


def make_adapter(cfg, params, rank, alpha, rslora, seed):
    g = torch.Generator().manual_seed(seed)
    lora = {}
    for name, w in params.items():
        if not name.endswith(".weight") or not any(f".{s}." in name + "." for s in SITES):
            continue
        mod = name[: -len(".weight")]
        if mod.split(".")[-1] not in SITES:
            continue
        out_f, in_f = w.shape
        lora[f"base_model.model.{mod}.lora_A.weight"] = (torch.rand(rank, in_f, generator=g) * 2 - 1) / math.sqrt(in_f)
        lora[f"base_model.model.{mod}.lora_B.weight"] = torch.randn(out_f, rank, generator=g) * 0.05
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": alpha, "use_rslora": rslora,
              "target_modules": SITES, "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False,
              "base_model_name_or_path": "random", "use_dora": False}
    return config, lora


def torch_reference(cfg, params, config, lora, ids, targets, pos, wd, lr, steps):
    scale = config["lora_alpha"] / (math.sqrt(config["r"]) if config["use_rslora"] else config["r"])
    leaves = {k: v.clone().requires_grad_(True) for k, v in lora.items()}

    def hook(name, x, W, b):
        y = torch.nn.functional.linear(x, W, b)
        key = f"base_model.model.{name}"
        if key + ".lora_A.weight" in leaves:
            A, B = leaves[key + ".lora_A.weight"], leaves[key + ".lora_B.weight"]
            y = y + scale * ((x @ A.t()) @ B.t())
        return y

    def loss_fn():
        logits = tl.forward(cfg, params, ids, position_ids=pos, linear_hook=hook)
        V = logits.shape[-1]
        return torch.nn.functional.cross_entropy(logits.reshape(-1, V), targets.reshape(-1), ignore_index=-1)

    return adamw_reference(loss_fn, leaves, lr, wd, steps)


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


def run_case(tmp, case):
    name, variant, rank, alpha, rslora, packed, recompute, wd = case
    work = os.path.join(tmp, name.replace("+", "_"))
    os.makedirs(os.path.join(work, "adapter"))
    cfg, params = llama_models.make_random_model(os.path.join(work, "model"), variant, seed=3)
    config, lora = make_adapter(cfg, params, rank, alpha, rslora, seed=5)
    with open(os.path.join(work, "adapter", "adapter_config.json"), "w") as f:
        json.dump(config, f)
    write_safetensors(os.path.join(work, "adapter", "adapter_model.safetensors"), lora, {"format": "pt"})
    g = torch.Generator().manual_seed(9)
    B, T, V = 2, 12, cfg["vocab_size"]
    ids = torch.randint(0, V, (B, T), generator=g)
    targets = torch.randint(0, V, (B, T), generator=g)
    targets[0, :3] = -1  # prompt tokens carry no loss
    pos = None
    if packed:  # row 1 holds two examples of 7 and 5 tokens
        pos = torch.stack([torch.arange(T), torch.cat([torch.arange(7), torch.arange(5)])])
        targets[1, 6] = -1
    batch = {"ids": ids.int(), "targets": targets.int()}
    if pos is not None:
        batch["pos"] = pos.int()
    write_safetensors(os.path.join(work, "batch.safetensors"), batch)
    lr, steps = 1e-2, 3
    env = dict(os.environ, PEFT_DRIVER_TRAIN=work, PEFT_DRIVER_LR=str(lr), PEFT_DRIVER_WD=str(wd),
               PEFT_DRIVER_STEPS=str(steps), PEFT_DRIVER_RECOMPUTE="1" if recompute else "0")
    r = subprocess.run([DRIVER], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        print(f"{name}: driver failed: {r.stderr}")
        return False
    out = read_safetensors(os.path.join(work, "out.safetensors"))
    ref_loss, ref_grads, ref_final, ref_losses = torch_reference(cfg, params, config, lora, ids, targets, pos, wd, lr, steps)
    loss_err = abs(out["loss"].item() - ref_loss) / abs(ref_loss)
    grad_err = max(rel(out[f"grad.{k}"], v) for k, v in ref_grads.items())
    final_err = max(rel(out[f"final.{k}"], v) for k, v in ref_final.items())
    steps_err = max(abs(a - b) / abs(b) for a, b in zip(out["losses"].tolist(), ref_losses))
    ok = loss_err <= TOL and grad_err <= TOL and final_err <= TOL and steps_err <= TOL
    print(f"{name:20s} tensors {len(ref_grads):3d}  loss {loss_err:.1e}  grads {grad_err:.1e}  "
          f"after {steps} AdamW steps {final_err:.1e}  step losses {steps_err:.1e}  {'ok' if ok else 'FAIL'}")
    return ok


def main():
    if not os.path.exists(DRIVER):
        print(f"FAIL: driver {DRIVER} not built")
        return 1
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        results = [run_case(tmp, c) for c in CASES]
    passed = sum(results)
    print(f"{passed} passed, {len(results) - passed} failed")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
