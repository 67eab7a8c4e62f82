#!/usr/bin/env python3
"""GGUF reader and dequantization against ggml-org's `gguf` package (PyPI).

Writes a GGUF file with gguf.GGUFWriter holding one tensor of every type peft.c reads (F32, F16,
BF16, Q8_0, Q4_0, Q4_1 quantized with gguf.quants.quantize from random data with outliers and
zeros; Q4_K, Q5_K, Q6_K as random blocks, which gguf 0.19 cannot quantize; general.alignment 64), then runs tests/drivers/driver_gguf
(peft_gguf_open + peft_gguf_dequantize) and requires its f32 values to equal
gguf.quants.dequantize BIT FOR BIT, with the shapes reversed from ggml's ne order.
Then corrupt copies (truncated, bad magic, misaligned offset, overlapping tensors, unknown
type, absurd counts, a string past the end) must be refused with a message naming the file.

Environment: PEFT_BUILD (driver_gguf there). Exit 0 pass, 1 fail, 77 skipped (no gguf/numpy).
"""
import os
import struct
import subprocess
import sys
import tempfile

try:
    import numpy as np
    import gguf
    from gguf import GGMLQuantizationType as Q
    from safetensors.numpy import load_file
except Exception as e:  # noqa: BLE001
    print("SKIP: gguf / numpy / safetensors not importable (%s)" % e)
    sys.exit(77)

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.environ.get("PEFT_SRC") or os.path.dirname(os.path.dirname(HERE))
DRIVER = os.path.join(os.environ.get("PEFT_BUILD") or os.path.join(SRC, "build"), "driver_gguf")
TYPES = [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q4_K, Q.Q5_K, Q.Q6_K]
failures = []


def fail(msg):
    failures.append(msg)
    print("FAIL: " + msg)


def make_data(rng, shape):
    x = rng.standard_normal(shape).astype(np.float32) * np.float32(0.05)
    x.flat[::97] *= 40  # outliers set block scales
    x[..., :32] = 0  # an all-zero block (d = 0)
    if shape[-1] >= 512:
        x[0, 256:512] = -x[0, 256:512] ** 2  # a K-block of one sign
    return x


# gguf 0.19's numpy quantizer has no K-quants: their blocks are random bytes (every bit pattern
# is a valid block) with finite f16 scales at these byte offsets.
K_SCALES = {Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (208,)}


def random_blocks(rng, shape, t):
    block, size = gguf.GGML_QUANT_SIZES[t]
    n = shape[0] * shape[1] // block
    b = rng.integers(0, 256, size=(n, size), dtype=np.uint8)
    for off in K_SCALES[t]:
        d = (rng.standard_normal(n) * 0.01).astype(np.float16)
        b[:, off:off + 2] = d.view(np.uint8).reshape(n, 2)
    return b.reshape(shape[0], shape[1] // block * size)


def write_file(path, rng, alignment):
    w = gguf.GGUFWriter(path, arch="llama")
    w.add_custom_alignment(alignment)
    w.add_string("test.string", "héllo")
    w.add_array("test.nums", [1, 2, 3])
    w.add_array("test.strs", ["a", "", "ccc"])
    expect = {}
    for i, t in enumerate(TYPES):
        shape = (3 + i % 2, 512)  # rows x cols (PyTorch order); ne = (512, rows)
        x = make_data(rng, shape)
        if t == Q.F32:
            raw = x
        elif t == Q.F16:
            raw = x.astype(np.float16)
        elif t in K_SCALES:
            raw = random_blocks(rng, shape, t)
        else:
            raw = gguf.quants.quantize(x, t)
        name = "t_%s" % t.name.lower()
        w.add_tensor(name, raw, raw_dtype=t if t not in (Q.F32, Q.F16) else None)  # quantized: bytes [rows, row bytes]
        expect[name] = (t, gguf.quants.dequantize(raw, t).astype(np.float32).reshape(shape))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return expect


def run(gguf_path, out):
    return subprocess.run([DRIVER, gguf_path, out], stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)


def main():
    if not os.path.exists(DRIVER):
        print("FAIL: driver not built: %s" % DRIVER)
        return 1
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as td:
        path = os.path.join(td, "all.gguf")
        expect = write_file(path, rng, 64)
        out = os.path.join(td, "out.safetensors")
        r = run(path, out)
        if r.returncode:
            fail("driver refused a valid file: " + r.stderr.decode())
            return 1
        got = load_file(out)
        for name, (t, ref) in expect.items():
            g = got.get(name)
            if g is None or g.shape != ref.shape:
                fail("%s: shape %s, expected %s" % (name, None if g is None else g.shape, ref.shape))
                continue
            diff = int(np.count_nonzero(g.view(np.uint32) != ref.view(np.uint32)))
            print("%-8s %-10s %d values, %d differ in bits (max |diff| %.3g)" % (t.name, str(ref.shape), ref.size, diff,
                  float(np.abs(g - ref).max())))
            if diff:
                fail("%s: %d values differ from gguf.quants.dequantize" % (t.name, diff))
        if set(got) != set(expect):
            fail("tensor names %s != %s" % (sorted(got), sorted(expect)))

        # Corrupt copies: each must be refused with a message naming the file.
        data = bytearray(open(path, "rb").read())
        reader = gguf.GGUFReader(path)

        def info_at(name):
            """Byte positions of a tensor info's type and offset fields."""
            n = name.encode()
            at = data.index(struct.pack("<Q", len(n)) + n) + 8 + len(n)
            type_at = at + 4 + 8 * struct.unpack_from("<I", data, at)[0]
            return type_at, type_at + 4

        def patch(pos, fmt, value):
            return bytes(data[:pos]) + struct.pack(fmt, value) + bytes(data[pos + struct.calcsize(fmt):])

        type_at, off_at = info_at(reader.tensors[0].name)
        off1 = struct.unpack_from("<Q", data, info_at(reader.tensors[1].name)[1])[0]
        cases = {
            "truncated": bytes(data[:len(data) - 100]),
            "bad magic": b"GGUX" + bytes(data[4:]),
            "version 1": patch(4, "<I", 1),
            "tensor count 2^40": patch(8, "<Q", 1 << 40),
            "kv count 2^40": patch(16, "<Q", 1 << 40),
            "unknown type": patch(type_at, "<I", 99),
            "misaligned offset": patch(off_at, "<Q", 8),
            "offset past the end": patch(off_at, "<Q", 1 << 50),
            "overlap": patch(off_at, "<Q", off1),
            "string past the end": patch(24, "<Q", 1 << 40),
        }
        for what, blob in cases.items():
            p = os.path.join(td, "bad.gguf")
            with open(p, "wb") as f:
                f.write(blob)
            r = run(p, out)
            msg = r.stderr.decode().strip()
            print("%-20s -> rc %d: %s" % (what, r.returncode, msg[:150]))
            if r.returncode != 1 or p not in msg:
                fail("%s: expected a refusal naming the file, got rc %d: %s" % (what, r.returncode, msg))
    if failures:
        print("%d failure(s)" % len(failures))
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
