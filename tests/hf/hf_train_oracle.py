"""Training parity against transformers + HF PEFT: the pieces the tests/hf training tests share.

A case saves a PEFT model (get_peft_model on a transformers checkpoint) with save_pretrained()
into WORK/adapter, the checkpoint into WORK/model and a token batch into WORK/batch.safetensors;
tests/drivers/driver_train.c loads them and writes peft.c's first loss, every adapter gradient
("grad.<saved key>"), the adapter after `steps` AdamW updates ("final.<saved key>") and the loss
before each update. reference() computes the same with the PEFT model itself and
torch.optim.AdamW; compare() reports max |peft.c - PEFT| / max |PEFT| per tensor.

Label conventions: transformers' causal-LM loss shifts inside (position t predicts labels[t + 1],
-100 ignored); peft.c's targets[t] is the token position t predicts (-1 ignored), so
targets[:, :-1] = labels[:, 1:]. With virtual tokens (prompt / prefix tuning) peft.c's rows start
with n_virtual placeholders; see driver_targets().

The caller imports torch, transformers and peft first (and exits 77 when they are missing).
"""
import os
import subprocess

import torch
from safetensors.torch import load_file, save_file

TOL = 1e-4


def rel(a, b):
    """max |a - b| / max |b| over the tensor, in double."""
    return (a.double() - b.double()).abs().max().item() / max(b.double().abs().max().item(), 1e-30)


def saved_key(param_name):
    """PEFT's in-memory parameter name as save_pretrained writes it: adapter name dropped
    (…q_proj.lora_A.default.weight -> …q_proj.lora_A.weight, …ia3_l.default -> …ia3_l), DoRA's
    magnitude module saved as its tensor, the prompt encoder as "prompt_embeddings"."""
    if param_name.startswith("prompt_encoder."):
        return "prompt_embeddings"
    key = param_name.replace(".default", "")
    if key.endswith("lora_magnitude_vector.weight"):
        key = key[: -len(".weight")]
    return key


def make_batch(V, B, T, packed, g):
    """ids [B, T], HF labels (random, -100 = no loss) and, for packed rows, position_ids: row 1
    holds two examples of 7 and T - 7 tokens, and the first token of the second is no target
    (nothing before it in its example)."""
    ids = torch.randint(0, V, (B, T), generator=g)
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[1, :4] = -100  # a prompt: no loss on row 1's first positions
    pos = None
    if packed:
        pos = torch.stack([torch.arange(T), torch.cat([torch.arange(7), torch.arange(T - 7)])] + [torch.arange(T)] * (B - 2))
        labels[1, 7] = -100
    return ids, labels, pos


def driver_targets(labels, n_virtual=0, first_from_virtual=False):
    """peft.c's inputs-are-given targets [B, n_virtual + T] for HF labels [B, T]: position
    n_virtual + t predicts labels[t + 1]; the placeholders predict nothing, except that with
    first_from_virtual (prompt tuning: PEFT prepends n_virtual -100 labels, so after the shift the
    last virtual position predicts labels[0]) position n_virtual - 1 predicts labels[0]."""
    B, T = labels.shape
    targets = torch.full((B, n_virtual + T), -1, dtype=torch.long)
    targets[:, n_virtual:-1] = labels[:, 1:].clamp_min(-1)
    if first_from_virtual:
        targets[:, n_virtual - 1] = labels[:, 0].clamp_min(-1)
    return targets


def write_batch(work, ids, targets, pos=None):
    batch = {"ids": ids.int().contiguous(), "targets": targets.int().contiguous()}
    if pos is not None:
        batch["pos"] = pos.int().contiguous()
    save_file(batch, os.path.join(work, "batch.safetensors"))


def run_driver(driver, work, lr, wd, steps, recompute=False):
    """driver_train on WORK; its outputs by name. Raises RuntimeError with its stderr on failure."""
    env = dict(os.environ, PEFT_DRIVER_TRAIN=work, PEFT_DRIVER_LR=str(lr), PEFT_DRIVER_WD=str(wd),
               PEFT_DRIVER_STEPS=str(steps), PEFT_DRIVER_RECOMPUTE="1" if recompute else "0")
    r = subprocess.run([driver], env=env, capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise RuntimeError(f"driver exit {r.returncode}: {r.stderr.strip()}")
    return load_file(os.path.join(work, "out.safetensors"))


def reference(model, loss_fn, lr, wd, steps):
    """The PEFT side: loss_fn() (the model's .loss) and the gradient of every trainable
    parameter, then `steps` torch.optim.AdamW updates (betas 0.9/0.999, eps 1e-8, decoupled
    weight decay as peft.c's) with the loss before each. Returns (loss, grads, final, losses,
    small), tensors by saved key; small[k] is, per coordinate, the smallest |gradient| / its
    tensor's largest over the updates (see compare)."""
    leaves = {saved_key(n): p for n, p in model.named_parameters() if p.requires_grad}
    loss = loss_fn()
    loss.backward()
    grads = {k: p.grad.detach().clone() for k, p in leaves.items()}
    opt = torch.optim.AdamW(leaves.values(), lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=wd)
    losses, small = [], {}
    for _ in range(steps):
        opt.zero_grad()
        step_loss = loss_fn()
        losses.append(step_loss.item())
        step_loss.backward()
        for k, p in leaves.items():
            r = p.grad.detach().abs() / p.grad.detach().abs().max().clamp_min(1e-30)
            small[k] = torch.minimum(small[k], r) if k in small else r
        opt.step()
    return loss.item(), grads, {k: p.detach().clone() for k, p in leaves.items()}, losses, small


def compare(name, out, ref, tol=TOL):
    """Prints one line (errors of the loss, the worst gradient, the worst parameter after the
    updates, the worst step loss) and returns whether all are within tol and peft.c trained
    exactly PEFT's tensors.

    Adam moves a coordinate by ~lr whatever its gradient's size, so where the gradient is float
    noise at some update (below 1e-5 of its tensor's largest: a VeRA lambda_b of 1e-7 next to
    3e-2) the two trajectories part by ~lr; such coordinates are left out of the comparison after
    the updates (at most 0.1 % of them; their gradients are still compared)."""
    loss, grads, final, losses, small = ref
    mine = sorted(k[len("grad."):] for k in out if k.startswith("grad."))
    if mine != sorted(grads):
        missing, extra = sorted(set(grads) - set(mine)), sorted(set(mine) - set(grads))
        print(f"FAIL {name}: peft.c trains other tensors than PEFT (missing {missing[:3]}, extra {extra[:3]})")
        return False
    loss_err = abs(out["loss"].item() - loss) / abs(loss)
    grad_err, grad_key = max((rel(out[f"grad.{k}"], v), k) for k, v in grads.items())
    final_err, noise, total = 0.0, 0, 0
    for k, v in final.items():
        keep = small[k] >= 1e-5
        noise, total = noise + int((~keep).sum()), total + keep.numel()
        final_err = max(final_err, rel(out[f"final.{k}"][keep], v[keep]))
    steps_err = max(abs(a - b) / abs(b) for a, b in zip(out["losses"].tolist(), losses))
    ok = max(loss_err, grad_err, final_err, steps_err) <= tol and noise <= 1e-3 * total
    print(f"{'ok  ' if ok else 'FAIL'} {name:26s} tensors {len(grads):3d}  loss {loss:.4f} err {loss_err:.1e}  "
          f"grads {grad_err:.1e} (worst {grad_key.split('.', 2)[-1]})  after {len(losses)} AdamW steps {final_err:.1e}  "
          f"({noise} noise-gradient coordinates left out)  step losses {steps_err:.1e}")
    return ok
