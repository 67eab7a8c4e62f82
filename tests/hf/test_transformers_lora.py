#!/usr/bin/env python3
"""LoRA training parity with transformers + HF PEFT: loss, every gradient, 3 AdamW steps.

For random transformers models (make_model of test_transformers_parity.py: GQA, MHA with tied
embeddings, Qwen2 with q/k/v biases) HF PEFT's get_peft_model(LoraConfig(init_lora_weights=False))
puts LoRA on all seven projections (A and B both random, so every gradient is non-zero) and
save_pretrained()s the adapter; tests/drivers/driver_train.c loads that directory. Compared:
  * the loss: transformers' causal-LM loss, model(input_ids, labels=labels).loss, whose labels
    are shifted inside (position t predicts labels[t + 1], -100 ignored); peft.c's targets[t] is
    the token position t predicts (-1 ignored), i.e. targets[:, :-1] = labels[:, 1:];
  * the gradient of every lora_A / lora_B (PEFT's saved key names);
  * the adapter after 3 torch.optim.AdamW steps (same lr, betas, eps, weight decay) and the loss
    before each step.
Cases cover rsLoRA, weight decay, packed rows (position_ids restarting: transformers masks
attention inside each example when position_ids are given without an attention mask), peft.c's
recomputation (PEFT_DRIVER_RECOMPUTE), GQA, tied embeddings and Qwen2.
Relative error = max |peft.c - reference| / max |reference| per tensor: <= 1e-4.
Exit 0 = pass, 1 = fail, 77 = skipped (torch / transformers / peft not importable).
"""
import os
import subprocess
import sys
import tempfile
import warnings

try:
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file, save_file
except ImportError as e:  # the oracle itself is missing
    print(f"SKIP: {e}")
    sys.exit(77)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hf_train_oracle  # noqa: E402
from test_transformers_parity import BUILD, load_reference, make_model  # noqa: E402

TOL = 1e-4
DRIVER = os.path.join(BUILD, "driver_train")
SITES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LR, STEPS = 1e-2, 3

CASES = [
    # name, variant, rank, alpha, rslora, packed, recompute, weight_decay
    ("gqa", "llama_gqa", 4, 8, False, False, False, 0.0),
    ("tied+rslora+wd", "llama_mha_tied", 4, 8, True, False, False, 0.1),
    ("qwen2-bias+packed", "qwen2_bias", 3, 6, False, True, False, 0.0),
    ("gqa+packed+recompute", "llama_gqa", 2, 4, False, True, True, 0.05),
]


def rel(a, b):
    return (a.double() - b.double()).abs().max().item() / max(b.abs().max().item(), 1e-30)


def make_batch(V, packed, g):
    """ids [2, 12], HF labels (-100 = no loss) and, for packed rows, position_ids: row 1 holds two
    examples of 7 and 5 tokens, so its first token of the second example is not a target."""
    B, T = 2, 12
    ids = torch.randint(0, V, (B, T), generator=g)
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[0, :4] = -100  # a prompt: positions 0..2 carry no loss
    pos = None
    if packed:
        pos = torch.stack([torch.arange(T), torch.cat([torch.arange(7), torch.arange(5)])])
        labels[1, 7] = -100
    targets = torch.full((B, T), -1, dtype=torch.long)
    targets[:, :-1] = labels[:, 1:].clamp_min(-1)
    return ids, labels, pos, targets


def reference(model, ids, labels, pos, wd):
    """transformers + PEFT: the first loss, the LoRA gradients, then STEPS AdamW updates."""
    loss, grads, final, losses, _ = hf_train_oracle.reference(
        model, lambda: model(input_ids=ids, labels=labels, position_ids=pos, use_cache=False).loss, LR, wd, STEPS)
    return loss, grads, final, losses


def run_case(tmp, case, g):
    name, variant, rank, alpha, rslora, packed, recompute, wd = case
    work = os.path.join(tmp, name.replace("+", "_"))
    cfg = make_model(os.path.join(work, "model"), variant, seed=3)
    torch.manual_seed(5)  # PEFT's own (Kaiming-uniform) draw of A and B
    model = get_peft_model(load_reference(os.path.join(work, "model")),
                           LoraConfig(r=rank, lora_alpha=alpha, use_rslora=rslora, target_modules=SITES, lora_dropout=0.0,
                                      bias="none", init_lora_weights=False, task_type="CAUSAL_LM"))
    model.save_pretrained(os.path.join(work, "adapter"))
    model.train()
    ids, labels, pos, targets = make_batch(cfg.vocab_size, packed, g)
    batch = {"ids": ids.int(), "targets": targets.int()}
    if pos is not None:
        batch["pos"] = pos.int()
    save_file(batch, os.path.join(work, "batch.safetensors"))
    env = dict(os.environ, PEFT_DRIVER_TRAIN=work, PEFT_DRIVER_LR=str(LR), PEFT_DRIVER_WD=str(wd),
               PEFT_DRIVER_STEPS=str(STEPS), PEFT_DRIVER_RECOMPUTE="1" if recompute else "0")
    r = subprocess.run([DRIVER], env=env, capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        print(f"FAIL {name}: driver exit {r.returncode}: {r.stderr.strip()}")
        return False
    out = load_file(os.path.join(work, "out.safetensors"))
    ref_loss, ref_grads, ref_final, ref_losses = reference(model, ids, labels, pos, wd)
    missing = [k for k in ref_grads if f"grad.{k}" not in out or f"final.{k}" not in out]
    if missing or len(ref_grads) != 2 * len(SITES) * cfg.num_hidden_layers:
        print(f"FAIL {name}: {len(ref_grads)} PEFT tensors, missing in peft.c's output: {missing[:3]}")
        return False
    loss_err = abs(out["loss"].item() - ref_loss) / abs(ref_loss)
    grad_err = max(rel(out[f"grad.{k}"], v) for k, v in ref_grads.items())
    final_err = max(rel(out[f"final.{k}"], v) for k, v in ref_final.items())
    steps_err = max(abs(a - b) / abs(b) for a, b in zip(out["losses"].tolist(), ref_losses))
    ok = max(loss_err, grad_err, final_err, steps_err) <= TOL
    print(f"{'ok  ' if ok else 'FAIL'} {name:22s} tensors {len(ref_grads):3d}  loss {ref_loss:.4f} err {loss_err:.1e}  "
          f"grads {grad_err:.1e}  after {STEPS} AdamW steps {final_err:.1e}  step losses {steps_err:.1e}")
    return ok


def main():
    torch.set_num_threads(2)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)  # PEFT calls is_gradient_checkpointing
    if not os.access(DRIVER, os.X_OK):
        print(f"FAIL: driver {DRIVER} is not built")
        return 1
    g = torch.Generator().manual_seed(9)
    with tempfile.TemporaryDirectory(prefix="peft_tf_lora_") as tmp:
        results = [run_case(tmp, c, g) for c in CASES]
    passed = sum(results)
    print(f"{passed} passed, {len(results) - passed} failed")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
