"""test_kernels_torch.py: PyTorch parity of every kernel in src/kernels (forward and backward).

Each case builds random f32 inputs, computes the reference with torch (autograd for the
gradients, Hugging Face's formulas for RMSNorm, rotate_half RoPE and GQA attention), writes the
inputs for the C driver build/driver_kernels, runs it and compares every output with
max|c - torch| / max|torch| <= 1e-5. Exits 77 (skip) when torch is unavailable, 1 on any mismatch.
"""
import os
import struct
import subprocess
import sys
import tempfile

try:
    import numpy as np
    import torch
    import torch.nn.functional as F
except Exception as e:  # pragma: no cover
    print(f"SKIP: torch/numpy not importable ({e})")
    sys.exit(77)

TOL = 1e-5
MAGIC = 0x31444B50
SRC = os.environ.get("PEFT_SRC", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
BUILD = os.environ.get("PEFT_BUILD", os.path.join(SRC, "build"))
DRIVER = os.path.join(BUILD, "driver_kernels")

torch.manual_seed(0)
failures = []
tmpdir = tempfile.mkdtemp(prefix="peft_kdump_")


def run_case(op, iparams, fparams, tensors):
    """Writes one case, runs the driver, returns its outputs as numpy arrays."""
    iparams = list(iparams) + [0] * (8 - len(iparams))
    fparams = list(fparams) + [0.0] * (2 - len(fparams))
    inp, out = os.path.join(tmpdir, "in.bin"), os.path.join(tmpdir, "out.bin")
    with open(inp, "wb") as f:
        f.write(struct.pack("<ii8i2fi", MAGIC, op, *iparams, *fparams, len(tensors)))
        for t in tensors:
            t = t.detach().contiguous()
            if t.dtype == torch.int32:
                a, dtype = t.numpy().astype("<i4"), 1
            else:
                a, dtype = t.numpy().astype("<f4"), 0
            f.write(struct.pack("<iq", dtype, a.size))
            f.write(a.tobytes())
    env = dict(os.environ, PEFT_KERNEL_DUMP_IN=inp, PEFT_KERNEL_DUMP_OUT=out)
    subprocess.run([DRIVER], env=env, check=True)
    res = []
    with open(out, "rb") as f:
        (n,) = struct.unpack("<i", f.read(4))
        for _ in range(n):
            dtype, count = struct.unpack("<iq", f.read(12))
            res.append(np.frombuffer(f.read(4 * count), dtype="<i4" if dtype else "<f4"))
    return res


def compare(name, got, ref):
    ref = ref.detach().double().numpy().ravel()
    got = got.astype(np.float64).ravel()
    if got.shape != ref.shape:
        failures.append(name)
        print(f"  {name:40s} SHAPE {got.shape} vs {ref.shape}  FAIL")
        return
    scale = max(np.abs(ref).max(), 1e-30)
    err = np.abs(got - ref).max() / scale
    ok = err <= TOL
    if not ok:
        failures.append(name)
    print(f"  {name:40s} rel err {err:.3g}{'' if ok else '  FAIL'}")


def leaf(*shape, amp=1.0):
    return (torch.rand(*shape) * 2 - 1).mul_(amp).requires_grad_(True)


def case_matmul(N, C, OC, bias):
    x, w = leaf(N, C), leaf(OC, C, amp=0.2)
    b = leaf(OC) if bias else None
    y = F.linear(x, w, b)
    dy = torch.randn(N, OC)
    y.backward(dy)
    res = run_case(1, [N, C, OC, int(bias)], [], [x, w] + ([b] if bias else []) + [dy])
    tag = f"matmul N={N} C={C} OC={OC}{' +bias' if bias else ''}"
    compare(tag + " out", res[0], y)
    compare(tag + " dinp", res[1], x.grad)
    compare(tag + " dweight", res[2], w.grad)
    if bias:
        compare(tag + " dbias", res[3], b.grad)


def case_rmsnorm(N, C, eps):
    x, w = leaf(N, C, amp=3.0), leaf(C)
    # transformers' LlamaRMSNorm in f32
    var = x.pow(2).mean(-1, keepdim=True)
    rstd = torch.rsqrt(var + eps)
    y = w * (x * rstd)
    dy = torch.randn(N, C)
    y.backward(dy)
    res = run_case(2, [N, C], [eps], [x, w, dy])
    tag = f"rmsnorm N={N} C={C}"
    compare(tag + " out", res[0], y)
    compare(tag + " rstd", res[1], rstd)
    compare(tag + " dinp", res[2], x.grad)
    compare(tag + " dweight", res[3], w.grad)


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def case_rope(N, H, hd, theta, max_pos):
    x = leaf(N, H, hd)
    inv_freq = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.int64).float() / hd))
    pos = torch.randint(0, max_pos, (N,), dtype=torch.int32)
    # transformers' LlamaRotaryEmbedding + apply_rotary_pos_emb
    freqs = pos.float()[:, None] @ inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos()[:, None, :], emb.sin()[:, None, :]
    y = x * cos + rotate_half(x) * sin
    dy = torch.randn(N, H, hd)
    y.backward(dy)
    res = run_case(3, [N, H, hd, max_pos], [], [x, pos, inv_freq, dy])
    tag = f"rope N={N} H={H} hd={hd}"
    compare(tag + " out", res[0], y)
    compare(tag + " dx", res[1], x.grad)


def packed_positions(B, T, gen):
    pos = torch.empty(B, T, dtype=torch.int32)
    for b in range(B):
        p, length = 0, int(torch.randint(2, max(3, T // 2), (1,), generator=gen))
        for t in range(T):
            pos[b, t] = p
            p += 1
            if p == length:
                p, length = 0, int(torch.randint(2, max(3, T // 2), (1,), generator=gen))
    return pos


def case_attention(B, Tq, Tk, H, KVH, hd, packed):
    gen = torch.Generator().manual_seed(B * 1000 + Tk)
    q, k, v = leaf(B, Tq, H, hd, amp=2.0), leaf(B, Tk, KVH, hd, amp=2.0), leaf(B, Tk, KVH, hd)
    pos_full = packed_positions(B, Tk, gen) if packed else None
    pos = pos_full[:, Tk - Tq:].contiguous() if packed else None
    # explicit masked softmax (HF eager attention with repeat_kv)
    group = H // KVH
    kk = k.repeat_interleave(group, dim=2).transpose(1, 2)  # (B, H, Tk, hd)
    vv = v.repeat_interleave(group, dim=2).transpose(1, 2)
    qq = q.transpose(1, 2)  # (B, H, Tq, hd)
    s = qq @ kk.transpose(-1, -2) / (hd ** 0.5)
    a = torch.arange(Tk - Tq, Tk)[:, None]  # absolute query index
    j = torch.arange(Tk)[None, :]
    if packed:
        lo = (a - pos.long()[:, :, None])  # (B, Tq, 1)
        visible = (j <= a) & (j >= lo)  # (B, Tq, Tk)
        visible = visible[:, None]
    else:
        visible = (j <= a)[None, None]
    s = s.masked_fill(~visible, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)  # (B, H, Tq)
    y = (torch.softmax(s, dim=-1) @ vv).transpose(1, 2).contiguous()  # (B, Tq, H, hd)
    dy = torch.randn(B, Tq, H, hd)
    tensors = [q, k, v] + ([pos] if packed else []) + [dy]
    res = run_case(4, [B, Tq, Tk, H, KVH, hd, int(packed)], [], tensors)
    tag = f"attn B={B} Tq={Tq} Tk={Tk} H={H}/{KVH} hd={hd}{' packed' if packed else ''}"
    compare(tag + " out", res[0], y)
    compare(tag + " lse", res[1], lse)
    if Tq == Tk:
        y.backward(dy)
        compare(tag + " dq", res[2], q.grad)
        compare(tag + " dk", res[3], k.grad)
        compare(tag + " dv", res[4], v.grad)


def case_swiglu(N, Fd):
    g, u = leaf(N, Fd, amp=6.0), leaf(N, Fd, amp=2.0)
    y = F.silu(g) * u
    dy = torch.randn(N, Fd)
    y.backward(dy)
    res = run_case(5, [N, Fd], [], [g, u, dy])
    tag = f"swiglu N={N} F={Fd}"
    compare(tag + " out", res[0], y)
    compare(tag + " dgate", res[1], g.grad)
    compare(tag + " dup", res[2], u.grad)


def case_embedding(N, C, V):
    table = leaf(V, C)
    ids = torch.randint(0, V, (N,), dtype=torch.int32)
    ids[1] = ids[0]  # a repeated id
    y = F.embedding(ids.long(), table)
    dy = torch.randn(N, C)
    y.backward(dy)
    res = run_case(6, [N, C, V], [], [ids, table, dy])
    tag = f"embedding N={N} C={C} V={V}"
    compare(tag + " out", res[0], y)
    compare(tag + " dtable", res[1], table.grad)


def case_crossentropy(N, V):
    logits = leaf(N, V, amp=8.0)
    with torch.no_grad():
        logits[0, 3] = 90.0  # needs max subtraction
    targets = torch.randint(0, V, (N,), dtype=torch.int32)
    targets[1] = -100
    targets[N - 1] = -100
    losses = F.cross_entropy(logits, targets.long(), ignore_index=-100, reduction="none")
    count = int((targets >= 0).sum())
    scale = 1.0 / count
    (losses.sum() * scale).backward()
    res = run_case(7, [N, V], [scale], [logits, targets])
    tag = f"crossentropy N={N} V={V}"
    compare(tag + " losses", res[0], losses)
    if int(res[1][0]) != count:
        failures.append(tag + " count")
        print(f"  {tag} count {res[1][0]} vs {count}  FAIL")
    compare(tag + " dlogits", res[2], logits.grad)
    compare(tag + " dlogits in-place", res[3], logits.grad)


def main():
    if not os.path.exists(DRIVER):
        print(f"test_kernels_torch: driver not found at {DRIVER} (build the project first)")
        return 1
    case_matmul(5, 7, 3, False)
    case_matmul(33, 96, 80, True)
    case_rmsnorm(6, 200, 1e-5)
    case_rmsnorm(3, 64, 1e-6)
    case_rope(10, 4, 64, 10000.0, 2048)
    case_rope(7, 2, 128, 500000.0, 8192)
    case_attention(1, 17, 17, 4, 4, 32, False)
    case_attention(2, 40, 40, 8, 2, 64, False)
    case_attention(2, 45, 45, 4, 1, 128, True)
    case_attention(2, 3, 40, 8, 2, 64, False)  # decode against a KV cache
    case_attention(2, 1, 45, 4, 1, 128, True)
    case_swiglu(9, 300)
    case_embedding(12, 48, 20)
    case_crossentropy(8, 1000)
    if failures:
        print(f"test_kernels_torch: {len(failures)} mismatches: {', '.join(failures)}")
        return 1
    print("test_kernels_torch: all kernels match torch")
    return 0


if __name__ == "__main__":
    sys.exit(main())
