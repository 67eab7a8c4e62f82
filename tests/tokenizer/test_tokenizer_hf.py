#!/usr/bin/env python3
"""peft.c's tokenizer against Hugging Face `tokenizers` (the Rust library transformers runs).

Oracle: tokenizers.Tokenizer.from_file(tokenizer.json) on the real files of Llama-2, Llama-3 and
Qwen3 (../shared/tokenizers) and GPT-2 (../shared/models/tiny-gpt2). `peft tokenize` must give
  - the same ids, with and without special tokens, for a hard corpus (many scripts, emoji and
    ZWJ sequences, code, whitespace runs, special-token strings inside text, control characters,
    U+0085 / U+FEFF / U+2028, noncharacters, unassigned and private-use code points, lines of 100k
    characters), Tiny Shakespeare (whole, and by paragraph), the Alpaca and GSM8K samples;
  - the same text as HF's decode of those ids, keeping and skipping special tokens, which is
    decode(encode(x)) checked against HF's;
  - an error naming the byte offset for text that is not UTF-8 (where Python's own UTF-8 decoder
    fails), never a crash.
Then two tokenizer.json files built here from the real ones (tests of two fixed bugs):
  - tiny-gpt2 without the byte symbols of the ASCII controls and of bytes that start no
    UTF-8 sequence (as some published small-model files are): HF loads it and drops those
    characters; peft.c must load it and give HF's ids and decodes;
  - tiny-gpt2 with 200,000 added tokens, some overlapping ("<|a|>", "<|a|>b", "|a|>", ...), some
    single_word / lstrip / rstrip: ids of 1 MB of text dense with them must equal HF's (the old
    added-token matcher was quadratic; the throughput is printed, not asserted).
Prints the number of ids compared and of mismatches (must be 0). Exit 0 pass, 1 fail, 77 skip.
"""
import json
import os
import random
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.environ.get("PEFT_SRC") or os.path.dirname(os.path.dirname(HERE))
SHARED = os.environ.get("PEFT_SHARED") or os.path.join(SRC, "..", "shared")
PEFT_BIN = os.environ.get("PEFT_BIN") or os.path.join(SRC, "build", "peft")


def skip(why):
    print("SKIP: " + why)
    sys.exit(77)


try:
    from tokenizers import Tokenizer
except ImportError as e:
    skip(f"the tokenizers package is not importable ({e}); run make venv")
if not os.path.exists(PEFT_BIN):
    skip(f"{PEFT_BIN} (the peft CLI) is missing; run through ctest")

TOKENIZERS = [
    ("llama2", os.path.join(SHARED, "tokenizers", "llama2")),
    ("llama3", os.path.join(SHARED, "tokenizers", "llama3")),
    ("qwen3", os.path.join(SHARED, "tokenizers", "qwen3")),
    ("gpt2", os.path.join(SHARED, "models", "tiny-gpt2")),
]
for _, d in TOKENIZERS:
    if not os.path.exists(os.path.join(d, "tokenizer.json")):
        skip(f"{d}/tokenizer.json is missing")
SHAKESPEARE = os.path.join(SHARED, "data", "tinyshakespeare", "input.txt")
ALPACA = os.path.join(SHARED, "data", "alpaca", "alpaca_data_first200.json")
GSM8K = os.path.join(SHARED, "data", "gsm8k", "test.jsonl")
for f in (SHAKESPEARE, ALPACA, GSM8K):
    if not os.path.exists(f):
        skip(f"{f} is missing")

HARD = [
    "", " ", "  ", "\n", "\n\n\n", "\t\t x", "   leading spaces", "trailing spaces   ", "a  b   c    d",
    "Hello world", "Hello, World!", "It's the cat's hat, isn't it? We'll, they'd, I'm, you're, we've",
    "IT'S LOUD, DON'T SHOUT, SHE'LL GO", "'s 't 're 've 'm 'll 'd", "rock'n'roll o'clock",
    "1", "12", "123", "1234", "12345678901234567890", "3.14159 2,718 1e-9 0x1F -42", "year 2024: 365 days",
    "\u00e9t\u00e9 na\u00efve caf\u00e9 r\u00e9sum\u00e9 \u00fcber stra\u00dfe", "e\u0301te\u0301 (combining accents: NFC composes)",
    "\u4f60\u597d\uff0c\u4e16\u754c\uff01\u8fd9\u662f\u4e00\u4e2a\u6d4b\u8bd5\u3002",
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8\u3068\u30ab\u30bf\u30ab\u30ca",
    "\ud55c\uad6d\uc5b4 \ud14d\uc2a4\ud2b8", "\u0627\u0644\u0639\u0631\u0628\u064a\u0629 \u0644\u063a\u0629 \u062c\u0645\u064a\u0644\u0629",
    "\u05e2\u05d1\u05e8\u05d9\u05ea", "\u0420\u0443\u0441\u0441\u043a\u0438\u0439 \u0442\u0435\u043a\u0441\u0442, \u0401\u0436\u0438\u043a",
    "\u0395\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac", "\u0939\u093f\u0928\u094d\u0926\u0940 \u092d\u093e\u0937\u093e",
    "\u0e20\u0e32\u0e29\u0e32\u0e44\u0e17\u0e22",
    "\U0001f917 \U0001f600\U0001f603\U0001f604 \U0001f468\u200d\U0001f469\u200d\U0001f467 \U0001f1fa\U0001f1f8 \U0001f44d\U0001f3fd",
    "emoji\U0001f680inside\U0001f680words", "\u2581already has the metaspace \u2581 char",
    "math: \u2200x\u2208\u211d, x\u00b2 \u2265 0 \u2192 \u221e",
    "tabs\tand\r\nwindows\r\nnewlines", "mixed   \n  \n\t whitespace \u00a0nbsp \u3000ideographic",
    "<|endoftext|>", "a<|endoftext|>b", "<s>hi</s>", "text <s> in </s> between", "<|im_start|>user\nhi<|im_end|>\n",
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhello<|eot_id|>", "<think>\nhmm\n</think>\n\nok",
    "<|im_start|><|im_end|><|im_start|>", "<|im_start", "< s >", "<0x41> is not a byte here",
    "def f(x):\n    return x ** 2  # square\n", "for (int i = 0; i < n; i++) { a[i] = b[i] * 2; }",
    "{\"key\": [1, 2, 3], \"nested\": {\"a\": null}}", "https://example.com/path?q=1&r=two#frag", "user@example.org",
    "!!!???...,,,;;;", "----====____", "\"quoted\" 'single' `back`", "ALLCAPS lowercase MiXeD",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "a" * 300, " " * 40 + "x", "ab" * 100, "\u00e9" * 50, "\U0001f600" * 20,
]

# What the JavaScript oracle could not check (its \s differs from Unicode White_Space), control
# characters, and code points that are unusual but valid UTF-8.
UNUSUAL = [
    "next\u0085line", "\u0085", "  \u0085  x", "\ufeffBOM at the start", "zero\ufeffwidth\ufeff", "\ufeff",
    "line\u2028separator\u2029paragraph", "\u000b\u000c\u001c\u001d\u001e\u001f unit separators",
    "".join(chr(c) for c in range(1, 32)), "bell\u0007 esc\u001b[31mred\u001b[0m del\u007f",
    "c1 controls \u0080\u0081\u009f", "\ufffe \uffff \U0010ffff \U000effff noncharacters",
    "private use \ue000\uf8ff\U000f0000", "unassigned \u0378\u0379 \U0003134b", "replacement \ufffd\ufffd",
    "tags \U000e0041\U000e0042 \U0001f3f4\U000e0067\U000e0062\U000e0065\U000e006e\U000e0067\U000e007f",
    "variation \u2764\ufe0f \u2764\ufe0e", "bidi \u200f\u202e reversed \u202c\u200e", "zwj\u200dzwnj\u200c",
    "\u212b angstrom \u2126 ohm \u0958 qa (NFC exclusions)", "a\u0323\u0301 \u1e0d\u0307 reorder", "\u1100\u1161\u11a8 jamo",
    "\u0301 lone combining", "x" + "\u0301" * 40, "\U0001d400\U0001d401 math bold", "\U00020000\U0002a6d6 CJK ext B",
    "\u00ad soft\u00adhyphen", "\u3000\u3000ideographic\u3000", "\u00a0\u2007\u202f nbsp kinds",
    "\t" * 30 + "tabs", "\n" * 50, " \n \n \n", "\r\r\r\n",
]

# Very long lines: 100k characters of one kind (whitespace and digit runs are the slow cases of
# regex pre-tokenizers), and a long mixed line.
rng = random.Random(1234)
LONG = [
    " " * 100000, "a" * 100000, "7" * 100000, "\n" * 20000 + "x", ("ab " * 33334)[:100000],
    "".join(rng.choice("ab c\u00e9\u4e2d\U0001f600,.\n\t1") for _ in range(100000)),
]
# NUL bytes: jsonl lines go through C strings, so these go through --file.
WITH_NUL = ["a\x00b", "\x00", "nul\x00\x00 in a <|endoftext|>\x00 run"]


def corpus():
    texts = HARD + UNUSUAL + LONG
    texts += open(SHAKESPEARE, encoding="utf-8").read().split("\n\n")[:1000]
    for r in json.load(open(ALPACA, encoding="utf-8")):
        texts += [r["instruction"], r["input"], r["output"]]
    with open(GSM8K, encoding="utf-8") as f:
        for line in f.read().split("\n")[:250]:
            if line:
                r = json.loads(line)
                texts += [r["question"], r["answer"], f"Question: {r['question']}\nAnswer: {r['answer']}"]
    return texts


TMP = tempfile.mkdtemp(prefix="peft-tokhf-")
stats = {"ids": 0, "texts": 0, "decodes": 0, "mismatches": 0}


def peft(args, ok=True):
    p = subprocess.run([PEFT_BIN, "tokenize", *args], capture_output=True)
    if ok and p.returncode != 0:
        raise SystemExit(f"FAIL: peft tokenize {' '.join(args)} exited {p.returncode}: {p.stderr.decode(errors='replace')}")
    return p


def write_lines(name, items):
    path = os.path.join(TMP, name)
    with open(path, "w", encoding="utf-8") as f:
        for x in items:
            f.write(json.dumps(x, ensure_ascii=False) + "\n")
    return path


def id_lines(out):
    return [[int(t) for t in line.split(",")] if line else [] for line in out.decode().split("\n")[:-1]]


def expect_eq(what, got, want):
    if got == want:
        return
    stats["mismatches"] += 1
    if stats["mismatches"] <= 20:
        print(f"MISMATCH {what}\n  peft.c: {str(got)[:400]}\n  HF:     {str(want)[:400]}")


def compare_encodings(name, model_dir, hf, texts, specials=(True, False)):
    """ids of `peft tokenize --jsonl` against HF's encode_batch, per text."""
    path = write_lines(f"texts-{name}.jsonl", texts)
    for special in specials:
        got = id_lines(peft(["--model", model_dir, "--jsonl", path] + ([] if special else ["--no-special"])).stdout)
        want = [e.ids for e in hf.encode_batch(texts, add_special_tokens=special)]
        if len(got) != len(want):
            expect_eq(f"{name} special={special}: number of output lines", len(got), len(want))
            continue
        for i, (g, w) in enumerate(zip(got, want)):
            stats["ids"] += len(w)
            expect_eq(f"{name} encode(special={special}) #{i} {json.dumps(texts[i])[:60]}", g, w)
    stats["texts"] += len(texts) * len(specials)


def compare_decodes(name, model_dir, hf, encoded):
    """`peft tokenize --decode --jsonl` against HF's decode, keeping and skipping special tokens."""
    path = write_lines(f"ids-{name}.jsonl", encoded)
    for skip_special in (False, True):
        out = peft(["--model", model_dir, "--decode", "--jsonl", path] + (["--skip-special"] if skip_special else [])).stdout
        got = [json.loads(line) for line in out.decode().split("\n") if line]
        want = hf.decode_batch(encoded, skip_special_tokens=skip_special)
        expect_eq(f"{name} decode: number of output lines", len(got), len(want))
        for i, (g, w) in enumerate(zip(got, want)):
            stats["decodes"] += 1
            expect_eq(f"{name} decode(skip_special={skip_special}) #{i} of {encoded[i][:12]}", g, w)


def compare_file(name, model_dir, hf, text, label):
    path = os.path.join(TMP, f"file-{name}.txt")
    with open(path, "wb") as f:
        f.write(text.encode("utf-8"))
    got = id_lines(peft(["--model", model_dir, "--file", path]).stdout)[0]
    want = hf.encode(text).ids
    stats["ids"] += len(want)
    expect_eq(f"{name} --file {label} ({len(want)} ids)", got, want)


def real_tokenizers(texts):
    shakespeare = open(SHAKESPEARE, encoding="utf-8").read()
    for name, d in TOKENIZERS:
        hf = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
        compare_encodings(name, d, hf, texts)
        compare_file(name, d, hf, shakespeare, "whole Tiny Shakespeare")
        for k, x in enumerate(WITH_NUL):
            compare_file(name, d, hf, x, f"NUL text #{k}")
        # decode(encode(x)): HF's ids of every text (special tokens included), then both decodes
        encoded = [e.ids for e in hf.encode_batch(texts)]
        compare_decodes(name, d, hf, [ids for ids in encoded if ids])
        # invalid UTF-8 is refused with the offset where Python's decoder fails
        for bad in (b"ok \xff here", b"cut \xe4\xbd", b"\xed\xa0\x80 surrogate", b"over\xf4\x90\x80\x80long", b"\xc0\xaf"):
            path = os.path.join(TMP, "bad.txt")
            with open(path, "wb") as f:
                f.write(bad)
            try:
                bad.decode("utf-8")
                raise SystemExit(f"FAIL: the test's invalid text {bad!r} is valid UTF-8")
            except UnicodeDecodeError as e:
                offset = e.start
            p = peft(["--model", d, "--file", path], ok=False)
            msg = p.stderr.decode(errors="replace")
            expect_eq(f"{name} invalid UTF-8 {bad!r}: exit 1 naming byte {offset}",
                      (p.returncode, f"byte {offset}" in msg), (1, True))


# ---- a byte-level vocabulary without some byte symbols ----

def gpt2_byte_chars():
    """GPT-2's bytes_to_unicode: byte -> the character its vocabulary spells it with."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def missing_bytes():
    """tiny-gpt2's tokenizer.json without the symbols of the ASCII controls (except \\t, \\n,
    \\r, whose merges must then go too) and of the bytes that never start a UTF-8 sequence
    (0x80-0xC1, 0xF5-0xFF) that no merge needs: the layout HF loads and peft.c refused."""
    src = os.path.join(SHARED, "models", "tiny-gpt2")
    j = json.load(open(os.path.join(src, "tokenizer.json"), encoding="utf-8"))
    b2c = gpt2_byte_chars()
    merges = [m.split(" ") if isinstance(m, str) else m for m in j["model"]["merges"]]
    in_merges = {ch for a, b in merges for ch in a + b}
    drop = {b for b in list(range(0x20)) + list(range(0x80, 0xC2)) + list(range(0xF5, 0x100))
            if b2c[b] not in in_merges or b in (0x09, 0x0A, 0x0D)}
    gone = {b2c[b] for b in drop}
    vocab = j["model"]["vocab"]
    # a merge or vocabulary entry spelled with a dropped byte goes too (HF refuses merges of
    # tokens it lacks)
    j["model"]["vocab"] = {t: i for t, i in vocab.items() if not gone & set(t)}
    j["model"]["merges"] = [f"{a} {b}" for a, b in merges if not gone & set(a + b)]
    d = os.path.join(TMP, "gpt2-missing-bytes")
    os.mkdir(d)
    with open(os.path.join(d, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(j, f, ensure_ascii=False)
    print(f"missing bytes: dropped {len(drop)} byte symbols, {len(vocab) - len(j['model']['vocab'])} vocabulary"
          f" entries, {len(merges) - len(j['model']['merges'])} merges")
    hf = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
    texts = [
        "a\x04b", "\x00\x01\x02", "tab\there\r\nwindows\n", "esc\x1b[31mred\x1b[0m", "c1 \u0080\u0085\u009f",
        "\u00e9\u00ff\u0132 caf\u00e9 \u00c0 \u00d6", "\u0531\u0562 \u0570\u0561\u0575 armenian", "\u0400\u04ff cyrillic",
        "\U0001f600 \U0001f468\u200d\U0001f469 emoji", "\U000f0000\U0010ffff planes 15-16", "\u4e2d\u6587",
    ] + UNUSUAL + HARD
    compare_encodings("gpt2-missing-bytes", d, hf, texts)
    compare_decodes("gpt2-missing-bytes", d, hf, [e.ids for e in hf.encode_batch(texts)] + [[0, 5, 64, 65]])


# ---- 200,000 added tokens ----

def many_added():
    src = os.path.join(SHARED, "models", "tiny-gpt2")
    j = json.load(open(os.path.join(src, "tokenizer.json"), encoding="utf-8"))
    next_id = len(j["model"]["vocab"])
    added = j["added_tokens"]
    # (a content the vocabulary has would keep its vocabulary id in HF, whatever the file says)
    used = {a["content"] for a in added} | set(j["model"]["vocab"])

    def add(content, **flags):
        nonlocal next_id
        if content in used:
            return
        used.add(content)
        added.append({"id": next_id, "content": content, "single_word": flags.get("single_word", False),
                      "lstrip": flags.get("lstrip", False), "rstrip": flags.get("rstrip", False),
                      "normalized": False, "special": flags.get("special", False)})
        next_id += 1

    # overlapping: a token, its extensions, its suffixes and tokens inside it
    for t in ["<|a|>", "<|a|>b", "<|a|>bc", "|a|>", "a|", "<|a", "<|ab|>", "<|", "|>", "bc<|"]:
        add(t)
    add("<strip>", lstrip=True, rstrip=True, special=True)
    add(" helloq", single_word=True)
    add("qword", single_word=True)
    add("qwordy")
    rng = random.Random(7)
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789_"
    while len(added) < 200000:
        n = rng.randint(1, 6)
        add("<|" + "".join(rng.choice(alphabet) for _ in range(n)) + "|>", special=rng.random() < 0.1)
    d = os.path.join(TMP, "gpt2-many-added")
    os.mkdir(d)
    with open(os.path.join(d, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(j, f, ensure_ascii=False)
    contents = [a["content"] for a in added]
    pieces = contents[:14] * 20 + [" ", "  ", "x", "qwordy qword", "qwords", "\u00e9qword", "qword\u00b2", " helloq", "helloq", "<|", "|", "a", "\n", "caf\u00e9"]
    # 1 MB of text: random added tokens (and prefixes of them) between words
    parts, size = [], 0
    while size < 1 << 20:
        r = rng.random()
        p = rng.choice(contents) if r < 0.5 else rng.choice(contents)[:-1] if r < 0.6 else rng.choice(pieces)
        parts.append(p)
        size += len(p.encode("utf-8"))
    text = "".join(parts)
    t0 = time.time()
    hf = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
    t1 = time.time()
    want = hf.encode(text).ids
    t2 = time.time()
    path = os.path.join(TMP, "many-added.txt")
    with open(path, "wb") as f:
        f.write(text.encode("utf-8"))
    t3 = time.time()
    p = peft(["--model", d, "--file", path, "--time"])
    t4 = time.time()
    got = id_lines(p.stdout)[0]
    stats["ids"] += len(want)
    n_added = sum(1 for i in want if i >= 50257)
    expect_eq(f"200k added tokens: 1 MB ({len(want)} ids, {n_added} added)", got, want)
    print(f"200k added tokens, {size} bytes: HF load {t1 - t0:.2f} s, encode {t2 - t1:.2f} s; peft.c load+encode"
          f" {t4 - t3:.2f} s ({p.stderr.decode().strip()})")
    compare_encodings("gpt2-many-added", d, hf, pieces[:300] + [text[:5000], text[-5000:]] + HARD)


texts = corpus()
real_tokenizers(texts)
missing_bytes()
many_added()
subprocess.run(["rm", "-rf", TMP])
print(f"{stats['texts']} encodings ({len(texts)} texts x {len(TOKENIZERS)} tokenizers x 2, plus the built files), "
      f"{stats['ids']} ids compared, {stats['decodes']} decodes, {stats['mismatches']} mismatches")
sys.exit(1 if stats["mismatches"] else 0)
