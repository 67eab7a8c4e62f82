#!/usr/bin/env python3
"""Seed corpora for the fuzzers, generated at run time from the ../shared fixtures (nothing
from ../shared is stored in the repository).

  make_seeds.py SHARED_DIR OUT_DIR
writes OUT_DIR/safetensors/*: for every shared *.safetensors, a shrunken but valid copy (same
names, dtypes and ranks, every dimension cut to at most 2, offsets recomputed, data taken from
the original) and the bare header; plus small hand-made files (empty, scalar, bf16/f16).
OUT_DIR/config/*: every shared config.json / adapter_config.json / index json, and a few
hand-written Llama, Mistral, Qwen2 and llama3-RoPE configs.  Standard library only.
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
    print("make_seeds: %d safetensors seeds, %d config seeds in %s" % (n_st, n_cfg, out))


if __name__ == "__main__":
    main()
