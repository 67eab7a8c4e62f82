#!/usr/bin/env python3
"""Hand-written safetensors reader/writer (no `safetensors` package needed).

Format (https://github.com/huggingface/safetensors):
  8 bytes   little-endian u64 N = length of the JSON header
  N bytes   UTF-8 JSON: {"__metadata__": {str: str}, name: {"dtype", "shape", "data_offsets": [begin, end]}}
            padded with trailing spaces so that 8 + N is a multiple of 8
  rest      the raw little-endian tensor bytes; data_offsets are relative to the start of this area.

Tensors are written in sorted name order (for tensors of one dtype this is also what the Rust library
does; it sorts by dtype alignment first, then name).

Also: save_hf_model(dir, cfg, params), writing config.json plus model.safetensors, and
load_hf_weights(dir), reading model.safetensors or the shards of model.safetensors.index.json.
"""
import json
import os
import struct

import numpy as np
import torch

# safetensors dtype string -> (torch dtype, bytes per element)
_DTYPES = {
    "F64": (torch.float64, 8),
    "F32": (torch.float32, 4),
    "F16": (torch.float16, 2),
    "BF16": (torch.bfloat16, 2),
    "I64": (torch.int64, 8),
    "I32": (torch.int32, 4),
    "I16": (torch.int16, 2),
    "I8": (torch.int8, 1),
    "U8": (torch.uint8, 1),
    "BOOL": (torch.bool, 1),
}
_TORCH2ST = {v[0]: k for k, v in _DTYPES.items()}

_DTYPE_NAMES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
                "float64": torch.float64}


def _tensor_bytes(t):
    """Raw little-endian bytes of a tensor (bf16 reinterpreted through int16, numpy lacks bf16)."""
    t = t.detach().contiguous().cpu()
    if t.dtype == torch.bfloat16:
        arr = t.view(torch.int16).numpy()
    else:
        arr = t.numpy()
    return arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()


def _serialize(tensors, metadata=None):
    names = sorted(tensors)
    header = {}
    if metadata is not None:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blobs = []
    off = 0
    for name in names:
        t = tensors[name]
        if t.dtype not in _TORCH2ST:
            raise ValueError("unsupported dtype %s for %s" % (t.dtype, name))
        b = _tensor_bytes(t)
        header[name] = {"dtype": _TORCH2ST[t.dtype], "shape": list(t.shape),
                        "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    hjson = json.dumps(header, separators=(",", ":")).encode("utf-8")
    pad = (8 - (8 + len(hjson)) % 8) % 8
    hjson += b" " * pad
    return struct.pack("<Q", len(hjson)) + hjson + b"".join(blobs), off


def write_safetensors(path, tensors, metadata=None):
    """Write dict name->tensor to `path`. Returns the total size of the tensor data in bytes."""
    data, total = _serialize(tensors, metadata)
    with open(path, "wb") as f:
        f.write(data)
    return total


def read_safetensors(path, with_metadata=False):
    """Read a .safetensors file into an (ordered by offset) dict name->torch tensor (original dtype)."""
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8:
        raise ValueError("%s: too short" % path)
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    meta = header.pop("__metadata__", None)
    base = 8 + n
    out = {}
    for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        dt, size = _DTYPES[info["dtype"]]
        b, e = info["data_offsets"]
        shape = info["shape"]
        count = int(np.prod(shape)) if shape else 1
        if e - b != count * size:
            raise ValueError("%s: bad data_offsets for %s" % (path, name))
        buf = raw[base + b: base + e]
        if dt == torch.bfloat16:
            arr = np.frombuffer(buf, dtype="<i2").copy()
            t = torch.from_numpy(arr).view(torch.bfloat16)
        elif dt == torch.bool:
            t = torch.from_numpy(np.frombuffer(buf, dtype=np.uint8).copy()).to(torch.bool)
        else:
            npdt = torch.empty(0, dtype=dt).numpy().dtype.newbyteorder("<")
            t = torch.from_numpy(np.frombuffer(buf, dtype=npdt).astype(npdt.newbyteorder("="), copy=True))
        out[name] = t.reshape(shape)
    if with_metadata:
        return out, meta
    return out


def load_hf_weights(model_dir):
    """Load all tensors of an HF model dir (single file or sharded via the index)."""
    idx = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(idx):
        with open(idx) as f:
            wm = json.load(f)["weight_map"]
        out = {}
        for fn in sorted(set(wm.values())):
            out.update(read_safetensors(os.path.join(model_dir, fn)))
        return out
    return read_safetensors(os.path.join(model_dir, "model.safetensors"))


def save_hf_model(model_dir, cfg, params):
    """Write config.json + model.safetensors (params: dict name -> tensor, each in its own dtype)."""
    os.makedirs(model_dir, exist_ok=True)
    with open(os.path.join(model_dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")
    return write_safetensors(os.path.join(model_dir, "model.safetensors"), params, {"format": "pt"})


if __name__ == "__main__":
    import tempfile
    torch.manual_seed(0)
    d = {"a": torch.randn(3, 5), "b.bf": torch.randn(7).bfloat16(), "c": torch.randn(2, 2).half(),
         "i": torch.arange(5), "j": torch.arange(3, dtype=torch.int32), "s": torch.tensor(1.5)}
    with tempfile.TemporaryDirectory() as td:
        p = os.path.join(td, "x.safetensors")
        write_safetensors(p, d, {"format": "pt"})
        raw = open(p, "rb").read()
        n = struct.unpack("<Q", raw[:8])[0]
        assert (8 + n) % 8 == 0
        r, meta = read_safetensors(p, with_metadata=True)
        assert meta == {"format": "pt"}
        for k in d:
            assert r[k].dtype == d[k].dtype and r[k].shape == d[k].shape and torch.equal(r[k], d[k]), k
        # the real tiny-random-llama file reads back byte-identically
        src = "/work/shared/models/tiny-random-llama/model.safetensors"
        if os.path.exists(src):
            w, meta = read_safetensors(src, with_metadata=True)
            p2 = os.path.join(td, "y.safetensors")
            write_safetensors(p2, w, meta)
            w2 = read_safetensors(p2)
            assert all(torch.equal(w[k], w2[k]) for k in w)
        params = {"w%d" % i: torch.randn(4, 4) for i in range(7)}
        save_hf_model(os.path.join(td, "m"), {"x": 1}, params)
        back = load_hf_weights(os.path.join(td, "m"))
        assert all(torch.equal(back[k], params[k]) for k in params)
    print("safetensors_io self-test OK")
