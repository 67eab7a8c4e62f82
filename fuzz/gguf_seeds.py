#!/usr/bin/env python3
"""Seeds for fuzz_gguf (called by fuzz/run.sh): small GGUF files written with ggml-org's gguf
package (every tensor type peft.c reads, metadata of every value type, a "llama" and a "gpt2"
vocabulary) and the first 64 KiB of ../shared's stories260K.gguf (its header and vocabulary).
Usage: gguf_seeds.py SHARED OUT_DIR. Without the gguf package only the stories head is written."""
import os
import sys

shared, out = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)
src = os.path.join(shared, "models", "stories260K-gguf", "stories260K.gguf")
if os.path.exists(src):
    with open(src, "rb") as f, open(os.path.join(out, "stories260K-head"), "wb") as g:
        g.write(f.read(65536))
try:
    import numpy as np
    import gguf
except ImportError:
    sys.exit(0)
Q = gguf.GGMLQuantizationType
rng = np.random.default_rng(0)
for model in ("llama", "gpt2"):
    w = gguf.GGUFWriter(os.path.join(out, "small-%s.gguf" % model), arch="llama")
    w.add_custom_alignment(64 if model == "gpt2" else 32)
    w.add_uint8("t.u8", 1), w.add_int16("t.i16", -2), w.add_uint64("t.u64", 3), w.add_float64("t.f64", 0.5)
    w.add_bool("t.b", True), w.add_array("t.arr", [1.5, 2.5])
    w.add_tokenizer_model(model)
    if model == "llama":
        toks = ["<unk>", "<s>", "</s>"] + ["<0x%02X>" % b for b in range(256)] + ["\u2581", "a", "b", "\u2581a", "ab", "\u2581ab"]
        w.add_token_list(toks)
        w.add_token_scores([0.0] * 259 + [-1.0, -2.0, -3.0, -4.0, -5.0, -6.0])
        w.add_token_types([2, 3, 3] + [6] * 256 + [1] * 6)
    else:
        toks = [chr(c) for c in range(33, 127)] + ["\u0120", "\u0120a", "ab", "<|endoftext|>"]
        w.add_token_list(toks)
        w.add_token_merges(["\u0120 a", "a b"])
        w.add_token_types([1] * (len(toks) - 1) + [3])
        w.add_tokenizer_pre("llama-bpe")
    w.add_bos_token_id(1)
    for t in (Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1):
        x = rng.standard_normal((2, 32)).astype(np.float32)
        raw = x if t == Q.F32 else x.astype(np.float16) if t == Q.F16 else gguf.quants.quantize(x, t)
        w.add_tensor("t_" + t.name, raw, raw_dtype=None if t in (Q.F32, Q.F16) else t)
    for t in (Q.Q4_K, Q.Q5_K, Q.Q6_K):
        block, size = gguf.GGML_QUANT_SIZES[t]
        w.add_tensor("t_" + t.name, rng.integers(0, 256, size=(1, size), dtype=np.uint8), raw_dtype=t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
