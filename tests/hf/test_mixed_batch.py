"""Mixed-adapter batches (methods/adapter_pool.h, llama_decode_batch) against HF PEFT.

On a random transformers LlamaForCausalLM, PEFT creates adapters with non-trivial weights and
save_pretrained()s them:
  lora_a   r 4,  q_proj,v_proj
  lora_b   r 8,  all-linear, rsLoRA
  lora_c   r 2,  gate/up/down_proj, rank_pattern {down_proj: 6}, alpha_pattern {up_proj: 3}
  dora_d   r 6,  k_proj,o_proj, layers_to_transform [1], DoRA
  hot      r 3,  q_proj (loaded after decode step 1, unloaded after step 2)
  ia3_e    IA3 on k_proj,v_proj,down_proj (down_proj feed-forward)
  vera_f   VeRA r 16 on q_proj,v_proj
8 sequences of 3..12 prompt tokens (and the base, `__base__`) run through driver_pool:
  a. the pool's one mixed forward and its prefill + 4 llama_decode_batch steps equal each sequence
     run alone with its adapter loaded the normal way (peft_adapter_set_load) to 1e-5 relative,
     and the pool's indices stay put while `hot` comes and goes (the driver fails otherwise);
  b. HF PEFT's own mixed batch (model(..., adapter_names=[...]) over the LoRA sequences and the
     base, right-padded) gives the same logits, for the prompts and over the decode steps (1e-4);
  c. the DoRA, IA3 and VeRA sequences (PEFT refuses adapter_names with DoRA and has none for
     IA3/VeRA) equal PEFT running each adapter alone (1e-4).
Relative error = max |a - b| / max |b| over a sequence's valid rows. Exit 77 (SKIP) only when
torch / transformers / peft cannot be imported.
"""
import os
import subprocess
import sys
import tempfile

try:
    import torch
    import peft
    from peft import IA3Config, LoraConfig, PeftModel, VeraConfig, get_peft_model
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM
except ImportError as e:  # the oracle itself is missing
    print(f"SKIP: {e}")
    sys.exit(77)

SRC = os.environ.get("PEFT_SRC", os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
BUILD = os.environ.get("PEFT_BUILD", os.path.join(SRC, "build"))
DRIVER = os.path.join(BUILD, "driver_pool")

TOL_SELF = 1e-5
TOL_PEFT = 1e-4
FAILURES = []


def check(name, ok, detail):
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}")
    if not ok:
        FAILURES.append(name)


def rel_err(a, b):
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def make_model(d):
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=256, max_position_embeddings=128, tie_word_embeddings=False,
                      rms_norm_eps=1e-5, initializer_range=0.1)
    m = LlamaForCausalLM(cfg).float()
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n.endswith("norm.weight"):
                p.copy_(1 + 0.3 * torch.randn_like(p))
    m.save_pretrained(d, safe_serialization=True)


def load_base(d):
    return AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()


ADAPTERS = {
    "lora_a": LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    "lora_b": LoraConfig(r=8, lora_alpha=4, target_modules="all-linear", use_rslora=True),
    "lora_c": LoraConfig(r=2, lora_alpha=4, target_modules=["gate_proj", "up_proj", "down_proj"],
                         rank_pattern={"down_proj": 6}, alpha_pattern={"up_proj": 3}),
    "dora_d": LoraConfig(r=6, lora_alpha=12, target_modules=["k_proj", "o_proj"], layers_to_transform=[1], use_dora=True),
    "hot": LoraConfig(r=3, lora_alpha=3, target_modules=["q_proj"]),
    "ia3_e": IA3Config(target_modules=["k_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"]),
    "vera_f": VeraConfig(r=16, target_modules=["q_proj", "v_proj"], save_projection=True),
}


def make_adapter(model_dir, root, name, seed):
    base = load_base(model_dir)
    pm = get_peft_model(base, ADAPTERS[name])
    torch.manual_seed(seed)
    with torch.no_grad():  # non-trivial weights: B / lambdas / magnitudes away from their inits
        for n, p in pm.named_parameters():
            if p.requires_grad:
                p.add_(0.2 * torch.randn_like(p))
    d = os.path.join(root, name)
    pm.save_pretrained(d)
    return d


# sequences: (adapter, prompt length); continuation of K tokens each
SEQS = [("lora_a", 5), ("lora_b", 9), ("__base__", 3), ("lora_c", 12), ("dora_d", 7), ("lora_a", 4), ("lora_b", 11),
        ("lora_c", 6)]
SEQS_OTHER = [("ia3_e", 6), ("vera_f", 10), ("lora_a", 4), ("__base__", 8), ("ia3_e", 3), ("vera_f", 5)]
K = 4


def run_driver(model_dir, dirs, seqs, prompts, conts, hot):
    with tempfile.TemporaryDirectory() as t:
        spec, out = os.path.join(t, "spec.txt"), os.path.join(t, "out.safetensors")
        with open(spec, "w") as f:
            for name in sorted({a for a, _ in seqs if a != "__base__"}):
                f.write(f"adapter {name} {dirs[name]}\n")
            if hot:
                f.write(f"hot hot {dirs['hot']}\n")
            for (a, _), p, c in zip(seqs, prompts, conts):
                f.write(f"seq {a} {' '.join(map(str, p))} / {' '.join(map(str, c))}\n")
        env = dict(os.environ, PEFT_DRIVER_MODEL=model_dir, PEFT_DRIVER_SPEC=spec, PEFT_DRIVER_OUT=out)
        r = subprocess.run([DRIVER], capture_output=True, text=True, env=env)
        if r.returncode != 0:
            raise RuntimeError(f"driver_pool failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
        return load_file(out)


def check_self(tag, seqs, got):
    """(a): the pool against each sequence alone, prompt rows and steps."""
    worst_f = worst_s = 0.0
    for s, (a, n) in enumerate(seqs):
        ef, es = rel_err(got["pool_fwd"][s, :n], got["alone_fwd"][s, :n]), rel_err(got["pool_steps"][s], got["alone_steps"][s])
        print(f"     seq {s} ({a}, {n} tokens): forward {ef:.2e}, steps {es:.2e}")
        worst_f, worst_s = max(worst_f, ef), max(worst_s, es)
    check(f"{tag} mixed forward == alone", worst_f < TOL_SELF, f"max rel err {worst_f:.2e} over {len(seqs)} sequences")
    check(f"{tag} prefill + {K} batched steps == alone", worst_s < TOL_SELF, f"max rel err {worst_s:.2e}")


def peft_full_logits(pm, prompts, conts, adapter_names):
    """PEFT's logits of prompt + continuation, right-padded batch [S, T, V]."""
    full = [p + c for p, c in zip(prompts, conts)]
    T = max(len(x) for x in full)
    ids = torch.zeros(len(full), T, dtype=torch.long)
    mask = torch.zeros(len(full), T, dtype=torch.long)
    for i, x in enumerate(full):
        ids[i, :len(x)] = torch.tensor(x)
        mask[i, :len(x)] = 1
    with torch.no_grad():
        kw = {"adapter_names": adapter_names} if adapter_names is not None else {}
        return pm(input_ids=ids, attention_mask=mask, **kw).logits.float()


PEFT_MIXABLE = {"lora_a", "lora_b", "lora_c", "__base__"}  # PEFT refuses adapter_names with DoRA, has none for IA3/VeRA


def peft_refs(model_dir, dirs, seqs, prompts, conts):
    """PEFT's full-sequence logits of each sequence: one mixed batch (adapter_names) over the
    sequences of plain LoRA adapters and the base, each other adapter alone."""
    ref = [None] * len(seqs)
    mixed = [i for i, (a, _) in enumerate(seqs) if a in PEFT_MIXABLE]
    names = [seqs[i][0] for i in mixed]
    loaded = sorted(set(names) - {"__base__"})
    if mixed and loaded:
        pm = PeftModel.from_pretrained(load_base(model_dir), dirs[loaded[0]], adapter_name=loaded[0]).eval()
        for a in loaded[1:]:
            pm.load_adapter(dirs[a], adapter_name=a)
        out = peft_full_logits(pm, [prompts[i] for i in mixed], [conts[i] for i in mixed], names)
        for j, i in enumerate(mixed):
            ref[i] = out[j]
    for i, (a, _) in enumerate(seqs):
        if ref[i] is None:
            m = load_base(model_dir) if a == "__base__" else PeftModel.from_pretrained(load_base(model_dir), dirs[a]).eval()
            ref[i] = peft_full_logits(m, [prompts[i]], [conts[i]], None)[0]
    return ref


def check_peft(tag, seqs, got, ref):
    """Compares the pool's prompt logits and step logits with PEFT's full-sequence logits ref[s]."""
    worst_f = worst_s = 0.0
    for s, (_, n) in enumerate(seqs):
        worst_f = max(worst_f, rel_err(got["pool_fwd"][s, :n], ref[s][:n]))
        worst_s = max(worst_s, rel_err(got["pool_steps"][s], ref[s][n - 1:n + K]))
    check(f"{tag} mixed forward == PEFT", worst_f < TOL_PEFT, f"max rel err {worst_f:.2e}")
    check(f"{tag} prefill + batched steps == PEFT", worst_s < TOL_PEFT, f"max rel err {worst_s:.2e}")


def main():
    if not os.path.exists(DRIVER):
        print(f"FAIL: {DRIVER} is not built")
        return 1
    gen = torch.Generator().manual_seed(1)
    with tempfile.TemporaryDirectory() as root:
        model_dir = os.path.join(root, "model")
        make_model(model_dir)
        dirs = {name: make_adapter(model_dir, root, name, 10 + i) for i, name in enumerate(ADAPTERS)}

        # a + b: LoRA family (with the hot adapter), PEFT's mixed batch as the oracle
        prompts = [torch.randint(0, 256, (n,), generator=gen).tolist() for _, n in SEQS]
        conts = [torch.randint(0, 256, (K,), generator=gen).tolist() for _ in SEQS]
        got = run_driver(model_dir, dirs, SEQS, prompts, conts, hot=True)
        check_self("lora/dora", SEQS, got)
        check_peft("lora/dora", SEQS, got, peft_refs(model_dir, dirs, SEQS, prompts, conts))

        # a + c: IA3 and VeRA mixed with LoRA and the base; PEFT runs each adapter alone
        prompts = [torch.randint(0, 256, (n,), generator=gen).tolist() for _, n in SEQS_OTHER]
        conts = [torch.randint(0, 256, (K,), generator=gen).tolist() for _ in SEQS_OTHER]
        got = run_driver(model_dir, dirs, SEQS_OTHER, prompts, conts, hot=False)
        check_self("ia3/vera", SEQS_OTHER, got)
        ref = peft_refs(model_dir, dirs, SEQS_OTHER, prompts, conts)
        check_peft("ia3/vera", SEQS_OTHER, got, ref)
    if FAILURES:
        print(f"FAILED: {', '.join(FAILURES)}")
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
