#!/usr/bin/env python3
"""ViT (src/models/vit.c on the pre-LN encoder layer of src/models/encoder.c) against
transformers + HF PEFT, on real images.

  * a random ViTForImageClassification from a small config (image_size 32, patch 8, 10 labels,
    torch.manual_seed; LayerNorms moved away from (1, 0)), on real digits of
    ../shared/data/digits (8x8 gray PNGs, one per class), preprocessed by peft.c
    (io/image_preprocess.c, with do_convert_rgb and a bilinear resize to 32x32) and by
    transformers' ViTImageProcessorPil: pixel values to 1e-3; HF PEFT LoRA at query/value
    (init_lora_weights=False: A and B random) with the classifier as modules_to_save, one
    image's label ignored: logits, loss, CLS features, every lora_A / lora_B gradient, the
    classifier's gradients and every LayerNorm's weight/bias gradient (all norms hooked, as
    LayerNorm tuning does) equal to transformers + PEFT; once with peft.c recomputing layers.
  * LoRA + classifier trained by peft.c (driver_vit train, through the adapter set, the head as
    modules_to_save) load in HF PEFT (PeftModel.from_pretrained) and give the same logits.
  * save_hf reloads in transformers with the same logits; a ViTModel checkpoint (no "vit."
    prefix, no classifier) loads with a fresh classifier whose std is initializer_range.
  * refusals by field: task seq-cls, qkv_bias false, hidden_act relu, 1 label, image_size not a
    multiple of patch_size, multi-label problem_type.
Relative error = max |peft.c - reference| / max |reference|: <= 1e-4.
Exit 0 = pass, 1 = fail, 77 = skipped (torch / transformers / peft / ../shared digits missing).
"""
import json
import os
import subprocess
import sys
import tempfile

try:
    import torch
    import transformers
    from peft import LoraConfig, PeftModel, get_peft_model
    from PIL import Image
    from safetensors.torch import load_file, save_file
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil
except ImportError as e:  # the oracle itself is missing
    print(f"SKIP: {e}")
    sys.exit(77)

SRC = os.environ.get("PEFT_SRC", os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
BUILD = os.environ.get("PEFT_BUILD", os.path.join(SRC, "build"))
SHARED = os.environ.get("PEFT_SHARED") or os.path.join(SRC, "..", "shared")
DIGITS = os.path.join(SHARED, "data", "digits", "train")
DRIVER = os.path.join(BUILD, "driver_vit")
TOL = 1e-4
if not os.path.isdir(DIGITS):
    print(f"SKIP: {DIGITS} missing")
    sys.exit(77)
failures = 0


def check(ok, msg):
    global failures
    print(("ok   " if ok else "FAIL ") + msg)
    failures += not ok


def rel(a, b):
    return (a.double() - b.double()).abs().max().item() / max(b.abs().max().item(), 1e-30)


def driver(*args, recompute=False):
    env = dict(os.environ, PEFT_DRIVER_RECOMPUTE="1" if recompute else "0")
    return subprocess.run([DRIVER] + [str(a) for a in args], capture_output=True, text=True, env=env)


def driver_ok(*args, **kw):
    r = driver(*args, **kw)
    if r.returncode != 0:
        raise RuntimeError(f"driver_vit {args[0]} failed: {r.stderr}")
    print("  " + r.stdout.strip().splitlines()[-1])


PROC = {"do_convert_rgb": True, "do_resize": True, "size": {"height": 32, "width": 32}, "resample": 2,
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5]}
NL = 10
# one real digit per class for classes 0..5, the first file of each; the last image's label is not counted
PATHS = [os.path.join(DIGITS, str(d), sorted(os.listdir(os.path.join(DIGITS, str(d))))[0]) for d in range(6)]
LABELS = [0, 1, 2, 3, 4, -1]


def make_config(**kw):
    base = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48, image_size=32,
                patch_size=8, num_channels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                num_labels=NL, initializer_range=0.2)
    base.update(kw)
    return transformers.ViTConfig(**base)


def make_model():
    torch.manual_seed(0)
    model = transformers.ViTForImageClassification(make_config())
    with torch.no_grad():  # LayerNorms away from (1, 0) so that their parameters matter
        for name, p in model.named_parameters():
            if "layernorm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model.float().eval()


def write_work(work, model):
    mdir = os.path.join(work, "model")
    model.save_pretrained(mdir, safe_serialization=True)
    json.dump(dict(PROC, image_processor_type="ViTImageProcessor"), open(os.path.join(mdir, "preprocessor_config.json"), "w"))
    with open(os.path.join(work, "images.txt"), "w") as f:
        for lab, p in zip(LABELS, PATHS):
            f.write(f"{lab} {p}\n")


def hf_pixels():
    proc = ViTImageProcessorPil(**PROC)
    return torch.from_numpy(proc([Image.open(p) for p in PATHS], return_tensors="np")["pixel_values"]).float()


pixels = hf_pixels()
labels = torch.tensor([lab if lab >= 0 else -100 for lab in LABELS])


def case_parity(name, recompute):
    model = make_model()
    with tempfile.TemporaryDirectory(dir=BUILD) as work:
        write_work(work, model)
        rank, alpha = 4, 8
        lcfg = LoraConfig(r=rank, lora_alpha=alpha, target_modules=["q_proj", "v_proj"], lora_dropout=0.0,
                          init_lora_weights=False, modules_to_save=["classifier"])
        pm = get_peft_model(model, lcfg)
        pm.train()
        for n, p in pm.named_parameters():  # LayerNorm tuning: peft.c's driver hooks every norm for gradients
            if "layernorm" in n:
                p.requires_grad_(True)
        feats = {}
        hook = pm.base_model.model.vit.layernorm.register_forward_hook(lambda mod, i, o: feats.update(z=o[:, 0]))
        out = pm(pixel_values=pixels, labels=labels)
        hook.remove()
        out.loss.backward()
        lora, grads, head, norms = {}, {}, {}, {}
        for n, p in pm.named_parameters():
            if "lora_" in n:
                key = n.replace(".default", "")
                lora[key] = p.detach().contiguous()
                grads[key] = p.grad
            elif "modules_to_save.default" in n:
                head["grad." + n.split("base_model.model.")[1].replace(".modules_to_save.default", "")] = p.grad
            elif "layernorm" in n:
                norms["grad." + n.split("base_model.model.")[1]] = p.grad
        save_file(lora, os.path.join(work, "lora.safetensors"))
        driver_ok("run", work, rank, alpha, recompute=recompute)
        got = load_file(os.path.join(work, "out.safetensors"))
    pd = (got["pixels"].double() - pixels.double()).abs().max().item()
    check(pd <= 1e-3, f"{name}: pixel values vs ViTImageProcessorPil max |diff| {pd:.2e}")
    check(rel(got["logits"], out.logits.detach()) <= TOL, f"{name}: logits rel {rel(got['logits'], out.logits.detach()):.2e}")
    e = abs(got["loss"].item() - out.loss.item()) / abs(out.loss.item())
    check(e <= TOL, f"{name}: loss {got['loss'].item():.6f} vs {out.loss.item():.6f} rel {e:.2e}")
    check(rel(got["features"], feats["z"].detach()) <= TOL, f"{name}: CLS features rel {rel(got['features'], feats['z'].detach()):.2e}")
    worst, n = 0.0, 0
    for k, g in list(grads.items()) + list(head.items()):
        if k not in got:
            check(False, f"{name}: peft.c has no gradient {k}")
            continue
        worst = max(worst, rel(got[k], g))
        n += 1
    check(n == len(grads) + len(head) == 2 * 2 * 2 + 2 and worst <= TOL,
          f"{name}: {n} gradients (LoRA A/B at 2 layers x query/value, classifier W/b) worst rel {worst:.2e}")
    worst = max(rel(got[k], g) if k in got else float("inf") for k, g in norms.items())
    check(len(norms) == 2 * (2 * 2 + 1) and worst <= TOL,
          f"{name}: {len(norms)} LayerNorm weight/bias gradients (layernorm_before/after x 2 layers, vit.layernorm) worst rel {worst:.2e}")


def case_train():
    model = make_model()
    with tempfile.TemporaryDirectory(dir=BUILD) as work:
        write_work(work, model)
        out_dir = os.path.join(work, "adapter")
        driver_ok("train", work, out_dir, 5, 0.05)
        got = load_file(os.path.join(work, "out.safetensors"))["logits"]
        base_logits = model(pixel_values=pixels).logits.detach()
        acfg = json.load(open(os.path.join(out_dir, "adapter_config.json")))
        saved = load_file(os.path.join(out_dir, "adapter_model.safetensors"))
        base_w = model.classifier.weight.detach().clone()
        pm = PeftModel.from_pretrained(model, out_dir).eval()
        want = pm(pixel_values=pixels).logits.detach()
    check(acfg.get("task_type") is None and "classifier" in (acfg.get("modules_to_save") or []),
          f"train: adapter_config task_type {acfg.get('task_type')}, modules_to_save {acfg.get('modules_to_save')}")
    key = "base_model.model.classifier.weight"
    cmoved = rel(saved[key], base_w) if key in saved else 0.0
    check(cmoved > 1e-3, f"train: the classifier was trained and saved as {key} (moved rel {cmoved:.2e})")
    moved = rel(want, base_logits)
    check(moved > 1e-3, f"train: the trained LoRA moves HF's logits (rel {moved:.2e})")
    check(rel(got, want) <= TOL, f"train: HF PEFT loads peft.c's LoRA + classifier, logits rel {rel(got, want):.2e}")


def case_save_and_fresh_head():
    model = make_model()
    with tempfile.TemporaryDirectory(dir=BUILD) as work:
        write_work(work, model)
        saved = os.path.join(work, "saved")
        driver_ok("load", os.path.join(work, "model"), "image-cls", 0, saved)
        back = transformers.ViTForImageClassification.from_pretrained(saved).eval()
        e = rel(back(pixel_values=pixels).logits.detach(), model(pixel_values=pixels).logits.detach())
        check(e <= 1e-6, f"save_hf: transformers reloads it, logits rel {e:.2e}")
        check(os.path.isfile(os.path.join(saved, "preprocessor_config.json")), "save_hf: preprocessor_config.json copied")
        # a ViTModel checkpoint (no "vit." prefix, no classifier): a fresh head of 3 labels
        bare = os.path.join(work, "bare")
        torch.manual_seed(1)
        vm = transformers.ViTModel(make_config(initializer_range=0.05), add_pooling_layer=False)
        vm.save_pretrained(bare)
        n_base = sum(p.numel() for p in vm.parameters())
        fresh = os.path.join(work, "fresh")
        r = driver("load", bare, "image-cls", 3, fresh)
        check(r.returncode == 0 and "labels 3" in r.stdout and "head 2" in r.stdout and f"params {n_base}" in r.stdout,
              f"ViTModel loads ({n_base} base parameters in transformers): {r.stdout.strip()} {r.stderr.strip()}")
        sd = load_file(os.path.join(fresh, "model.safetensors"))
        w = sd["classifier.weight"]
        std = w.std().item()
        check(tuple(w.shape) == (3, 32) and abs(std - 0.05) < 0.25 * 0.05 and sd["classifier.bias"].abs().max() == 0,
              f"fresh classifier {tuple(w.shape)} std {std:.4f} (initializer_range 0.05), bias 0")
        ref = load_file(os.path.join(bare, "model.safetensors"))
        e = max(rel(sd["vit." + k], v) for k, v in ref.items())
        check(e == 0.0 and len(sd) == len(ref) + 2, f"ViTModel's {len(ref)} tensors saved under vit.* unchanged (max rel {e:.1e})")


def case_refusals():
    model = make_model()
    with tempfile.TemporaryDirectory(dir=BUILD) as work:
        write_work(work, model)
        mdir = os.path.join(work, "model")
        r = driver("load", mdir, "seq-cls")
        check(r.returncode == 1 and "image-cls" in r.stderr, f"task seq-cls refused: {r.stderr.strip()}")
        cfg = json.load(open(os.path.join(mdir, "config.json")))
        for field, value, want in [("qkv_bias", False, "qkv_bias"), ("hidden_act", "relu", "hidden_act"),
                                   ("patch_size", 7, "patch_size"), ("num_labels", 1, "regression"),
                                   ("problem_type", "multi_label_classification", "problem_type")]:
            c = dict(cfg)
            c[field] = value
            if field == "num_labels":
                c.pop("id2label"), c.pop("label2id")
            json.dump(c, open(os.path.join(mdir, "config.json"), "w"))
            r = driver("load", mdir, "image-cls")
            check(r.returncode == 1 and want in r.stderr, f"{field} = {value} refused: {r.stderr.strip()}")


case_parity("vit", False)
case_parity("vit+recompute", True)
case_train()
case_save_and_fresh_head()
case_refusals()
print(f"{failures} failures")
sys.exit(1 if failures else 0)
