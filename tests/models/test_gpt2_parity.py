#!/usr/bin/env python3
"""GPT-2 (src/models/gpt2.c) against transformers and HF PEFT.

Random models from a small GPT2Config (torch.manual_seed), written with save_pretrained:
  * GPT2LMHeadModel: logits of right-padded rows (attention_mask) at their valid positions; with a
    PEFT LoRA on the fused c_attn (fan_in_fan_out=True, lora_B made non-zero) the loss (labels
    shifted by transformers) and every lora_A / lora_B gradient, with all layers saved and with
    gradient checkpointing (save_all 0); the model merged with that LoRA and written by save_hf,
    loaded back by transformers, gives PEFT's logits.
  * GPT2ForSequenceClassification (3 labels, pad_token_id set): logits at each row's last
    non-padding token, the loss, the LoRA gradients and score.weight's gradient.
  * PEFT prompt tuning and prefix tuning (3 virtual tokens): logits, the loss, the
    prompt_embeddings gradient, and greedy generation equal to PEFT's generate.
  * Greedy generation of the random LM through decode and decode_batch equal to generate.
Real files in ../shared/models:
  * tiny-gpt2 (HF-written): logits, and greedy generation through the KV cache (decode, and
    decode_batch over all rows) equal to model.generate(do_sample=False);
  * the PEFT adapters lora-distilgpt2-cattn-r8 and lora-gpt2-seqcls-cattn-r8: every tensor names a
    site of the base's shapes (configs written from GPT2Config(n_layer=6) / GPT2Config(), the
    bases are not at hand) with lora_A [r, in], lora_B [out, r], fan_in_fan_out as the adapter says.
`peft train` (LoRA on c_attn) on a random GPT-2: HF PEFT loads the adapter and gives peft.c's logits;
`peft merge` of it, loaded by transformers, gives them too.
Formats: a bf16 checkpoint in shards, tensor names without "transformer.", a seq-cls head the
checkpoint lacks (initialised N(0, initializer_range)); refusals of configs and tensors peft.c does
not run, naming the field / tensor.
Tolerance: 1e-4 relative to the max |value| of the reference.
Exit 0 = pass, 1 = fail, 77 = skipped (an oracle missing).
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

try:
    import torch
    from peft import LoraConfig, PeftModel, PrefixTuningConfig, PromptTuningConfig, get_peft_model
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
    from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel
except ImportError as e:
    print(f"SKIP: {e}")
    sys.exit(77)

SRC = os.environ.get("PEFT_SRC", os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
BUILD = os.environ.get("PEFT_BUILD", os.path.join(SRC, "build"))
SHARED = os.environ.get("PEFT_SHARED", os.path.join(SRC, "..", "shared"))
DRIVER = os.path.join(BUILD, "driver_gpt2")
PEFT_BIN = os.environ.get("PEFT_BIN", os.path.join(BUILD, "peft"))
TOL = 1e-4
ALPHA = 8

failures = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        failures.append(what)


def rel(a, b):
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return float((a - b).abs().max() / max(float(b.abs().max()), 1e-30))


def driver(mode, model_dir, batch, out, adapter=None, env=None):
    args = [DRIVER, mode, model_dir, batch, out] + ([adapter] if adapter else [])
    e = dict(os.environ, PEFT_DRIVER_ALPHA=str(ALPHA), **(env or {}))
    r = subprocess.run(args, env=e, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"{' '.join(args)}: {r.stderr}")


def small_config(**kw):
    base = dict(vocab_size=96, n_embd=32, n_layer=2, n_head=4, n_positions=64, layer_norm_epsilon=1e-5,
                activation_function="gelu_new", bos_token_id=0, eos_token_id=1,
                initializer_range=0.2)  # larger than GPT-2's 0.02: greedy continuations that vary
    base.update(kw)
    return GPT2Config(**base)


def batch_file(path, ids, lengths=None, targets=None, n_new=None):
    t = {"ids": torch.as_tensor(ids, dtype=torch.int32).contiguous()}
    if lengths is not None:
        t["lengths"] = torch.as_tensor(lengths, dtype=torch.int32)
    if targets is not None:
        t["targets"] = torch.as_tensor(targets, dtype=torch.int32).contiguous()
    if n_new is not None:
        t["n_new"] = torch.tensor([n_new], dtype=torch.int32)
    save_file(t, path)


def lora_model(model, tmp, name):
    """PEFT LoRA on c_attn with a non-zero lora_B, saved; returns (peft model, adapter file)."""
    pm = get_peft_model(model, LoraConfig(r=4, lora_alpha=ALPHA, target_modules=["c_attn"], fan_in_fan_out=True,
                                          lora_dropout=0.0))
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.copy_(0.1 * torch.randn_like(p))
    d = os.path.join(tmp, name)
    pm.save_pretrained(d)
    return pm, os.path.join(d, "adapter_model.safetensors")


def lora_grads(pm):
    out = {}
    for n, p in pm.named_parameters():
        if "lora_" in n:
            out[n.replace(".default", "")] = p.grad
    return out


def compare_grads(ref, got, what):
    worst, n = 0.0, 0
    for k, g in ref.items():
        if k not in got:
            check(False, f"{what}: driver has no gradient {k}")
            return
        worst = max(worst, rel(got[k], g))
        n += 1
    check(n > 0 and worst <= TOL, f"{what}: {n} LoRA gradients, max rel err {worst:.2e}")


def causal_lm(tmp):
    torch.manual_seed(0)
    model = GPT2LMHeadModel(small_config()).eval()
    mdir = os.path.join(tmp, "lm")
    model.save_pretrained(mdir)
    B, T = 3, 12
    ids = torch.randint(0, 96, (B, T))
    lengths = torch.tensor([12, 9, 5])
    mask = (torch.arange(T)[None, :] < lengths[:, None]).long()
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask).logits
    bf, out = os.path.join(tmp, "lm_batch.safetensors"), os.path.join(tmp, "lm_out.safetensors")
    batch_file(bf, ids, lengths)
    driver("logits", mdir, bf, out)
    got = load_file(out)["logits"]
    err = max(rel(got[b, :lengths[b]], ref[b, :lengths[b]]) for b in range(B))
    check(err <= TOL, f"causal-lm logits of right-padded rows: max rel err {err:.2e}")

    # greedy generation of the random model (before get_peft_model changes it): decode (KV cache) and decode_batch vs generate
    NEW = 8
    with torch.no_grad():
        gen = model.generate(input_ids=ids[:, :6], attention_mask=torch.ones_like(ids[:, :6]), max_new_tokens=NEW,
                             do_sample=False, pad_token_id=0)[:, 6:]
    gf = os.path.join(tmp, "lm_gen.safetensors")
    batch_file(gf, ids[:, :6], n_new=NEW)
    driver("generate", mdir, gf, out)
    got = load_file(out)
    check(torch.equal(got["ids"].long(), gen) and torch.equal(got["batch_ids"].long(), gen),
          f"causal-lm greedy generation (decode, decode_batch) equal to generate: {got['ids'][0].tolist()}")

    pm, afile = lora_model(model, tmp, "lm_lora")
    labels = ids.masked_fill(mask == 0, -100)
    labels[1, 0:3] = -100  # a prompt part without loss
    pm.zero_grad()
    res = pm(input_ids=ids, attention_mask=mask, labels=labels)
    res.loss.backward()
    loss_ref = float(res.loss.detach())
    targets = torch.full((B, T), -1)
    targets[:, :-1] = labels[:, 1:].masked_fill(labels[:, 1:] == -100, -1)
    batch_file(bf, ids, lengths, targets)
    for save_all in ("1", "0"):
        driver("grad", mdir, bf, out, afile, {"PEFT_DRIVER_SAVE_ALL": save_all})
        got = load_file(out)
        lerr = abs(float(got["loss"][0]) - float(res.loss)) / abs(float(res.loss))
        check(lerr <= TOL, f"causal-lm LoRA loss (save_all {save_all}): {float(got['loss'][0]):.6f} vs {float(res.loss):.6f}")
        compare_grads(lora_grads(pm), got, f"causal-lm LoRA c_attn (save_all {save_all})")

    # merged with the LoRA and saved by peft.c: transformers loads it and gives PEFT's logits
    sdir = os.path.join(tmp, "lm_saved")
    driver("save", mdir, bf, sdir, afile)
    back = GPT2LMHeadModel.from_pretrained(sdir).eval()
    with torch.no_grad():
        want = pm(input_ids=ids[:1]).logits
        have = back(input_ids=ids[:1]).logits
    err = rel(have, want)
    check(err <= TOL, f"save_hf of the LoRA-merged model loaded by transformers: max rel err {err:.2e}")


def virtual_tokens(tmp, prefix):
    """PEFT prompt tuning on GPT-2: virtual rows replace the first n_virtual inputs and get wpe[0..n);
    prefix tuning: trained keys/values of the first n_virtual rows, real tokens at positions n_virtual.."""
    what = "prefix tuning" if prefix else "prompt tuning"
    torch.manual_seed(3)
    model = GPT2LMHeadModel(small_config()).eval()
    mdir = os.path.join(tmp, "pt")
    model.save_pretrained(mdir)
    NV, B, T = 3, 2, 8
    cls = PrefixTuningConfig if prefix else PromptTuningConfig
    pm = get_peft_model(model, cls(task_type="CAUSAL_LM", num_virtual_tokens=NV))
    adir = os.path.join(tmp, "pt_adapter")
    pm.save_pretrained(adir)
    afile = os.path.join(adir, "adapter_model.safetensors")
    ids = torch.randint(0, 96, (B, T))
    labels = ids.clone()
    labels[0, :2] = -100
    pm.zero_grad()
    res = pm(input_ids=ids, labels=labels)
    res.loss.backward()
    full = torch.cat([torch.full((B, NV), -100), labels], dim=1)  # PEFT's labels over virtual + real rows
    targets = torch.full((B, NV + T), -1)
    targets[:, :-1] = full[:, 1:].masked_fill(full[:, 1:] == -100, -1)
    if prefix:  # no virtual row exists in HF: nothing predicts the first real token
        targets[:, NV - 1] = -1
    rows = torch.cat([torch.zeros((B, NV), dtype=ids.dtype), ids], dim=1)
    bf, out = os.path.join(tmp, "pt_batch.safetensors"), os.path.join(tmp, "pt_out.safetensors")
    batch_file(bf, rows, targets=targets)
    driver("grad", mdir, bf, out, afile)
    got = load_file(out)
    logits = got["logits"][:, NV:] if prefix else got["logits"]  # PEFT gives prefix tuning's real rows only
    err = rel(logits, res.logits.detach())
    check(err <= TOL, f"{what} logits: max rel err {err:.2e}")
    lerr = abs(float(got["loss"][0]) - float(res.loss.detach())) / float(res.loss.detach())
    check(lerr <= TOL, f"{what} loss: {float(got['loss'][0]):.6f} vs {float(res.loss.detach()):.6f}")
    gerr = rel(got["prompt_embeddings"], pm.prompt_encoder["default"].embedding.weight.grad)
    check(gerr <= TOL, f"{what} prompt_embeddings gradient: max rel err {gerr:.2e}")
    NEW = 6
    with torch.no_grad():
        gen = pm.generate(input_ids=ids[:, :5], attention_mask=torch.ones_like(ids[:, :5]), max_new_tokens=NEW,
                          do_sample=False, pad_token_id=0)[:, -NEW:]
    gf = os.path.join(tmp, "pt_gen.safetensors")
    batch_file(gf, ids[:, :5], n_new=NEW)
    driver("generate", mdir, gf, out, afile)
    got = load_file(out)
    check(torch.equal(got["ids"].long(), gen) and torch.equal(got["batch_ids"].long(), gen),
          f"{what} greedy generation through the KV cache equal to PEFT's generate: {got['ids'][0].tolist()}")


def seq_cls(tmp):
    torch.manual_seed(1)
    V = 96
    model = GPT2ForSequenceClassification(small_config(num_labels=3, pad_token_id=V - 1)).eval()
    mdir = os.path.join(tmp, "cls")
    model.save_pretrained(mdir)
    B, T = 4, 10
    ids = torch.randint(0, V - 1, (B, T))
    lengths = torch.tensor([10, 7, 3, 8])
    for b in range(B):
        ids[b, lengths[b]:] = V - 1
    mask = (torch.arange(T)[None, :] < lengths[:, None]).long()
    labels = torch.tensor([0, 2, 1, 2])
    pm, afile = lora_model(model, tmp, "cls_lora")
    pm.base_model.model.score.weight.requires_grad_(True)
    pm.zero_grad()
    res = pm(input_ids=ids, attention_mask=mask, labels=labels)
    res.loss.backward()
    bf, out = os.path.join(tmp, "cls_batch.safetensors"), os.path.join(tmp, "cls_out.safetensors")
    batch_file(bf, ids, lengths, labels)
    driver("grad", mdir, bf, out, afile, {"PEFT_DRIVER_TASK": "seq-cls"})
    got = load_file(out)
    err = rel(got["logits"], res.logits.detach())
    check(got["logits"].shape == (B, 3) and err <= TOL, f"seq-cls logits at the last non-padding token: max rel err {err:.2e}")
    lerr = abs(float(got["loss"][0]) - float(res.loss)) / abs(float(res.loss))
    check(lerr <= TOL, f"seq-cls loss: {float(got['loss'][0]):.6f} vs {float(res.loss):.6f}")
    compare_grads(lora_grads(pm), got, "seq-cls LoRA c_attn")
    serr = rel(got["score.weight"], pm.base_model.model.score.weight.grad)
    check(serr <= TOL, f"seq-cls score.weight gradient: max rel err {serr:.2e}")


def tiny_gpt2(tmp):
    mdir = os.path.join(SHARED, "models", "tiny-gpt2")
    model = GPT2LMHeadModel.from_pretrained(mdir).eval()
    torch.manual_seed(2)
    B, T, NEW = 2, 7, 6
    ids = torch.randint(0, model.config.vocab_size, (B, T))
    with torch.no_grad():
        ref = model(input_ids=ids).logits
        gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW, do_sample=False,
                             pad_token_id=0)[:, T:]
    bf, out = os.path.join(tmp, "tiny_batch.safetensors"), os.path.join(tmp, "tiny_out.safetensors")
    batch_file(bf, ids, n_new=NEW)
    driver("logits", mdir, bf, out)
    err = rel(load_file(out)["logits"], ref)
    check(err <= TOL, f"tiny-gpt2 logits: max rel err {err:.2e}")
    driver("generate", mdir, bf, out)
    got = load_file(out)
    check(torch.equal(got["ids"].long(), gen), f"tiny-gpt2 greedy generation through the KV cache: {got['ids'].tolist()} vs {gen.tolist()}")
    check(torch.equal(got["batch_ids"].long(), gen), "tiny-gpt2 greedy generation through decode_batch")


def driver_error(mode, model_dir, batch, out, env=None):
    args = [DRIVER, mode, model_dir, batch, out]
    r = subprocess.run(args, env=dict(os.environ, **(env or {})), capture_output=True, text=True)
    return r.returncode, r.stderr


def formats_and_refusals(tmp):
    torch.manual_seed(4)
    model = GPT2LMHeadModel(small_config()).eval()
    ids = torch.randint(0, 96, (2, 9))
    bf, out = os.path.join(tmp, "fmt_batch.safetensors"), os.path.join(tmp, "fmt_out.safetensors")
    batch_file(bf, ids)
    # bf16, sharded: the rounded weights upcast are the reference
    d16 = os.path.join(tmp, "bf16")
    model.to(torch.bfloat16).save_pretrained(d16, max_shard_size="40KB")
    model.float()
    with torch.no_grad():
        ref = model(input_ids=ids).logits
    shards = [f for f in os.listdir(d16) if f.endswith(".safetensors")]
    driver("logits", d16, bf, out)
    err = rel(load_file(out)["logits"], ref)
    check(len(shards) > 1 and err <= TOL, f"bf16 checkpoint in {len(shards)} shards: max rel err {err:.2e}")
    # tensor names without "transformer." (as GPT2Model and old Hub checkpoints write them)
    dplain = os.path.join(tmp, "plain")
    model.save_pretrained(dplain)
    sd = load_file(os.path.join(dplain, "model.safetensors"))
    save_file({k.removeprefix("transformer."): v.contiguous() for k, v in sd.items()}, os.path.join(dplain, "model.safetensors"))
    driver("logits", dplain, bf, out)
    err = rel(load_file(out)["logits"], ref)
    check(err <= TOL, f"tensor names without the transformer. prefix: max rel err {err:.2e}")
    # seq-cls on a causal-LM checkpoint: score.weight initialised N(0, initializer_range)
    dsc = os.path.join(tmp, "score_init")
    driver("save", dplain, bf, dsc, env={"PEFT_DRIVER_TASK": "seq-cls"})
    score = load_file(os.path.join(dsc, "model.safetensors"))["score.weight"]
    std = float(score.std())
    check(score.shape == (model.config.num_labels, 32) and abs(std / model.config.initializer_range - 1) < 0.2,
          f"missing score.weight initialised: shape {tuple(score.shape)}, std {std:.4f} (initializer_range "
          f"{model.config.initializer_range})")
    # refusals name the file and the field / tensor
    cfg = json.load(open(os.path.join(dplain, "config.json")))
    cases = [("activation_function", "relu", "activation_function"), ("scale_attn_by_inverse_layer_idx", True,
             "scale_attn_by_inverse_layer_idx"), ("n_head", 5, "n_head"), ("tie_word_embeddings", False, "tie_word_embeddings")]
    for key, val, needle in cases:
        d = os.path.join(tmp, f"bad_{key}")
        os.makedirs(d, exist_ok=True)
        json.dump(dict(cfg, **{key: val}), open(os.path.join(d, "config.json"), "w"))
        os.symlink(os.path.join(dplain, "model.safetensors"), os.path.join(d, "model.safetensors"))
        rc, msg = driver_error("logits", d, bf, out)
        check(rc != 0 and needle in msg and "config.json" in msg, f"config {key} = {val!r} refused: {msg.strip()}")
    for what, edit in (("shape", lambda t: t[:, :-1]), ("nan", lambda t: t.masked_fill(torch.rand(t.shape) < 0.01, float("nan")))):
        d = os.path.join(tmp, f"bad_{what}")
        os.makedirs(d, exist_ok=True)
        json.dump(cfg, open(os.path.join(d, "config.json"), "w"))
        bad = dict(sd)
        bad["transformer.h.1.mlp.c_fc.weight"] = edit(sd["transformer.h.1.mlp.c_fc.weight"]).contiguous()
        save_file(bad, os.path.join(d, "model.safetensors"))
        rc, msg = driver_error("logits", d, bf, out)
        check(rc != 0 and "transformer.h.1.mlp.c_fc.weight" in msg, f"tensor with a bad {what} refused: {msg.strip()}")


def cli_train(tmp):
    """`peft train` LoRA on c_attn of a random GPT-2 (tiny-gpt2's tokenizer); HF PEFT loads the adapter
    and gives the logits peft.c gives with it (peft_adapter_set_load in the driver)."""
    torch.manual_seed(5)
    mdir = os.path.join(tmp, "cli_model")
    GPT2LMHeadModel(small_config(vocab_size=50257, n_positions=128)).save_pretrained(mdir)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(SHARED, "models", "tiny-gpt2", f), mdir)
    data = os.path.join(tmp, "cli_data.txt")
    with open(data, "w") as f:
        for i in range(40):
            f.write(f"the quick brown fox jumps over the lazy dog number {i} and runs away.\n")
    adir = os.path.join(tmp, "cli_adapter")
    r = subprocess.run([PEFT_BIN, "train", "--model", mdir, "--data", data, "--out", adir, "--target", "c_attn", "--rank", "4",
                        "--alpha", "8", "--steps", "4", "--batch", "2", "--seq-len", "32", "--lr", "1e-2"],
                       capture_output=True, text=True)
    if r.returncode:
        check(False, f"peft train on GPT-2: {r.stderr.strip()}")
        return
    fifo = json.load(open(os.path.join(adir, "adapter_config.json"))).get("fan_in_fan_out")
    check(fifo is True, f"peft train on GPT-2's Conv1D c_attn writes fan_in_fan_out true, as PEFT does (got {fifo!r})")
    pm = PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained(mdir), adir).eval()
    moved = max(float(p.abs().max()) for n, p in pm.named_parameters() if "lora_B" in n)
    ids = torch.randint(0, 50257, (2, 10))
    with torch.no_grad():
        ref = pm(input_ids=ids).logits
    bf, out = os.path.join(tmp, "cli_batch.safetensors"), os.path.join(tmp, "cli_out.safetensors")
    batch_file(bf, ids)
    driver("logits", mdir, bf, out, adir)
    err = rel(load_file(out)["logits"], ref)
    check(moved > 0 and err <= TOL, f"peft train LoRA c_attn loaded by HF PEFT (max |lora_B| {moved:.3g}): logits max rel err {err:.2e}")
    merged = os.path.join(tmp, "cli_merged")
    r = subprocess.run([PEFT_BIN, "merge", "--model", mdir, "--adapter", adir, "--out", merged], capture_output=True, text=True)
    if r.returncode:
        check(False, f"peft merge on GPT-2: {r.stderr.strip()}")
        return
    with torch.no_grad():
        have = GPT2LMHeadModel.from_pretrained(merged).eval()(input_ids=ids).logits
    err = rel(have, ref)
    check(err <= TOL, f"peft merge (save_hf, Conv1D layout) loaded by transformers gives HF PEFT's logits: max rel err {err:.2e}")


def real_adapters(tmp):
    for name, cfg in (("lora-distilgpt2-cattn-r8", GPT2Config(n_layer=6)), ("lora-gpt2-seqcls-cattn-r8", GPT2Config())):
        adir = os.path.join(SHARED, "models", name)
        mdir = os.path.join(tmp, name + "-base")
        cfg.save_pretrained(mdir)
        listing = os.path.join(tmp, name + ".sites")
        driver("sites", mdir, "-", listing)
        sites = {}
        for line in open(listing):
            f = line.split()
            if f[0] != "norm":
                sites[f[0]] = (int(f[1]), int(f[2]), int(f[3]))
        acfg = json.load(open(os.path.join(adir, "adapter_config.json")))
        r, n, bad = acfg["r"], 0, []
        with safe_open(os.path.join(adir, "adapter_model.safetensors"), "pt") as f:
            for k in f.keys():
                shape = tuple(f.get_slice(k).get_shape())
                if k == "base_model.model.score.weight":  # the seq-cls head [n_labels, C]
                    if shape[1] != cfg.n_embd:
                        bad.append(k)
                    continue
                site, _, kind = k[len("base_model.model."):].rpartition(".lora_")
                if site not in sites:
                    bad.append(k)
                    continue
                out_f, in_f, fifo = sites[site]
                want = (r, in_f) if kind == "A.weight" else (out_f, r)
                if shape != want or fifo != int(acfg["fan_in_fan_out"]):
                    bad.append(f"{k} {shape} vs {want}")
                n += 1
        check(n > 0 and not bad, f"{name}: {n} LoRA tensors match gpt2.c's sites of the base's config {bad[:3]}")


def main():
    if not os.path.exists(os.path.join(SHARED, "models", "tiny-gpt2", "model.safetensors")):
        print(f"SKIP: {SHARED}/models/tiny-gpt2 not present")
        return 77
    with tempfile.TemporaryDirectory() as tmp:
        torch.set_num_threads(2)
        causal_lm(tmp)
        virtual_tokens(tmp, prefix=False)
        virtual_tokens(tmp, prefix=True)
        seq_cls(tmp)
        tiny_gpt2(tmp)
        real_adapters(tmp)
        formats_and_refusals(tmp)
        cli_train(tmp)
    print(f"{len(failures)} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
