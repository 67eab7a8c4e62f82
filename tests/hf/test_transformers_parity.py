#!/usr/bin/env python3
"""Logit and greedy-generation parity of peft.c's Llama-family forward with transformers itself.

Every variant (VARIANTS) is a random transformers model, LlamaForCausalLM / MistralForCausalLM /
Qwen2ForCausalLM built from its config class, written by save_pretrained(safe_serialization=True)
as transformers 5 writes it ("rope_parameters", "dtype", shards with an index); together they cover
GQA, MHA, tied and untied embeddings, Qwen2's q/k/v biases, Llama's attention_bias + mlp_bias,
llama3 RoPE scaling with an explicit head_dim, Mistral's sliding_window (peft.c enforces it as the
maximum context: longer inputs must be refused), bf16 and f16 checkpoints and a sharded one.

The reference is the checkpoint loaded back with AutoModelForCausalLM in float32 (for bf16/f16: the
rounded weights upcast, f32 math), model(input_ids).logits at every position. The C driver
(tests/drivers/driver_logits.c) runs
  * llama_forward over a [B, T] batch,
  * llama_decode token by token with the KV cache,
  * llama_decode in prefill chunks (last-token logits),
  * llama_forward on packed rows (positions restarting at 0) against transformers running each
    example alone,
and `peft generate --prompt-ids` must give the ids of model.generate(do_sample=False).
Relative error at a position = max_v |c - ref| / max_v |ref|: <= 1e-5 (f32), <= 1e-2 (bf16/f16).

This module also provides make_model() to tests/hf/test_transformers_lora.py.
Exit 0 = pass, 1 = fail, 77 = skipped (torch / transformers / safetensors not importable).
"""
import os
import subprocess
import sys
import tempfile

try:
    import torch
    import transformers
    from safetensors.torch import load_file
    from transformers import (AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM,
                              Qwen2Config, Qwen2ForCausalLM)
except ImportError as e:  # the oracle itself is missing
    print(f"SKIP: {e}")
    sys.exit(77)

SRC = os.environ.get("PEFT_SRC", os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
BUILD = os.environ.get("PEFT_BUILD", os.path.join(SRC, "build"))
PEFT_BIN = os.environ.get("PEFT_BIN", os.path.join(BUILD, "peft"))
DRIVER = os.path.join(BUILD, "driver_logits")

TOL_F32 = 1e-5
TOL_HALF = 1e-2
GEN_NEW = 8
SLIDING_WINDOW = 32

_COMMON = dict(vocab_size=256, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2,
               tie_word_embeddings=False)

# name -> (model class, config class, config overrides, stored dtype, max_shard_size)
VARIANTS = {
    "llama_gqa": (LlamaForCausalLM, LlamaConfig, {}, torch.float32, None),
    "llama_mha_tied": (LlamaForCausalLM, LlamaConfig,
                       dict(hidden_size=48, intermediate_size=128, num_key_value_heads=4, tie_word_embeddings=True,
                            vocab_size=259, rms_norm_eps=1e-6), torch.float32, None),
    "qwen2_bias": (Qwen2ForCausalLM, Qwen2Config,
                   dict(tie_word_embeddings=True, vocab_size=300, rms_norm_eps=1e-6,
                        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}), torch.float32, None),
    # explicit head_dim 16 != 48 / 4; original_max_position_embeddings 64 puts RoPE frequencies in
    # all three llama3 bands (kept, smoothed, divided by the factor).
    "llama3_rope": (LlamaForCausalLM, LlamaConfig,
                    dict(hidden_size=48, intermediate_size=96, head_dim=16,
                         rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                          "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                          "original_max_position_embeddings": 64}), torch.float32, None),
    "mistral": (MistralForCausalLM, MistralConfig,
                dict(sliding_window=SLIDING_WINDOW, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
                torch.float32, None),
    "llama_bf16": (LlamaForCausalLM, LlamaConfig, {}, torch.bfloat16, None),
    "llama_f16": (LlamaForCausalLM, LlamaConfig, {}, torch.float16, None),
    "llama_sharded": (LlamaForCausalLM, LlamaConfig, dict(vocab_size=200), torch.float32, "60KB"),
    "llama_attn_bias": (LlamaForCausalLM, LlamaConfig, dict(attention_bias=True, mlp_bias=True), torch.float32, None),
}

failures = []


def fail(msg):
    failures.append(msg)
    print("FAIL: " + msg)


def make_model(model_dir, variant, seed):
    """Saves a random transformers model of `variant` into model_dir; returns its config.

    transformers' own initialisation (std 0.02, unit norms, zero biases) makes logits nearly
    constant, so the weights are redrawn: matrices ~ N(0, 1/fan_in), embeddings N(0, 0.25), norm
    weights 1 + N(0, 0.01), biases N(0, 0.01); activations and logits are then O(1)."""
    model_cls, config_cls, over, dtype, shard = VARIANTS[variant]
    torch.manual_seed(seed)
    cfg = config_cls(**dict(_COMMON, **over))
    model = model_cls(cfg).float()
    with torch.no_grad():
        for name, p in model.named_parameters():  # a tied lm_head is the embedding, listed once
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn_like(p))
            elif "embed_tokens" in name:
                p.copy_(0.5 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) / p.shape[1] ** 0.5)
    kw = {"max_shard_size": shard} if shard else {}
    model.to(dtype).save_pretrained(model_dir, safe_serialization=True, **kw)
    return cfg


def load_reference(model_dir):
    """The checkpoint as transformers loads it, upcast to float32, eager attention."""
    m = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager")
    return m.eval()


def write_rows(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(" ".join(str(int(x)) for x in r) + "\n")


def run_driver(model_dir, ids, work, pos=None, mode="both", chunk=4):
    """Runs driver_logits; returns (exit status, stderr, dict of its output tensors)."""
    ids_path, out = os.path.join(work, "ids.txt"), os.path.join(work, "out.safetensors")
    write_rows(ids_path, ids)
    env = dict(os.environ, PEFT_DRIVER_MODEL=model_dir, PEFT_DRIVER_IDS=ids_path, PEFT_DRIVER_OUT=out,
               PEFT_DRIVER_MODE=mode, PEFT_DRIVER_CHUNK=str(chunk))
    for k in ("PEFT_DRIVER_POS", "PEFT_DRIVER_T", "PEFT_DRIVER_ADAPTER"):
        env.pop(k, None)
    if pos is not None:
        write_rows(os.path.join(work, "pos.txt"), pos)
        env["PEFT_DRIVER_POS"] = os.path.join(work, "pos.txt")
    r = subprocess.run([DRIVER], env=env, capture_output=True, text=True, timeout=300)
    return r.returncode, r.stderr.strip(), (load_file(out) if r.returncode == 0 else {})


def rel_err(c, ref):
    """Per-position relative error of c vs ref ([..., V]): max|c - ref| / max|ref| over V."""
    c = c.double().reshape(-1, c.shape[-1])
    ref = ref.double().reshape(-1, ref.shape[-1])
    return (c - ref).abs().max(dim=-1).values / ref.abs().max(dim=-1).values.clamp_min(1e-30)


def check(label, c, ref, tol):
    if c is None or tuple(c.shape) != tuple(ref.shape):
        fail(f"{label}: shape {None if c is None else tuple(c.shape)} vs transformers {tuple(ref.shape)}")
        return float("inf")
    if not torch.isfinite(c).all():
        fail(f"{label}: non-finite logits")
        return float("inf")
    e = rel_err(c, ref)
    bad = (e > tol).nonzero().flatten().tolist()
    if bad:
        fail(f"{label}: relative error {float(e.max()):.3g} > {tol:.0e} at {len(bad)} of {e.numel()} positions "
             f"(first: {bad[0]})")
    return float(e.max())


def hf_greedy(model, prompt):
    """model.generate(do_sample=False): the new ids and the smallest top-1/top-2 logit gap."""
    ids = torch.tensor([prompt])
    with torch.no_grad():
        g = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=GEN_NEW,
                           pad_token_id=model.config.eos_token_id, return_dict_in_generate=True, output_logits=True)
    margin = min(float(torch.topk(lg[0], 2).values.diff().abs()) for lg in g.logits)
    return g.sequences[0, len(prompt):].tolist(), margin


def run_generate(model_dir, prompt):
    r = subprocess.run([PEFT_BIN, "generate", "--model", model_dir, "--prompt-ids", ",".join(map(str, prompt)),
                        "--max-new", str(GEN_NEW)], capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise RuntimeError(f"peft generate exit {r.returncode}: {r.stderr.strip()}")
    return [int(x) for x in r.stdout.split()]


def check_variant(td, vi, variant, g, row):
    d = os.path.join(td, variant)
    cfg = make_model(d, variant, seed=100 + vi)
    files = sorted(os.listdir(d))
    if VARIANTS[variant][4] and sum(f.endswith(".safetensors") for f in files) < 2:
        fail(f"{variant}: save_pretrained wrote no shards ({files})")
    tol = TOL_F32 if VARIANTS[variant][3] == torch.float32 else TOL_HALF
    row["tol"] = tol
    ref_model = load_reference(d)
    B, T = 2, 11
    ids = torch.randint(0, cfg.vocab_size, (B, T), generator=g)
    with torch.no_grad():
        ref = ref_model(ids, use_cache=False).logits  # [B, T, V]
    rc, err, got = run_driver(d, ids.tolist(), td)
    if rc:
        fail(f"{variant}: driver exit {rc}: {err}")
        return
    row["forward"] = check(variant + " forward", got.get("logits"), ref, tol)
    row["decode"] = check(variant + " kv-decode", got.get("decode_logits"), ref, tol)
    row["prefill"] = check(variant + " chunked prefill", got.get("prefill_logits"), ref[:, -1], tol)

    # Packed rows: examples of 6+5 and 4+4+3 tokens, positions restarting at 0, each against
    # transformers running the example on its own.
    splits = [[6, 5], [4, 4, 3]]
    pos = [[p for n in s for p in range(n)] for s in splits]
    pref = torch.empty_like(ref)
    with torch.no_grad():
        for b, s in enumerate(splits):
            start = 0
            for n in s:
                pref[b, start:start + n] = ref_model(ids[b:b + 1, start:start + n], use_cache=False).logits[0]
                start += n
    rc, err, gp = run_driver(d, ids.tolist(), td, pos=pos, mode="forward")
    if rc:
        fail(f"{variant} packed: driver exit {rc}: {err}")
    else:
        row["packed"] = check(variant + " packed", gp.get("logits"), pref, tol)

    if variant == "mistral":  # longer than the window: refused, never computed without the window
        long_ids = torch.randint(0, cfg.vocab_size, (1, SLIDING_WINDOW + 3), generator=g)
        rc, err, _ = run_driver(d, long_ids.tolist(), td, mode="forward")
        if rc == 0 or "sliding_window" not in err:
            fail(f"mistral: {SLIDING_WINDOW + 3} tokens with sliding_window {SLIDING_WINDOW}: exit {rc}, '{err}'")

    prompt = ids[0, :5].tolist()
    want, margin = hf_greedy(ref_model, prompt)
    try:
        have = run_generate(d, prompt)
    except Exception as e:  # noqa: BLE001
        fail(f"{variant} generate: {e}")
        return
    if have == want:
        row["gen"] = "ok"
    elif margin < 1e-4 and len(have) == len(want):
        row["gen"] = "tie"
        print(f"note: {variant} greedy ids differ ({have} vs {want}) at a near tie (margin {margin:.2g})")
    else:
        row["gen"] = "FAIL"
        fail(f"{variant}: peft generate gave {have}, transformers generate {want} (min margin {margin:.3g})")


def main():
    torch.set_num_threads(2)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    for exe in (DRIVER, PEFT_BIN):
        if not os.access(exe, os.X_OK):
            print(f"FAIL: {exe} is not built")
            return 1
    g = torch.Generator().manual_seed(1234)
    rows = []
    with tempfile.TemporaryDirectory(prefix="peft_tf_parity_") as td:
        for vi, variant in enumerate(VARIANTS):
            row = {"variant": variant, "tol": float("nan")}
            rows.append(row)
            check_variant(td, vi, variant, g, row)

    def fmt(x):
        return "%9.2e" % x if isinstance(x, float) else "%9s" % ("-" if x is None else x)

    print("\n%-16s %7s %9s %9s %9s %9s %5s" % ("variant", "tol", "forward", "kvdecode", "prefill", "packed", "gen"))
    for r in rows:
        print("%-16s %7.0e %s %s %s %s %5s" % (r["variant"], r["tol"], fmt(r.get("forward")), fmt(r.get("decode")),
                                               fmt(r.get("prefill")), fmt(r.get("packed")), r.get("gen", "-")))
    n_gen = sum(r.get("gen") == "ok" for r in rows)
    if n_gen < len(rows) // 2:
        fail(f"greedy generation matched transformers exactly for only {n_gen} of {len(rows)} variants")
    if failures:
        print(f"\n{len(failures)} failure(s)")
        return 1
    print(f"\nall {len(rows)} variants match transformers {transformers.__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
