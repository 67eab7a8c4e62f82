#!/usr/bin/env python3
"""Corrupt checkpoints are refused with a clear error, never a crash.

Builds damaged copies of ../shared/models/tiny-random-llama in a temporary directory (truncated
files, bad header lengths, out-of-range / overflowing / overlapping offsets, duplicate names,
wrong shapes, missing tensors, bad config.json, an unknown architecture, a NaN weight, a sharded
index naming a missing shard, ...) and runs
    $PEFT_BIN inspect --model DIR
    $PEFT_BIN generate --model DIR --prompt-ids 1,2,3 --max-new 2
on each. Both must exit with status 1 (not killed by a signal, not >= 128) and print a message
naming the offending file (or tensor). `inspect` reads only config.json and the safetensors
headers, so for damage it cannot see (a wrong-but-consistent shape, a missing tensor, a NaN value)
it must merely not crash. Pristine single-file and sharded copies must work (controls).

Standard library only. Exit 0 = pass, 1 = fail, 77 = skipped (no ../shared or no CLI).
"""
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.environ.get("PEFT_SRC") or os.path.dirname(os.path.dirname(HERE))
SHARED = os.environ.get("PEFT_SHARED") or os.path.join(SRC, "..", "shared")
MODEL = os.path.join(SHARED, "models", "tiny-random-llama")
PEFT_BIN = os.environ.get("PEFT_BIN") or os.path.join(SRC, "build", "peft")

failures = []


def fail(msg):
    failures.append(msg)
    print("FAIL: " + msg)


# ---------------------------------------------------------------- safetensors surgery
def read_st(path):
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n].decode())
    return header, raw[8 + n:]


def header_bytes(header_text):
    b = header_text.encode()
    b += b" " * (-len(b) % 8)
    return struct.pack("<Q", len(b)) + b


def write_st(path, header, data, header_text=None):
    text = header_text if header_text is not None else json.dumps(header, separators=(",", ":"))
    with open(path, "wb") as f:
        f.write(header_bytes(text) + data)


def tensor_names(header):
    return [k for k in header if k != "__metadata__"]


def by_offset(header):
    return sorted(tensor_names(header), key=lambda k: header[k]["data_offsets"][0])


# ---------------------------------------------------------------- case builders
# Each builder gets (dir, header, data) of a fresh copy whose config.json is already in place and
# writes the damaged files. It returns the substring the error message must contain.
ST = "model.safetensors"


def raw_file(d):
    return open(os.path.join(MODEL, ST), "rb").read()


def truncate_at(n):
    def build(d, header, data):
        open(os.path.join(d, ST), "wb").write(raw_file(d)[:n])
        return ST
    return build


def truncate_data(frac):
    def build(d, header, data):
        raw = raw_file(d)
        hl = 8 + struct.unpack("<Q", raw[:8])[0]
        cut = hl + int((len(raw) - hl) * frac)
        open(os.path.join(d, ST), "wb").write(raw[:cut])
        return ST
    return build


def header_len(value):
    def build(d, header, data):
        raw = raw_file(d)
        open(os.path.join(d, ST), "wb").write(struct.pack("<Q", value) + raw[8:])
        return ST
    return build


def set_offsets(name_pick, offsets_text):
    """Replaces one tensor's data_offsets by raw JSON text (to express 1e30, 2^64+1, ...)."""
    def build(d, header, data):
        name = name_pick(header)
        header[name]["data_offsets"] = "@@OFFS@@"
        text = json.dumps(header, separators=(",", ":")).replace('"@@OFFS@@"', offsets_text)
        write_st(os.path.join(d, ST), header, data, text)
        return ST
    return build


def last_tensor(header):
    return by_offset(header)[-1]


def small_tensor(header):
    return "model.layers.1.input_layernorm.weight"


def offsets_past_end(d, header, data):
    name = last_tensor(header)
    b, e = header[name]["data_offsets"]
    header[name]["data_offsets"] = [b + 64, e + 64]
    write_st(os.path.join(d, ST), header, data)
    return ST


def overlap_partial(d, header, data):
    names = by_offset(header)
    name = names[len(names) // 2]
    b, e = header[name]["data_offsets"]
    header[name]["data_offsets"] = [b - 4, e - 4]
    write_st(os.path.join(d, ST), header, data)
    return "overlap"


def overlap_same(d, header, data):
    a, b = "model.layers.0.input_layernorm.weight", "model.layers.1.input_layernorm.weight"
    header[b]["data_offsets"] = list(header[a]["data_offsets"])
    write_st(os.path.join(d, ST), header, data)
    return "overlap"


def duplicate_name(d, header, data):
    name = "model.norm.weight"
    entry = json.dumps({name: header[name]}, separators=(",", ":"))[1:-1]
    text = json.dumps(header, separators=(",", ":"))
    text = text[:-1] + "," + entry + "}"
    write_st(os.path.join(d, ST), header, data, text)
    return "duplicate"


def shape_swapped(d, header, data):
    # same element count, so the file is self-consistent; the model must notice
    header["model.layers.0.mlp.down_proj.weight"]["shape"] = [64, 16]
    write_st(os.path.join(d, ST), header, data)
    return "down_proj"


def shape_vs_bytes(d, header, data):
    header["model.layers.0.mlp.down_proj.weight"]["shape"] = [17, 64]
    write_st(os.path.join(d, ST), header, data)
    return "down_proj"


def missing_tensor(d, header, data):
    del header["model.layers.1.mlp.up_proj.weight"]
    write_st(os.path.join(d, ST), header, data)
    return "model.layers.1.mlp.up_proj.weight"


def header_edit(fn, expect):
    def build(d, header, data):
        text = fn(header)
        write_st(os.path.join(d, ST), header, data, text if isinstance(text, str) else None)
        return expect
    return build


def nan_weight(d, header, data):
    name = "model.layers.1.self_attn.k_proj.weight"
    b, _ = header[name]["data_offsets"]
    data = bytearray(data)
    data[b + 40:b + 44] = struct.pack("<I", 0x7FC00000)
    write_st(os.path.join(d, ST), header, bytes(data))
    return name


def inf_weight(d, header, data):
    name = "model.norm.weight"
    b, _ = header[name]["data_offsets"]
    data = bytearray(data)
    data[b:b + 4] = struct.pack("<f", float("-inf"))
    write_st(os.path.join(d, ST), header, bytes(data))
    return name


def config_edit(fn, expect="config.json"):
    def build(d, header, data):
        p = os.path.join(d, "config.json")
        cfg = json.load(open(p))
        out = fn(cfg)
        with open(p, "w") as f:
            f.write(out if isinstance(out, str) else json.dumps(cfg))
        os.symlink(os.path.abspath(os.path.join(MODEL, ST)), os.path.join(d, ST))
        return expect
    return build


def shard(d, header, data, n_shards=2):
    """Writes a valid sharded copy; returns the shard file names."""
    os.remove(os.path.join(d, ST)) if os.path.lexists(os.path.join(d, ST)) else None
    names = sorted(tensor_names(header))
    groups = [names[i::n_shards] for i in range(n_shards)]
    files, weight_map = [], {}
    for i, g in enumerate(groups):
        fn = "model-%05d-of-%05d.safetensors" % (i + 1, n_shards)
        h, blobs, off = {"__metadata__": {"format": "pt"}}, [], 0
        for name in g:
            b, e = header[name]["data_offsets"]
            h[name] = dict(header[name], data_offsets=[off, off + e - b])
            blobs.append(data[b:e])
            off += e - b
            weight_map[name] = fn
        write_st(os.path.join(d, fn), h, b"".join(blobs))
        files.append(fn)
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": len(data)}, "weight_map": weight_map}, f)
    return files


def sharded_ok(d, header, data):
    shard(d, header, data)
    return None


def shard_missing(d, header, data):
    files = shard(d, header, data)
    os.remove(os.path.join(d, files[1]))
    return files[1]


def shard_named_missing(d, header, data):
    shard(d, header, data)
    p = os.path.join(d, "model.safetensors.index.json")
    idx = json.load(open(p))
    idx["weight_map"]["model.norm.weight"] = "model-00003-of-00002.safetensors"
    json.dump(idx, open(p, "w"))
    return "model-00003-of-00002.safetensors"


def shard_path_escape(d, header, data):
    shard(d, header, data)
    p = os.path.join(d, "model.safetensors.index.json")
    idx = json.load(open(p))
    idx["weight_map"]["model.norm.weight"] = "../model-00001-of-00002.safetensors"
    json.dump(idx, open(p, "w"))
    return "model.safetensors.index.json"


def shard_wrong_file(d, header, data):
    files = shard(d, header, data)
    p = os.path.join(d, "model.safetensors.index.json")
    idx = json.load(open(p))
    name = next(k for k, v in idx["weight_map"].items() if v == files[0])
    idx["weight_map"][name] = files[1]
    json.dump(idx, open(p, "w"))
    return name


def shard_bad_index_json(d, header, data):
    shard(d, header, data)
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
        f.write('{"weight_map": {"model.norm.weight": ')
    return "model.safetensors.index.json"


def shard_truncated(d, header, data):
    files = shard(d, header, data)
    p = os.path.join(d, files[0])
    raw = open(p, "rb").read()
    open(p, "wb").write(raw[:len(raw) - 3])
    return files[0]


def pristine(d, header, data):
    write_st(os.path.join(d, ST), header, data)
    return None


def _set(cfg, **kw):
    cfg.update(kw)


# name -> (builder, inspect must fail?)   builder returns the expected message substring, or
# None for a control that must succeed.
CASES = [
    ("control", pristine, True),
    ("control_sharded", sharded_ok, True),
    ("empty_file", truncate_at(0), True),
    ("trunc_in_length_1", truncate_at(1), True),
    ("trunc_in_length_7", truncate_at(7), True),
    ("trunc_after_length", truncate_at(8), True),
    ("trunc_in_header_9", truncate_at(9), True),
    ("trunc_in_header_mid", truncate_at(200), True),
    ("trunc_in_data_start", truncate_data(0.0001), True),
    ("trunc_in_data_half", truncate_data(0.5), True),
    ("trunc_in_data_last_byte", truncate_data(0.9999999), True),
    ("header_len_past_end", header_len(5_000_000), True),
    ("header_len_huge", header_len(2**64 - 1), True),
    ("header_len_zero", header_len(0), True),
    ("offsets_past_end", offsets_past_end, True),
    ("offsets_1e30", set_offsets(small_tensor, "[1e30,1.0000000000000001e30]"), True),
    ("offsets_2p64_plus_1", set_offsets(small_tensor, "[18446744073709551617,18446744073709551681]"), True),
    ("offsets_end_2p64", set_offsets(small_tensor, "[0,18446744073709551616]"), True),
    ("offsets_negative", set_offsets(small_tensor, "[-64,0]"), True),
    ("offsets_fraction", set_offsets(small_tensor, "[0.5,64.5]"), True),
    ("offsets_reversed", set_offsets(small_tensor, "[64,0]"), True),
    ("offsets_not_numbers", set_offsets(small_tensor, '["0","64"]'), True),
    ("offsets_three", set_offsets(small_tensor, "[0,64,128]"), True),
    ("overlap_partial", overlap_partial, True),
    ("overlap_identical", overlap_same, True),
    ("duplicate_name", duplicate_name, True),
    ("shape_vs_bytes", shape_vs_bytes, True),
    ("shape_negative", header_edit(lambda h: h["model.norm.weight"].update(shape=[-16]), ST), True),
    ("shape_9_dims", header_edit(lambda h: h["model.norm.weight"].update(shape=[1] * 8 + [16]), ST), True),
    ("shape_overflow", header_edit(lambda h: h["model.norm.weight"].update(shape=[2**32, 2**32, 16]), ST), True),
    ("unknown_dtype", header_edit(lambda h: h["model.norm.weight"].update(dtype="F8_E9M9"), ST), True),
    ("header_not_object", header_edit(lambda h: "[1,2,3]", ST), True),
    ("header_bad_json", header_edit(lambda h: '{"model.norm.weight": {"dtype": "F32",', ST), True),
    ("header_nul_byte", header_edit(lambda h: '{"a\u0000":1}', ST), True),
    ("metadata_not_object", header_edit(lambda h: h.update(__metadata__=[1]), ST), True),
    ("int_dtype_weight", None, False),  # filled in below
    ("shape_swapped", shape_swapped, False),
    ("missing_tensor", missing_tensor, False),
    ("nan_weight", nan_weight, False),
    ("inf_weight", inf_weight, False),
    ("config_bad_json", config_edit(lambda c: json.dumps(c)[:-20]), True),
    ("config_empty", config_edit(lambda c: ""), True),
    ("config_not_object", config_edit(lambda c: "[]"), True),
    ("config_unknown_arch", config_edit(lambda c: _set(c, architectures=["GPT2LMHeadModel"])), True),
    ("config_no_arch", config_edit(lambda c: c.pop("architectures")), True),
    ("config_heads_not_divisor", config_edit(lambda c: _set(c, num_key_value_heads=3)), True),
    ("config_hidden_str", config_edit(lambda c: _set(c, hidden_size="16")), True),
    ("config_zero_layers", config_edit(lambda c: _set(c, num_hidden_layers=0)), True),
    ("config_vocab_huge", config_edit(lambda c: _set(c, vocab_size=10**12)), True),
    ("config_bad_act", config_edit(lambda c: _set(c, hidden_act="gelu")), True),
    ("config_bad_rope", config_edit(lambda c: _set(c, rope_scaling={"rope_type": "yarn", "factor": 2.0})), True),
    ("config_more_layers", config_edit(lambda c: _set(c, num_hidden_layers=3), "model.layers.2"), False),
    ("config_wrong_vocab", config_edit(lambda c: _set(c, vocab_size=32001), "embed_tokens"), False),
    ("shard_missing_file", shard_missing, True),
    ("shard_named_missing", shard_named_missing, True),
    ("shard_path_escape", shard_path_escape, True),
    ("shard_tensor_elsewhere", shard_wrong_file, True),
    ("shard_bad_index_json", shard_bad_index_json, True),
    ("shard_truncated", shard_truncated, True),
]


def int_dtype_weight(d, header, data):
    # I32 with the same byte length: a valid file, but not a float weight
    header["model.norm.weight"]["dtype"] = "I32"
    write_st(os.path.join(d, ST), header, data)
    return "model.norm.weight"


CASES = [(n, int_dtype_weight if n == "int_dtype_weight" else b, i) for n, b, i in CASES]


def run(cmd):
    try:
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
    except subprocess.TimeoutExpired:
        return None, "", "timed out"
    return r.returncode, r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")


def main():
    if not os.path.isfile(os.path.join(MODEL, "config.json")):
        print("SKIP: %s not found (the shared fixtures are not beside the project)" % MODEL)
        return 77
    if not os.access(PEFT_BIN, os.X_OK):
        print("SKIP: CLI %s is not built" % PEFT_BIN)
        return 77
    header, data = read_st(os.path.join(MODEL, ST))
    n_run = 0
    with tempfile.TemporaryDirectory(prefix="peft_corrupt_") as td:
        for name, build, inspect_sees_it in CASES:
            d = os.path.join(td, name)
            os.mkdir(d)
            shutil.copy(os.path.join(MODEL, "config.json"), os.path.join(d, "config.json"))
            expect = build(d, json.loads(json.dumps(header)), data)
            cmds = [("inspect", [PEFT_BIN, "inspect", "--model", d]),
                    ("generate", [PEFT_BIN, "generate", "--model", d, "--prompt-ids", "1,2,3", "--max-new", "2"])]
            status = []
            for label, cmd in cmds:
                rc, out, err = run(cmd)
                n_run += 1
                msg = err.strip().splitlines()[-1] if err.strip() else ""
                must_fail = expect is not None and (label == "generate" or inspect_sees_it)
                if rc is None:
                    fail("%s/%s: timed out" % (name, label))
                elif rc < 0 or rc >= 128:
                    fail("%s/%s: killed by a signal or crashed (status %d): %s" % (name, label, rc, err.strip()[-500:]))
                elif expect is None:
                    if rc != 0:
                        fail("%s/%s: control failed (status %d): %s" % (name, label, rc, msg))
                elif must_fail:
                    if rc != 1:
                        fail("%s/%s: status %d, expected 1 (stderr: %s)" % (name, label, rc, msg))
                    elif expect not in err:
                        fail("%s/%s: message does not name %r: %s" % (name, label, expect, msg))
                elif rc not in (0, 1):
                    fail("%s/%s: status %d, expected 0 or 1: %s" % (name, label, rc, msg))
                status.append("%s=%s" % (label, rc))
                if label == "generate" and expect is not None:
                    print("%-26s %-22s %s" % (name, " ".join(status), msg[:150]))
            if expect is None:
                print("%-26s %-22s (control)" % (name, " ".join(status)))
            shutil.rmtree(d)
    print("\n%d cases, %d commands run, %d failure(s)" % (len(CASES), n_run, len(failures)))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
