"""PiSSA / CorDA / singular-value tuning / SaRA training parity with PyTorch, and the SVD wrapper
against numpy.

1. svd_f32 (src/kernels/linalg.c, through tests/unit/test_linalg.c's driver mode) against
   numpy.linalg.svd: singular values within 1e-5 relative, singular vectors equal up to sign,
   for tall, wide and square matrices.
2. Parity, with the helpers of tests/parity/llama_models.py: random
   Llama-family models with the method on every linear layer; the adapter is written here in
   peft.c's format, loaded by tests/drivers/driver_train.c; the loss, every gradient and the
   parameters after 3 AdamW steps match a float64-initialised PyTorch reference within 1e-4:
     pissa      W_res = W - U_r S_r Vt_r (SVD of W);  y = x W_res^T + b + s (x A^T) B^T
     corda_ipm  W_res = W - U_r S_r V'_r^T, SVD of W C_fix = U S Vh, V'^T = Vh C_fix^-1 (largest r)
     corda_kpm  the same with the smallest r components (C given to the driver in covariance.safetensors)
     svft       y = x W^T + b + ((x Vt^T) * dS) U^T            (W = U S Vt)
     sara       y = x (W + D)^T + b, D zero but at the k smallest |W| entries (ties: lower index)
   The "init" cases write PEFT's own PiSSA initialisation (torch's float32 SVD, A = sqrt(S_r/s)
   Vt_r, B = U_r sqrt(S_r/s)) and check that the model then computes the base model's loss.
"""
import json
import math
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import llama_models as mp  # noqa: E402  (exits 77 when torch is missing)
from llama_models import adamw_reference  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

llama_models, tl = mp, mp.tl
from safetensors_io import read_safetensors, write_safetensors  # noqa: E402

TOL = mp.TOL
SITES = mp.SITES
LINALG = os.path.join(mp.BUILD, "test_linalg")

CASES = [
    # name, method, variant, packed, recompute, weight_decay, options
    ("pissa-init-gqa", "pissa", "llama_gqa", False, False, 0.0, {"init": True}),
    ("pissa-qwen2-bias+packed", "pissa", "qwen2_bias", True, False, 0.0, {}),
    ("pissa-rslora-tied+recompute+wd", "pissa", "llama_mha_tied", False, True, 0.1, {"rslora": True}),
    ("corda_ipm-gqa", "corda_ipm", "llama_gqa", False, False, 0.0, {}),
    ("corda_kpm-qwen2-bias+packed", "corda_kpm", "qwen2_bias", True, False, 0.0, {}),
    ("corda_kpm-tied+recompute+wd", "corda_kpm", "llama_mha_tied", False, True, 0.1, {}),
    ("svft-gqa", "svft", "llama_gqa", False, False, 0.0, {}),
    ("svft-qwen2-bias+packed", "svft", "qwen2_bias", True, False, 0.0, {}),
    ("svft-tied+recompute+wd", "svft", "llama_mha_tied", False, True, 0.1, {}),
    ("sara-gqa", "sara", "llama_gqa", False, False, 0.0, {}),
    ("sara-qwen2-bias+packed", "sara", "qwen2_bias", True, False, 0.0, {}),
    ("sara-tied+recompute+wd", "sara", "llama_mha_tied", False, True, 0.1, {}),
]
RANK, ALPHA, FRACTION = 4, 8, 0.05


# ---------------------------------------------------------------- the SVD wrapper vs numpy
def check_svd(tmp):
    if not os.path.exists(LINALG):
        print(f"FAIL: {LINALG} not built")
        return False
    ok = True
    rng = np.random.default_rng(0)
    for m, n in [(48, 20), (20, 48), (33, 33), (160, 64)]:
        d = os.path.join(tmp, f"svd_{m}x{n}")
        os.makedirs(d)
        A = rng.standard_normal((m, n)).astype(np.float32)
        write_safetensors(os.path.join(d, "in.safetensors"), {"A": torch.from_numpy(A)})
        r = subprocess.run([LINALG], env=dict(os.environ, PEFT_LINALG_SVD=d), capture_output=True, text=True)
        if r.returncode != 0:
            print(f"svd {m}x{n}: driver failed: {r.stderr}")
            return False
        out = read_safetensors(os.path.join(d, "out.safetensors"))
        U, S, Vt = (out[k].double().numpy() for k in ("U", "S", "Vt"))
        Un, Sn, Vtn = np.linalg.svd(A.astype(np.float64), full_matrices=False)
        s_err = np.abs(S - Sn).max() / Sn.max()
        sign = np.sign(np.sum(U * Un, axis=0))  # per component: +1 or -1
        u_err = np.abs(U * sign - Un).max()
        v_err = np.abs(Vt * sign[:, None] - Vtn).max()
        rec = np.abs((U * S) @ Vt - A).max() / np.abs(A).max()
        good = s_err < 1e-5 and u_err < 1e-4 and v_err < 1e-4 and rec < 1e-5
        ok &= good
        print(f"svd {m:3d} x {n:<3d} vs numpy.linalg.svd: S {s_err:.1e}  U {u_err:.1e}  Vt {v_err:.1e}  "
              f"reconstruction {rec:.1e}  {'ok' if good else 'FAIL'}")
    return ok


# ---------------------------------------------------------------- what the C side derives from W
def scale_of(rslora):
    return ALPHA / (math.sqrt(RANK) if rslora else RANK)


def damped(C):
    """PEFT's collect_eigens_for_layer: C + damp * mean(diag C) I, damp doubled until it inverts."""
    damp = 0.01
    eye = torch.eye(C.shape[0], dtype=C.dtype)
    while True:
        Cf = C + eye * torch.mean(torch.diag(C)) * damp
        Ci = torch.linalg.inv(Cf)
        if torch.dist(Cf @ Ci, eye).item() < 0.05:
            return Cf, Ci
        damp *= 2


def residual(method, W, C=None):
    """W_res (float32) with the chosen part computed in float64."""
    Wd = W.double()
    if method == "pissa":
        U, S, Vh = torch.linalg.svd(Wd, full_matrices=False)
    else:
        Cf, Ci = damped(C.double())
        U, S, Vh = torch.linalg.svd(Wd @ Cf, full_matrices=False)
        Vh = Vh @ Ci
    sel = slice(-RANK, None) if method == "corda_kpm" else slice(0, RANK)
    return (Wd - (U[:, sel] * S[sel]) @ Vh[sel]).float()


def sara_indices(W):
    a = W.abs().flatten().numpy()
    n = a.size
    k = max(1, int(math.floor(FRACTION * n + 0.5)))
    order = np.lexsort((np.arange(n), a))  # by |w|, then index
    return torch.from_numpy(np.sort(order[:k]).astype(np.int64))


# ---------------------------------------------------------------- adapters in peft.c's format
def make_adapter(method, params, g, opts):
    mods = mp.site_modules(params)
    t, extra = {}, {}
    common = {"task_type": "CAUSAL_LM", "target_modules": SITES, "bias": "none", "fan_in_fan_out": False,
              "base_model_name_or_path": "random"}
    if method in ("pissa", "corda_ipm", "corda_kpm"):
        rslora = opts.get("rslora", False)
        s = scale_of(rslora)
        config = {**common, "peft_type": "LORA", "r": RANK, "lora_alpha": ALPHA, "use_rslora": rslora, "use_dora": False,
                  "lora_dropout": 0.0, "init_lora_weights": "pissa" if method == "pissa" else "corda"}
        if method != "pissa":
            config["corda_config"] = {"corda_method": method[-3:]}
            for mod, w in mods:  # a correlated calibration set per site
                X = torch.randn(96, w.shape[1], generator=g) @ (torch.eye(w.shape[1]) + 0.3 * torch.randn(w.shape[1], w.shape[1], generator=g))
                extra[mod] = X.t() @ X / 96
        for mod, w in mods:
            p = f"base_model.model.{mod}"
            if opts.get("init"):  # PEFT's pissa_init, float32
                V, S, Uh = torch.linalg.svd(w, full_matrices=False)
                Sr = S[:RANK] / s
                t[p + ".lora_A.weight"] = torch.diag(torch.sqrt(Sr)) @ Uh[:RANK]
                t[p + ".lora_B.weight"] = V[:, :RANK] @ torch.diag(torch.sqrt(Sr))
            else:  # as if trained for a while
                t[p + ".lora_A.weight"] = (torch.rand(RANK, w.shape[1], generator=g) * 2 - 1) / math.sqrt(w.shape[1])
                t[p + ".lora_B.weight"] = torch.randn(w.shape[0], RANK, generator=g) * 0.05
    elif method == "svft":
        config = {**common, "peft_type": "SVFT", "svft_dropout": 0.0, "init_weights": True}
        for mod, w in mods:
            t[f"base_model.model.{mod}.svft_delta_s"] = 0.1 * torch.randn(min(w.shape), generator=g)
    else:
        config = {**common, "peft_type": "SARA", "sara_dropout": 0.0, "trainable_fraction": FRACTION}
        for mod, w in mods:
            t[f"base_model.model.{mod}.sara_delta"] = 0.02 * torch.randn(len(sara_indices(w)), generator=g)
    return config, t, extra


def make_hook(method, config, leaves, params, cov):
    frozen = {}
    for mod, w in mp.site_modules(params):
        if method in ("pissa", "corda_ipm", "corda_kpm"):
            frozen[mod] = residual(method, w, cov.get(mod))
        elif method == "svft":
            U, S, Vh = torch.linalg.svd(w.double(), full_matrices=False)
            frozen[mod] = (U.float(), Vh.float())
        else:
            frozen[mod] = sara_indices(w)
    F = torch.nn.functional

    def hook(name, x, W, b):
        key = f"base_model.model.{name}"
        if name not in frozen:
            return F.linear(x, W, b)
        if method in ("pissa", "corda_ipm", "corda_kpm"):
            s = config["lora_alpha"] / (math.sqrt(config["r"]) if config.get("use_rslora") else config["r"])
            A, B = leaves[key + ".lora_A.weight"], leaves[key + ".lora_B.weight"]
            return F.linear(x, frozen[name], b) + s * ((x @ A.t()) @ B.t())
        if method == "svft":
            U, Vh = frozen[name]
            return F.linear(x, W, b) + ((x @ Vh.t()) * leaves[key + ".svft_delta_s"]) @ U.t()
        D = torch.zeros(W.numel(), dtype=W.dtype).scatter(0, frozen[name], leaves[key + ".sara_delta"])
        return F.linear(x, W + D.view_as(W), b)
    return hook


def torch_reference(method, cfg, params, config, tensors, cov, ids, targets, pos, wd, lr, steps):
    leaves = {k: v.clone().requires_grad_(True) for k, v in tensors.items()}
    hook = make_hook(method, config, leaves, params, cov)

    def loss_fn(h):
        logits = tl.forward(cfg, params, ids, position_ids=pos, linear_hook=h)
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-1)

    with torch.no_grad():
        base_loss = loss_fn(None).item()
    loss, grads, final, losses = adamw_reference(lambda: loss_fn(hook), leaves, lr, wd, steps)
    return loss, base_loss, grads, final, losses


def run_case(tmp, case):
    name, method, variant, packed, recompute, wd, opts = case
    work = os.path.join(tmp, name.replace("+", "_"))
    os.makedirs(os.path.join(work, "adapter"))
    cfg, params = llama_models.make_random_model(os.path.join(work, "model"), variant, seed=3)
    config, tensors, cov = make_adapter(method, params, torch.Generator().manual_seed(5), opts)
    with open(os.path.join(work, "adapter", "adapter_config.json"), "w") as f:
        json.dump(config, f)
    write_safetensors(os.path.join(work, "adapter", "adapter_model.safetensors"), tensors, {"format": "pt"})
    if cov:  # the calibration covariances, read by the driver
        write_safetensors(os.path.join(work, "covariance.safetensors"), {k: v.contiguous() for k, v in cov.items()})
    ids, targets, pos = mp.write_batch(work, cfg, packed)
    lr, steps = 1e-2, 3
    out, msg = mp.run_driver(work, lr, wd, steps, recompute)
    if out is None:
        print(f"{name}: driver failed: {msg}")
        return False
    ref_loss, base_loss, ref_grads, ref_final, ref_losses = torch_reference(method, cfg, params, config, tensors, cov, ids,
                                                                            targets, pos, wd, lr, steps)
    if sorted(k[5:] for k in out if k.startswith("grad.")) != sorted(ref_grads):
        print(f"{name}: peft.c's trainable tensors differ from the reference's")
        return False
    loss_err = abs(out["loss"].item() - ref_loss) / abs(ref_loss)
    grad_err = max(mp.rel(out[f"grad.{k}"], v) for k, v in ref_grads.items())
    final_err = max(mp.rel(out[f"final.{k}"], v) for k, v in ref_final.items())
    steps_err = max(abs(a - b) / abs(b) for a, b in zip(out["losses"].tolist(), ref_losses))
    ok = loss_err <= TOL and grad_err <= TOL and final_err <= TOL and steps_err <= TOL
    extra = ""
    if opts.get("init"):  # PiSSA's init leaves the function unchanged
        init_err = abs(out["loss"].item() - base_loss) / abs(base_loss)
        ok &= init_err <= TOL
        extra = f"  init vs base loss {init_err:.1e}"
    print(f"{name:32s} tensors {len(ref_grads):3d}  loss {loss_err:.1e}  grads {grad_err:.1e}  "
          f"after {steps} AdamW steps {final_err:.1e}  step losses {steps_err:.1e}{extra}  {'ok' if ok else 'FAIL'}")
    return ok


def main():
    if not os.path.exists(mp.DRIVER):
        print(f"FAIL: driver {mp.DRIVER} not built")
        return 1
    torch.manual_seed(0)
    only = sys.argv[1:]
    with tempfile.TemporaryDirectory() as tmp:
        results = [] if only and "svd" not in only else [check_svd(tmp)]
        results += [run_case(tmp, c) for c in CASES if not only or c[1] in only]
    passed = sum(results)
    print(f"{passed} passed, {len(results) - passed} failed")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
