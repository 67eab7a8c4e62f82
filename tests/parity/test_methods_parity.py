"""DoRA / IA3 / VeRA training parity with PyTorch, and PEFT's file format for each.

1. Parity: for random Llama-family models (GQA, tied embeddings, Qwen2 biases, packed sequences,
   gradient checkpointing) with the method on every linear layer, peft.c's loss, every
   parameter gradient, and the parameters after 3 AdamW steps (tests/drivers/driver_train.c
   loads the PEFT-format adapter written here) match a PyTorch reference written from PEFT's
   formulas (tools/torch_llama.py's linear_hook) within 1e-4 relative (max |a-b| / max |b|):
     DoRA  y = xW^T + b + (f - 1) xW^T + f s (x A^T) B^T,  f = m / ||W + s B A||_row (detached)
     IA3   y = (xW^T + b) * l        (l [out, 1]);   y = (x * l) W^T + b  (feedforward, l [1, in])
     VeRA  y = xW^T + b + lb * ((ld * (x A[:, :in]^T)) B[:out]^T)
2. Format: `peft train --method M` on the demo model writes adapter_config.json with PEFT's
   fields and adapter_model.safetensors with PEFT's keys and shapes (and nothing else); that
   adapter, loaded by another process (the driver), gives the loss torch computes from the
   file's own tensors.
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
SRC = os.environ.get("PEFT_SRC", os.path.dirname(os.path.dirname(HERE)))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(SRC, "tools"))
import llama_models  # noqa: E402
import torch_llama as tl  # noqa: E402
from test_lora_parity import adamw_reference  # noqa: E402
from safetensors_io import read_safetensors, write_safetensors  # noqa: E402

TOL = 1e-4
BUILD = os.environ.get("PEFT_BUILD", "build")
DRIVER = os.path.join(BUILD, "driver_train")
PEFT_BIN = os.path.abspath(os.environ.get("PEFT_BIN", os.path.join(BUILD, "peft")))
SITES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

CASES = [
    # name, method, variant, packed, recompute, weight_decay
    ("dora-gqa", "dora", "llama_gqa", False, False, 0.0),
    ("dora-qwen2-bias+packed", "dora", "qwen2_bias", True, False, 0.0),
    ("dora-tied+recompute+wd", "dora", "llama_mha_tied", False, True, 0.1),
    ("ia3-gqa", "ia3", "llama_gqa", False, False, 0.0),
    ("ia3-qwen2-bias+packed", "ia3", "qwen2_bias", True, False, 0.0),
    ("ia3-tied+recompute+wd", "ia3", "llama_mha_tied", False, True, 0.1),
    ("vera-gqa", "vera", "llama_gqa", False, False, 0.0),
    ("vera-qwen2-bias+packed", "vera", "qwen2_bias", True, False, 0.0),
    ("vera-tied+recompute+wd", "vera", "llama_mha_tied", False, True, 0.1),
]


def rel(a, b):
    return (a - b).abs().max().item() / max(b.abs().max().item(), 1e-30)


def site_modules(params):
    """(module name, W) of every targeted linear layer."""
    out = []
    for name, w in params.items():
        if name.endswith(".weight") and name[: -len(".weight")].split(".")[-1] in SITES:
            out.append((name[: -len(".weight")], w))
    return out


# ---------------------------------------------------------------- adapters as PEFT writes them
def make_dora(params, g, rank=4, alpha=8, rslora=False):
    s = alpha / (math.sqrt(rank) if rslora else rank)
    t = {}
    for mod, w in site_modules(params):
        out_f, in_f = w.shape
        A = (torch.rand(rank, in_f, generator=g) * 2 - 1) / math.sqrt(in_f)
        B = torch.randn(out_f, rank, generator=g) * 0.05
        norm = torch.linalg.norm(w + s * B @ A, dim=1)
        t[f"base_model.model.{mod}.lora_A.weight"] = A
        t[f"base_model.model.{mod}.lora_B.weight"] = B
        t[f"base_model.model.{mod}.lora_magnitude_vector"] = norm * (1 + 0.2 * (torch.rand(out_f, generator=g) - 0.5))
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": alpha, "use_rslora": rslora,
              "use_dora": True, "target_modules": SITES, "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False,
              "base_model_name_or_path": "random", "init_lora_weights": True}
    return config, t, {}


def make_ia3(params, g, ff=("down_proj",)):
    t = {}
    for mod, w in site_modules(params):
        out_f, in_f = w.shape
        shape = (1, in_f) if mod.split(".")[-1] in ff else (out_f, 1)
        t[f"base_model.model.{mod}.ia3_l"] = 1 + 0.3 * (torch.rand(*shape, generator=g) - 0.5)
    config = {"peft_type": "IA3", "task_type": "CAUSAL_LM", "target_modules": SITES, "feedforward_modules": list(ff),
              "fan_in_fan_out": False, "init_ia3_weights": True, "base_model_name_or_path": "random", "bias": "none"}
    return config, t, {}


def make_vera(params, g, rank=16, d_initial=0.1):
    mods = site_modules(params)
    max_out = max(w.shape[0] for _, w in mods)
    max_in = max(w.shape[1] for _, w in mods)
    shared = {"base_model.vera_A": (torch.rand(rank, max_in, generator=g) * 2 - 1) * math.sqrt(6 / max_in),
              "base_model.vera_B": (torch.rand(max_out, rank, generator=g) * 2 - 1) * math.sqrt(6 / rank)}
    t = {}
    for mod, w in mods:
        t[f"base_model.model.{mod}.vera_lambda_b"] = torch.randn(w.shape[0], generator=g) * 0.1
        t[f"base_model.model.{mod}.vera_lambda_d"] = d_initial + 0.05 * torch.randn(rank, generator=g)
    config = {"peft_type": "VERA", "task_type": "CAUSAL_LM", "r": rank, "target_modules": SITES, "projection_prng_key": 0,
              "save_projection": True, "vera_dropout": 0.0, "d_initial": d_initial, "fan_in_fan_out": False,
              "bias": "none", "init_weights": True, "base_model_name_or_path": "random"}
    return config, t, shared


MAKERS = {"dora": make_dora, "ia3": make_ia3, "vera": make_vera}


# ---------------------------------------------------------------- the methods, from PEFT's formulas
def make_hook(method, config, leaves, shared):
    def hook(name, x, W, b):
        key = f"base_model.model.{name}"
        if method == "dora" and key + ".lora_A.weight" in leaves:
            r = config["r"]
            s = config["lora_alpha"] / (math.sqrt(r) if config.get("use_rslora") else r)
            A, B, m = leaves[key + ".lora_A.weight"], leaves[key + ".lora_B.weight"], leaves[key + ".lora_magnitude_vector"]
            norm = torch.linalg.norm(W + s * (B @ A).detach(), dim=1).detach()  # PEFT detaches the norm
            f = (m / norm).view(1, -1)
            base = torch.nn.functional.linear(x, W, b)
            return base + (f - 1) * torch.nn.functional.linear(x, W) + f * ((x @ A.t()) @ B.t()) * s
        if method == "ia3" and key + ".ia3_l" in leaves:
            l = leaves[key + ".ia3_l"]
            if l.shape[0] == 1:  # feedforward: scales the input
                return torch.nn.functional.linear(x * l.flatten(), W, b)
            return torch.nn.functional.linear(x, W, b) * l.flatten()
        if method == "vera" and key + ".vera_lambda_b" in leaves:
            lb, ld = leaves[key + ".vera_lambda_b"], leaves[key + ".vera_lambda_d"]
            A = shared["base_model.vera_A"][:, : W.shape[1]]
            B = shared["base_model.vera_B"][: W.shape[0], :]
            return torch.nn.functional.linear(x, W, b) + lb * torch.nn.functional.linear(ld * torch.nn.functional.linear(x, A), B)
        return torch.nn.functional.linear(x, W, b)
    return hook


def torch_reference(method, cfg, params, config, tensors, shared, ids, targets, pos, wd, lr, steps):
    leaves = {k: v.clone().requires_grad_(True) for k, v in tensors.items()}
    hook = make_hook(method, config, leaves, shared)

    def loss_fn():
        logits = tl.forward(cfg, params, ids, position_ids=pos, linear_hook=hook)
        V = logits.shape[-1]
        return torch.nn.functional.cross_entropy(logits.reshape(-1, V), targets.reshape(-1), ignore_index=-1)

    return adamw_reference(loss_fn, leaves, lr, wd, steps)


def write_batch(work, cfg, packed, seed=9):
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
    env = dict(os.environ, PEFT_DRIVER_TRAIN=work, PEFT_DRIVER_LR=str(lr), PEFT_DRIVER_WD=str(wd),
               PEFT_DRIVER_STEPS=str(steps), PEFT_DRIVER_RECOMPUTE="1" if recompute else "0")
    r = subprocess.run([DRIVER], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        return None, r.stderr
    return read_safetensors(os.path.join(work, "out.safetensors")), ""


def run_case(tmp, case):
    name, method, variant, packed, recompute, wd = case
    work = os.path.join(tmp, name.replace("+", "_"))
    os.makedirs(os.path.join(work, "adapter"))
    cfg, params = llama_models.make_random_model(os.path.join(work, "model"), variant, seed=3)
    config, tensors, shared = MAKERS[method](params, torch.Generator().manual_seed(5))
    with open(os.path.join(work, "adapter", "adapter_config.json"), "w") as f:
        json.dump(config, f)
    write_safetensors(os.path.join(work, "adapter", "adapter_model.safetensors"), {**tensors, **shared}, {"format": "pt"})
    ids, targets, pos = write_batch(work, cfg, packed)
    lr, steps = 1e-2, 3
    out, msg = run_driver(work, lr, wd, steps, recompute)
    if out is None:
        print(f"{name}: driver failed: {msg}")
        return False
    ref_loss, ref_grads, ref_final, ref_losses = torch_reference(method, cfg, params, config, tensors, shared, ids, targets,
                                                                 pos, wd, lr, steps)
    missing = [k for k in ref_grads if f"grad.{k}" not in out]
    if missing or len([k for k in out if k.startswith("grad.")]) != len(ref_grads):
        print(f"{name}: peft.c's trainable tensors differ from PEFT's (missing {missing[:3]})")
        return False
    loss_err = abs(out["loss"].item() - ref_loss) / abs(ref_loss)
    grad_err = max(rel(out[f"grad.{k}"], v) for k, v in ref_grads.items())
    final_err = max(rel(out[f"final.{k}"], v) for k, v in ref_final.items())
    steps_err = max(abs(a - b) / abs(b) for a, b in zip(out["losses"].tolist(), ref_losses))
    ok = loss_err <= TOL and grad_err <= TOL and final_err <= TOL and steps_err <= TOL
    print(f"{name:24s} tensors {len(ref_grads):3d}  loss {loss_err:.1e}  grads {grad_err:.1e}  "
          f"after {steps} AdamW steps {final_err:.1e}  step losses {steps_err:.1e}  {'ok' if ok else 'FAIL'}")
    return ok


# ---------------------------------------------------------------- files written by `peft train`
def expected_keys(method, model_params, rank):
    keys = {}
    for mod, w in site_modules(model_params):
        out_f, in_f = w.shape
        p = f"base_model.model.{mod}"
        if method == "dora":
            keys[p + ".lora_A.weight"] = [rank, in_f]
            keys[p + ".lora_B.weight"] = [out_f, rank]
            keys[p + ".lora_magnitude_vector"] = [out_f]
        elif method == "ia3":
            keys[p + ".ia3_l"] = [1, in_f] if mod.endswith("down_proj") else [out_f, 1]
        else:
            keys[p + ".vera_lambda_b"] = [out_f]
            keys[p + ".vera_lambda_d"] = [rank]
    if method == "vera":
        mods = site_modules(model_params)
        keys["base_model.vera_A"] = [rank, max(w.shape[1] for _, w in mods)]
        keys["base_model.vera_B"] = [max(w.shape[0] for _, w in mods), rank]
    return keys


CONFIG_FIELDS = {
    "dora": {"peft_type": "LORA", "use_dora": True, "r": 4, "lora_alpha": 8, "use_rslora": False, "lora_dropout": 0.0},
    "ia3": {"peft_type": "IA3", "feedforward_modules": ["down_proj"], "init_ia3_weights": True},
    "vera": {"peft_type": "VERA", "r": 16, "d_initial": 0.25, "save_projection": True, "vera_dropout": 0.0,
             "init_weights": True, "projection_prng_key": 7},
}


def check_cli_files(tmp, method):
    demo = os.path.abspath(os.path.join(SRC, "models", "demo"))
    if not os.path.exists(os.path.join(demo, "model.safetensors")) or not os.path.exists(PEFT_BIN):
        print(f"{method} files: SKIP (no models/demo or peft binary)")
        return True
    work = os.path.join(tmp, f"cli_{method}")
    os.makedirs(work)
    data = os.path.join(work, "data.jsonl")
    with open(data, "w") as f:
        for i in range(24):
            f.write(json.dumps({"prompt": f"Echo: word{i % 5}\nAnswer:", "completion": f" word{i % 5}\n"}) + "\n")
    rank = {"dora": 4, "ia3": 8, "vera": 16}[method]
    cmd = [PEFT_BIN, "train", "--model", demo, "--data", data, "--out", os.path.join(work, "adapter"), "--method", method,
           "--target", ",".join(SITES), "--rank", str(rank), "--alpha", "8", "--steps", "2", "--batch", "2", "--seq-len", "16",
           "--no-pack", "--no-progress", "--lr", "1e-2", "--seed", "7", "--init-scale", "0.25",
           "--feedforward-modules", "down_proj", "--eval-every", "0"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        print(f"{method} files: `peft train` failed: {r.stdout[-300:]} {r.stderr[-500:]}")
        return False
    adir = os.path.join(work, "adapter")
    with open(os.path.join(adir, "adapter_config.json")) as f:
        conf = json.load(f)
    problems = []
    for k, v in CONFIG_FIELDS[method].items():
        if conf.get(k) != v:
            problems.append(f"config {k} = {conf.get(k)!r}, want {v!r}")
    if sorted(conf.get("target_modules") or []) != sorted(SITES):
        problems.append(f"target_modules {conf.get('target_modules')}")
    params = tl.load_params(demo)
    tensors = read_safetensors(os.path.join(adir, "adapter_model.safetensors"))
    want = expected_keys(method, params, rank)
    for k, shape in want.items():
        if k not in tensors:
            problems.append(f"missing {k}")
        elif list(tensors[k].shape) != shape:
            problems.append(f"{k} shape {list(tensors[k].shape)}, want {shape}")
    extra = sorted(set(tensors) - set(want))
    if extra:
        problems.append(f"unexpected tensors {extra[:3]}")
    if problems:
        print(f"{method} files: FAIL: " + "; ".join(problems[:6]))
        return False
    # Loaded by another process (the driver) on the demo model: the loss torch computes from the
    # file's own tensors.
    os.symlink(demo, os.path.join(work, "model"))
    cfg = tl.load_config(demo)
    ids, targets, pos = write_batch(work, cfg, False, seed=4)
    out, msg = run_driver(work, 1e-2, 0.0, 1, False)
    if out is None:
        print(f"{method} files: driver could not load peft.c's adapter: {msg}")
        return False
    leaves = {k: v for k, v in tensors.items() if k.startswith("base_model.model.")}
    shared = {k: v for k, v in tensors.items() if not k.startswith("base_model.model.")}
    hook = make_hook(method, conf, leaves, shared)
    with torch.no_grad():
        logits = tl.forward(cfg, params, ids, position_ids=pos, linear_hook=hook)
        ref = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-1)
    err = abs(out["loss"].item() - ref.item()) / abs(ref.item())
    ok = err <= TOL
    print(f"{method} files: PEFT config fields, {len(want)} keys with PEFT shapes; reloaded loss rel err {err:.1e}  "
          f"{'ok' if ok else 'FAIL'}")
    return ok


def main():
    if not os.path.exists(DRIVER):
        print(f"FAIL: driver {DRIVER} not built")
        return 1
    torch.manual_seed(0)
    only = sys.argv[1:]
    with tempfile.TemporaryDirectory() as tmp:
        results = [run_case(tmp, c) for c in CASES if not only or c[1] in only]
        results += [check_cli_files(tmp, m) for m in ("dora", "ia3", "vera") if not only or m in only]
    passed = sum(results)
    print(f"{passed} passed, {len(results) - passed} failed")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
