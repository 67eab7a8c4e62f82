#!/usr/bin/env python3
"""Build the embedded demo model + fine-tuning data for `make demo` (reproducible, CPU, 2 threads).

  /usr/bin/python3 tools/make_demo_model.py                # everything: tokenizer, pretrain, data
  /usr/bin/python3 tools/make_demo_model.py --check-lora   # + LoRA check of the demo task in PyTorch
  stages: --stage tokenizer|pretrain|data|check-lora|all

Outputs
  models/demo/{config.json, model.safetensors, tokenizer.json, tokenizer_config.json, SOURCE.txt}
  data/demo/{train.jsonl, val.jsonl, SOURCE.txt, lora_check.json}

a. Byte-level BPE tokenizer (GPT-2 style) trained on Tiny Shakespeare, vocab 1024:
   ids 0..255 = the 256 byte tokens in GPT-2 bytes_to_unicode order, 256..1022 = merges (in the order
   learned; merge rank = position in "merges"), 1023 = "<|endoftext|>" (bos = eos = pad).
   Pre-tokenisation: GPT-2's regex (ByteLevel, add_prefix_space false, use_regex true), hand-coded
   here because Python's `re` has no \\p{L}/\\p{N}.
b. LlamaForCausalLM (hidden 128, 4 layers, 4 heads, 2 KV heads, intermediate 352, tied embeddings)
   pretrained with AdamW on Tiny Shakespeare using tools/torch_llama.py's forward.
c. Demo fine-tuning task ("last word" of a 2-5 word list), see make_task_example(); --check-lora
   trains a LoRA on it in PyTorch and reports val loss / exact match before and after.
"""
import argparse
import json
import math
import os
import random
import sys
import time
import unicodedata

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import torch_llama as tl  # noqa: E402
from safetensors_io import save_hf_model  # noqa: E402

CORPUS = "/work/shared/data/tinyshakespeare/input.txt"
MODEL_DIR = os.path.join(ROOT, "models", "demo")
DATA_DIR = os.environ.get("DEMO_DATA_DIR", os.path.join(ROOT, "data", "demo"))
VOCAB_SIZE = 1024
SPECIAL = "<|endoftext|>"

SEED_PRETRAIN = 1234
SEED_DATA = 4321
SEED_LORA = 777

CFG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": VOCAB_SIZE - 1,
    "eos_token_id": VOCAB_SIZE - 1,
    "pad_token_id": VOCAB_SIZE - 1,
    "hidden_act": "silu",
    "hidden_size": 128,
    "initializer_range": 0.02,
    "intermediate_size": 352,
    "max_position_embeddings": 512,
    "mlp_bias": False,
    "num_attention_heads": 4,
    "num_hidden_layers": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-5,
    "rope_scaling": None,
    "rope_theta": 10000.0,
    "tie_word_embeddings": True,
    "torch_dtype": "float32",
    "transformers_version": "4.44.0",
    "use_cache": True,
    "vocab_size": VOCAB_SIZE,
}

# pretraining hyper-parameters
PT_BATCH = 16
PT_SEQ = 128
PT_STEPS = 1000
PT_LR = 3e-3
PT_WARMUP = 100
PT_WD = 0.1


# ============================================================================ tokenizer
def bytes_to_unicode():
    """GPT-2's reversible byte <-> unicode map; list order = GPT-2 vocab order of byte tokens."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return list(zip(bs, [chr(c) for c in cs]))


BYTE_ENC = dict(bytes_to_unicode())
BYTE_DEC = {v: k for k, v in BYTE_ENC.items()}


def _cat(c):
    k = unicodedata.category(c)[0]
    if k == "L":
        return "L"
    if k == "N":
        return "N"
    return "S" if c.isspace() else "P"


def gpt2_pretokenize(s):
    """Exactly GPT-2's pattern
    's|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+
    as a hand-written scanner."""
    out = []
    i, n = 0, len(s)
    cats = [_cat(c) for c in s]
    while i < n:
        c = s[i]
        if c == "'":
            for suf in ("s", "t", "re", "ve", "m", "ll", "d"):
                if s.startswith(suf, i + 1):
                    out.append(s[i:i + 1 + len(suf)])
                    i += 1 + len(suf)
                    break
            else:
                suf = None
            if suf is not None:
                continue
        if c == " " and i + 1 < n and cats[i + 1] != "S":
            j = i + 1
        elif cats[i] != "S":
            j = i
        else:
            j = None
        if j is not None:  # ' ?\p{L}+' | ' ?\p{N}+' | ' ?[^\s\p{L}\p{N}]+'
            k = cats[j]
            e = j + 1
            while e < n and cats[e] == k:
                e += 1
            out.append(s[i:e])
            i = e
            continue
        # whitespace (c is whitespace here)
        e = i
        while e < n and cats[e] == "S":
            e += 1
        if e == n or e - i == 1:
            out.append(s[i:e])
            i = e
        else:
            out.append(s[i:e - 1])  # \s+(?!\S): leave the last whitespace char
            i = e - 1
    return out


def train_bpe(text, n_merges):
    """Greedy most-frequent-pair BPE over pre-tokenised word counts (ties: smallest pair)."""
    counts = {}
    for w in gpt2_pretokenize(text):
        counts[w] = counts.get(w, 0) + 1
    words = []
    freqs = []
    for w, c in sorted(counts.items()):
        words.append([BYTE_ENC[b] for b in w.encode("utf-8")])
        freqs.append(c)
    pair_count = {}
    where = {}
    for wi, (sym, f) in enumerate(zip(words, freqs)):
        for a, b in zip(sym, sym[1:]):
            pair_count[(a, b)] = pair_count.get((a, b), 0) + f
            where.setdefault((a, b), set()).add(wi)
    merges = []
    for _ in range(n_merges):
        if not pair_count:
            break
        best = min(pair_count.items(), key=lambda kv: (-kv[1], kv[0]))[0]
        if pair_count[best] < 2:
            break
        merges.append(best)
        a, b = best
        new = a + b
        for wi in list(where.get(best, ())):
            sym = words[wi]
            f = freqs[wi]
            # remove old pair counts of this word
            for p in zip(sym, sym[1:]):
                pair_count[p] -= f
                if pair_count[p] == 0:
                    del pair_count[p]
            out = []
            i = 0
            while i < len(sym):
                if i + 1 < len(sym) and sym[i] == a and sym[i + 1] == b:
                    out.append(new)
                    i += 2
                else:
                    out.append(sym[i])
                    i += 1
            words[wi] = out
            for p in zip(out, out[1:]):
                pair_count[p] = pair_count.get(p, 0) + f
                where.setdefault(p, set()).add(wi)
        where.pop(best, None)
        pair_count.pop(best, None)
    return merges


def tokenizer_json(merges):
    vocab = {}
    for i, (_, ch) in enumerate(bytes_to_unicode()):
        vocab[ch] = i
    for a, b in merges:
        vocab[a + b] = len(vocab)
    sid = len(vocab)
    assert sid == VOCAB_SIZE - 1, sid
    vocab[SPECIAL] = sid  # also in model.vocab, as in GPT-2's tokenizer.json
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [{"id": sid, "content": SPECIAL, "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": True, "special": True}],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                          "use_regex": True},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False,
                           "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                    "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": False, "vocab": vocab,
                  "merges": ["%s %s" % (a, b) for a, b in merges]},
    }


def tokenizer_config():
    return {
        "add_bos_token": False,
        "add_eos_token": False,
        "added_tokens_decoder": {str(VOCAB_SIZE - 1): {
            "content": SPECIAL, "lstrip": False, "normalized": True, "rstrip": False,
            "single_word": False, "special": True}},
        "bos_token": SPECIAL,
        "clean_up_tokenization_spaces": False,
        "eos_token": SPECIAL,
        "pad_token": SPECIAL,
        "unk_token": SPECIAL,
        "model_max_length": 512,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }


class Tokenizer:
    """Encoder/decoder for the tokenizer.json written above (what HF `tokenizers` does with it:
    special-token split, GPT-2 regex, byte->unicode, BPE by merge rank)."""

    def __init__(self, path):
        with open(path) as f:
            tj = json.load(f)
        m = tj["model"]
        self.vocab = m["vocab"]
        self.inv = {v: k for k, v in self.vocab.items()}
        self.ranks = {}
        for r, mm in enumerate(m["merges"]):
            a, b = mm.split(" ") if isinstance(mm, str) else mm
            self.ranks[(a, b)] = r
        self.special = {t["content"]: t["id"] for t in tj["added_tokens"]}
        for c, i in self.special.items():
            self.inv[i] = c
        self.cache = {}

    def _bpe(self, word):
        if word in self.cache:
            return self.cache[word]
        sym = [BYTE_ENC[b] for b in word.encode("utf-8")]
        while len(sym) > 1:
            best = None
            for i in range(len(sym) - 1):
                r = self.ranks.get((sym[i], sym[i + 1]))
                if r is not None and (best is None or r < best[0]):
                    best = (r, i)
            if best is None:
                break
            a, b = sym[best[1]], sym[best[1] + 1]
            out = []
            i = 0
            while i < len(sym):
                if i + 1 < len(sym) and sym[i] == a and sym[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(sym[i])
                    i += 1
            sym = out
        ids = [self.vocab[s] for s in sym]
        self.cache[word] = ids
        return ids

    def encode(self, text):
        ids = []
        pieces = [text]
        for sp in self.special:
            nxt = []
            for p in pieces:
                if isinstance(p, int):
                    nxt.append(p)
                    continue
                parts = p.split(sp)
                for k, part in enumerate(parts):
                    if k:
                        nxt.append(self.special[sp])
                    nxt.append(part)
            pieces = nxt
        for p in pieces:
            if isinstance(p, int):
                ids.append(p)
            else:
                for w in gpt2_pretokenize(p):
                    ids.extend(self._bpe(w))
        return ids

    def decode(self, ids, skip_special=True):
        out = []
        buf = []
        for i in ids:
            t = self.inv[i]
            if i in self.special.values():
                if buf:
                    out.append(bytes(buf).decode("utf-8", "replace"))
                    buf = []
                if not skip_special:
                    out.append(t)
            else:
                buf.extend(BYTE_DEC[c] for c in t)
        if buf:
            out.append(bytes(buf).decode("utf-8", "replace"))
        return "".join(out)


def stage_tokenizer():
    os.makedirs(MODEL_DIR, exist_ok=True)
    text = open(CORPUS, encoding="utf-8").read()
    t0 = time.time()
    merges = train_bpe(text, VOCAB_SIZE - 256 - 1)
    with open(os.path.join(MODEL_DIR, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tokenizer_json(merges), f, ensure_ascii=False, indent=None)
    with open(os.path.join(MODEL_DIR, "tokenizer_config.json"), "w") as f:
        json.dump(tokenizer_config(), f, indent=2)
        f.write("\n")
    tok = Tokenizer(os.path.join(MODEL_DIR, "tokenizer.json"))
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    print("tokenizer: %d merges in %.1fs; corpus %d bytes -> %d tokens (%.2f bytes/token)"
          % (len(merges), time.time() - t0, len(text), len(ids), len(text) / len(ids)))
    return tok


def load_tok():
    return Tokenizer(os.path.join(MODEL_DIR, "tokenizer.json"))


# ============================================================================ pretraining
def init_params(cfg, seed):
    g = torch.Generator().manual_seed(seed)
    p = {}
    L = cfg["num_hidden_layers"]
    for name, shape in tl.param_shapes(cfg).items():
        if name.endswith("norm.weight"):
            p[name] = torch.ones(shape)
        else:
            std = cfg["initializer_range"]
            if name.endswith("o_proj.weight") or name.endswith("down_proj.weight"):
                std = std / math.sqrt(2 * L)
            p[name] = torch.randn(shape, generator=g) * std
    return p


def lm_loss(cfg, params, x, y, linear_hook=None):
    logits = tl.forward(cfg, params, x, linear_hook=linear_hook)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


@torch.no_grad()
def eval_loss(cfg, params, data, seq, n_batches=20, batch=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    tot = 0.0
    for _ in range(n_batches):
        ix = torch.randint(0, len(data) - seq - 1, (batch,), generator=g)
        x = torch.stack([data[i:i + seq] for i in ix])
        y = torch.stack([data[i + 1:i + seq + 1] for i in ix])
        tot += float(lm_loss(cfg, params, x, y))
    return tot / n_batches


def stage_pretrain(steps=PT_STEPS):
    tok = load_tok()
    text = open(CORPUS, encoding="utf-8").read()
    ids = torch.tensor(tok.encode(text), dtype=torch.long)
    n_val = len(ids) // 10
    train, val = ids[:-n_val], ids[-n_val:]
    cfg = dict(CFG)
    params = init_params(cfg, SEED_PRETRAIN)
    for v in params.values():
        v.requires_grad_(True)
    decay = [v for k, v in params.items() if v.dim() >= 2]
    no_decay = [v for k, v in params.items() if v.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": PT_WD},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=PT_LR, betas=(0.9, 0.95), eps=1e-8)
    g = torch.Generator().manual_seed(SEED_PRETRAIN + 1)
    print("pretrain: %d params, %d train / %d val tokens, %d steps of %dx%d"
          % (tl.num_params(cfg), len(train), len(val), steps, PT_BATCH, PT_SEQ))
    t0 = time.time()
    run = None
    for step in range(steps):
        lr = PT_LR * min(1.0, (step + 1) / PT_WARMUP)
        if step >= PT_WARMUP:
            prog = (step - PT_WARMUP) / max(1, steps - PT_WARMUP)
            lr = PT_LR * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * prog)))
        for gr in opt.param_groups:
            gr["lr"] = lr
        ix = torch.randint(0, len(train) - PT_SEQ - 1, (PT_BATCH,), generator=g)
        x = torch.stack([train[i:i + PT_SEQ] for i in ix])
        y = torch.stack([train[i + 1:i + PT_SEQ + 1] for i in ix])
        loss = lm_loss(cfg, params, x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(params.values()), 1.0)
        opt.step()
        run = float(loss) if run is None else 0.95 * run + 0.05 * float(loss)
        if step % 100 == 0 or step == steps - 1:
            print("step %5d  lr %.2e  train loss (ema) %.4f  %.1fs" % (step, lr, run, time.time() - t0),
                  flush=True)
    params = {k: v.detach().contiguous() for k, v in params.items()}
    tr = eval_loss(cfg, params, train, PT_SEQ)
    va = eval_loss(cfg, params, val, PT_SEQ)
    print("final: train loss %.4f  val loss %.4f  (%.0fs)" % (tr, va, time.time() - t0))
    save_hf_model(MODEL_DIR, cfg, params)
    sample = tl.greedy_generate(cfg, params, tok.encode("ROMEO:\n"), 40)
    print("sample:", repr("ROMEO:\n" + tok.decode(sample)))
    with open(os.path.join(MODEL_DIR, "train_log.json"), "w") as f:
        json.dump({"steps": steps, "train_loss": tr, "val_loss": va, "seconds": time.time() - t0,
                   "train_tokens": len(train), "val_tokens": len(val)}, f, indent=2)
    return tr, va


# ============================================================================ demo task
# Frequent Shakespeare words, each a single BPE token with a leading space (filtered at runtime).
WORD_POOL = """king lord love man sir good night time day death heart life blood father mother son
daughter queen duke prince world eye hand head house god heaven earth fair sweet true noble poor old
young great little dear gentle brother sister friend honour grace peace war name sword crown tongue
soul word light fire hell fear hope joy grief shame truth faith power land sea tears face men wife
lady master villain servant heaven court news law hour morning body mind hate rest state cause
death grave youth age fortune night nature pity virtue reason tale bed door gold head letter horse
ring voice fool knave""".split()

def task_words(tok):
    ok = []
    seen = set()
    for w in WORD_POOL:
        if w in seen:
            continue
        seen.add(w)
        if len(tok.encode(" " + w)) == 1:
            ok.append(w)
    return ok


# "last" (default): "Last word: <2-5 pool words>\nAnswer:" -> " <last word>\n".
# Alternatives kept for reference; with LoRA r=8, lr 3e-3, 300 steps of batch 8 they reached only
# 0% (reverse3) and ~20% (repeat3) exact match, "last" 100%.
TASK = os.environ.get("DEMO_TASK", "last")


def make_task_example(rng, words):
    if TASK == "reverse3":
        ws = rng.sample(words, 3)
        return {"prompt": "Reverse: " + " ".join(ws) + "\nAnswer:", "completion": " " + " ".join(ws[::-1]) + "\n"}
    if TASK == "reverse2":
        ws = rng.sample(words, 2)
        return {"prompt": "Reverse: " + " ".join(ws) + "\nAnswer:", "completion": " " + " ".join(ws[::-1]) + "\n"}
    if TASK == "repeat2":
        ws = rng.sample(words, 2)
        return {"prompt": "Repeat: " + " ".join(ws) + "\nAnswer:", "completion": " " + " ".join(ws) + "\n"}
    if TASK == "last3":
        ws = rng.sample(words, 3)
        return {"prompt": "Last word: " + " ".join(ws) + "\nAnswer:", "completion": " " + ws[-1] + "\n"}
    if TASK == "last":
        ws = rng.sample(words, rng.randint(2, 5))
        return {"prompt": "Last word: " + " ".join(ws) + "\nAnswer:", "completion": " " + ws[-1] + "\n"}
    if TASK == "repeat3":
        ws = rng.sample(words, 3)
        return {"prompt": "Repeat: " + " ".join(ws) + "\nAnswer:", "completion": " " + " ".join(ws) + "\n"}
    raise ValueError(TASK)


def stage_data(n_train=2000, n_val=200):
    tok = load_tok()
    words = task_words(tok)
    rng = random.Random(SEED_DATA)
    os.makedirs(DATA_DIR, exist_ok=True)
    seen = set()
    rows = []
    tries = 0
    while len(rows) < n_train + n_val:
        tries += 1
        if tries > 100 * (n_train + n_val):
            raise RuntimeError("task has too few distinct prompts")
        ex = make_task_example(rng, words)
        if ex["prompt"] in seen:
            continue
        seen.add(ex["prompt"])
        rows.append(ex)
    for name, part in (("train.jsonl", rows[:n_train]), ("val.jsonl", rows[n_train:])):
        with open(os.path.join(DATA_DIR, name), "w") as f:
            for r in part:
                f.write(json.dumps(r) + "\n")
    lens = [len(tok.encode(r["prompt"] + r["completion"])) for r in rows]
    print("data: %d words in pool; %d train / %d val rows; tokens per row %d..%d"
          % (len(words), n_train, n_val, min(lens), max(lens)))
    return len(words)


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(l) for l in f if l.strip()]


# ============================================================================ LoRA check
def lora_hook(lora, scale):
    def hook(name, x, W, b):
        y = F.linear(x, W, b)
        ab = lora.get(name)
        if ab is not None:
            A, B = ab
            y = y + scale * F.linear(F.linear(x, A), B)
        return y
    return hook


def encode_example(tok, ex, seq):
    p = tok.encode(ex["prompt"])
    c = tok.encode(ex["completion"])
    ids = (p + c)[:seq + 1]
    labels = ([-100] * len(p) + c)[:seq + 1]
    return ids, labels


def batchify(encoded, seq, pad_id):
    T = max(len(i) for i, _ in encoded) - 1
    T = min(T, seq)
    xs, ys = [], []
    for ids, lab in encoded:
        x = ids[:-1][:T]
        y = lab[1:][:T]
        xs.append(x + [pad_id] * (T - len(x)))
        ys.append(y + [-100] * (T - len(y)))
    return torch.tensor(xs), torch.tensor(ys)


@torch.no_grad()
def evaluate_task(cfg, params, tok, rows, hook, seq=64, max_new=12):
    # completion loss
    enc = [encode_example(tok, r, seq) for r in rows]
    tot, cnt = 0.0, 0
    for i in range(0, len(enc), 32):
        x, y = batchify(enc[i:i + 32], seq, cfg["pad_token_id"])
        lg = tl.forward(cfg, params, x, linear_hook=hook)
        l = F.cross_entropy(lg.reshape(-1, lg.shape[-1]), y.reshape(-1), ignore_index=-100,
                            reduction="sum")
        tot += float(l)
        cnt += int((y != -100).sum())
    # greedy exact match (stop at newline / eos)
    nl = tok.encode("\n")
    correct = 0
    examples = []
    for r in rows:
        ids = tok.encode(r["prompt"])
        out = []
        for _ in range(max_new):
            lg = tl.forward(cfg, params, torch.tensor([ids + out]), linear_hook=hook)
            nxt = int(lg[0, -1].argmax())
            out.append(nxt)
            if nxt == cfg["eos_token_id"] or tok.decode(out).endswith("\n"):
                break
        text = tok.decode(out)
        hit = text.split("\n")[0] == r["completion"].split("\n")[0]
        correct += hit
        if len(examples) < 3:
            examples.append((r["prompt"], text))
    return tot / cnt, correct / len(rows), examples


def stage_check_lora(steps=300, batch=8, seq=64, lr=3e-3, r=8, alpha=16, n_eval=100):
    torch.manual_seed(SEED_LORA)
    tok = load_tok()
    cfg = tl.load_config(MODEL_DIR)
    params = tl.load_params(MODEL_DIR)
    train = read_jsonl(os.path.join(DATA_DIR, "train.jsonl"))
    val = read_jsonl(os.path.join(DATA_DIR, "val.jsonl"))[:n_eval]
    g = torch.Generator().manual_seed(SEED_LORA)
    lora = {}
    names = []
    for k, v in tl.param_shapes(cfg).items():
        if k.endswith("_proj.weight"):
            names.append((k[:-len(".weight")], v))
    for name, (out_f, in_f) in names:
        A = torch.empty(r, in_f)
        # kaiming_uniform_(a=sqrt(5)) on [r, in]: bound = 1/sqrt(in)
        bound = 1.0 / math.sqrt(in_f)
        A.copy_((torch.rand(r, in_f, generator=g) * 2 - 1) * bound)
        B = torch.zeros(out_f, r)
        A.requires_grad_(True)
        B.requires_grad_(True)
        lora[name] = (A, B)
    hook = lora_hook(lora, alpha / r)
    n_lora = sum(A.numel() + B.numel() for A, B in lora.values())
    t0 = time.time()
    vl0, acc0, ex0 = evaluate_task(cfg, params, tok, val, hook, seq)
    print("LoRA check: r=%d alpha=%d on %d modules (%d params), %d steps batch %d seq %d lr %.0e"
          % (r, alpha, len(lora), n_lora, steps, batch, seq, lr))
    print("  before: val completion loss %.4f  exact-match %.1f%%   e.g. %r -> %r"
          % (vl0, 100 * acc0, ex0[0][0], ex0[0][1]))
    opt = torch.optim.AdamW([t for ab in lora.values() for t in ab], lr=lr, weight_decay=0.0)
    enc = [encode_example(tok, e, seq) for e in train]
    order = []
    rng = random.Random(SEED_LORA)
    for step in range(steps):
        if len(order) < batch:
            perm = list(range(len(enc)))
            rng.shuffle(perm)
            order += perm
        bi, order = order[:batch], order[batch:]
        x, y = batchify([enc[i] for i in bi], seq, cfg["pad_token_id"])
        lg = tl.forward(cfg, params, x, linear_hook=hook)
        loss = F.cross_entropy(lg.reshape(-1, lg.shape[-1]), y.reshape(-1), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            print("  step %4d  loss %.4f  %.1fs" % (step, float(loss), time.time() - t0), flush=True)
    vl1, acc1, ex1 = evaluate_task(cfg, params, tok, val, hook, seq)
    print("  after:  val completion loss %.4f  exact-match %.1f%%" % (vl1, 100 * acc1))
    for p, t in ex1:
        print("    %r -> %r" % (p, t))
    res = {"r": r, "alpha": alpha, "steps": steps, "batch": batch, "seq": seq, "lr": lr,
           "n_eval": len(val), "val_loss_before": vl0, "val_loss_after": vl1,
           "exact_match_before": acc0, "exact_match_after": acc1, "seconds": time.time() - t0}
    with open(os.path.join(DATA_DIR, "lora_check.json"), "w") as f:
        json.dump(res, f, indent=2)
    return res


# ============================================================================ SOURCE.txt
def write_sources():
    log = json.load(open(os.path.join(MODEL_DIR, "train_log.json")))
    size = os.path.getsize(os.path.join(MODEL_DIR, "model.safetensors"))
    cfg = CFG
    chk_path = os.path.join(DATA_DIR, "lora_check.json")
    chk = json.load(open(chk_path)) if os.path.exists(chk_path) else None
    src = """demo: a small LlamaForCausalLM pretrained on Tiny Shakespeare, made for `make demo`.
Made by tools/make_demo_model.py (this repository), deterministic: torch.set_num_threads(2),
torch.use_deterministic_algorithms(True), seeds: pretrain init/batches {sp} / {sp1}, data {sd}, LoRA check {sl}.
Regenerate: /usr/bin/python3 tools/make_demo_model.py [--check-lora]   (torch {tv}, CPU).

Training data: Tiny Shakespeare, karpathy/char-rnn data/tinyshakespeare/input.txt (1,115,394 bytes,
  sha256 86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed). Repository licence MIT;
  the text (Shakespeare) is in the public domain. Last 10% of the tokens held out as validation.

Tokenizer (tokenizer.json, tokenizer_config.json): byte-level BPE trained here on the same text,
  vocab {V}: ids 0-255 the byte tokens in GPT-2 bytes_to_unicode order, 256-1022 the merges in the
  order learned (merge rank = index in "merges"), 1023 "<|endoftext|>" (bos = eos = pad = unk).
  Pre-tokenizer ByteLevel (add_prefix_space false, use_regex true: GPT-2's regex), decoder ByteLevel.
  No BOS/EOS is added by encoding (PreTrainedTokenizerFast, add_bos_token false); pretraining
  used plain token windows without BOS.

Model (config.json, model.safetensors, F32, {size} bytes): LlamaForCausalLM, hidden {H},
  {L} layers, {nh} heads, {nkv} KV heads (GQA), head_dim {hd}, intermediate {I}, tied embeddings,
  rope_theta {rt}, rms_norm_eps {eps}, max_position_embeddings {mp}; {np} parameters.
Pretraining: AdamW (betas 0.9/0.95, weight decay {wd} on matrices), lr {lr} with {wu} warm-up steps and
  cosine decay to 10%, grad-norm clip 1.0, {steps} steps of batch {b} x seq {s} random windows
  ({secs:.0f} s on 2 CPU cores).
Final losses (mean of 20 random batches of {b}x{s}): train {trl:.4f}, val {val:.4f} (nats/token).
""".format(sp=SEED_PRETRAIN, sp1=SEED_PRETRAIN + 1, sd=SEED_DATA, sl=SEED_LORA, tv=torch.__version__,
           V=VOCAB_SIZE, size=size, H=cfg["hidden_size"], L=cfg["num_hidden_layers"],
           nh=cfg["num_attention_heads"], nkv=cfg["num_key_value_heads"], hd=cfg["head_dim"],
           I=cfg["intermediate_size"], rt=cfg["rope_theta"], eps=cfg["rms_norm_eps"],
           mp=cfg["max_position_embeddings"], np=tl.num_params(cfg), wd=PT_WD, lr=PT_LR, wu=PT_WARMUP,
           steps=log["steps"], b=PT_BATCH, s=PT_SEQ, secs=log["seconds"], trl=log["train_loss"],
           val=log["val_loss"])
    with open(os.path.join(MODEL_DIR, "SOURCE.txt"), "w") as f:
        f.write(src)
    d = """Demo fine-tuning task "last word", made by tools/make_demo_model.py (seed {sd}, task "{task}").
train.jsonl ({nt} rows), val.jsonl ({nv} rows): {{"prompt": ..., "completion": ...}}, e.g.
  {{"prompt": "Last word: true sir father great\\nAnswer:", "completion": " great\\n"}}
2 to 5 distinct words drawn from a fixed pool of 45 common Shakespeare words that are each a single
token (with leading space) in models/demo's tokenizer; no prompt appears twice, val prompts are not
in train. Prompt + completion is 14-17 tokens (no BOS). Train the loss on the completion tokens
only; the completion ends with "\\n" (no EOS token in the text). The base model cannot do it (it continues in Shakespeare style).
Generated data, no external source; same licence as this repository.
""".format(sd=SEED_DATA, task=TASK, nt=len(read_jsonl(os.path.join(DATA_DIR, "train.jsonl"))),
           nv=len(read_jsonl(os.path.join(DATA_DIR, "val.jsonl"))))
    if chk:
        d += """
PyTorch LoRA check (make_demo_model.py --check-lora, seed {sl}): LoRA r={r}, alpha={a} on all
q/k/v/o/gate/up/down projections, AdamW lr {lr}, {st} steps of batch {b} (seq <= {s}), loss on
completion tokens; on the first {ne} val rows:
  val completion loss {l0:.4f} -> {l1:.4f}, greedy exact match {a0:.1f}% -> {a1:.1f}% ({secs:.0f} s).
""".format(sl=SEED_LORA, r=chk["r"], a=chk["alpha"], lr=chk["lr"], st=chk["steps"], b=chk["batch"],
           s=chk["seq"], ne=chk["n_eval"], l0=chk["val_loss_before"], l1=chk["val_loss_after"],
           a0=100 * chk["exact_match_before"], a1=100 * chk["exact_match_after"], secs=chk["seconds"])
    with open(os.path.join(DATA_DIR, "SOURCE.txt"), "w") as f:
        f.write(d)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--stage", default="all",
                    choices=["all", "tokenizer", "pretrain", "data", "check-lora", "sources"])
    ap.add_argument("--check-lora", action="store_true")
    ap.add_argument("--steps", type=int, default=PT_STEPS)
    ap.add_argument("--lora-steps", type=int, default=300)
    ap.add_argument("--n-eval", type=int, default=200)
    ap.add_argument("--lora-lr", type=float, default=3e-3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    st = args.stage
    if st in ("all", "tokenizer"):
        stage_tokenizer()
    if st in ("all", "pretrain"):
        stage_pretrain(args.steps)
    if st in ("all", "data"):
        stage_data()
    if st == "check-lora" or (st == "all" and args.check_lora):
        stage_check_lora(steps=args.lora_steps, n_eval=args.n_eval, lr=args.lora_lr)
    if st in ("all", "sources", "check-lora", "data", "pretrain"):
        if os.path.exists(os.path.join(MODEL_DIR, "train_log.json")) and \
                os.path.exists(os.path.join(DATA_DIR, "train.jsonl")):
            write_sources()


if __name__ == "__main__":
    main()
