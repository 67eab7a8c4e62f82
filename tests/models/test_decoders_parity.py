#!/usr/bin/env python3
"""Decoder families Qwen3, Gemma, Gemma2 and Phi-3 against transformers + HF PEFT.

For each family a random *ForCausalLM is built from a small config (torch.manual_seed; weights
redrawn so that activations and logits are O(1)) and save_pretrained()-ed. Compared with peft.c:
  * logits of a forward over [2, 12] ids, of token-by-token KV-cache decoding and of a chunked
    prefill (tests/drivers/driver_logits.c), to 1e-4 of each position's largest logit;
  * LoRA training (tests/drivers/driver_train.c): the loss, every lora_A / lora_B gradient and the
    adapter after 3 AdamW steps, against HF PEFT's get_peft_model(LoraConfig(init_lora_weights=
    False)) on q_proj/v_proj (Phi-3: its fused qkv_proj and gate_up_proj), with and without
    peft.c's recomputation, to 1e-4;
  * greedy generation: `peft generate --prompt-ids` against model.generate(do_sample=False);
  * the CLI: `peft train` (LoRA on the same targets, a few steps on a tiny text with the demo
    tokenizer) writes an adapter that HF PEFT's PeftModel.from_pretrained loads and that gives
    peft.c's logits (1e-4), and that moved them away from the base model's.
Family specifics exercised: Qwen3's per-head q/k norms and explicit head_dim; Gemma's sqrt(C)
embeddings, (1 + w) norms, GeGLU and tied head; Gemma2's four norms per layer, attention and final
logit soft-capping, sliding windows (4) smaller than T on alternate layers and
query_pre_attn_scalar; Phi-3's fused sites. Unsupported configs (REFUSALS) are refused naming
config.json and the field.
Exit 0 = pass, 1 = fail, 77 = skipped (torch / transformers / peft not importable).
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import warnings

try:
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model
    from transformers import (Gemma2Config, Gemma2ForCausalLM, GemmaConfig, GemmaForCausalLM, Phi3Config,
                              Phi3ForCausalLM, Qwen3Config, Qwen3ForCausalLM)
except ImportError as e:  # the oracle itself is missing
    print(f"SKIP: {e}")
    sys.exit(77)

HF_TESTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "hf")
sys.path.insert(0, HF_TESTS)
import hf_train_oracle as oracle  # noqa: E402
import test_transformers_parity as tp  # noqa: E402

TOL = 1e-4
LR, STEPS = 1e-2, 3
DRIVER_TRAIN = os.path.join(tp.BUILD, "driver_train")

DEMO = os.path.join(tp.SRC, "models", "demo")  # its byte-level BPE tokenizer (1024 ids) for `peft train`
TEXT = ("The quick brown fox jumps over the lazy dog. A stitch in time saves nine. "
        "Peft trains small adapters on frozen decoders; the adapters are saved as PEFT saves them.\n") * 12

_COMMON = dict(vocab_size=1024, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2,
               pad_token_id=0)

# name -> (model class, config class, config overrides, LoRA targets)
FAMILIES = {
    # head_dim 24 != 64 / 4
    "qwen3": (Qwen3ForCausalLM, Qwen3Config, dict(head_dim=24, tie_word_embeddings=False), ["q_proj", "v_proj"]),
    "gemma": (GemmaForCausalLM, GemmaConfig, dict(head_dim=16, num_key_value_heads=1), ["q_proj", "v_proj"]),
    "phi3": (Phi3ForCausalLM, Phi3Config, dict(sliding_window=None, tie_word_embeddings=False),
             ["qkv_proj", "gate_up_proj"]),
    # windows of 4 < T = 12 on layers 0 and 2 (the default layer_types), both soft-caps active
    "gemma2": (Gemma2ForCausalLM, Gemma2Config,
               dict(num_hidden_layers=3, head_dim=16, sliding_window=4, query_pre_attn_scalar=24,
                    attn_logit_softcapping=3.0, final_logit_softcapping=4.0), ["q_proj", "v_proj"]),
}


def make_model(model_dir, family, seed):
    """A random transformers model of `family` saved into model_dir; returns its config. Matrices
    ~ N(0, 1/fan_in), embeddings N(0, 0.25) (Gemma: N(0, 1/C), O(1) after its sqrt(C) scaling, so
    that the tied head does not just repeat the last token), norm weights 1 + N(0, 0.01) (Gemma's
    (1 + w) norms: N(0, 0.01))."""
    model_cls, config_cls, over, _ = FAMILIES[family]
    torch.manual_seed(seed)
    cfg = config_cls(**dict(_COMMON, **over))
    model = model_cls(cfg).float()
    gemma = family.startswith("gemma")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_((0 if gemma else 1) + 0.1 * torch.randn_like(p))
            elif "embed_tokens" in name:
                p.copy_((cfg.hidden_size ** -0.5 if gemma else 0.5) * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) / p.shape[1] ** 0.5)
    model.save_pretrained(model_dir, safe_serialization=True)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(DEMO, f), model_dir)
    return cfg


def check_logits(d, family, ref_model, cfg, g, td):
    B, T = 2, 12
    ids = torch.randint(3, cfg.vocab_size, (B, T), generator=g)
    with torch.no_grad():
        ref = ref_model(ids, use_cache=False).logits
    rc, err, got = tp.run_driver(d, ids.tolist(), td)
    if rc:
        tp.fail(f"{family}: driver_logits exit {rc}: {err}")
        return
    errs = [tp.check(f"{family} {what}", got.get(key), r, TOL)
            for what, key, r in (("forward", "logits", ref), ("kv-decode", "decode_logits", ref),
                                 ("chunked prefill", "prefill_logits", ref[:, -1]))]
    print(f"{family:7s} logits: forward {errs[0]:.1e}  kv-decode {errs[1]:.1e}  prefill {errs[2]:.1e}")
    if family == "gemma2":  # control: the windows matter at T = 12 (without them peft.c must disagree)
        full = os.path.join(td, "no_window")
        shutil.copytree(d, full)
        with open(os.path.join(d, "config.json")) as f:
            c = json.load(f)
        with open(os.path.join(full, "config.json"), "w") as f:
            json.dump(dict(c, layer_types=["full_attention"] * cfg.num_hidden_layers), f)
        rc, err, nw = tp.run_driver(full, ids.tolist(), td, mode="forward")
        off = tp.rel_err(nw["logits"], ref).max().item() if rc == 0 else 0.0
        if off < 1e-3:
            tp.fail(f"gemma2: without the sliding windows peft.c still agrees ({off:.2g}; exit {rc} {err})")
        print(f"gemma2  control: all layers full attention is off by {off:.2g}")
    prompt = ids[0, :5].tolist()
    want, margin = tp.hf_greedy(ref_model, prompt)
    try:
        have = tp.run_generate(d, prompt)
    except Exception as e:  # noqa: BLE001
        tp.fail(f"{family} generate: {e}")
        return
    if have != want and not (margin < 1e-4 and len(have) == len(want)):
        tp.fail(f"{family}: peft generate gave {have}, transformers generate {want} (min margin {margin:.3g})")
    else:
        print(f"{family:7s} greedy generation: {have} ({'same as' if have == want else 'near tie with'} HF generate)")


def check_lora(work, family, cfg, g, recompute):
    targets = FAMILIES[family][3]
    model_dir = os.path.join(work, "model")
    torch.manual_seed(5)
    model = get_peft_model(tp.load_reference(model_dir),
                           LoraConfig(r=4, lora_alpha=8, target_modules=targets, lora_dropout=0.0, bias="none",
                                      init_lora_weights=False, task_type="CAUSAL_LM"))
    model.save_pretrained(os.path.join(work, "adapter"))
    model.train()
    ids, labels, _ = oracle.make_batch(cfg.vocab_size, 2, 12, False, g)
    oracle.write_batch(work, ids, oracle.driver_targets(labels))
    try:
        out = oracle.run_driver(DRIVER_TRAIN, work, LR, 0.0, STEPS, recompute)
    except RuntimeError as e:
        tp.fail(f"{family} LoRA: {e}")
        return
    ref = oracle.reference(model, lambda: model(input_ids=ids, labels=labels, use_cache=False).loss, LR, 0.0, STEPS)
    n_expected = 2 * len(targets) * cfg.num_hidden_layers
    if len(ref[1]) != n_expected:
        tp.fail(f"{family} LoRA: PEFT made {len(ref[1])} tensors, expected {n_expected}")
    if not oracle.compare(f"{family} LoRA {'+'.join(targets)}{' recompute' if recompute else ''}", out, ref, TOL):
        tp.fail(f"{family} LoRA parity")


def check_cli_adapter(work, family, ref_model, cfg, g):
    """`peft train` on TEXT, then HF PEFT loads the adapter: same logits as peft.c with it."""
    from peft import PeftModel
    d, out, data = os.path.join(work, "model"), os.path.join(work, "cli_adapter"), os.path.join(work, "train.txt")
    with open(data, "w") as f:
        f.write(TEXT)
    r = subprocess.run([tp.PEFT_BIN, "train", "--model", d, "--data", data, "--out", out, "--target",
                        ",".join(FAMILIES[family][3]), "--rank", "4", "--alpha", "8", "--steps", "4", "--batch", "2",
                        "--seq-len", "24", "--lr", "1e-2", "--seed", "3", "--no-progress", "--val-fraction", "0"],
                       capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        tp.fail(f"{family}: peft train exit {r.returncode}: {r.stderr.strip()}")
        return
    ids = torch.randint(3, cfg.vocab_size, (2, 10), generator=g)
    tp.write_rows(os.path.join(work, "ids.txt"), ids.tolist())
    env = dict(os.environ, PEFT_DRIVER_MODEL=d, PEFT_DRIVER_IDS=os.path.join(work, "ids.txt"),
               PEFT_DRIVER_OUT=os.path.join(work, "cli.safetensors"), PEFT_DRIVER_MODE="forward", PEFT_DRIVER_ADAPTER=out)
    r = subprocess.run([tp.DRIVER], env=env, capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        tp.fail(f"{family}: driver_logits with the trained adapter: {r.stderr.strip()}")
        return
    got = tp.load_file(os.path.join(work, "cli.safetensors"))["logits"]
    with torch.no_grad():
        base = ref_model(ids, use_cache=False).logits
        ref = PeftModel.from_pretrained(ref_model, out).eval()(ids, use_cache=False).logits
    err = tp.check(f"{family} peft-train adapter in HF PEFT", got, ref, TOL)
    moved = tp.rel_err(ref, base).max().item()
    if moved < 1e-3:
        tp.fail(f"{family}: the trained adapter hardly changes the logits ({moved:.2g})")
    print(f"{family:7s} peft train -> PeftModel.from_pretrained: logits {err:.1e} (the adapter moved them {moved:.1e})")


REFUSALS = {  # family -> (field, config.json overrides): configs peft.c cannot run faithfully
    "phi3": [("rope_scaling", {"rope_scaling": {"rope_type": "longrope", "short_factor": [1.0] * 8,
                                                 "long_factor": [1.0] * 8}}),
             ("partial_rotary_factor", {"partial_rotary_factor": 0.5})],
    "gemma": [("hidden_act", {"hidden_act": "relu"})],
    "gemma2": [("layer_types", {"layer_types": ["sliding_attention", "chunked_attention", "full_attention"]}),
               ("use_bidirectional_attention", {"use_bidirectional_attention": True})],
}


def check_refusals(d, family, td):
    """Each of REFUSALS[family] is refused naming config.json and the field."""
    with open(os.path.join(d, "config.json")) as f:
        base = json.load(f)
    for field, over in REFUSALS.get(family, []):
        bad = os.path.join(td, "bad_" + field)
        shutil.copytree(d, bad)
        with open(os.path.join(bad, "config.json"), "w") as f:
            json.dump(dict(base, **over), f)
        rc, err, _ = tp.run_driver(bad, [[1, 2, 3]], td, mode="forward")
        if rc == 0 or field not in err or "config.json" not in err:
            tp.fail(f"{family} with {field}: exit {rc}, message '{err}' (expected a refusal naming config.json and {field})")
        else:
            print(f"{family:7s} {field}: refused: {err.split('config.json: ')[-1]}")


def main():
    torch.set_num_threads(2)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    warnings.filterwarnings("ignore")
    for exe in (tp.DRIVER, DRIVER_TRAIN, tp.PEFT_BIN):
        if not os.access(exe, os.X_OK):
            print(f"FAIL: {exe} is not built")
            return 1
    only = sys.argv[1:] or list(FAMILIES)
    g = torch.Generator().manual_seed(77)
    with tempfile.TemporaryDirectory(prefix="peft_decoders_") as td:
        for fi, family in enumerate(only):
            work = os.path.join(td, family)
            d = os.path.join(work, "model")
            cfg = make_model(d, family, seed=200 + fi)
            check_logits(d, family, tp.load_reference(d), cfg, g, work)
            check_lora(work, family, cfg, g, recompute=False)
            check_lora(work, family, cfg, g, recompute=True)
            check_cli_adapter(work, family, tp.load_reference(d), cfg, g)
            check_refusals(d, family, work)
    print(f"{len(tp.failures)} failures")
    return 1 if tp.failures else 0


if __name__ == "__main__":
    sys.exit(main())
