"""LISA training parity with PyTorch (Debian python3-torch).

Random Llama-family models of 4 layers (GQA, Qwen2 biases + packed rows, tied embeddings +
weight decay). tests/unit/test_lisa.c, run as a driver (PEFT_LISA_DRIVER), creates LISA with
gamma layers re-sampled every K updates, takes `steps` AdamW updates on one batch and writes
the loss, the first update's gradients, the layers each update trained and the trained model
(DIR/out_model, as `peft train --method lisa` writes it). The reference is written from the
paper's algorithm: for every period a fresh torch.optim.AdamW over all tensors of the period's
layers (7 weights, biases, 2 norms), everything else frozen. Checked:
  - the driver's layers change only at multiples of K, gamma distinct ones per update;
  - the loss, every gradient of the first update and the loss before every update match within
    1e-4 relative (max |a-b| / max |b| per tensor);
  - every tensor of out_model matches torch's trained value within 1e-4, and the tensors of
    layers never sampled, the embeddings, the LM head and the final norm are bit-identical to
    the base checkpoint.
"""
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import llama_models as mp  # noqa: E402  (exits 77 "SKIP" without torch; puts tools/ on sys.path)
import torch  # noqa: E402
import llama_models  # noqa: E402
import torch_llama as tl  # noqa: E402
from safetensors_io import read_safetensors  # noqa: E402

TOL = 1e-4
DRIVER = os.path.join(mp.BUILD, "test_lisa")
F = torch.nn.functional

CASES = [
    # name, variant, gamma, K, steps, packed, weight_decay, seed
    ("gqa", "llama_gqa", 1, 2, 6, False, 0.0, 1),
    ("qwen2-bias+packed", "qwen2_bias", 2, 2, 6, True, 0.0, 2),
    ("tied+wd", "llama_mha_tied", 2, 3, 6, False, 0.1, 3),
]


def layer_of(name):
    """Decoder layer of an HF tensor name, or None."""
    parts = name.split(".")
    return int(parts[2]) if len(parts) > 2 and parts[1] == "layers" else None


def hf_name(key):
    """peft.c's LISA parameter key -> the HF tensor (a layer's norms ride on its q_proj / gate_proj)."""
    name = key[len("base_model.model."):]
    if name.endswith("layernorm.weight"):  # model.layers.N.self_attn.q_proj.input_layernorm.weight
        parts = name.split(".")
        return ".".join(parts[:3] + parts[-2:])
    return name


def reference(cfg, params, ids, targets, pos, layers, K, lr, wd, steps):
    """LISA in torch: a fresh AdamW per period over every tensor of the period's layers."""
    cur = {k: v.clone() for k, v in params.items()}
    losses, grads0, small = [], None, {}
    for s in range(steps):
        if s % K == 0:
            active = set(layers[s])
            leaves = {k: cur[k].clone().requires_grad_(True) for k in cur if layer_of(k) in active}
            opt = torch.optim.AdamW(leaves.values(), lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=wd)
        p = dict(cur)
        p.update(leaves)
        logits = tl.forward(cfg, p, ids, position_ids=pos)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-1)
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        if s == 0:
            grads0 = {k: v.grad.detach().clone() for k, v in leaves.items()}
        for k, v in leaves.items():  # the smallest |gradient| / its tensor's largest, over the updates
            r = v.grad.detach().abs() / v.grad.detach().abs().max()
            small[k] = torch.minimum(small[k], r) if k in small else r
        opt.step()
        for k, v in leaves.items():
            cur[k] = v.detach().clone()
    return losses, grads0, cur, small


def run_case(tmp, case):
    name, variant, gamma, K, steps, packed, wd, seed = case
    work = os.path.join(tmp, name.replace("+", "_"))
    os.makedirs(work)
    cfg, params = llama_models.make_random_model(os.path.join(work, "model"), variant, seed=3, n_layers=4)
    ids, targets, pos = mp.write_batch(work, cfg, packed)
    lr = 1e-3  # Adam's first steps move every coordinate by ~lr: 1e-2 would be ~10% of these weights
    env = dict(os.environ, PEFT_LISA_DRIVER=work, PEFT_DRIVER_LR=str(lr), PEFT_DRIVER_WD=str(wd), PEFT_DRIVER_STEPS=str(steps),
               PEFT_LISA_GAMMA=str(gamma), PEFT_LISA_INTERVAL=str(K), PEFT_LISA_SEED=str(seed))
    r = subprocess.run([DRIVER], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        print(f"{name}: driver failed: {r.stderr}")
        return False
    out = read_safetensors(os.path.join(work, "out.safetensors"))
    layers = [sorted(row) for row in out["layers"].tolist()]
    periods_ok = all(len(set(row)) == gamma and 0 <= min(row) and max(row) < 4 for row in layers) and all(
        layers[s] == layers[s - 1] for s in range(1, steps) if s % K)
    periods = [tuple(layers[s]) for s in range(0, steps, K)]
    ref_losses, ref_grads, ref_final, small = reference(cfg, params, ids, targets, pos, layers, K, lr, wd, steps)
    grads = {hf_name(k[5:]): v for k, v in out.items() if k.startswith("grad.")}
    if sorted(grads) != sorted(ref_grads):
        print(f"{name}: peft.c's trainable tensors {sorted(grads)} differ from the reference's {sorted(ref_grads)}")
        return False
    loss_err = abs(out["loss"].item() - ref_losses[0]) / abs(ref_losses[0])
    grad_err = max(mp.rel(grads[k], v) for k, v in ref_grads.items())
    steps_err = max(abs(a - b) / abs(b) for a, b in zip(out["losses"].tolist(), ref_losses))
    trained = read_safetensors(os.path.join(work, "out_model", "model.safetensors"))
    ever = {l for row in layers for l in row}
    final_err, frozen_ok, skipped, total = 0.0, True, 0, 0
    for k, base in params.items():
        if layer_of(k) not in ever:  # never sampled (or outside the layers): the file's values, bit for bit
            frozen_ok &= torch.equal(trained[k], base)
            continue
        # Adam moves each coordinate by ~lr whatever its gradient's size; where the gradient is
        # float noise at some update (Qwen2's k_proj bias: softmax ignores q.b_k) the trajectories
        # part, so coordinates whose gradient fell below 1e-5 of their tensor's largest at some
        # update are left out (at most 0.1 %).
        keep = small[k] >= 1e-5
        skipped, total = skipped + int((~keep).sum()), total + keep.numel()
        final_err = max(final_err, mp.rel(trained[k][keep], ref_final[k][keep]))
    ok = periods_ok and frozen_ok and max(loss_err, grad_err, steps_err, final_err) <= TOL and skipped <= 1e-3 * total
    print(f"{name:18s} gamma {gamma} K {K}: layers per period {periods}  loss {loss_err:.1e}  grads ({len(grads)}) {grad_err:.1e}  "
          f"step losses {steps_err:.1e}  model after {steps} updates {final_err:.1e} ({skipped}/{total} noise-gradient "
          f"coordinates left out)  untrained tensors {'bit-identical' if frozen_ok else 'CHANGED'}  "
          f"{'ok' if ok else 'FAIL'}")
    return ok


def main():
    torch.set_num_threads(2)
    return mp.run_all(DRIVER, run_case, CASES)


if __name__ == "__main__":
    sys.exit(main())
