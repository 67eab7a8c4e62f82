"""LayerNorm tuning (PEFT LN_TUNING) parity with PyTorch: the norm weights are the only
trained tensors; peft.c's loss, their gradients and their values after 3 AdamW steps must
match PyTorch's within 1e-4 relative."""
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

CASES = [("gqa", "llama_gqa", False, 0.0), ("tied+packed+wd", "llama_mha_tied", True, 0.1)]


def run_case(tmp, case):
    name, variant, packed, wd = case
    work = os.path.join(tmp, name.replace("+", "_"))
    os.makedirs(os.path.join(work, "adapter"))
    cfg, params = llama_models.make_random_model(os.path.join(work, "model"), variant, seed=4)
    g = torch.Generator().manual_seed(6)
    norms = [k for k in params if k.endswith("layernorm.weight") or k == "model.norm.weight"]
    tuned = {f"base_model.model.{k[:-len('.weight')]}.ln_tuning_layers.weight": params[k] + 0.1 * torch.randn(params[k].shape, generator=g)
             for k in norms}
    with open(os.path.join(work, "adapter", "adapter_config.json"), "w") as f:
        json.dump({"peft_type": "LN_TUNING", "task_type": "CAUSAL_LM", "base_model_name_or_path": "random",
                   "target_modules": ["input_layernorm", "post_attention_layernorm", "norm"]}, f)
    write_safetensors(os.path.join(work, "adapter", "adapter_model.safetensors"), tuned, {"format": "pt"})
    B, T, V = 2, 12, cfg["vocab_size"]
    ids = torch.randint(0, V, (B, T), generator=g)
    targets = torch.randint(0, V, (B, T), generator=g)
    batch = {"ids": ids.int(), "targets": targets.int()}
    pos = None
    if packed:
        pos = torch.stack([torch.arange(T), torch.cat([torch.arange(5), torch.arange(7)])])
        targets[1, 4] = -1
        batch = {"ids": ids.int(), "targets": targets.int(), "pos": pos.int()}
    write_safetensors(os.path.join(work, "batch.safetensors"), batch)
    lr, steps = 1e-2, 3
    env = dict(os.environ, PEFT_DRIVER_TRAIN=work, PEFT_DRIVER_LR=str(lr), PEFT_DRIVER_WD=str(wd), PEFT_DRIVER_STEPS=str(steps))
    r = subprocess.run([DRIVER], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        print(f"{name}: driver failed: {r.stderr}")
        return False
    out = read_safetensors(os.path.join(work, "out.safetensors"))
    leaves = {k: v.clone().requires_grad_(True) for k, v in tuned.items()}

    def loss_fn():
        p = dict(params)
        for k in norms:
            p[k] = leaves[f"base_model.model.{k[:-len('.weight')]}.ln_tuning_layers.weight"]
        logits = tl.forward(cfg, p, ids, position_ids=pos)
        return torch.nn.functional.cross_entropy(logits.reshape(-1, V), targets.reshape(-1), ignore_index=-1)

    loss, grads, final, _ = adamw_reference(loss_fn, leaves, lr, wd, steps)
    loss_err = abs(out["loss"].item() - loss) / abs(loss)
    grad_err = max(rel(out[f"grad.{k}"], v) for k, v in grads.items())
    final_err = max(rel(out[f"final.{k}"], v) for k, v in final.items())
    ok = loss_err <= TOL and grad_err <= TOL and final_err <= TOL
    print(f"{name:16s} norms {len(norms)}  loss {loss_err:.1e}  grads {grad_err:.1e}  after {steps} AdamW steps {final_err:.1e}  "
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
