#!/usr/bin/env python3
"""NF4 with double quantisation (src/kernels/quant.c) against bitsandbytes on CPU, bit for bit.

For weights [OC, C] of the shapes peft.c quantizes (C a multiple of 64; rows that start inside a
group of 256 blocks, a partial last group, tensors of 2 .. 40960 blocks, one whose blocks all
have the same absmax so that its groups are all-zero), peft.c's blocks (driver_quant nf4) are
compared with bitsandbytes.functional.quantize_4bit(W, blocksize=64, compress_statistics=True,
quant_type="nf4") and dequantize_4bit:
  * the 4-bit values (nibbles, in bitsandbytes' packing order), the offset (torch's f32 mean of
    the absmax), the f32 scale of each group of 256 blocks and the 8-bit absmax codes (bitsandbytes'
    65536-bin table): identical;
  * dequantize(quantize(W)): identical bits;
  * matmul_q_forward / matmul_q_backward_input equal the f32 kernels on the dequantized weight.
torch runs on one thread with its AVX2 kernels (ATEN_CPU_CAPABILITY=avx2), the summation order
quant.c replays for the mean (docs/quantization.md).
Exit 0 = pass, 1 = fail, 77 = skipped (torch / bitsandbytes not importable).
"""
import os
import os
import subprocess
import sys
import tempfile

os.environ["ATEN_CPU_CAPABILITY"] = "avx2"  # before torch loads its kernels
try:
    import numpy as np
    import torch
    import bitsandbytes.functional as bnbf
    from safetensors.numpy import load_file, save_file
except ImportError as e:  # the oracle itself is missing
    print(f"SKIP: {e}")
    sys.exit(77)

SRC = os.environ.get("PEFT_SRC") or os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.environ.get("PEFT_BUILD") or os.path.join(SRC, "build")
DRIVER = os.path.join(BUILD, "driver_quant")
SHAPES = [(2, 64, False), (64, 64, False), (37, 576, False), (96, 1536, False), (8, 16384, False), (300, 6400, False),
          (640, 4096, False), (16, 1024, True)]


def same_bits(a, b):
    a, b = np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32)
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


def check(td, rng, OC, C, flat):
    w = (rng.standard_normal((OC, C)) * 0.05).astype(np.float32)
    if flat:  # every block's absmax 0.05: absmax - offset is 0, groups quantize to code 0
        w = np.where(w < 0, -0.05, 0.05).astype(np.float32)
    else:
        w[0, :64] = 0  # an all-zero block
    N = 3
    x = rng.standard_normal((N, C)).astype(np.float32)
    dy = rng.standard_normal((N, OC)).astype(np.float32)
    src, dst = os.path.join(td, "in.safetensors"), os.path.join(td, "out.safetensors")
    save_file({"w": w, "x": x, "dy": dy}, src)
    r = subprocess.run([DRIVER, "nf4", src, dst], capture_output=True, text=True, timeout=120)
    if r.returncode:
        print(f"FAIL nf4 {OC}x{C}: driver: {r.stderr.strip()}")
        return False
    out = load_file(dst)
    q, st = bnbf.quantize_4bit(torch.from_numpy(w), blocksize=64, compress_statistics=True, quant_type="nf4")
    ref = bnbf.dequantize_4bit(q, st).numpy()
    nb = C // 64
    ng = (nb + 254) // 256 + 1
    rows = out["q"]
    nib_bad, off_bad, sc_bad, code_bad = 0, 0, 0, 0
    ref_codes = st.absmax.numpy()
    ref_scales = st.state2.absmax.numpy()
    ref_nib = q.numpy().reshape(OC, C // 2)
    for rr in range(OC):
        row = rows[rr]
        phase = int(row[4:8].view(np.uint32)[0])
        scales = row[8:8 + 4 * ng].view(np.float32)
        codes = row[8 + 4 * ng:8 + 4 * ng + nb]
        nib_bad += int((row[8 + 4 * ng + nb:] != ref_nib[rr]).sum())
        off_bad += int(not same_bits(row[:4].view(np.float32), st.offset.reshape(1).numpy()))
        g0 = rr * nb // 256
        used = [(phase + j) // 256 for j in range(nb)]
        sc_bad += int(not same_bits(scales[used], ref_scales[[g0 + k for k in used]]))
        code_bad += int((codes != ref_codes[rr * nb:(rr + 1) * nb]).sum())
    deq_same = same_bits(out["deq"], ref)
    y_err = np.abs(out["y"] - out["y_ref"]).max() / np.abs(out["y_ref"]).max()
    dx_err = np.abs(out["dx"] - out["dx_ref"]).max() / np.abs(out["dx_ref"]).max()
    good = not (nib_bad or off_bad or sc_bad or code_bad) and deq_same and y_err <= 1e-5 and dx_err <= 1e-5
    print(f"{'ok  ' if good else 'FAIL'} nf4 {OC:3d}x{C:5d}{' (equal absmax)' if flat else ''}: nibbles differ in {nib_bad} "
          f"bytes, offset in {off_bad} of {OC} rows, group scales in {sc_bad} rows, absmax codes in {code_bad} of {OC * nb} "
          f"blocks; dequantized {'identical' if deq_same else 'DIFFERS'} (max diff {np.abs(out['deq'] - ref).max():.1e}); "
          f"matmul_q forward {y_err:.1e} backward_input {dx_err:.1e}")
    return good


def main():
    if not os.access(DRIVER, os.X_OK):
        print(f"FAIL: driver {DRIVER} is not built")
        return 1
    torch.set_num_threads(1)  # torch splits a sum over 32768 elements across its threads
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="peft_quant_bnb_") as td:
        results = [check(td, rng, OC, C, flat) for OC, C, flat in SHAPES]
    print("PASS" if all(results) else "FAILED")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
