#!/usr/bin/env python3
"""Block quantization in ggml's formats (src/kernels/quant.c) against the gguf package.

  * q8_0 / q4_0 quantize: peft.c's blocks (driver_quant) are byte for byte those of
    gguf.quants.quantize(W, GGMLQuantizationType.*) (the port of ggml's reference
    quantize_row_*_ref), on random rows with ties, zeros and outliers; and their dequantization
    equals gguf.quants.dequantize of those bytes.
  * the quantized matmuls: matmul_q_forward / matmul_q_backward_input equal matmul_forward /
    matmul_backward on the dequantized weight (the exact oracle of the tiles: <= 1e-5 relative).
  * a model quantized by peft.c (`peft eval --quantize q8_0|q4_0`) has the loss transformers gives
    the same checkpoint with every linear site's weight replaced by gguf's
    dequantize(quantize(W)), embeddings / norms / lm_head untouched (to the 6 decimals eval prints).
Exit 0 = pass, 1 = fail, 77 = skipped (numpy / gguf / torch / transformers not importable).
"""
import os
import re
import subprocess
import sys
import tempfile

try:
    import numpy as np
    import torch
    import transformers
    from gguf import GGMLQuantizationType, quants
    from safetensors.numpy import load_file, save_file
except ImportError as e:  # the oracle itself is missing
    print(f"SKIP: {e}")
    sys.exit(77)

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "hf"))
from gguf_common import BIN, BUILD  # noqa: E402
from test_transformers_parity import load_reference, make_model  # noqa: E402

DRIVER = os.path.join(BUILD, "driver_quant")
TYPES = {"q8_0": GGMLQuantizationType.Q8_0, "q4_0": GGMLQuantizationType.Q4_0}
SITES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def run_driver(fmt, tensors, td):
    src, dst = os.path.join(td, "in.safetensors"), os.path.join(td, "out.safetensors")
    save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}, src)
    r = subprocess.run([DRIVER, fmt, src, dst], capture_output=True, text=True, timeout=120)
    if r.returncode:
        raise RuntimeError(f"driver_quant {fmt}: {r.stderr.strip()}")
    return load_file(dst)


def hard_weight(rng, OC, C):
    """Gaussian rows plus the cases rounding decides: an all-zero block, a block of equal
    magnitudes of both signs (Q4_0 takes the first largest), exact .5 multiples, outliers."""
    w = rng.standard_normal((OC, C)).astype(np.float32) * 0.05
    w[0, :32] = 0
    w[1, :32] = np.where(np.arange(32) % 2, 0.25, -0.25)
    w[2, :32] = (np.arange(32) - 16) * 0.5 / 127 * 3.0  # q8_0 products landing on .5
    w[3, 5] = 4.0
    w[4, 40] = -7.5
    return w


def check_blocks(td, rng):
    ok = True
    for fmt, qt in TYPES.items():
        OC, C, N = 300, 8192, 5  # C = 8192: tiles of 128 rows, so three tiles and a partial one
        w = hard_weight(rng, OC, C)
        x = rng.standard_normal((N, C)).astype(np.float32)
        dy = rng.standard_normal((N, OC)).astype(np.float32)
        bias = rng.standard_normal(OC).astype(np.float32)
        out = run_driver(fmt, {"w": w, "x": x, "dy": dy, "bias": bias}, td)
        ref = quants.quantize(w, qt)
        same = out["q"].shape == ref.shape and np.array_equal(out["q"], ref)
        nbad = int((out["q"] != ref).sum()) if out["q"].shape == ref.shape else -1
        deq_ref = quants.dequantize(ref, qt).reshape(OC, C)
        deq_same = np.array_equal(out["deq"].view(np.uint32), deq_ref.astype(np.float32).view(np.uint32))
        y_err = np.abs(out["y"] - out["y_ref"]).max() / np.abs(out["y_ref"]).max()
        dx_err = np.abs(out["dx"] - out["dx_ref"]).max() / np.abs(out["dx_ref"]).max()
        good = same and deq_same and y_err <= 1e-5 and dx_err <= 1e-5
        ok &= good
        print(f"{'ok  ' if good else 'FAIL'} {fmt} blocks vs gguf.quants.quantize: {'identical' if same else f'{nbad} bytes differ'}"
              f" ({ref.size} bytes); dequantize {'identical' if deq_same else 'differs'}; matmul_q_forward {y_err:.1e}, "
              f"backward_input {dx_err:.1e} vs f32 on the dequantized weight")
    return ok


def loss_of(model, ids):
    with torch.no_grad():
        return model(input_ids=torch.tensor(ids), labels=torch.tensor(ids)).loss.item()


def check_model_loss(td):
    """peft eval --quantize on a random Llama vs transformers with gguf-roundtripped site weights."""
    mdir = os.path.join(td, "model")
    make_model(mdir, "llama_gqa", seed=4)
    ref_model = load_reference(mdir)
    g = torch.Generator().manual_seed(1)
    V = ref_model.config.vocab_size
    ids = torch.randint(0, V, (1, 32), generator=g).tolist()  # one window of --seq-len 32
    data = os.path.join(td, "ids.txt")
    with open(data, "w") as f:
        f.write(" ".join(map(str, ids[0])) + "\n")
    ok = True
    orig = {n: p.detach().clone() for n, p in ref_model.named_parameters()}
    for fmt, qt in TYPES.items():
        with torch.no_grad():
            for n, p in ref_model.named_parameters():
                if n.endswith(".weight") and any(f".{s}." in n for s in SITES):
                    w = orig[n].numpy()
                    p.copy_(torch.from_numpy(quants.dequantize(quants.quantize(w, qt), qt).reshape(w.shape)))
                else:
                    p.copy_(orig[n])
        ref = loss_of(ref_model, ids)
        r = subprocess.run([BIN, "eval", "--model", mdir, "--data", data, "--ids", "--seq-len", "32", "--quantize", fmt],
                           capture_output=True, text=True, timeout=300)
        m = re.search(r"^loss\s+([0-9.]+) nats/token", r.stdout, re.M)
        if r.returncode or not m:
            print(f"FAIL {fmt} eval: exit {r.returncode}: {r.stderr.strip()}")
            ok = False
            continue
        mine = float(m.group(1))
        err = abs(mine - ref) / abs(ref)
        good = err <= 2e-6 + 5e-7 / abs(ref)  # peft eval prints 6 decimals
        ok &= good
        print(f"{'ok  ' if good else 'FAIL'} {fmt} model loss: peft.c {mine:.6f}, transformers on gguf-roundtripped "
              f"weights {ref:.6f}, rel err {err:.1e}")
    return ok


def main():
    torch.set_num_threads(2)
    transformers.logging.set_verbosity_error()
    if not os.access(DRIVER, os.X_OK):
        print(f"FAIL: driver {DRIVER} is not built")
        return 1
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="peft_quant_ggml_") as td:
        ok = check_blocks(td, rng)
        ok &= check_model_loss(td)
    print("PASS" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
