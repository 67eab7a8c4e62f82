"""test_kernels_torch.py: PyTorch parity of every kernel in src/kernels (forward and backward).

Each case builds random f32 inputs, computes the reference with torch (autograd for the
gradients, Hugging Face's formulas for RMSNorm, rotate_half RoPE and GQA attention; torch's own
layer_norm, gelu, conv2d and scaled_dot_product_attention for the encoder / ViT / Gemma2 ops), writes the
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


def case_layernorm(N, C, eps, has_w, has_b, offset):
    x = (torch.rand(N, C) * 6 - 3 + offset).requires_grad_(True)  # offset: a large common mean
    w = leaf(C, amp=2.0) if has_w else None
    b = leaf(C) if has_b else None
    y = F.layer_norm(x, (C,), w, b, eps)
    with torch.no_grad():
        xd = x.double()
        mean = xd.mean(-1)
        rstd = 1.0 / torch.sqrt(xd.var(-1, unbiased=False) + eps)
    dy = torch.randn(N, C)
    y.backward(dy)
    res = run_case(8, [N, C, int(has_w), int(has_b)], [eps], [x] + ([w] if has_w else []) + ([b] if has_b else []) + [dy])
    tag = f"layernorm N={N} C={C}{' w' if has_w else ''}{' b' if has_b else ''} offset={offset}"
    compare(tag + " out", res[0], y)
    compare(tag + " mean", res[1], mean)
    compare(tag + " rstd", res[2], rstd)
    compare(tag + " dinp", res[3], x.grad)
    if has_w:
        compare(tag + " dweight", res[4], w.grad)
    if has_b:
        compare(tag + " dbias", res[4 + int(has_w)], b.grad)


def case_gelu(N, Fd, approximate, gated):
    g = leaf(N, Fd, amp=6.0)
    u = leaf(N, Fd, amp=2.0) if gated else None
    y = F.gelu(g, approximate=approximate)
    if gated:
        y = y * u
    dy = torch.randn(N, Fd)
    y.backward(dy)
    res = run_case(9, [N, Fd, int(approximate == "tanh"), int(gated)], [], [g] + ([u] if gated else []) + [dy])
    tag = f"{'geglu' if gated else 'gelu'} {approximate} N={N} F={Fd}"
    compare(tag + " out", res[0], y)
    compare(tag + " dgate", res[1], g.grad)
    if gated:
        compare(tag + " dup", res[2], u.grad)


def case_attention(B, Tq, Tk, H, KVH, hd, causal=True, window=0, softcap=0.0, scale=0.0, packed=False, kv_len=None,
                   legacy=False):
    """attention_forward_opts (legacy: the causal attention_forward llama.c calls, op 4) against an
    explicit masked softmax with autograd (HF eager attention with repeat_kv), and (without
    soft-capping) against torch's scaled_dot_product_attention with the same boolean mask."""
    gen = torch.Generator().manual_seed(B * 1000 + Tk + window)
    q, k, v = leaf(B, Tq, H, hd, amp=3.0), leaf(B, Tk, KVH, hd, amp=3.0), leaf(B, Tk, KVH, hd)
    pos = packed_positions(B, Tk, gen)[:, Tk - Tq:].contiguous() if packed else None
    lens = torch.tensor(kv_len, dtype=torch.int32) if kv_len is not None else None
    sc = scale if scale > 0 else hd ** -0.5
    a = torch.arange(Tk - Tq, Tk)[None, :, None]  # absolute query index (1, Tq, 1)
    j = torch.arange(Tk)[None, None, :]
    visible = torch.ones(B, Tq, Tk, dtype=torch.bool)
    if causal:
        visible &= j <= a
    if packed:
        visible &= j >= a - pos.long()[:, :, None]
    if window > 0:
        visible &= j > a - window
    valid_q = torch.ones(B, Tq, dtype=torch.bool)
    if lens is not None:
        visible &= j < lens.long()[:, None, None]
        valid_q = a[:, :, 0] < lens.long()[:, None]
    # padded queries: out 0, lse 0, no gradient; give them every key so the reference stays finite
    visible = visible | ~valid_q[:, :, None]
    group = H // KVH

    def explicit(q, k, v):
        kk = k.repeat_interleave(group, dim=2).transpose(1, 2)
        vv = v.repeat_interleave(group, dim=2).transpose(1, 2)
        s = q.transpose(1, 2) @ kk.transpose(-1, -2) * sc
        if softcap > 0:
            s = softcap * torch.tanh(s / softcap)
        s = s.masked_fill(~visible[:, None], float("-inf"))
        lse = torch.logsumexp(s, dim=-1) * valid_q[:, None]
        y = (torch.softmax(s, dim=-1) @ vv).transpose(1, 2) * valid_q[:, :, None, None]
        return y, lse

    y, lse = explicit(q, k, v)
    dy = torch.randn(B, Tq, H, hd)
    empty = torch.zeros(0, dtype=torch.int32)
    tensors = [q, k, v, pos if packed else empty, lens if lens is not None else empty, dy]
    if legacy:
        res = run_case(4, [B, Tq, Tk, H, KVH, hd, int(packed)], [], [q, k, v] + ([pos] if packed else []) + [dy])
    else:
        res = run_case(10, [B, Tq, Tk, H, KVH, hd, int(causal), window], [softcap, scale], tensors)
    tag = (f"attn{' (causal wrapper)' if legacy else ''} B={B} Tq={Tq} Tk={Tk} H={H}/{KVH} hd={hd} {'causal' if causal else 'bidir'}"
           f"{f' window={window}' if window else ''}{f' softcap={softcap}' if softcap else ''}"
           f"{f' scale={scale}' if scale else ''}{' packed' if packed else ''}{f' kv_len={kv_len}' if kv_len else ''}")
    compare(tag + " out", res[0], y)
    compare(tag + " lse", res[1], lse)
    if Tq == Tk:
        y.backward(dy)
        compare(tag + " dq", res[2], q.grad)
        compare(tag + " dk", res[3], k.grad)
        compare(tag + " dv", res[4], v.grad)
    if softcap == 0:
        q2, k2, v2 = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
        y2 = F.scaled_dot_product_attention(q2.transpose(1, 2), k2.transpose(1, 2), v2.transpose(1, 2),
                                            attn_mask=visible[:, None], scale=sc, enable_gqa=True)
        y2 = y2.transpose(1, 2) * valid_q[:, :, None, None]
        compare(tag + " out vs sdpa", res[0], y2)
        if Tq == Tk:
            y2.backward(dy)
            compare(tag + " dq vs sdpa", res[2], q2.grad)
            compare(tag + " dk vs sdpa", res[3], k2.grad)
            compare(tag + " dv vs sdpa", res[4], v2.grad)


def case_patch_embed(B, Cin, H, W, P, C, bias):
    img = leaf(B, Cin, H, W).detach()
    w, b = leaf(C, Cin, P, P, amp=0.3), (leaf(C) if bias else None)
    y = F.conv2d(img, w, b, stride=P).flatten(2).transpose(1, 2)  # HF ViTPatchEmbeddings
    dy = torch.randn(*y.shape)
    y.backward(dy)
    res = run_case(11, [B, Cin, H, W, P, C, int(bias)], [], [img, w] + ([b] if bias else []) + [dy])
    tag = f"patch_embed B={B} Cin={Cin} {H}x{W} P={P} C={C}{' +bias' if bias else ''}"
    compare(tag + " out", res[0], y)
    compare(tag + " dweight", res[1], w.grad)
    if bias:
        compare(tag + " dbias", res[2], b.grad)


def case_positions(N, C, V):
    base, table = leaf(N, C), leaf(V, C)
    pos = torch.randint(0, V, (N,), dtype=torch.int32)
    pos[2] = pos[0]  # a repeated position (packed rows restart at 0)
    y = base + F.embedding(pos.long(), table)
    dy = torch.randn(N, C)
    y.backward(dy)
    res = run_case(12, [N, C, V], [], [base, pos, table, dy])
    tag = f"positions N={N} C={C} V={V}"
    compare(tag + " out", res[0], y)
    compare(tag + " dtable", res[1], table.grad)


def case_softcap(n, cap):
    x = leaf(n, amp=3 * cap)
    with torch.no_grad():
        x[: n // 4] *= 1e-3  # small values, where tanh must not cancel
    y = cap * torch.tanh(x / cap)
    dy = torch.randn(n)
    y.backward(dy)
    res = run_case(13, [n], [cap], [x, dy])
    tag = f"softcap n={n} cap={cap}"
    compare(tag + " out", res[0], y)
    compare(tag + " dinp", res[1], x.grad)


def case_crossentropy_softcap(N, V, cap):
    logits = leaf(N, V, amp=60.0)
    targets = torch.randint(0, V, (N,), dtype=torch.int32)
    targets[1] = -100
    capped = cap * torch.tanh(logits / cap)  # Gemma2's final_logit_softcapping
    losses = F.cross_entropy(capped, targets.long(), ignore_index=-100, reduction="none")
    count = int((targets >= 0).sum())
    scale = 1.0 / count
    (losses.sum() * scale).backward()
    res = run_case(14, [N, V], [cap, scale], [logits, targets])
    tag = f"crossentropy_softcap N={N} V={V} cap={cap}"
    compare(tag + " losses", res[0], losses)
    if int(res[1][0]) != count:
        failures.append(tag + " count")
        print(f"  {tag} count {res[1][0]} vs {count}  FAIL")
    compare(tag + " dlogits", res[2], logits.grad)


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
    case_attention(1, 17, 17, 4, 4, 32, legacy=True)
    case_attention(2, 40, 40, 8, 2, 64, legacy=True)
    case_attention(2, 45, 45, 4, 1, 128, packed=True, legacy=True)
    case_attention(2, 3, 40, 8, 2, 64, legacy=True)  # decode against a KV cache
    case_attention(2, 1, 45, 4, 1, 128, packed=True, legacy=True)
    case_swiglu(9, 300)
    case_embedding(12, 48, 20)
    case_crossentropy(8, 1000)
    # encoder / ViT / GPT-2 / Gemma ops (issue 14)
    case_layernorm(6, 200, 1e-5, True, True, 0.0)
    case_layernorm(5, 768, 1e-12, True, True, 50.0)  # BERT's eps
    case_layernorm(3, 64, 1e-6, False, False, 0.0)
    case_layernorm(4, 100, 1e-5, True, False, -3.0)
    for approx in ("none", "tanh"):
        case_gelu(9, 300, approx, False)
        case_gelu(7, 77, approx, True)
    case_attention(2, 40, 40, 4, 2, 32, causal=False)
    case_attention(3, 70, 70, 4, 4, 64, causal=False, kv_len=[70, 33, 1])  # BERT padding
    case_attention(2, 100, 100, 6, 2, 48, causal=False, kv_len=[65, 64], scale=0.3)
    case_attention(2, 90, 90, 4, 2, 64, causal=True, window=17)  # Mistral sliding window
    case_attention(1, 130, 130, 2, 1, 32, causal=True, window=64, packed=True)
    case_attention(2, 80, 80, 4, 2, 64, causal=True, softcap=50.0, scale=0.05)  # Gemma2 scores
    case_attention(2, 70, 70, 4, 4, 32, causal=True, window=33, softcap=5.0, kv_len=[70, 41])
    case_attention(2, 3, 50, 4, 2, 64, causal=True, window=20, softcap=20.0)  # decode, KV cache
    case_patch_embed(2, 3, 32, 32, 8, 24, True)
    case_patch_embed(1, 3, 30, 36, 6, 40, False)
    case_patch_embed(1, 3, 31, 20, 8, 16, True)  # H, W not multiples of P: Conv2d drops the rest
    case_positions(12, 48, 20)
    case_softcap(1000, 30.0)
    case_crossentropy_softcap(6, 1000, 30.0)
    if failures:
        print(f"test_kernels_torch: {len(failures)} mismatches: {', '.join(failures)}")
        return 1
    print("test_kernels_torch: all kernels match torch")
    return 0


if __name__ == "__main__":
    sys.exit(main())
