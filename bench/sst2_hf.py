#!/usr/bin/env python3
"""SST-2 LoRA fine-tuning with transformers + HF PEFT: the peer of `peft train --task seq-cls` (issue 14).

One run = one seed in its own process (so ru_maxrss is this run's peak):
  BertForSequenceClassification.from_pretrained(--model, num_labels 2)   (a real pretrained encoder)
  peft.get_peft_model(LoraConfig(task_type SEQ_CLS, r, alpha, target query,value, dropout 0))
    -> the classifier head is trained in full (PEFT's modules_to_save for SEQ_CLS), all else frozen
  torch.optim.AdamW over the trainable parameters (weight decay --weight-decay, constant lr),
  gradient clipping at --clip (peft train's default 1), --epochs passes over --train in an order
  shuffled by --seed, rows padded to the longest in the batch and truncated to --max-len tokens;
  then accuracy (and F1 of label 1) on --dev.
Prints one JSON line: accuracy, f1, train/eval seconds, peak RSS, versions.
"""
import argparse
import json
import os
import resource
import sys
import time


def read_tsv(path, limit):
    """GLUE-style TSV with a header 'sentence<TAB>label'; no quoting (SOURCE.txt of ../shared/data/sst2)."""
    rows = []
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        if header != ["sentence", "label"]:
            sys.exit(f"{path}: header {header} is not ['sentence', 'label']")
        for i, line in enumerate(f, start=2):
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 2 or parts[1] not in ("0", "1"):
                sys.exit(f"{path}:{i}: expected 'sentence<TAB>0|1'")
            rows.append((parts[0], int(parts[1])))
            if limit and len(rows) == limit:
                break
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="HF BERT checkpoint dir (config.json, model.safetensors, tokenizer.json)")
    ap.add_argument("--train", required=True)
    ap.add_argument("--dev", required=True)
    ap.add_argument("--n-train", type=int, default=0, help="first N training rows (0: all)")
    ap.add_argument("--max-len", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=16)
    ap.add_argument("--target", default="query,value")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--save", default="", help="also save the adapter here (save_pretrained)")
    a = ap.parse_args()

    t_import = time.time()
    import numpy as np
    import torch
    import transformers
    import peft
    from transformers import AutoTokenizer, BertForSequenceClassification
    torch.set_num_threads(a.threads)
    import_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t_import = time.time() - t_import

    train = read_tsv(a.train, a.n_train)
    dev = read_tsv(a.dev, 0)
    tok = AutoTokenizer.from_pretrained(a.model)

    torch.manual_seed(a.seed)  # the head's init (classifier ~ N(0, 0.02)) and LoRA A's
    model = BertForSequenceClassification.from_pretrained(a.model, num_labels=2)
    cfg = peft.LoraConfig(task_type=peft.TaskType.SEQ_CLS, r=a.rank, lora_alpha=a.alpha, lora_dropout=0.0,
                          target_modules=a.target.split(","))
    model = peft.get_peft_model(model, cfg)
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=a.weight_decay)

    def batch_of(rows):
        enc = tok([s for s, _ in rows], padding=True, truncation=True, max_length=a.max_len, return_tensors="pt")
        return enc, torch.tensor([y for _, y in rows])

    g = np.random.default_rng(a.seed)
    losses = []
    model.train()
    t0 = time.time()
    for _ in range(a.epochs):
        order = g.permutation(len(train))
        for i in range(0, len(order), a.batch):
            enc, y = batch_of([train[j] for j in order[i:i + a.batch]])
            out = model(**enc, labels=y)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            if a.clip > 0:
                torch.nn.utils.clip_grad_norm_(params, a.clip)
            opt.step()
            losses.append(out.loss.item())
    train_s = time.time() - t0

    model.eval()
    t0 = time.time()
    pred = []
    with torch.no_grad():
        for i in range(0, len(dev), 64):
            enc, _ = batch_of(dev[i:i + 64])
            pred += model(**enc).logits.argmax(-1).tolist()
    eval_s = time.time() - t0
    gold = [y for _, y in dev]
    tp = sum(p == 1 and y == 1 for p, y in zip(pred, gold))
    fp = sum(p == 1 and y == 0 for p, y in zip(pred, gold))
    fn = sum(p == 0 and y == 1 for p, y in zip(pred, gold))
    acc = sum(p == y for p, y in zip(pred, gold)) / len(gold)
    f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    if a.save:
        model.save_pretrained(a.save)
    k = max(1, len(losses) // 10)
    print(json.dumps({
        "impl": "hf-peft", "seed": a.seed, "accuracy": round(acc, 6), "f1": round(f1, 6),
        "n_train": len(train), "n_dev": len(dev), "updates": len(losses), "trainable": n_trainable,
        "loss_first10pct": round(sum(losses[:k]) / k, 5), "loss_last10pct": round(sum(losses[-k:]) / k, 5),
        "train_s": round(train_s, 2), "eval_s": round(eval_s, 2), "import_s": round(t_import, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "import_rss_mb": round(import_rss_mb, 1), "threads": a.threads,
        "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
        "load_avg": round(os.getloadavg()[0], 2),
    }), flush=True)


if __name__ == "__main__":
    main()
