#!/usr/bin/env python3
"""Seed corpora for the fuzzers, generated at run time from the ../shared fixtures (nothing
from ../shared is stored in the repository).

  make_seeds.py SHARED_DIR OUT_DIR [TOKENIZER_ROOT]
writes OUT_DIR/safetensors/*: for every shared *.safetensors, a shrunken but valid copy (same
names, dtypes and ranks, every dimension cut to at most 2, offsets recomputed, data taken from
the original) and the bare header; plus small hand-made files (empty, scalar, bf16/f16).
OUT_DIR/config/*: every shared config.json / adapter_config.json / index json, and a few
hand-written Llama, Mistral, Qwen2 and llama3-RoPE configs.
OUT_DIR/adapter_config/*: every shared adapter_config.json and hand-written LoRA / DoRA / IA3 /
VeRA configs (patterns, regex targets, layers_to_transform).
OUT_DIR/tokenizer/*: every tokenizer.json under SHARED_DIR/models and TOKENIZER_ROOT/*/models
shrunk below 64 KiB (the pipeline, added tokens and post-processor kept; the first ids of the
vocabulary, the byte symbols and the merges among them), each alone and followed by a NUL byte
and its tokenizer_config.json (as fuzz_tokenizer.c reads them); two hand-written BERT-style
WordPiece tokenizers (BertProcessing, TemplateProcessing with type ids), alone and with a config.
OUT_DIR/chat/*: message lists (system / user / assistant turns) and the chat_template texts.
OUT_DIR/dataset/*: two option bytes (see fuzz_dataset.c) and a few records from each shared
data file, in each record format.
OUT_DIR/image/*: small synthetic PNGs of every colour type and bit depth (written here with
zlib; tRNS, palette, interlaced, 16-bit), JPEGs (RGB, gray, CMYK, progressive, 4:2:0) when
Pillow is importable (run with the venv's python), each alone and after a
preprocessor_config.json and a NUL byte (as fuzz_image.c reads them).  Standard library
otherwise.
OUT_DIR/serve_request/*: an option byte (see fuzz_serve_request.c) and an OpenAI-style
completion, chat, load or unload body.
"""
import glob
import json
import os
import struct
import sys

SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def st_bytes(header, data):
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def shrink(raw, max_tensors=48):
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    base = 8 + n
    out, blobs, off = {}, [], 0
    if "__metadata__" in header:
        out["__metadata__"] = header["__metadata__"]
    for name in sorted(k for k in header if k != "__metadata__")[:max_tensors]:
        t = header[name]
        shape = [min(d, 2) for d in t["shape"]]
        count = 1
        for d in shape:
            count *= d
        nb = count * SIZES.get(t["dtype"], 1)
        b = t["data_offsets"][0]
        blobs.append(raw[base + b: base + b + nb])
        out[name] = {"dtype": t["dtype"], "shape": shape, "data_offsets": [off, off + nb]}
        off += nb
    return st_bytes(out, b"".join(blobs)), raw[:base]


def main():
    shared, out = sys.argv[1], sys.argv[2]
    st_dir, cfg_dir = os.path.join(out, "safetensors"), os.path.join(out, "config")
    os.makedirs(st_dir, exist_ok=True)
    os.makedirs(cfg_dir, exist_ok=True)
    n_st = n_cfg = 0
    for p in sorted(glob.glob(os.path.join(shared, "models", "*", "*.safetensors"))):
        tag = os.path.basename(os.path.dirname(p))
        with open(p, "rb") as f:
            raw = f.read()
        try:
            small, head = shrink(raw)
        except Exception as e:  # noqa: BLE001
            print("make_seeds: skipping %s: %s" % (p, e))
            continue
        open(os.path.join(st_dir, tag + ".small"), "wb").write(small)
        open(os.path.join(st_dir, tag + ".header"), "wb").write(head)
        n_st += 2
    hand = {
        "empty": st_bytes({}, b""),
        "scalar": st_bytes({"s": {"dtype": "F32", "shape": [], "data_offsets": [0, 4]}}, struct.pack("<f", 1.5)),
        "mixed": st_bytes({"__metadata__": {"format": "pt"},
                           "a": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]},
                           "b": {"dtype": "F16", "shape": [1, 2], "data_offsets": [4, 8]},
                           "c": {"dtype": "F64", "shape": [1], "data_offsets": [8, 16]},
                           "z": {"dtype": "I64", "shape": [0, 3], "data_offsets": [16, 16]}},
                          b"\x80\x3f\x20\xc0\x00\x3c\x00\xc1" + struct.pack("<d", -2.0)),
    }
    for k, v in hand.items():
        open(os.path.join(st_dir, "hand_" + k), "wb").write(v)
        n_st += 1
    for p in sorted(glob.glob(os.path.join(shared, "models", "*", "*.json"))):
        if os.path.getsize(p) > 65536:
            continue
        tag = os.path.basename(os.path.dirname(p)) + "_" + os.path.basename(p)
        open(os.path.join(cfg_dir, tag), "wb").write(open(p, "rb").read())
        n_cfg += 1
    base = {"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 160,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 256,
            "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu",
            "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": [2, 3], "torch_dtype": "bfloat16"}
    variants = {
        "llama": {},
        "llama3": {"head_dim": 16, "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                     "high_freq_factor": 4.0, "original_max_position_embeddings": 64}},
        "mistral": {"architectures": ["MistralForCausalLM"], "sliding_window": 4096},
        "qwen2": {"architectures": ["Qwen2ForCausalLM"], "use_sliding_window": False, "tie_word_embeddings": True},
        "bias": {"attention_bias": True, "mlp_bias": True, "rope_scaling": None},
    }
    for k, v in variants.items():
        c = dict(base)
        c.update(v)
        open(os.path.join(cfg_dir, "hand_" + k + ".json"), "w").write(json.dumps(c, indent=1))
        n_cfg += 1
    counts = [("safetensors", n_st), ("config", n_cfg), ("adapter_config", adapter_seeds(shared, out)),
              ("tokenizer", 0), ("chat", 0), ("dataset", dataset_seeds(shared, out))]
    templates = []
    counts[3] = ("tokenizer", tokenizer_seeds(shared, out, templates))
    counts[4] = ("chat", chat_seeds(out, templates))
    counts.append(("image", image_seeds(out)))
    counts.append(("serve_request", serve_request_seeds(out)))
    print("make_seeds: %s in %s" % (", ".join("%d %s" % (n, k) for k, n in counts), out))


def write(out, target, name, data):
    d = os.path.join(out, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def adapter_seeds(shared, out):
    n = 0
    for p in sorted(glob.glob(os.path.join(shared, "models", "*", "adapter_config.json"))):
        write(out, "adapter_config", os.path.basename(os.path.dirname(p)) + ".json", open(p, "rb").read())
        n += 1
    lora = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj"],
            "bias": "none", "use_rslora": False, "use_dora": False, "base_model_name_or_path": "tiny"}
    variants = {
        "lora": {},
        "lora_all": {"target_modules": "all-linear", "init_lora_weights": "gaussian", "use_rslora": True},
        "lora_regex": {"target_modules": r".*\.(q|k)_proj", "layers_to_transform": [0]},
        "lora_patterns": {"rank_pattern": {"q_proj": 2, "layers\\.1\\.self_attn\\.v_proj": 8},
                          "alpha_pattern": {"v_proj": 32.0}, "layers_to_transform": 1},
        "dora": {"use_dora": True, "target_modules": ["gate_proj", "up_proj", "down_proj"]},
        "ia3": {"peft_type": "IA3", "target_modules": ["k_proj", "v_proj", "down_proj"], "feedforward_modules": ["down_proj"]},
        "vera": {"peft_type": "VERA", "r": 4, "target_modules": ["q_proj", "v_proj"], "vera_dropout": 0.0, "d_initial": 0.1,
                 "save_projection": True, "projection_prng_key": 0},
    }
    for k, v in variants.items():
        c = dict(lora)
        c.update(v)
        if c["peft_type"] != "LORA":
            for key in ("r", "lora_alpha", "lora_dropout", "use_rslora", "use_dora"):
                if key not in v:
                    c.pop(key, None)
        write(out, "adapter_config", "hand_" + k + ".json", json.dumps(c, indent=1))
        n += 1
    return n


def shrink_tokenizer(tj, n_vocab=320, n_merges=400):
    """A small tokenizer.json: the first n_vocab ids, every byte symbol and <0xNN> token, and the
    merges whose parts and result are all kept."""
    model = tj.get("model") or {}
    vocab = model.get("vocab")
    if not isinstance(vocab, dict):
        return None
    keep = {k: v for k, v in vocab.items() if v < n_vocab or (k.startswith("<0x") and len(k) == 6)}
    merges = []
    for m in model.get("merges") or []:
        a, b = m.split(" ", 1) if isinstance(m, str) else m
        if a in keep and b in keep and a + b in keep:
            merges.append(m)
            if len(merges) == n_merges:
                break
    small = dict(tj)
    small["model"] = dict(model, vocab=keep, merges=merges)
    small["added_tokens"] = (tj.get("added_tokens") or [])[:24]
    return json.dumps(small, ensure_ascii=False, separators=(",", ":")).encode()


def wordpiece_tokenizer(post):
    """A small BERT-style tokenizer.json (WordPiece, BertNormalizer, BertPreTokenizer) with the
    post-processor `post`: "bert" (BertProcessing) or "template" (TemplateProcessing, type ids)."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = ["the", "quick", "brown", "fox", "hello", "world", "un", "##aff", "##able", "##s", "##ing", "cafe",
             "a", "b", "c", "##a", "##b", "##c", ",", ".", "!", "?", "'", "1", "##2", "##3", "\u4e2d", "\u6587"]
    vocab = {t: i for i, t in enumerate(specials + words)}
    if post == "bert":
        pp = {"type": "BertProcessing", "sep": ["[SEP]", 3], "cls": ["[CLS]", 2]}
    else:
        seq = lambda i, t: {"Sequence": {"id": i, "type_id": t}}
        sp = lambda i, t: {"SpecialToken": {"id": i, "type_id": t}}
        pp = {"type": "TemplateProcessing", "single": [sp("[CLS]", 0), seq("A", 0), sp("[SEP]", 0)],
              "pair": [sp("[CLS]", 0), seq("A", 0), sp("[SEP]", 0), seq("B", 1), sp("[SEP]", 1)],
              "special_tokens": {k: {"id": k, "ids": [vocab[k]], "tokens": [k]} for k in ("[CLS]", "[SEP]")}}
    return json.dumps({
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": vocab[t], "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True} for t in specials],
        "normalizer": {"type": "BertNormalizer", "clean_text": True, "handle_chinese_chars": True,
                       "strip_accents": None, "lowercase": True},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": pp,
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": True},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 100, "vocab": vocab},
    }, ensure_ascii=False)


def tokenizer_seeds(shared, out, templates):
    for post in ("bert", "template"):
        cfg = {"do_lower_case": True, "cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]",
               "unk_token": "[UNK]", "mask_token": "[MASK]", "model_max_length": 512}
        write(out, "tokenizer", "wordpiece_" + post, wordpiece_tokenizer(post))
        write(out, "tokenizer", "wordpiece_" + post + ".config",
              wordpiece_tokenizer(post).encode() + b"\0" + json.dumps(cfg).encode())
    dirs = sorted(glob.glob(os.path.join(shared, "models", "*")) + glob.glob(os.path.join(shared, "tokenizers", "*")))
    n = 0
    for d in dirs:
        p = os.path.join(d, "tokenizer.json")
        if not os.path.exists(p):
            continue
        tag = os.path.basename(d) if os.path.basename(d) != "models" else os.path.basename(os.path.dirname(d))
        small = shrink_tokenizer(json.load(open(p, encoding="utf-8")))
        if not small or len(small) > 60000:
            print("make_seeds: skipping %s" % p)
            continue
        write(out, "tokenizer", tag, small)
        n += 1
        cp = os.path.join(d, "tokenizer_config.json")
        if os.path.exists(cp):
            cfg = json.load(open(cp, encoding="utf-8"))
            cfg.pop("added_tokens_decoder", None)  # the ids of the full vocabulary
            ct = cfg.get("chat_template")
            if isinstance(ct, str):
                templates.append((tag, ct))
            text = json.dumps(cfg, ensure_ascii=False).encode()
            if len(small) + len(text) < 65000:
                write(out, "tokenizer", tag + ".config", small + b"\0" + text)
                n += 1
    return n + 4


def chat_seeds(out, templates):
    convs = {
        "plain": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
        "system": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                   {"role": "assistant", "content": "4"}, {"role": "user", "content": "3+3?"},
                   {"role": "assistant", "content": "6"}],
        "think": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "<think>\nhm\n</think>\n\nok"}],
        "user_only": [{"role": "user", "content": " spaced \n text "}],
        "empty": [],
        "unicode": [{"role": "user", "content": "caf\u00e9 \u4e2d"}, {"role": "assistant", "content": "\U0001F600"}],
    }
    n = 0
    for k, v in convs.items():
        write(out, "chat", k + ".json", json.dumps({"messages": v}, ensure_ascii=False))
        n += 1
    for tag, t in templates:
        write(out, "chat", tag + ".jinja", t)
        n += 1
    return n


def dataset_seeds(shared, out):
    recs = {
        "text": [{"text": "the cat sat on the mat"}, {"text": "ab ab ab the"}],
        "prompt": [{"prompt": "the question ", "completion": "the answer"}],
        "alpaca": [{"instruction": "say ab", "input": "", "output": "ab"}, {"instruction": "x", "input": "y", "output": "z"}],
        "chat": [{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"},
                               {"role": "assistant", "content": "the"}]}],
    }
    n = 0
    for k, rs in recs.items():
        jsonl = "\n".join(json.dumps(r) for r in rs) + "\n"
        write(out, "dataset", k + ".jsonl", b"\x14\x00" + jsonl.encode())       # .jsonl, seq_len 7
        write(out, "dataset", k + ".json", b"\x95\x09" + json.dumps(rs).encode())  # .json, val split, pack
        n += 2
    write(out, "dataset", "plain.txt", b"\x0a\x08" + b"the theme of the abbey\n" * 3)
    n += 1
    for p in sorted(glob.glob(os.path.join(shared, "data", "*", "*.json*"))):
        raw = open(p, "rb").read()
        if p.endswith(".jsonl"):
            body = b"\n".join(raw.split(b"\n")[:3])
            head = b"\x10\x00"
        else:
            try:
                body = json.dumps(json.loads(raw)[:3]).encode()
            except Exception:  # noqa: BLE001
                continue
            head = b"\x11\x08"
        tag = os.path.basename(os.path.dirname(p)) + "_" + os.path.basename(p)
        write(out, "dataset", tag, head + body[:4000])
        n += 1
    return n


def png_bytes(w, h, color_type, depth, rows, extra=b"", interlace=0):
    """A PNG of raw scanlines `rows` (bytes per row, filter byte 0 added here)."""
    import zlib

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", w, h, depth, color_type, 0, 0, interlace)
    raw = b"".join(b"\0" + r for r in rows)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + extra + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def image_seeds(out):
    import zlib
    w, h = 7, 5
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
    imgs = {}
    for ct, depths in ((0, (1, 2, 4, 8, 16)), (2, (8, 16)), (3, (1, 2, 4, 8)), (4, (8, 16)), (6, (8, 16))):
        for d in depths:
            rowbytes = (w * channels[ct] * d + 7) // 8
            rows = [bytes((x * 37 + y * 11) & 0xFF for x in range(rowbytes)) for y in range(h)]
            extra = b""
            if ct == 3:
                pal = bytes(i * 7 & 0xFF for i in range(3 * (1 << d)))
                extra = struct.pack(">I", len(pal)) + b"PLTE" + pal + struct.pack(">I", zlib.crc32(b"PLTE" + pal))
            imgs["ct%d_%d.png" % (ct, d)] = png_bytes(w, h, ct, d, rows, extra)
    trns = b"\x00\x80\x40"
    imgs["ct3_trns.png"] = imgs["ct3_8.png"][:33] + struct.pack(">I", 768) + b"PLTE" + bytes(768) + \
        struct.pack(">I", zlib.crc32(b"PLTE" + bytes(768))) + struct.pack(">I", 3) + b"tRNS" + trns + \
        struct.pack(">I", zlib.crc32(b"tRNS" + trns)) + imgs["ct3_8.png"][33 + 12 + 3 * 256:]
    # Adam7: the seven passes' sub-images one after the other, each row with its filter byte
    px = [[bytes(((x * 40 + y * 9 + c * 80) & 0xFF) for c in range(3)) for x in range(w)] for y in range(h)]
    passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
    rows = [b"".join(px[y][x] for x in range(x0, w, dx)) for x0, y0, dx, dy in passes for y in range(y0, h, dy)
            if x0 < w]
    imgs["rgb_adam7.png"] = png_bytes(w, h, 2, 8, rows, interlace=1)
    imgs["tall_1x40.png"] = png_bytes(1, 40, 0, 8, [b"\x80"] * 40)
    try:
        from PIL import Image
        import io
        base = Image.frombytes("RGB", (9, 6), bytes((i * 29) & 0xFF for i in range(9 * 6 * 3)))
        for name, im, kw in (("rgb.jpg", base, {}), ("gray.jpg", base.convert("L"), {}),
                             ("cmyk.jpg", base.convert("CMYK"), {}), ("prog.jpg", base, {"progressive": True}),
                             ("sub420.jpg", base, {"subsampling": 2, "quality": 50})):
            b = io.BytesIO()
            im.save(b, "JPEG", **kw)
            imgs[name] = b.getvalue()
    except ImportError:
        print("make_seeds: Pillow not importable: no JPEG seeds")
    configs = {
        "vit": {"do_resize": True, "size": {"height": 4, "width": 6}, "resample": 2, "do_rescale": True,
                "rescale_factor": 0.00392156862745098, "do_normalize": True, "image_mean": [0.5, 0.5, 0.5],
                "image_std": [0.5, 0.5, 0.5], "do_convert_rgb": True},
        "clip": {"do_resize": True, "size": {"shortest_edge": 8}, "resample": 3, "do_center_crop": True,
                 "crop_size": {"height": 6, "width": 6}, "do_convert_rgb": True,
                 "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711]},
        "plain": {"do_resize": False, "do_normalize": False, "do_rescale": False, "size": 3, "crop_size": 2},
    }
    n = 0
    for name, data in imgs.items():
        write(out, "image", name, data)
        n += 1
    for (cname, cfg), name in zip(sorted(configs.items()), ("ct6_8.png", "ct3_trns.png", "rgb.jpg")):
        write(out, "image", cname + "+" + name, json.dumps(cfg).encode() + b"\0" + imgs.get(name, imgs["ct2_8.png"]))
        n += 1
    return n


def serve_request_seeds(out):
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "caf\u00e9?"}]
    bodies = {
        "completion": (0, {"model": "base", "prompt": "Once upon a time", "max_tokens": 8, "temperature": 0.7,
                           "top_p": 0.9, "seed": 42, "stop": ["\n", "The"], "stream": False, "n": 1}),
        "completion_min": (0x18, {"model": "m", "prompt": ""}),
        "chat": (0x11, {"model": "base", "messages": msgs, "max_completion_tokens": 4, "stream": True, "stop": "x"}),
        "chat_notpl": (0x05, {"model": "base", "messages": msgs}),
        "load": (0x02, {"lora_name": "a", "lora_path": "/tmp/adapter"}),
        "unload": (0x03, {"lora_name": "a"}),
    }
    for name, (opt, body) in bodies.items():
        write(out, "serve_request", name + ".json", bytes([opt]) + json.dumps(body, ensure_ascii=False).encode())
    return len(bodies)


if __name__ == "__main__":
    main()
