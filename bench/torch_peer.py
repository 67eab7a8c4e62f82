#!/usr/bin/env python3
"""PyTorch peer of bench_train: the identical LoRA training configuration in PyTorch.

  /usr/bin/python3 bench/torch_peer.py --model DIR --dtype f32|bf16 [--batch 4] [--seq 256]
        [--steps 5] [--warmup-steps 1] [--rank 16] [--alpha 32] [--lr 1e-4] [--seed 0]
        [--threads 2] [--peak-gflops G] [--peak-f32-gflops G]

Forward: tools/torch_llama.py (a pure-PyTorch HF Llama, eager attention) with LoRA added through
its linear_hook on all seven projections of every layer, as PEFT does:
    y = x W^T + (alpha/r) * (x A^T) B^T,  A Kaiming-uniform (PEFT's default), B zero.
Base weights (f32, loaded from the checkpoint) have requires_grad=False; torch.optim.AdamW
(lr 1e-4, betas 0.9/0.999, eps 1e-8, weight_decay 0) updates only the LoRA tensors.
  --dtype f32   plain float32
  --dtype bf16  torch.autocast("cpu", dtype=torch.bfloat16) around forward + loss (the usual
                mixed-precision recipe: master weights and optimizer state stay f32)
Random token ids (seeded), a fresh batch each step; targets are the next token. Prints the
same JSON line as bench_train (peak_rss_mb = getrusage ru_maxrss of this process).
"""
import argparse
import json
import math
import os
import resource
import sys
import time

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tools"))
import torch_llama as tl  # noqa: E402

SITES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def model_flops_per_step(cfg, B, T, rank):
    """Same formula as bench_train.c (see bench/README.md)."""
    C, nh, nkv, hd = tl.dims(cfg)
    Fd, L, V = cfg["intermediate_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    QD, KD = nh * hd, nkv * hd
    p_layer = C * QD + 2 * C * KD + QD * C + 3 * C * Fd
    p_lin = L * p_layer + V * C
    io_layer = (C + QD) + 2 * (C + KD) + (QD + C) + 2 * (C + Fd) + (Fd + C)
    lora = 6.0 * rank * L * io_layer
    attn = L * 3.0 * 4.0 * T * QD
    return float(B * T) * (4.0 * p_lin + lora + attn)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--dtype", choices=("f32", "bf16"), default="bf16")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup-steps", type=int, default=1)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--alpha", type=float, default=32.0)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--peak-gflops", type=float, default=0.0)
    ap.add_argument("--peak-f32-gflops", type=float, default=0.0)
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    t_load = time.perf_counter()
    cfg = tl.load_config(a.model)
    params = tl.load_params(a.model, dtype=torch.float32)
    for p in params.values():
        p.requires_grad_(False)
    L = cfg["num_hidden_layers"]
    scale = a.alpha / a.rank
    lora = {}
    g = torch.Generator().manual_seed(a.seed + 1)
    for li in range(L):
        for s in SITES:
            part = "self_attn" if s in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
            name = "model.layers.%d.%s.%s" % (li, part, s)
            out_f, in_f = params[name + ".weight"].shape
            # PEFT: kaiming_uniform_(a=sqrt(5)) -> U(-1/sqrt(in), 1/sqrt(in)); B = 0
            A = ((torch.rand(a.rank, in_f, generator=g) * 2 - 1) / math.sqrt(in_f)).requires_grad_(True)
            Bm = torch.zeros(out_f, a.rank).requires_grad_(True)
            lora[name] = (A, Bm)

    def hook(name, x, W, b):
        y = F.linear(x, W, b)
        ab = lora.get(name)
        if ab is not None:
            y = y + scale * F.linear(F.linear(x, ab[0]), ab[1])
        return y

    leaves = [t for ab in lora.values() for t in ab]
    opt = torch.optim.AdamW(leaves, lr=a.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    V = cfg["vocab_size"]
    B, T = a.batch, a.seq
    gen = torch.Generator().manual_seed(a.seed)
    t_load = time.perf_counter() - t_load

    t_fwd = t_bwd = t_opt = 0.0
    t_min = float("inf")
    first_loss = loss_v = 0.0
    for step in range(a.warmup_steps + a.steps):
        stream = torch.randint(0, V, (B, T + 1), generator=gen)
        ids, tgt = stream[:, :T], stream[:, 1:]
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        if a.dtype == "bf16":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = tl.forward(cfg, params, ids, linear_hook=hook)
                loss = F.cross_entropy(logits.reshape(-1, V), tgt.reshape(-1))
        else:
            logits = tl.forward(cfg, params, ids, linear_hook=hook)
            loss = F.cross_entropy(logits.reshape(-1, V), tgt.reshape(-1))
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        t3 = time.perf_counter()
        loss_v = loss.item()
        del logits, loss
        if step == 0:
            first_loss = loss_v
        print("step %d%s loss %.4f  fwd %.3fs bwd %.3fs opt %.4fs total %.3fs"
              % (step, " (warmup)" if step < a.warmup_steps else "", loss_v, t1 - t0, t2 - t1, t3 - t2, t3 - t0),
              file=sys.stderr)
        if step >= a.warmup_steps:
            t_fwd += t1 - t0
            t_bwd += t2 - t1
            t_opt += t3 - t2
            t_min = min(t_min, t3 - t0)
    n = a.steps
    step_s = (t_fwd + t_bwd + t_opt) / n
    flops = model_flops_per_step(cfg, B, T, a.rank)
    out = {
        "impl": "torch-%s" % a.dtype,
        "tokens_per_s": round(B * T / step_s, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
        "step_s": round(step_s, 4),
        "mfu": round(flops / step_s / (a.peak_gflops * 1e9), 4) if a.peak_gflops > 0 else None,
        "mfu_vs_f32_peak": round(flops / step_s / (a.peak_f32_gflops * 1e9), 4) if a.peak_f32_gflops > 0 else None,
        "step_min_s": round(t_min, 4),
        "fwd_s": round(t_fwd / n, 4),
        "bwd_s": round(t_bwd / n, 4),
        "opt_s": round(t_opt / n, 5),
        "model_gflops_per_step": round(flops / 1e9, 2),
        "achieved_gflops": round(flops / step_s / 1e9, 2),
        "batch": B, "seq": T, "steps": n, "warmup_steps": a.warmup_steps, "rank": a.rank,
        "threads": torch.get_num_threads(),
        "lora_params": sum(t.numel() for t in leaves),
        "first_loss": round(first_loss, 5), "last_loss": round(loss_v, 5),
        "load_s": round(t_load, 3),
        "torch": torch.__version__,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
