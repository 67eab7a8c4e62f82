"""`peft combine` against HF PEFT's LoraModel.add_weighted_adapter, every combination type.

Four LoRA adapters are made by PEFT on a random transformers Llama (hidden 64, 2 layers):
a (r 4, alpha 8), b (r 4, alpha 16, alpha_pattern o_proj: 3), d (r 4, rsLoRA), c (r 6), with
init_lora_weights=False (A and B random). For each type PEFT's add_weighted_adapter and
`peft combine` run with the same adapters, weights and options; per adapted module:

  - delta W = scale * B @ A of the combined adapter equals PEFT's to 1e-5 (max |diff| / max |PEFT|):
    the SVD types' factors are unique only up to signs, so their products are compared; the
    deterministic non-SVD types' A and B are compared too;
  - svd_clamp: PEFT's quantile clamp depends on the signs of the singular vectors, so PEFT's
    unclamped SVD factors get peft.c's signs (per component) and the clamp is applied to them
    with torch.quantile exactly as in PEFT's code; the factors must then agree;
  - DARE: density 1 must equal PEFT exactly (no pruning); for density < 1 the masks are recovered
    from peft.c's output (each element must equal PEFT's merge for SOME keep/drop pattern of
    the adapters; SVD types at full rank so that B @ A is the merged delta), the kept fraction
    of dare_linear must be the density within 4 sigma, and PEFT's add_weighted_adapter run with
    those masks (merge_utils.random_pruning replaced by them) must give peft.c's result;
  - adapter_config.json: r, lora_alpha and target modules as PEFT's new config;
  - PeftModel.from_pretrained loads the output with PEFT's logits of the combined adapter (1e-4);
  - refusals: a DoRA adapter, unequal ranks for linear, other target modules, wrong weight count.

Exit 77 (SKIP) only when torch / transformers / peft cannot be imported.
"""
import json
import os
import subprocess
import sys
import tempfile

try:
    import torch
    import transformers  # noqa: F401  (the oracle must import)
    from peft import LoraConfig, PeftModel, get_peft_model
    from peft.tuners.lora import LoraLayer
    from peft.utils import merge_utils
    from safetensors.torch import load_file
except ImportError as e:  # the oracle itself is missing
    print(f"SKIP: {e}")
    sys.exit(77)

from transformers import LlamaConfig, LlamaForCausalLM

from test_peft_adapters import FAILURES, PEFT_BIN, check, load_base, rel_err

TOL = 1e-5
TOL_LOGITS = 1e-4
# Every adapted module has min(in, out) = 64, so --svd-rank 64 is an exact factorisation everywhere.
TARGETS = ["q_proj", "o_proj", "gate_proj", "down_proj"]


def make_model(root):
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=256, max_position_embeddings=64, tie_word_embeddings=False,
                      initializer_range=0.1)
    d = os.path.join(root, "base")
    LlamaForCausalLM(cfg).float().save_pretrained(d, safe_serialization=True)
    return d


ADAPTERS = {  # name: LoraConfig options, seed
    "a": (dict(r=4, lora_alpha=8), 1),
    "b": (dict(r=4, lora_alpha=16, alpha_pattern={"o_proj": 3}), 2),
    "d": (dict(r=4, lora_alpha=6, use_rslora=True), 4),
    "c": (dict(r=6, lora_alpha=12), 3),
}


def make_adapters(base_dir, root):
    dirs = {}
    for name, (opts, seed) in ADAPTERS.items():
        torch.manual_seed(seed)
        pm = get_peft_model(load_base(base_dir), LoraConfig(target_modules=TARGETS, init_lora_weights=False, **opts))
        dirs[name] = os.path.join(root, name)
        pm.save_pretrained(dirs[name])
    dora = os.path.join(root, "dora")
    torch.manual_seed(5)
    get_peft_model(load_base(base_dir), LoraConfig(r=4, target_modules=TARGETS, use_dora=True)).save_pretrained(dora)
    other = os.path.join(root, "other_targets")
    get_peft_model(load_base(base_dir), LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False)).save_pretrained(other)
    return dirs, dora, other


def peft_model(base_dir, dirs):
    m = None
    for name, d in dirs.items():
        if m is None:
            m = PeftModel.from_pretrained(load_base(base_dir), d, adapter_name=name)
        else:
            m.load_adapter(d, adapter_name=name)
    return m.double().eval()  # PEFT's own code in float64: the reference peft.c's float32 result is measured against


def lora_layers(model):
    for name, mod in model.named_modules():
        if isinstance(mod, LoraLayer):
            yield name.removeprefix("base_model.model."), mod


def peft_factors(model, adapter):
    """{site: (A, B, scale)} of PEFT's adapter."""
    return {n: (m.lora_A[adapter].weight.detach().clone(), m.lora_B[adapter].weight.detach().clone(), m.scaling[adapter])
            for n, m in lora_layers(model) if adapter in m.lora_A}


def peftc_factors(out):
    cfg = json.load(open(os.path.join(out, "adapter_config.json")))
    scale = cfg["lora_alpha"] / (cfg["r"] ** 0.5 if cfg.get("use_rslora") else cfg["r"])
    t = load_file(os.path.join(out, "adapter_model.safetensors"))
    sites = sorted({k.removeprefix("base_model.model.").rsplit(".lora_", 1)[0] for k in t})
    return cfg, {s: (t[f"base_model.model.{s}.lora_A.weight"], t[f"base_model.model.{s}.lora_B.weight"], scale) for s in sites}


def combine(base_dir, dirs, names, weights, ctype, out, extra=(), expect_rc=0):
    cmd = [PEFT_BIN, "combine", "--model", base_dir, "--weights", ",".join(str(w) for w in weights), "--type", ctype,
           "--out", out] + list(extra)
    for n in names:
        cmd += ["--adapter", dirs[n]]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != expect_rc:
        raise RuntimeError(f"{' '.join(cmd)}: exit {r.returncode}, expected {expect_rc}\n{r.stdout}\n{r.stderr}")
    return r.stderr


def peft_args(extra):
    """The add_weighted_adapter keywords of combine's options."""
    kw, it = {}, iter(extra)
    for opt in it:
        v = next(it)
        key = opt.removeprefix("--").replace("-", "_")
        kw[key] = v if key == "majority_sign_method" else float(v) if key in ("density", "svd_clamp") else int(v)
    kw.pop("seed", None)
    return kw


def compare(label, model, new, out, factors_too):
    ref, (cfg, got) = peft_factors(model, new), peftc_factors(out)
    check(f"{label} sites", set(ref) == set(got), f"{len(got)} modules")
    pconf = model.peft_config[new]
    check(f"{label} config", cfg["r"] == pconf.r and cfg["lora_alpha"] == pconf.lora_alpha and not cfg["rank_pattern"]
          and set(cfg["target_modules"]) == set(pconf.target_modules),
          f"r {cfg['r']} (PEFT {pconf.r}), alpha {cfg['lora_alpha']} (PEFT {pconf.lora_alpha})")
    e_delta = e_fact = 0.0
    for s in ref:
        A, B, sc = ref[s]
        A2, B2, sc2 = got[s]
        e_delta = max(e_delta, rel_err(sc2 * B2 @ A2, sc * B @ A))
        if factors_too:
            e_fact = max(e_fact, rel_err(A2, A), rel_err(B2, B))
    check(f"{label} delta W", e_delta <= TOL, f"max rel err {e_delta:.2e}" + (f", factors {e_fact:.2e}" if factors_too else ""))
    if factors_too:
        check(f"{label} factors", e_fact <= TOL, f"{e_fact:.2e}")
    return got


def with_pruning(fn):
    """merge_utils.random_pruning replaced by fn(tensor, density, rescale) while the block runs."""
    class Ctx:
        def __enter__(self):
            self.saved = merge_utils.random_pruning
            merge_utils.random_pruning = fn

        def __exit__(self, *a):
            merge_utils.random_pruning = self.saved
    return Ctx()


def site_inputs(model, names, weights, svd):
    """{site: [(tensors, weights)]} as PEFT's add_weighted_adapter hands them to merge_utils:
    the deltas with w (SVD types) or A with +-sqrt|w s| and B with sqrt|w s|."""
    res = {}
    for s, m in lora_layers(model):
        if svd:
            res[s] = [([m.get_delta_weight(n).detach() for n in names], torch.tensor(weights))]
        else:
            ws = [w * m.scaling[n] for n, w in zip(names, weights)]
            wa = torch.tensor([abs(x) ** 0.5 * (1 if x >= 0 else -1) for x in ws])
            wb = torch.tensor([abs(x) ** 0.5 for x in ws])
            res[s] = [([m.lora_A[n].weight.detach() for n in names], wa), ([m.lora_B[n].weight.detach() for n in names], wb)]
    return res


def recover_masks(model, names, weights, merge, density, got, svd, tol):
    """The keep masks that explain peft.c's output: [(tensor, mask)] for every input tensor, the
    worst element error, and the kept counts (kept, total)."""
    pairs, worst, kept, total = [], 0.0, 0, 0
    n = len(names)
    for s, groups in site_inputs(model, names, weights, svd).items():
        A2, B2, _ = got[s]
        outs = [B2 @ A2] if svd else [A2, B2]
        for (tensors, w), o in zip(groups, outs):
            cands = []
            for pat in range(2 ** n):
                bits = iter([(pat >> i) & 1 for i in range(n)])
                with with_pruning(lambda t, d, rescale: t * next(bits) / d):
                    cands.append(merge(tensors, w, density))
            diff = (torch.stack(cands) - o).abs()
            best = diff.argmin(dim=0)
            worst = max(worst, (diff.min(dim=0).values.max() / o.abs().max()).item())
            for i, t in enumerate(tensors):
                mask = ((best >> i) & 1).float()
                pairs.append((t, mask))
                kept += int(mask.sum().item())
                total += mask.numel()
    return pairs, worst, kept, total


def dare_case(label, model, base_dir, dirs, names, weights, ctype, density, extra, root, count):
    out = os.path.join(root, "out_" + label)
    combine(base_dir, dirs, names, weights, ctype, out, ["--density", str(density), "--seed", "7"] + list(extra))
    _, got = peftc_factors(out)
    svd = ctype.endswith("_svd")
    merge = merge_utils.dare_ties if "ties" in ctype else merge_utils.dare_linear
    pairs, worst, kept, total = recover_masks(model, names, weights, merge, density, got, svd, TOL)
    tol = 1e-4 if svd else TOL  # a full-rank float32 SVD reconstructs the delta to ~1e-6
    check(f"{label} masks exist", worst <= tol, f"every element is PEFT's merge for some keep pattern (worst {worst:.2e})")
    if count:
        frac, sigma = kept / total, (density * (1 - density) / total) ** 0.5
        check(f"{label} kept fraction", abs(frac - density) <= 4 * sigma, f"{frac:.4f} of {total} (density {density})")

    def same_masks(t, d, rescale):
        for key, mask in pairs:
            if key.shape == t.shape and torch.equal(key, t):
                return t * mask / d
        raise RuntimeError("PEFT pruned a tensor the test does not know")

    new = "peft_" + label
    with with_pruning(same_masks):
        model.add_weighted_adapter(names, weights, new, combination_type=ctype, density=density, **peft_args(extra))
    ref = peft_factors(model, new)
    e = max(rel_err(got[s][2] * got[s][1] @ got[s][0], ref[s][2] * ref[s][1] @ ref[s][0]) for s in ref)
    check(f"{label} = PEFT with the same masks", e <= tol, f"delta W max rel err {e:.2e}")


def clamp_case(model, base_dir, dirs, names, weights, q, root):
    """PEFT's clamp of its own SVD factors, with the signs of peft.c's components."""
    out = os.path.join(root, "out_clamp")
    combine(base_dir, dirs, names, weights, "svd", out, ["--svd-clamp", str(q)])
    _, got = peftc_factors(out)
    model.add_weighted_adapter(names, weights, "unclamped", combination_type="svd")
    ref = peft_factors(model, "unclamped")
    e = 0.0
    for s, (Vh, U, _) in ref.items():
        A2, B2, _ = got[s]
        sign = torch.sign((U * B2).sum(0) + (Vh * A2).sum(1))  # [R]: per component
        U, Vh = U * sign, Vh * sign[:, None]
        hi = torch.quantile(torch.cat([U.flatten(), Vh.flatten()]), q)  # PEFT's code from here
        U, Vh = U.clamp(-hi, hi), Vh.clamp(-hi, hi)
        e = max(e, rel_err(A2, Vh), rel_err(B2, U))
    check("svd --svd-clamp", e <= TOL, f"factors max rel err {e:.2e} (clamp quantile {q})")


def main():
    if not os.path.exists(PEFT_BIN):
        print(f"FAIL: {PEFT_BIN} not built")
        return 1
    with tempfile.TemporaryDirectory(prefix="peft_combine_") as root:
        return run_all(root)


def run_all(root):
    base_dir = make_model(root)
    dirs, dora, other = make_adapters(base_dir, root)
    model = peft_model(base_dir, dirs)
    eq, mixed = ["a", "b", "d"], ["a", "c", "b"]
    w3, wm = [1.0, -0.7, 0.5], [0.8, 1.2, -0.5]
    cases = [  # label, type, adapters, weights, options, compare the factors
        ("linear", "linear", eq, w3, [], True),
        ("cat", "cat", mixed, wm, [], True),
        ("svd", "svd", mixed, wm, [], False),
        ("svd rank 3", "svd", mixed, wm, ["--svd-rank", "3"], False),
        ("ties", "ties", eq, w3, ["--density", "0.5"], True),
        ("ties frequency", "ties", eq, w3, ["--density", "0.3", "--majority-sign-method", "frequency"], True),
        ("ties_svd", "ties_svd", mixed, wm, ["--density", "0.5"], False),
        ("magnitude_prune", "magnitude_prune", eq, w3, ["--density", "0.4"], True),
        ("magnitude_prune_svd", "magnitude_prune_svd", mixed, wm, ["--density", "0.6"], False),
        ("dare_linear density 1", "dare_linear", eq, w3, ["--density", "1"], True),
        ("dare_ties density 1", "dare_ties", eq, w3, ["--density", "1", "--majority-sign-method", "frequency"], True),
        ("dare_linear_svd density 1", "dare_linear_svd", mixed, wm, ["--density", "1"], False),
        ("dare_ties_svd density 1", "dare_ties_svd", mixed, wm, ["--density", "1"], False),
        ("one adapter (linear)", "svd", ["c"], [0.6], [], True),
        ("rsLoRA first (scale sqrt(r), as PEFT)", "cat", ["d", "a"], [1.0, 0.5], [], True),
    ]
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))
    for i, (label, ctype, names, weights, extra, factors) in enumerate(cases):
        out, new = os.path.join(root, f"out{i}"), f"new{i}"
        combine(base_dir, dirs, names, weights, ctype, out, extra)
        model.add_weighted_adapter(names, weights, new, combination_type=ctype, **peft_args(extra))
        compare(label, model, new, out, factors)
        if ctype in ("svd", "cat", "ties") and not extra[2:]:
            model.set_adapter(new)
            with torch.no_grad():
                ref = model(input_ids=ids).logits.float()
                loaded = PeftModel.from_pretrained(load_base(base_dir), out).eval()
                e = rel_err(loaded(input_ids=ids).logits, ref)
            check(f"{label} PeftModel.from_pretrained logits", e <= TOL_LOGITS, f"max rel err {e:.2e}")
    dare_case("dare_linear", model, base_dir, dirs, eq, w3, "dare_linear", 0.6, [], root, True)
    dare_case("dare_ties", model, base_dir, dirs, eq, w3, "dare_ties", 0.5, [], root, False)
    dare_case("dare_linear_svd", model, base_dir, dirs, mixed, wm, "dare_linear_svd", 0.7, ["--svd-rank", "64"], root, True)
    dare_case("dare_ties_svd", model, base_dir, dirs, mixed, wm, "dare_ties_svd", 0.5, ["--svd-rank", "64"], root, False)
    clamp_case(model, base_dir, dirs, mixed, wm, 0.9, root)

    refusals = [  # label, adapters, weights, type, options, exit code, words the message must name
        ("DoRA refused", {"a": dirs["a"], "x": dora}, [1, 1], "cat", [], 1, [dora, "DoRA"]),
        ("unequal ranks refused for linear", {"a": dirs["a"], "c": dirs["c"]}, [1, 1], "linear", [], 1, [dirs["c"], "rank 6"]),
        ("other targets refused", {"a": dirs["a"], "o": other}, [1, 1], "cat", [], 1, [other, "does not adapt"]),
        ("weight count checked", {"a": dirs["a"], "b": dirs["b"]}, [1], "cat", [], 2, ["--weights"]),
        ("density required", {"a": dirs["a"], "b": dirs["b"]}, [1, 1], "ties", [], 2, ["--density"]),
    ]
    for label, ds, weights, ctype, extra, rc, words in refusals:
        msg = combine(base_dir, ds, list(ds), weights, ctype, os.path.join(root, "refused"), extra, expect_rc=rc)
        check(label, all(w in msg for w in words), msg.strip().splitlines()[-1] if msg.strip() else "(no message)")
    print(f"{len(FAILURES)} failures" + (f": {FAILURES}" if FAILURES else ""))
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
