"""peft train/eval/predict --task image-cls end to end against HF PEFT.

A random tiny ViTForImageClassification (transformers, seeded, with a preprocessor_config.json
as ViTImageProcessor saves it) is LoRA-trained by `peft train --task image-cls` on an ImageFolder
of real digits (../shared/data/digits/train, 8 images per class); HF PEFT loads the adapter
(PeftModel.from_pretrained, the classifier from modules_to_save) and classifies an ImageFolder of
digits/test images, preprocessed by transformers' ViTImageProcessorPil and listed in
torchvision's ImageFolder order: `peft predict` must give HF's argmax for every image and its
probabilities to 1e-4, `peft eval` HF's accuracy."""
import json
import os
import subprocess
import sys
import tempfile

SRC = os.environ.get("PEFT_SRC") or os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PEFT_BIN = os.environ.get("PEFT_BIN") or os.path.join(SRC, "build", "peft")
SHARED = os.environ.get("PEFT_SHARED") or os.path.join(SRC, "..", "shared")
FAILS = []
PROC = {"do_convert_rgb": True, "do_resize": True, "size": {"height": 32, "width": 32}, "resample": 2,
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5]}


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        FAILS.append(what)


def image_folder(src, dst, per_class):
    """Links the first per_class images of each class of src into dst; returns [(path, label)]
    in torchvision's ImageFolder order (classes sorted, files sorted within a class)."""
    rows = []
    classes = sorted(d for d in os.listdir(src) if os.path.isdir(os.path.join(src, d)))
    for label, c in enumerate(classes):
        os.makedirs(os.path.join(dst, c))
        for f in sorted(os.listdir(os.path.join(src, c)))[:per_class]:
            os.symlink(os.path.join(src, c, f), os.path.join(dst, c, f))
            rows.append((os.path.join(dst, c, f), label))
    return rows


def run(*args):
    env = dict(os.environ, PEFT_PRECISION="f32")
    return subprocess.run([PEFT_BIN, *args], capture_output=True, text=True, env=env)


def main():
    try:
        import numpy as np
        import torch
        import transformers
        from peft import PeftModel
        from PIL import Image
        from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil
    except ImportError as e:
        print(f"SKIP: {e}")
        return 77
    digits = os.path.join(SHARED, "data", "digits")
    if not os.path.isdir(os.path.join(digits, "train")):
        print(f"SKIP: no {digits}/train")
        return 77
    tmp = tempfile.mkdtemp(prefix="peft_image_cls_cli_")
    model_dir = os.path.join(tmp, "vit")
    torch.manual_seed(0)
    cfg = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                                 image_size=32, patch_size=8, num_channels=3, hidden_dropout_prob=0.0,
                                 attention_probs_dropout_prob=0.0, num_labels=10, initializer_range=0.2)
    model = transformers.ViTForImageClassification(cfg).eval()
    model.save_pretrained(model_dir)
    with open(os.path.join(model_dir, "preprocessor_config.json"), "w") as f:
        json.dump(dict(PROC, image_processor_type="ViTImageProcessor"), f)
    train, test = os.path.join(tmp, "train"), os.path.join(tmp, "test")
    image_folder(os.path.join(digits, "train"), train, 8)
    rows = image_folder(os.path.join(digits, "test"), test, 5)

    out = os.path.join(tmp, "adapter")
    r = run("train", "--model", model_dir, "--task", "image-cls", "--num-labels", "10", "--method", "lora",
            "--target", "q_proj,v_proj", "--data", train, "--out", out, "--steps", "6", "--batch", "8", "--lr", "1e-2",
            "--no-progress")
    check(r.returncode == 0, f"peft train --task image-cls: rc {r.returncode} {r.stderr[-300:]!r}")
    if r.returncode:
        return 1
    acfg = json.load(open(os.path.join(out, "adapter_config.json")))
    check(acfg.get("modules_to_save") == ["classifier"], f"adapter_config modules_to_save {acfg.get('modules_to_save')}")
    w0 = model.classifier.weight.detach().clone()
    peft_model = PeftModel.from_pretrained(model, out).eval()
    moved = float((peft_model.base_model.model.classifier.modules_to_save["default"].weight - w0).abs().max())
    check(moved > 0, f"the trained classifier differs from the base's (max |diff| {moved:.2e})")
    proc = ViTImageProcessorPil(**PROC)
    pixels = torch.from_numpy(proc([Image.open(p) for p, _ in rows], return_tensors="np")["pixel_values"]).float()
    with torch.no_grad():
        logits = peft_model(pixel_values=pixels).logits.double()
    probs = torch.softmax(logits, -1).numpy()
    preds = probs.argmax(-1)
    labels = np.array([l for _, l in rows])

    r = run("predict", "--model", model_dir, "--adapter", out, "--task", "image-cls", "--data", test)
    lines = [json.loads(l) for l in r.stdout.splitlines()] if r.returncode == 0 else []
    check(len(lines) == len(rows), f"peft predict: {len(lines)} lines for {len(rows)} images ({r.stderr[-200:]!r})")
    if len(lines) == len(rows):
        got = np.array([l["label"] for l in lines])
        err = max(float(np.abs(np.array(l["probs"]) - p).max()) for l, p in zip(lines, probs))
        check((got == preds).all(), f"predict labels equal HF PEFT's argmax ({int((got == preds).sum())}/{len(rows)})")
        check(err < 1e-4, f"predict probabilities vs HF PEFT: max error {err:.2e}")
    r = run("eval", "--model", model_dir, "--adapter", out, "--task", "image-cls", "--data", test)
    vals = dict(l.split() for l in r.stdout.splitlines() if len(l.split()) == 2)
    acc = float((preds == labels).mean())
    check(r.returncode == 0 and abs(float(vals.get("accuracy", "nan")) - acc) < 1e-6,
          f"eval accuracy {vals.get('accuracy')} == HF PEFT's {acc:.6f} ({r.stderr[-200:]!r})")
    check("f1" not in vals, "no f1 line for 10 classes")
    return 1 if FAILS else 0


if __name__ == "__main__":
    sys.exit(main())
