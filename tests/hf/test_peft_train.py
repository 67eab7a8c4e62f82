#!/usr/bin/env python3
"""Training parity with transformers + HF PEFT for every method PEFT has besides LoRA (which is
tests/hf/test_transformers_lora.py): DoRA, IA3 (feed-forward modules), VeRA, prompt tuning,
prefix tuning, LayerNorm tuning.

1. Parity (tests/hf/hf_train_oracle.py): for random transformers models (make_model of
   test_transformers_parity.py: GQA, MHA with tied embeddings, Qwen2 with q/k/v biases, llama3
   RoPE) HF PEFT's get_peft_model creates the adapter, its parameters are moved off their init
   (so that every gradient is non-trivial: VeRA's lambda_b starts at 0, IA3's l at 1) and
   save_pretrained()s it; tests/drivers/driver_train.c loads that directory. Compared with the
   PEFT model in train mode: the loss (model(input_ids, labels).loss), the gradient of every
   trainable tensor (PEFT's saved keys), the tensors after 3 torch.optim.AdamW steps and the
   loss before each step, <= 1e-4 relative (max |peft.c - PEFT| / max |PEFT| per tensor; after
   the updates without the coordinates whose gradient was float noise at some update, at most
   0.1 %: Adam moves those by ~lr in a direction set by rounding, see hf_train_oracle.compare).
   Cases cover packed rows (position_ids restarting), peft.c's recomputation, weight decay.
   Prompt tuning: PEFT prepends n_virtual -100 labels, so the last virtual position predicts the
   first label; prefix tuning: the prefix is a cache, only the real tokens are positions.
2. The trainer's convention: `peft train --method prompt_tuning / prefix_tuning` with a
   one-document --val-data; the trained adapter, loaded by PEFT, gives on that document's tokens
   (the tokenizers library, plus the EOS the trainer appends) with labels = input_ids the
   validation loss the trainer logged (1e-5 relative); `peft eval` over several windows gives
   PEFT's loss on those windows (every token predicted once).
Exit 0 = pass, 1 = fail, 77 = skipped (torch / transformers / peft / tokenizers not importable).
"""
import json
import os
import subprocess
import sys
import tempfile
import warnings

try:
    import torch
    import transformers
    import tokenizers
    from peft import (IA3Config, LNTuningConfig, LoraConfig, PeftModel, PrefixTuningConfig, PromptTuningConfig,
                      VeraConfig, get_peft_model)
except ImportError as e:  # the oracle itself is missing
    print(f"SKIP: {e}")
    sys.exit(77)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hf_train_oracle as oracle  # noqa: E402
from test_peft_adapters import make_model as make_cli_model  # noqa: E402
from test_transformers_parity import BUILD, PEFT_BIN, load_reference, make_model  # noqa: E402

DRIVER = os.path.join(BUILD, "driver_train")
SITES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
NORMS = ["input_layernorm", "post_attention_layernorm", "norm"]
LR, STEPS = 1e-2, 3


def configs():
    C = "CAUSAL_LM"
    return {
        "dora": lambda: LoraConfig(task_type=C, r=4, lora_alpha=8, use_dora=True, target_modules=SITES, lora_dropout=0.0,
                                   init_lora_weights=False),
        "dora-rslora": lambda: LoraConfig(task_type=C, r=4, lora_alpha=8, use_dora=True, use_rslora=True,
                                          target_modules=SITES, lora_dropout=0.0, init_lora_weights=False),
        "ia3": lambda: IA3Config(task_type=C, target_modules=SITES, feedforward_modules=["up_proj", "down_proj"]),
        "vera": lambda: VeraConfig(task_type=C, r=16, target_modules=SITES, save_projection=True, vera_dropout=0.0,
                                   d_initial=0.1),
        "prompt": lambda nv: PromptTuningConfig(task_type=C, num_virtual_tokens=nv),
        "prefix": lambda nv: PrefixTuningConfig(task_type=C, num_virtual_tokens=nv),
        "ln": lambda: LNTuningConfig(task_type=C, target_modules=NORMS),
    }


CASES = [
    # name, method, variant, packed, recompute, weight decay, n_virtual
    ("dora-gqa", "dora", "llama_gqa", False, False, 0.0, 0),
    ("dora-qwen2-bias+packed", "dora", "qwen2_bias", True, False, 0.0, 0),
    ("dora-rslora-tied+recompute+wd", "dora-rslora", "llama_mha_tied", False, True, 0.1, 0),
    ("ia3-gqa", "ia3", "llama_gqa", False, False, 0.0, 0),
    ("ia3-qwen2-bias+packed", "ia3", "qwen2_bias", True, False, 0.0, 0),
    ("ia3-tied+recompute+wd", "ia3", "llama_mha_tied", False, True, 0.1, 0),
    ("vera-gqa", "vera", "llama_gqa", False, False, 0.0, 0),
    ("vera-qwen2-bias+packed", "vera", "qwen2_bias", True, False, 0.0, 0),
    ("vera-tied+recompute+wd", "vera", "llama_mha_tied", False, True, 0.1, 0),
    ("ln-gqa", "ln", "llama_gqa", False, False, 0.0, 0),
    ("ln-tied+packed+wd", "ln", "llama_mha_tied", True, False, 0.1, 0),
    ("prompt-gqa", "prompt", "llama_gqa", False, False, 0.0, 4),
    ("prompt-tied+wd", "prompt", "llama_mha_tied", False, False, 0.1, 6),
    ("prompt-qwen2+recompute", "prompt", "qwen2_bias", False, True, 0.0, 2),
    ("prefix-gqa", "prefix", "llama_gqa", False, False, 0.0, 4),
    ("prefix-qwen2+wd", "prefix", "qwen2_bias", False, False, 0.1, 3),
    ("prefix-llama3rope+recompute", "prefix", "llama3_rope", False, True, 0.0, 2),
]


def randomise(model, g):
    """Moves every trainable tensor off PEFT's init (multiplicatively for scales and norms)."""
    with torch.no_grad():
        for n, p in model.named_parameters():
            if not p.requires_grad:
                continue
            noise = torch.randn(p.shape, generator=g)
            if "vera_lambda_b" in n:  # starts at 0: a scale of the size of lambda_d
                p.copy_(0.1 * noise)
            elif any(s in n for s in ("ia3_l", "lora_magnitude_vector", "ln_tuning_layers", "vera_lambda_d")):
                p.mul_(1 + 0.2 * noise)
            elif "prompt_encoder" in n:
                p.copy_(0.5 * noise)


def run_case(tmp, case, seed):
    name, method, variant, packed, recompute, wd, nv = case
    g = torch.Generator().manual_seed(seed)
    work = os.path.join(tmp, name.replace("+", "_"))
    cfg = make_model(os.path.join(work, "model"), variant, seed=3)
    torch.manual_seed(5)  # PEFT's own draws (LoRA A and B, VeRA's projections)
    make = configs()[method]
    model = get_peft_model(load_reference(os.path.join(work, "model")), make(nv) if nv else make())
    randomise(model, g)
    model.save_pretrained(os.path.join(work, "adapter"))
    model.train()
    ids, labels, pos = oracle.make_batch(cfg.vocab_size, 2, 12 - nv, packed, g)
    if nv:  # peft.c's rows: n_virtual placeholders, then the tokens
        oracle.write_batch(work, torch.cat([torch.zeros(2, nv, dtype=torch.long), ids], 1),
                           oracle.driver_targets(labels, nv, first_from_virtual=method == "prompt"))
    else:
        oracle.write_batch(work, ids, oracle.driver_targets(labels), pos)
    try:
        out = oracle.run_driver(DRIVER, work, LR, wd, STEPS, recompute)
    except RuntimeError as e:
        print(f"FAIL {name}: {e}")
        return False

    def loss_fn():
        return model(input_ids=ids, labels=labels, position_ids=pos, use_cache=False).loss

    return oracle.compare(name, out, oracle.reference(model, loss_fn, LR, wd, STEPS))


# ---- 2: the trainer's loss convention with virtual tokens ----------------------------------

def run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout[-800:]}\n{r.stderr[-800:]}")
    return r.stdout


def check_trainer_loss(tmp, model_dir, method, nv):
    """`peft train` (prompt/prefix tuning) on the demo tokenizer: its logged validation loss is
    PEFT's loss with labels = input_ids on the validation document."""
    work = os.path.join(tmp, f"cli_{method}")
    os.makedirs(work)
    data, val = os.path.join(work, "train.txt"), os.path.join(work, "val.txt")
    with open(data, "w") as f:
        f.write("".join(f"{i} the quick brown fox jumps over the lazy dog.\n" for i in range(16)))
    val_text = "A brown dog jumps over the quick lazy fox."
    with open(val, "w") as f:
        f.write(val_text)
    out = os.path.join(work, "adapter")
    run([PEFT_BIN, "train", "--model", model_dir, "--data", data, "--val-data", val, "--out", out, "--method", method,
         "--num-virtual-tokens", str(nv), "--steps", "3", "--batch", "2", "--seq-len", "40", "--lr", "0.05", "--seed", "3",
         "--no-progress"])
    logged = [json.loads(line) for line in open(os.path.join(out, "train_log.jsonl")) if "val_loss" in line][-1]["val_loss"]
    tok = tokenizers.Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    eos = json.load(open(os.path.join(model_dir, "config.json")))["eos_token_id"]
    val_ids = torch.tensor([tok.encode(val_text).ids + [eos]])
    model = PeftModel.from_pretrained(load_reference(model_dir), out).eval()
    with torch.no_grad():
        ref = model(input_ids=val_ids, labels=val_ids).loss.item()
    ok = abs(logged - ref) <= 1e-5 * abs(ref)
    print(f"{'ok  ' if ok else 'FAIL'} peft train {method}: logged val loss {logged:.6f}, PEFT labels=input_ids {ref:.6f} "
          f"({val_ids.shape[1]} tokens)")
    return check_eval_windows(work, model_dir, out, model, val_ids[0], method, nv) and ok


def check_eval_windows(work, model_dir, adapter, model, ids, method, nv, Td=8):
    """`peft eval --ids` over windows of n_virtual + Td: the mean over every prediction of PEFT's
    losses (labels = input_ids) on the windows. Prompt tuning: windows of Td tokens, each
    predicting all of its tokens (the first from the virtual tokens); prefix tuning: window w
    predicts tokens w*Td+1 .. w*Td+Td, i.e. PEFT on tokens w*Td .. w*Td+Td."""
    p = os.path.join(work, "eval_ids.txt")
    with open(p, "w") as f:
        f.write(" ".join(str(int(v)) for v in ids.tolist()))
    text = run([PEFT_BIN, "eval", "--model", model_dir, "--adapter", adapter, "--data", p, "--ids", "--seq-len", str(nv + Td),
                "--batch", "2"])
    loss, counted = float(text.split("loss")[1].split()[0]), int(text.split("tokens")[1].split()[0])
    prompt = method == "prompt_tuning"
    total, n_pred = 0.0, 0
    with torch.no_grad():
        for w0 in range(0, len(ids) - (0 if prompt else 1), Td):
            chunk = ids[w0:w0 + Td + (0 if prompt else 1)][None]
            k = chunk.shape[1] - (0 if prompt else 1)  # predictions of this window
            total += k * model(input_ids=chunk, labels=chunk).loss.item()
            n_pred += k
    ref = total / n_pred
    ok = counted == n_pred and abs(loss - ref) <= 1e-5 * abs(ref)
    print(f"{'ok  ' if ok else 'FAIL'} peft eval {method}, windows of {Td}: {counted} predictions, loss {loss:.6f}; "
          f"PEFT {n_pred}, {ref:.6f}")
    return ok


def main():
    torch.set_num_threads(2)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    for p in (DRIVER, PEFT_BIN):
        if not os.access(p, os.X_OK):
            print(f"FAIL: {p} is not built")
            return 1
    only = sys.argv[1:]
    with tempfile.TemporaryDirectory(prefix="peft_train_") as tmp:
        results = [run_case(tmp, c, 100 + i) for i, c in enumerate(CASES) if not only or c[1] in only]
        if not only or "cli" in only:
            model_dir = make_cli_model(tmp, "cli_model", False, 4)  # vocab 1024, the demo tokenizer
            for method, nv in (("prompt_tuning", 5), ("prefix_tuning", 4)):
                try:
                    results.append(check_trainer_loss(tmp, model_dir, method, nv))
                except RuntimeError as e:
                    print(f"FAIL peft train {method}: {e}")
                    results.append(False)
    passed = sum(results)
    print(f"{passed} passed, {len(results) - passed} failed")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
