"""HUT / Hydra / bottleneck adapters / NOLA / MoS training parity with PyTorch (issue 6).

None of these methods is in HF PEFT, so each has peft.c's own peft_type and file layout in
PEFT's style (docs/methods.md). For random Llama-family models (GQA, Qwen2 biases + packed
sequences, tied embeddings + gradient checkpointing + weight decay) with the method on every
linear layer, peft.c's loss, every trained tensor's gradient, and the tensors after 3 AdamW
steps (tests/drivers/driver_train.c loads the adapter directory written here) match a
PyTorch reference within 1e-4 relative (max |a-b| / max |b|):
  hut          y = xW^T + b + s x (W * (B A))^T
  hydra        y = xW^T + b + s (x A_p^T) B_p^T + s ((x W^T) A_s^T) B_s^T
  adapter_seq  h = xW^T + b,  y = h + s (silu(h D^T + d) U^T + u)
  adapter_par  y = xW^T + b + s (relu(x D^T + d) U^T + u)
  nola         A = sum_i alpha_i A_i, B = sum_j beta_j B_j, y = xW^T + b + s (x A^T) B^T
  mos          A, B assembled from private ranks and routed shards of per-kind global pools
NOLA's bases and MoS's routing are not in the files: they are regenerated from the config's
seed, here by a Python port of peft.c's PCG32 (src/core/rng.c) and site hash (dropout.c).
Shared helpers come from llama_models.py.
"""
import json
import math
import os
import sys
import tempfile

try:
    import torch
except Exception as e:  # noqa: BLE001
    print(f"SKIP: torch is not importable ({e})")
    sys.exit(77)

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import llama_models  # noqa: E402
from llama_models import (DRIVER, SITES, TOL, adamw_reference, rel, run_driver, site_modules, tl,  # noqa: E402
                          write_batch, write_safetensors)

F = torch.nn.functional
M64 = (1 << 64) - 1

# ---------------------------------------------------------------- peft.c's generator, in Python


def mix64(x):
    x = (x + 0x9E3779B97F4A7C15) & M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


class Pcg32:
    def __init__(self, seed, stream):
        self.state = 0
        self.inc = ((mix64(stream) << 1) | 1) & M64
        self.u32()
        self.state = (self.state + mix64(seed)) & M64
        self.u32()

    def u32(self):
        old = self.state
        self.state = (old * 6364136223846793005 + self.inc) & M64
        xs = (((old >> 18) ^ old) >> 27) & 0xFFFFFFFF
        rot = old >> 59
        return ((xs >> rot) | (xs << ((-rot) & 31))) & 0xFFFFFFFF

    def uniform(self, n):
        return torch.tensor([(self.u32() >> 8) for _ in range(n)], dtype=torch.float32) * (1.0 / 16777216.0)

    def below(self, n):
        m = self.u32() * n
        lo = m & 0xFFFFFFFF
        if lo < n:
            threshold = ((1 << 32) - n) % n
            while lo < threshold:
                m = self.u32() * n
                lo = m & 0xFFFFFFFF
        return m >> 32


def site_hash(name):
    h = 1469598103934665603
    for c in name.encode():
        h = ((h ^ c) * 1099511628211) & M64
    return h


def uniform_fill(n, bound, seed, stream):
    """bound * (2u - 1) in float32, as nola.c's uniform_fill."""
    return torch.tensor(bound, dtype=torch.float32) * (2 * Pcg32(seed, stream).uniform(n) - 1)


def f32_inv_sqrt(n):
    return (1.0 / torch.sqrt(torch.tensor(float(n), dtype=torch.float32))).item()


NOLA_K = 64
NOLA_A, NOLA_B = 0x4E4F4C4141, 0x4E4F4C4142


def nola_bases(mod, in_f, out_f, rank, seed):
    h = site_hash(mod)
    Ab = uniform_fill(NOLA_K * rank * in_f, f32_inv_sqrt(in_f), seed, h ^ NOLA_A).view(NOLA_K, rank, in_f)
    Bb = uniform_fill(NOLA_K * out_f * rank, f32_inv_sqrt(rank), seed, h ^ NOLA_B).view(NOLA_K, out_f, rank)
    return Ab, Bb


MOS_L, MOS_POOL = 2, 4
MOS_A, MOS_B = 0x4D6F5341, 0x4D6F5342


def mos_route(n, pool, seed, stream):
    perm, rng, out = list(range(pool)), Pcg32(seed, stream), []
    for j in range(n):
        t = j + rng.below(pool - j)
        perm[j], perm[t] = perm[t], perm[j]
        out.append(perm[j])
    return out


def mos_layout(mod, in_f, out_f, rank, seed):
    rp = max(1, rank // 4)
    ns = rank - rp
    la = MOS_L if in_f % MOS_L == 0 else 1
    lb = MOS_L if out_f % MOS_L == 0 else 1
    h = site_hash(mod)
    return {"rp": rp, "ns": ns, "la": la, "lb": lb, "pa": MOS_POOL * ns * la, "pb": MOS_POOL * ns * lb,
            "idxA": mos_route(ns * la, MOS_POOL * ns * la, seed, h ^ MOS_A),
            "idxB": mos_route(ns * lb, MOS_POOL * ns * lb, seed, h ^ MOS_B)}


def mos_assemble(lay, pA, pB, poolA, poolB, in_f, out_f):
    wa, wb = in_f // lay["la"], out_f // lay["lb"]
    rows = [pA]
    for k in range(lay["ns"]):
        rows.append(torch.cat([poolA[lay["idxA"][k * lay["la"] + j]] for j in range(lay["la"])]).view(1, in_f))
    A = torch.cat(rows, 0)
    cols = [pB]
    for k in range(lay["ns"]):
        cols.append(torch.cat([poolB[lay["idxB"][k * lay["lb"] + j]] for j in range(lay["lb"])]).view(out_f, 1))
    B = torch.cat(cols, 1)
    assert wa * lay["la"] == in_f and wb * lay["lb"] == out_f
    return A, B


# ---------------------------------------------------------------- adapters (peft.c's layout)
def lowrank_config(ptype, rank, alpha, extra=None):
    c = {"peft_type": ptype, "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": alpha, "lora_dropout": 0.0,
         "use_rslora": False, "init_lora_weights": True, "target_modules": SITES, "bias": "none",
         "fan_in_fan_out": False, "base_model_name_or_path": "random"}
    c.update(extra or {})
    return c


def make_hut(params, g, rank=4, alpha=8):
    t = {}
    for mod, w in site_modules(params):
        out_f, in_f = w.shape
        t[f"base_model.model.{mod}.hut_A.weight"] = (torch.rand(rank, in_f, generator=g) * 2 - 1) / math.sqrt(in_f)
        t[f"base_model.model.{mod}.hut_B.weight"] = torch.randn(out_f, rank, generator=g) * 0.1
    return lowrank_config("HUT", rank, alpha), t, {}


def make_hydra(params, g, rank=4, alpha=8):
    t = {}
    for mod, w in site_modules(params):
        out_f, in_f = w.shape
        p = f"base_model.model.{mod}."
        t[p + "hydra_par_A.weight"] = (torch.rand(rank, in_f, generator=g) * 2 - 1) / math.sqrt(in_f)
        t[p + "hydra_par_B.weight"] = torch.randn(out_f, rank, generator=g) * 0.1
        t[p + "hydra_seq_A.weight"] = (torch.rand(rank, out_f, generator=g) * 2 - 1) / math.sqrt(out_f)
        t[p + "hydra_seq_B.weight"] = torch.randn(out_f, rank, generator=g) * 0.1
    return lowrank_config("HYDRA", rank, alpha), t, {}


def make_bottleneck(seq):
    def make(params, g, rank=8, alpha=8):
        t = {}
        for mod, w in site_modules(params):
            out_f, in_f = w.shape
            dim = out_f if seq else in_f
            p = f"base_model.model.{mod}."
            t[p + "adapter_down.weight"] = (torch.rand(rank, dim, generator=g) * 2 - 1) / math.sqrt(dim)
            # units away from the activation's kink / flat tail: a nearly dead unit has noise-level
            # gradients, and AdamW turns noise into lr-sized steps
            t[p + "adapter_down.bias"] = 1 + torch.randn(rank, generator=g) * 0.1
            t[p + "adapter_up.weight"] = torch.randn(out_f, rank, generator=g) * 0.05
            t[p + "adapter_up.bias"] = torch.randn(out_f, generator=g) * 0.05
        config = {"peft_type": "ADAPTER_SEQ" if seq else "ADAPTER_PAR", "task_type": "CAUSAL_LM", "r": rank,
                  "adapter_alpha": alpha, "adapter_dropout": 0.0, "use_rslora": False, "init_weights": True,
                  "non_linearity": "swish" if seq else "relu", "target_modules": SITES, "bias": "none",
                  "fan_in_fan_out": False, "base_model_name_or_path": "random"}
        return config, t, {}
    return make


def make_nola(params, g, rank=4, alpha=8, seed=11):
    t = {}
    for mod, w in site_modules(params):
        t[f"base_model.model.{mod}.nola_alpha"] = (torch.rand(NOLA_K, generator=g) * 2 - 1) / math.sqrt(NOLA_K)
        t[f"base_model.model.{mod}.nola_beta"] = torch.randn(NOLA_K, generator=g) * 0.05
    return lowrank_config("NOLA", rank, alpha, {"basis_seed": seed, "num_basis_A": NOLA_K, "num_basis_B": NOLA_K}), t, {}


def make_mos(params, g, rank=8, alpha=8, seed=13):
    t, shared = {}, {}
    for mod, w in site_modules(params):
        out_f, in_f = w.shape
        lay = mos_layout(mod, in_f, out_f, rank, seed)
        kind = mod.split(".")[-1]
        p = f"base_model.model.{mod}."
        t[p + "mos_private_A.weight"] = (torch.rand(lay["rp"], in_f, generator=g) * 2 - 1) / math.sqrt(in_f)
        t[p + "mos_private_B.weight"] = torch.randn(out_f, lay["rp"], generator=g) * 0.05
        if f"base_model.mos_A_{kind}" not in shared:
            shared[f"base_model.mos_A_{kind}"] = (torch.rand(lay["pa"], in_f // lay["la"], generator=g) * 2 - 1) / math.sqrt(in_f)
            shared[f"base_model.mos_B_{kind}"] = torch.randn(lay["pb"], out_f // lay["lb"], generator=g) * 0.05
    extra = {"routing_seed": seed, "shards_per_vector": MOS_L, "pool_factor": MOS_POOL, "private_rank": "max(1, r / 4)"}
    return lowrank_config("MOS", rank, alpha, extra), t, shared


MAKERS = {"hut": make_hut, "hydra": make_hydra, "adapter_seq": make_bottleneck(True),
          "adapter_par": make_bottleneck(False), "nola": make_nola, "mos": make_mos}


# ---------------------------------------------------------------- the methods in torch
def make_hook(method, config, leaves, params):
    r = config["r"]
    s = config.get("lora_alpha", config.get("adapter_alpha")) / r
    dims = {mod: tuple(w.shape) for mod, w in site_modules(params)}
    cache = {}

    def hook(name, x, W, b):
        key = f"base_model.model.{name}."
        base = F.linear(x, W, b)
        if name not in dims:
            return base
        out_f, in_f = dims[name]
        if method == "hut":
            A, B = leaves[key + "hut_A.weight"], leaves[key + "hut_B.weight"]
            return base + s * F.linear(x, W * (B @ A))
        if method == "hydra":
            par = F.linear(F.linear(x, leaves[key + "hydra_par_A.weight"]), leaves[key + "hydra_par_B.weight"])
            seq = F.linear(F.linear(F.linear(x, W), leaves[key + "hydra_seq_A.weight"]), leaves[key + "hydra_seq_B.weight"])
            return base + s * par + s * seq
        if method in ("adapter_seq", "adapter_par"):
            z = base if method == "adapter_seq" else x
            h = F.linear(z, leaves[key + "adapter_down.weight"], leaves[key + "adapter_down.bias"])
            a = F.silu(h) if method == "adapter_seq" else F.relu(h)
            return base + s * F.linear(a, leaves[key + "adapter_up.weight"], leaves[key + "adapter_up.bias"])
        if method == "nola":
            if name not in cache:
                cache[name] = nola_bases(name, in_f, out_f, r, config["basis_seed"])
            Ab, Bb = cache[name]
            A = torch.einsum("k,kri->ri", leaves[key + "nola_alpha"], Ab)
            B = torch.einsum("k,kor->or", leaves[key + "nola_beta"], Bb)
            return base + s * F.linear(F.linear(x, A), B)
        if method == "mos":
            if name not in cache:
                cache[name] = mos_layout(name, in_f, out_f, r, config["routing_seed"])
            kind = name.split(".")[-1]
            A, B = mos_assemble(cache[name], leaves[key + "mos_private_A.weight"], leaves[key + "mos_private_B.weight"],
                                leaves[f"base_model.mos_A_{kind}"], leaves[f"base_model.mos_B_{kind}"], in_f, out_f)
            return base + s * F.linear(F.linear(x, A), B)
        raise ValueError(method)
    return hook


def torch_reference(method, cfg, params, config, trained, ids, targets, pos, wd, lr, steps):
    leaves = {k: v.clone().requires_grad_(True) for k, v in trained.items()}
    hook = make_hook(method, config, leaves, params)

    def loss_fn():
        logits = tl.forward(cfg, params, ids, position_ids=pos, linear_hook=hook)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-1)

    return adamw_reference(loss_fn, leaves, lr, wd, steps)


VARIANTS = [("gqa", "llama_gqa", False, False, 0.0), ("qwen2-bias+packed", "qwen2_bias", True, False, 0.0),
            ("tied+recompute+wd", "llama_mha_tied", False, True, 0.1)]
CASES = [(f"{m}-{v[0]}", m) + v[1:] for m in MAKERS for v in VARIANTS]


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
    ref_loss, ref_grads, ref_final, ref_losses = torch_reference(method, cfg, params, config, {**tensors, **shared}, ids,
                                                                 targets, pos, wd, lr, steps)
    missing = [k for k in ref_grads if f"grad.{k}" not in out]
    if missing or len([k for k in out if k.startswith("grad.")]) != len(ref_grads):
        print(f"{name}: peft.c's trainable tensors differ from the reference's (missing {missing[:3]})")
        return False
    loss_err = abs(out["loss"].item() - ref_loss) / abs(ref_loss)
    grad_err = max(rel(out[f"grad.{k}"], v) for k, v in ref_grads.items())
    # AdamW normalises each element by its own gradient history (m / (sqrt(v) + 1e-8)), so an
    # element whose gradient is at float32 noise level moves by an lr-sized amount set by that
    # noise. Elements whose first gradient is below 1e-3 of the tensor's largest, or differs
    # between peft.c and torch by more than 1e-3 of itself, are left out of the after-steps
    # comparison and counted; the gradient check above covers every element.
    final_err, masked = 0.0, 0
    for k, v in ref_final.items():
        g_c, g_t = out[f"grad.{k}"], ref_grads[k]
        keep = ((g_c - g_t).abs() <= 1e-3 * g_t.abs()) & (g_t.abs() >= 1e-3 * g_t.abs().max())
        masked += int((~keep).sum())
        d = ((out[f"final.{k}"] - v).abs() * keep).max().item()
        final_err = max(final_err, d / max(v.abs().max().item(), 1e-30))
    steps_err = max(abs(a - b) / abs(b) for a, b in zip(out["losses"].tolist(), ref_losses))
    ok = loss_err <= TOL and grad_err <= TOL and final_err <= TOL and steps_err <= TOL
    print(f"{name:30s} tensors {len(ref_grads):3d}  loss {loss_err:.1e}  grads {grad_err:.1e}  "
          f"after {steps} AdamW steps {final_err:.1e} ({masked} noise-level grads)  step losses {steps_err:.1e}  {'ok' if ok else 'FAIL'}")
    return ok


def main():
    if not os.path.exists(DRIVER):
        print(f"FAIL: driver {DRIVER} not built")
        return 1
    torch.manual_seed(0)
    only = sys.argv[1:]
    with tempfile.TemporaryDirectory() as tmp:
        results = [run_case(tmp, c) for c in CASES if not only or c[1] in only]
    passed = sum(results)
    print(f"{passed} passed, {len(results) - passed} failed")
    return 0 if results and all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
