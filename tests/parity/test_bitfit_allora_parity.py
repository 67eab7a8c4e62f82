"""BitFit and ALLoRA training parity with PyTorch through whole random Llama-family models.

1. BitFit (peft.c's own peft_type "BITFIT"): y = x W^T + b + b' at every linear layer, b' =
   "<site>.bitfit_bias" [out]. tests/drivers/driver_train.c loads the adapter; its loss, every
   gradient and the parameters after 3 AdamW steps match torch (torch.optim.AdamW) within 1e-4
   relative, on GQA, Qwen2 biases + packed rows, and tied embeddings + recompute + weight decay.
2. ALLoRA (Huang & Balestriero, 2024): LoRA with scale 1 (alpha = r) and no dropout, trained by
   AdamW whose learning rate for row i of each parameter is lr / sqrt(||theta_i||^2 + 1/eta^2)
   (norm before the update; decay uses the same rate). tests/unit/test_optim.c, run as a driver
   (PEFT_OPTIM_DRIVER), takes 3 ALLoRA steps; the parameters and step losses match a torch
   implementation of that rule within 1e-4. The torch rule is itself checked: with the row
   factor forced to 1 it reproduces torch.optim.AdamW.
3. `peft train --allora` writes a LoRA adapter with lora_alpha = r, no dropout, no rsLoRA, and
   refuses --alpha/--dropout/--rslora; `peft train --method bitfit` writes peft_type BITFIT with
   one [out] bias per site, and `peft merge` of it onto a model without biases is refused.
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
import llama_models as mp  # noqa: E402  (also puts tools/ on sys.path)
import llama_models  # noqa: E402
import torch_llama as tl  # noqa: E402
from safetensors_io import read_safetensors, write_safetensors  # noqa: E402

TOL = 1e-4
OPTIM_DRIVER = os.path.join(mp.BUILD, "test_optim")
F = torch.nn.functional


# ---------------------------------------------------------------- shared pieces
def write_adapter(work, config, tensors):
    os.makedirs(os.path.join(work, "adapter"), exist_ok=True)
    with open(os.path.join(work, "adapter", "adapter_config.json"), "w") as f:
        json.dump(config, f)
    write_safetensors(os.path.join(work, "adapter", "adapter_model.safetensors"), tensors, {"format": "pt"})


def loss_of(cfg, params, hook, ids, targets, pos):
    logits = tl.forward(cfg, params, ids, position_ids=pos, linear_hook=hook)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-1)


def bitfit_hook(leaves):
    def hook(name, x, W, b):
        y = F.linear(x, W, b)
        key = f"base_model.model.{name}.bitfit_bias"
        return y + leaves[key] if key in leaves else y
    return hook


def lora_hook(leaves):  # ALLoRA's LoRA: scale 1, no dropout
    def hook(name, x, W, b):
        y = F.linear(x, W, b)
        key = f"base_model.model.{name}"
        if key + ".lora_A.weight" in leaves:
            y = y + (x @ leaves[key + ".lora_A.weight"].t()) @ leaves[key + ".lora_B.weight"].t()
        return y
    return hook


# ---------------------------------------------------------------- 1. BitFit
BITFIT_CASES = [
    # name, variant, packed, recompute, weight_decay
    ("bitfit-gqa", "llama_gqa", False, False, 0.0),
    ("bitfit-qwen2-bias+packed", "qwen2_bias", True, False, 0.0),
    ("bitfit-tied+recompute+wd", "llama_mha_tied", False, True, 0.1),
]


def bitfit_case(tmp, case):
    name, variant, packed, recompute, wd = case
    work = os.path.join(tmp, name.replace("+", "_"))
    cfg, params = llama_models.make_random_model(os.path.join(work, "model"), variant, seed=3)
    g = torch.Generator().manual_seed(5)
    tensors = {f"base_model.model.{mod}.bitfit_bias": 0.05 * torch.randn(w.shape[0], generator=g)
               for mod, w in mp.site_modules(params)}
    config = {"peft_type": "BITFIT", "task_type": "CAUSAL_LM", "target_modules": mp.SITES, "bias": "none",
              "fan_in_fan_out": False, "base_model_name_or_path": "random"}
    write_adapter(work, config, tensors)
    ids, targets, pos = mp.write_batch(work, cfg, packed)
    lr, steps = 1e-2, 3
    out, msg = mp.run_driver(work, lr, wd, steps, recompute)
    if out is None:
        print(f"{name}: driver failed: {msg}")
        return False
    leaves = {k: v.clone().requires_grad_(True) for k, v in tensors.items()}
    hook = bitfit_hook(leaves)
    loss, grads, _, losses = llama_models.adamw_reference(lambda: loss_of(cfg, params, hook, ids, targets, pos), leaves,
                                                          lr, wd, steps)
    if sorted(k[5:] for k in out if k.startswith("grad.")) != sorted(grads):
        print(f"{name}: peft.c's trainable tensors differ from the reference's")
        return False
    loss_err = abs(out["loss"].item() - loss) / abs(loss)
    grad_err = max(mp.rel(out[f"grad.{k}"], v) for k, v in grads.items())
    # Adam moves every coordinate by about lr whatever its gradient's size, so where the gradient
    # is float noise the two trajectories part. k_proj's bias is such a place: softmax ignores
    # q.b' for all keys alike, and RoPE only partly breaks that, so some of its coordinates have
    # gradients ~1e-7 of the tensor's largest (and agree only to ~1%). Those coordinates (below
    # 1e-3 of their tensor's largest gradient) are left out of the trajectory comparison.
    final_err, skipped, total = 0.0, 0, 0
    for k, v in leaves.items():
        keep = grads[k].abs() >= 1e-3 * grads[k].abs().max()
        skipped, total = skipped + int((~keep).sum()), total + keep.numel()
        final_err = max(final_err, mp.rel(out[f"final.{k}"][keep], v.detach()[keep]))
    steps_err = max(abs(a - b) / abs(b) for a, b in zip(out["losses"].tolist(), losses))
    ok = max(loss_err, grad_err, final_err, steps_err) <= TOL and skipped <= 0.05 * total
    print(f"{name:26s} tensors {len(grads):3d}  loss {loss_err:.1e}  grads {grad_err:.1e}  after {steps} AdamW steps "
          f"{final_err:.1e} ({skipped}/{total} noise-gradient coordinates left out)  step losses {steps_err:.1e}  "
          f"{'ok' if ok else 'FAIL'}")
    return ok


# ---------------------------------------------------------------- 2. ALLoRA
def adamw_rows(leaves, state, lr, wd, eta, t, b1=0.9, b2=0.999, eps=1e-8):
    """One AdamW update (torch.optim.AdamW's single-tensor formula) with learning rate
    lr * row_factor per row: ALLoRA's 1 / sqrt(||row||^2 + 1/eta^2), or 1 with eta None."""
    with torch.no_grad():
        for k, p in leaves.items():
            m, v = state.setdefault(k, (torch.zeros_like(p), torch.zeros_like(p)))
            rows = p.reshape(p.shape[0], -1) if p.dim() >= 2 else p.reshape(1, -1)
            if eta is None:
                f = torch.ones(rows.shape[0], 1)
            else:
                f = 1.0 / torch.sqrt((rows.double() ** 2).sum(1, keepdim=True) + 1.0 / eta ** 2).float()
            lr_row = (lr * f).reshape((-1,) + (1,) * (p.dim() - 1)) if p.dim() >= 2 else lr * f.reshape(())
            g = p.grad
            p.mul_(1 - lr_row * wd)
            m.lerp_(g, 1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            bc1, bc2 = 1 - b1 ** t, 1 - b2 ** t
            denom = (v.sqrt() / bc2 ** 0.5).add_(eps)
            p.sub_(lr_row / bc1 * m / denom)


def allora_reference(cfg, params, tensors, ids, targets, pos, lr, wd, eta, steps):
    leaves = {k: v.clone().requires_grad_(True) for k, v in tensors.items()}
    hook, state, losses = lora_hook(leaves), {}, []
    for t in range(1, steps + 1):
        for p in leaves.values():
            p.grad = None
        l = loss_of(cfg, params, hook, ids, targets, pos)
        losses.append(l.item())
        l.backward()
        adamw_rows(leaves, state, lr, wd, eta, t)
    return {k: v.detach() for k, v in leaves.items()}, losses


def check_reference_is_adamw():
    """With the row factor at 1, adamw_rows is torch.optim.AdamW (so the ALLoRA rule differs from
    it only by the factor)."""
    g = torch.Generator().manual_seed(1)
    a = {"w": torch.randn(5, 3, generator=g).requires_grad_(True), "b": torch.randn(4, generator=g).requires_grad_(True)}
    b = {k: v.detach().clone().requires_grad_(True) for k, v in a.items()}
    opt = torch.optim.AdamW(b.values(), lr=0.05, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)
    state = {}
    for t in range(1, 4):
        grads = {k: torch.randn(v.shape, generator=g) for k, v in a.items()}
        for k in a:
            a[k].grad, b[k].grad = grads[k].clone(), grads[k].clone()
        adamw_rows(a, state, 0.05, 0.1, None, t)
        opt.step()
    err = max(mp.rel(a[k].detach(), b[k].detach()) for k in a)
    ok = err <= 1e-6
    print(f"reference AdamW rule vs torch.optim.AdamW (3 steps): {err:.1e}  {'ok' if ok else 'FAIL'}")
    return ok


ALLORA_CASES = [
    # name, variant, rank, eta, zero_B, packed, weight_decay
    ("allora-gqa-eta2", "llama_gqa", 4, 2.0, False, False, 0.0),
    ("allora-qwen2-B0-eta4+packed", "qwen2_bias", 4, 4.0, True, True, 0.0),
    ("allora-tied-eta0.5+wd", "llama_mha_tied", 2, 0.5, False, False, 0.1),
]


def allora_case(tmp, case):
    name, variant, rank, eta, zero_b, packed, wd = case
    work = os.path.join(tmp, name.replace("+", "_"))
    cfg, params = llama_models.make_random_model(os.path.join(work, "model"), variant, seed=3)
    config, tensors = llama_models.make_adapter(cfg, params, rank, rank, False, seed=5)  # alpha = r: scale 1
    if zero_b:  # as training starts: B = 0, whose rows move with lr * eta
        tensors = {k: torch.zeros_like(v) if "lora_B" in k else v for k, v in tensors.items()}
    write_adapter(work, config, tensors)
    ids, targets, pos = mp.write_batch(work, cfg, packed)
    lr, steps = 1e-2, 3
    env = dict(os.environ, PEFT_OPTIM_DRIVER=work, PEFT_DRIVER_LR=str(lr), PEFT_DRIVER_WD=str(wd),
               PEFT_DRIVER_STEPS=str(steps), PEFT_ALLORA_ETA=str(eta))
    r = subprocess.run([OPTIM_DRIVER], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        print(f"{name}: driver failed: {r.stderr[-500:]}")
        return False
    out = read_safetensors(os.path.join(work, "out.safetensors"))
    final, losses = allora_reference(cfg, params, tensors, ids, targets, pos, lr, wd, eta, steps)
    plain, _ = allora_reference(cfg, params, tensors, ids, targets, pos, lr, wd, None, steps)
    if sorted(k[6:] for k in out if k.startswith("final.")) != sorted(final):
        print(f"{name}: peft.c's trainable tensors differ from the reference's")
        return False
    final_err = max(mp.rel(out[f"final.{k}"], v) for k, v in final.items())
    steps_err = max(abs(a - b) / abs(b) for a, b in zip(out["losses"].tolist(), losses))
    # the rule must matter: ALLoRA's parameters are far from plain AdamW's
    apart = max(mp.rel(final[k], plain[k]) for k in final)
    ok = final_err <= TOL and steps_err <= TOL and apart > 100 * TOL
    print(f"{name:30s} tensors {len(final):3d}  after {steps} ALLoRA steps {final_err:.1e}  step losses {steps_err:.1e}  "
          f"(vs plain AdamW {apart:.1e})  {'ok' if ok else 'FAIL'}")
    return ok


# ---------------------------------------------------------------- 3. files and options of `peft train`
def cli_checks(tmp):
    demo = os.path.abspath(os.path.join(mp.SRC, "models", "demo"))
    if not os.path.exists(os.path.join(demo, "model.safetensors")) or not os.path.exists(mp.PEFT_BIN):
        print("cli: SKIP (no models/demo or peft binary)")
        return [True]
    work = os.path.join(tmp, "cli")
    os.makedirs(work)
    data = os.path.join(work, "data.jsonl")
    with open(data, "w") as f:
        for i in range(24):
            f.write(json.dumps({"prompt": f"Echo: word{i % 5}\nAnswer:", "completion": f" word{i % 5}\n"}) + "\n")
    base = [mp.PEFT_BIN, "train", "--model", demo, "--data", data, "--target", ",".join(mp.SITES), "--steps", "2",
            "--batch", "2", "--seq-len", "16", "--no-pack", "--no-progress", "--lr", "1e-2", "--seed", "7"]
    results = []

    adir = os.path.join(work, "allora")
    r = subprocess.run(base + ["--out", adir, "--allora", "--allora-eta", "3", "--rank", "4", "--rank-pattern", "q_proj=2"],
                       capture_output=True, text=True)
    problems = [] if r.returncode == 0 else [f"exit {r.returncode}: {r.stderr[-300:]}"]
    if r.returncode == 0:
        conf = json.load(open(os.path.join(adir, "adapter_config.json")))
        want = {"peft_type": "LORA", "r": 4, "lora_alpha": 4, "lora_dropout": 0.0, "use_rslora": False, "use_dora": False,
                "rank_pattern": {"q_proj": 2}, "alpha_pattern": {"q_proj": 2}}
        problems += [f"{k} = {conf.get(k)!r}, want {v!r}" for k, v in want.items() if conf.get(k) != v]
    for extra in (["--alpha", "8"], ["--dropout", "0.1"], ["--rslora"], ["--method", "dora"]):
        r = subprocess.run(base + ["--out", os.path.join(work, "bad"), "--allora"] + extra, capture_output=True, text=True)
        if r.returncode != 2 or "--allora" not in r.stderr:
            problems.append(f"--allora {' '.join(extra)}: exit {r.returncode}, want 2 with a message")
    print(f"cli --allora: {'ok' if not problems else 'FAIL: ' + '; '.join(problems[:4])}")
    results.append(not problems)

    bdir = os.path.join(work, "bitfit")
    r = subprocess.run(base + ["--out", bdir, "--method", "bitfit"], capture_output=True, text=True)
    problems = [] if r.returncode == 0 else [f"exit {r.returncode}: {r.stderr[-300:]}"]
    if r.returncode == 0:
        conf = json.load(open(os.path.join(bdir, "adapter_config.json")))
        if conf.get("peft_type") != "BITFIT" or sorted(conf.get("target_modules") or []) != sorted(mp.SITES):
            problems.append(f"config {conf}")
        tensors = read_safetensors(os.path.join(bdir, "adapter_model.safetensors"))
        want = {f"base_model.model.{mod}.bitfit_bias": [w.shape[0]] for mod, w in mp.site_modules(tl.load_params(demo))}
        got = {k: list(v.shape) for k, v in tensors.items()}
        if got != want:
            problems.append(f"keys/shapes differ: {sorted(set(got) ^ set(want))[:3]}")
        if all(v.abs().max().item() == 0 for v in tensors.values()):
            problems.append("training left every bias at 0")
        # the demo model (Llama) has no biases: merging must be refused, with the reason
        r = subprocess.run([mp.PEFT_BIN, "merge", "--model", demo, "--adapter", bdir, "--out", os.path.join(work, "merged")],
                           capture_output=True, text=True)
        if r.returncode == 0 or "no bias" not in (r.stderr + r.stdout):
            problems.append(f"peft merge: exit {r.returncode}, {r.stderr[-200:]!r}")
    print(f"cli --method bitfit: {'ok' if not problems else 'FAIL: ' + '; '.join(problems[:4])}")
    results.append(not problems)
    return results


def main():
    for exe in (mp.DRIVER, OPTIM_DRIVER):
        if not os.path.exists(exe):
            print(f"FAIL: driver {exe} not built")
            return 1
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        results = [bitfit_case(tmp, c) for c in BITFIT_CASES]
        results.append(check_reference_is_adamw())
        results += [allora_case(tmp, c) for c in ALLORA_CASES]
        results += cli_checks(tmp)
    passed = sum(results)
    print(f"{passed} passed, {len(results) - passed} failed")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
