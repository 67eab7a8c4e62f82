#!/usr/bin/env python3
"""Hugging Face peer of bench_train: the same LoRA training run in transformers + PEFT.

  .venv/bin/python bench/hf_peer.py --model DIR --dtype f32|bf16 [--batch 4] [--seq 256]
        [--steps 5] [--warmup-steps 1] [--rank 16] [--alpha 32] [--lr 1e-4] [--seed 0]
        [--threads 2] [--peak-gflops G] [--peak-f32-gflops G] [--quantize nf4] [--grad-checkpointing]
        [--data TRAIN.txt [--val-data VAL.txt] [--save ADAPTER_DIR]]

What a user runs on PyPI's torch: LlamaForCausalLM.from_pretrained(DIR) in f32 (the files
bench_train reads; default attention implementation), then
    peft.get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0,
                        target_modules=[the seven projections]))
(A Kaiming-uniform, B zero: PEFT's default, as peft.c's), torch.optim.AdamW over the LoRA
parameters only (lr 1e-4, betas 0.9/0.999, eps 1e-8, weight_decay 0 as bench_train; torch's
default would be 0.01).
  --dtype f32   plain float32
  --dtype bf16  torch.autocast("cpu", dtype=torch.bfloat16) around forward + loss (master
                weights, LoRA parameters and AdamW state stay f32)
  --quantize nf4  QLoRA's base: every Linear of the decoder layers as bitsandbytes Linear4bit
                (transformers' BitsAndBytesConfig(load_in_4bit, nf4, double quant, compute
                dtype f32)); the embedding and the tied LM head stay f32, as peft.c's --quantize
                keeps them. bitsandbytes >= 0.48 runs it on the CPU.
  --grad-checkpointing  transformers' model.gradient_checkpointing_enable(use_reentrant=False):
                every decoder layer's activations recomputed in the backward (peer of --recompute)
Batches: bench_train's own splitmix64 stream (seed s = seed * 0x2545F4914F6CDD1D + 1, one
draw % vocab per token, B rows of T+1 tokens, targets = the next token), so both sides train
on the identical token ids and the first step's loss (B = 0: the base model) must agree.
With --data (plain text), the rows of `peft train --data TRAIN.txt --val-data ...` instead:
the text tokenized by the model's tokenizer.json (tokenizers, BOS as its post-processor adds
it) with the tokenizer's EOS appended, cut into windows of T tokens, window w predicting
tokens w*T+1 .. w*T+T (the last target of a window is the next window's first token; none
after the EOS). When the file makes exactly B windows every step is the same batch, whatever
order a side draws them in, so both sides see the same rows at every step. --val-data: the
loss over VAL.txt as `peft eval` takes it (BOS, no EOS, the same windows, no context across
them), after the last step, f32 logits; --save writes the adapter.
Loss: transformers' own causal-LM loss (model.loss_function, f32 logits, mean over B*T) with
the targets given as shift_labels, i.e. all T targets of each row, as bench_train counts them.
Prints the JSON line of bench_train (peak_rss_mb = getrusage ru_maxrss of this process, as
bench_train; import_rss_mb = the same after importing torch/transformers/peft, before loading).
"""
import argparse
import json
import resource
import sys
import time

SITES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
MASK64 = (1 << 64) - 1


def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kilobytes


def splitmix64(state):
    """bench_train.c's splitmix64: returns (new state, output)."""
    state = (state + 0x9E3779B97F4A7C15) & MASK64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return state, z ^ (z >> 31)


def windows(ids, T):
    """[n, T] inputs and [n, T] targets (-100: none) of a token list cut into windows of T:
    window w holds ids[w*T : w*T+T] and predicts ids[w*T+1 : w*T+T+1]; n = ceil((len-1)/T), the
    windows with at least one target (as peft.c keeps them). Padding (0) has no target and,
    after the real tokens of a causal model, changes no loss."""
    import torch
    n = (len(ids) - 1 + T - 1) // T
    inp = torch.zeros((n, T), dtype=torch.long)
    tgt = torch.full((n, T), -100, dtype=torch.long)
    for w in range(n):
        seg = ids[w * T:w * T + T + 1]
        inp[w, :min(T, len(seg))] = torch.tensor(seg[:T])
        tgt[w, :len(seg) - 1] = torch.tensor(seg[1:])
    return inp, tgt


def text_windows(path, tok, T, eos=None):
    """The rows of a plain-text file: `peft train`'s (eos: the tokenizer's EOS appended) or,
    with eos None, `peft eval`'s (BOS + text only). Either way a window's last position
    predicts the next window's first token, and no context is carried across windows."""
    with open(path, encoding="utf-8") as f:
        ids = tok.encode(f.read()).ids
    if eos is not None:
        ids.append(eos)
    return windows(ids, T)


def tokenizer_of(model_dir):
    """The model's tokenizer.json and its EOS id (tokenizer_config.json's eos_token, as peft.c)."""
    import os
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    with open(os.path.join(model_dir, "tokenizer_config.json")) as f:
        eos = json.load(f).get("eos_token")
    if isinstance(eos, dict):
        eos = eos.get("content")
    return tok, (tok.token_to_id(eos) if eos else None)


def model_flops_per_step(cfg, B, T, rank):
    """bench_train.c's model_flops_per_step (formula in bench/README.md)."""
    C, Fd, L, V = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.vocab_size
    hd = getattr(cfg, "head_dim", None) or C // cfg.num_attention_heads
    QD, KD = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
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
    ap.add_argument("--quantize", choices=("nf4",), default=None)
    ap.add_argument("--grad-checkpointing", action="store_true")
    ap.add_argument("--data", help="plain-text training file (else bench_train's random token stream)")
    ap.add_argument("--val-data", help="plain-text validation file (needs --data)")
    ap.add_argument("--save", help="write the trained adapter here (save_pretrained)")
    a = ap.parse_args()
    if a.val_data and not a.data:
        ap.error("--val-data needs --data")
    if a.quantize and a.dtype != "f32":
        ap.error("--quantize nf4 computes in f32 (QLoRA's compute dtype): use --dtype f32")

    import peft
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    import_rss = rss_mb()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)  # LoRA A's Kaiming init
    t_load = time.perf_counter()
    qcfg = None
    if a.quantize:
        from transformers import BitsAndBytesConfig
        qcfg = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32, quantization_config=qcfg,
                                                 device_map="cpu" if qcfg else None)
    if a.grad_checkpointing:  # non-reentrant: no need to make the frozen embedding's output require grad
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lcfg = peft.LoraConfig(r=a.rank, lora_alpha=a.alpha, lora_dropout=0.0, target_modules=SITES,
                           task_type="CAUSAL_LM")
    model = peft.get_peft_model(model, lcfg)
    model.train()
    leaves = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(leaves, lr=a.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    cfg = model.config
    V, B, T = cfg.vocab_size, a.batch, a.seq
    state = (a.seed * 0x2545F4914F6CDD1D + 1) & MASK64
    if a.data:
        tok, eos = tokenizer_of(a.model)
        rows_in, rows_tgt = text_windows(a.data, tok, T, eos)
    t_load = time.perf_counter() - t_load

    t_fwd = t_bwd = t_opt = 0.0
    t_min = float("inf")
    step_times = []
    first_loss = loss_v = 0.0
    for step in range(a.warmup_steps + a.steps):
        if a.data:  # rows step*B .. step*B+B-1, cyclically (all of them when there are B)
            pick = [(step * B + b) % rows_in.shape[0] for b in range(B)]
            ids, tgt = rows_in[pick], rows_tgt[pick]
        else:
            stream = []  # [B][T+1] token ids, drawn row by row as bench_train does
            for _ in range(B * (T + 1)):
                state, z = splitmix64(state)
                stream.append(z % V)
            stream = torch.tensor(stream, dtype=torch.long).view(B, T + 1)
            ids, tgt = stream[:, :T], stream[:, 1:].contiguous()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.dtype == "bf16"):
            logits = model(input_ids=ids, use_cache=False).logits  # [B, T, V]
            loss = model.loss_function(logits=logits, labels=tgt, vocab_size=V, shift_labels=tgt)
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
            step_times.append(round(t3 - t0, 4))
    val_loss = None
    if a.val_data:
        model.eval()
        v_in, v_tgt = text_windows(a.val_data, tok, T)
        total, count = 0.0, 0
        with torch.no_grad():
            for w in range(0, v_in.shape[0], B):
                logits = model(input_ids=v_in[w:w + B], use_cache=False).logits.float()
                total += torch.nn.functional.cross_entropy(logits.view(-1, V), v_tgt[w:w + B].reshape(-1),
                                                           ignore_index=-100, reduction="sum").item()
                count += int((v_tgt[w:w + B] != -100).sum())
        val_loss = total / count
    if a.save:
        model.save_pretrained(a.save)
    n = a.steps
    step_s = (t_fwd + t_bwd + t_opt) / n
    flops = model_flops_per_step(cfg, B, T, a.rank)
    out = {
        "impl": "hf-%s" % (a.quantize or a.dtype),
        "tokens_per_s": round(B * T / step_s, 1),
        "peak_rss_mb": round(rss_mb(), 1),
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
        "val_loss": None if val_loss is None else round(val_loss, 6),
        "step_times_s": step_times,
        "quantize": a.quantize,
        "grad_checkpointing": a.grad_checkpointing,
        "load_s": round(t_load, 3),
        "import_rss_mb": round(import_rss, 1),
        "attn_implementation": cfg._attn_implementation,
        "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
