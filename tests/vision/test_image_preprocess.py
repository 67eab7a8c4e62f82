#!/usr/bin/env python3
"""Image decoding and ViT preprocessing against Pillow and transformers (src/io/image*.c).

Oracles: Pillow (Image.open(...).convert("RGB"), Image.resize), transformers'
ViTImageProcessorPil (the PIL backend of ViTImageProcessor, built from config dicts),
../shared/data/digits/digits.csv.gz (the pixel values and labels the digit PNGs were made from),
and torchvision's ImageFolder rules (sorted class folders, sorted os.walk, its extension list),
written out below because torchvision is not a pinned oracle. The C side is
$PEFT_BUILD/driver_image (tests/drivers/driver_image.c).

Checks:
  1. decoding: ../shared/data/photos/*.jpg, a sample of the digit PNGs, PNGs written by PIL in
     every mode (1, L, LA, P, P+tRNS, L+tRNS, RGB+tRNS, RGB, RGBA, I;16) and by hand (2/4-bit
     gray, 16-bit RGB / RGBA / LA), JPEGs written by PIL (gray, 4:4:4 / 4:2:2 / 4:2:0,
     progressive, CMYK, odd sizes, an EXIF orientation tag): rgb, alpha and mode identical to PIL;
  2. resize: uint8 output identical to PIL's for NEAREST / BILINEAR / BICUBIC, up and down, odd
     sizes, one axis only, and on noise;
  3. pixel_values vs ViTImageProcessorPil, max |diff| <= 1e-3 (printed), for the default ViT
     config, a CLIP-like bicubic shortest-edge + center-crop config and a nearest one;
  4. corrupt / truncated / oversized / non-image files: exit 1 with a message naming the file;
  5. ImageFolder listing of digits/train and of a synthetic tree.
Exit 0 = pass, 1 = fail, 77 = skipped (an oracle missing).
"""
import gzip
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.environ.get("PEFT_SRC") or os.path.dirname(os.path.dirname(HERE))
SHARED = os.environ.get("PEFT_SHARED") or os.path.join(SRC, "..", "shared")
BUILD = os.environ.get("PEFT_BUILD") or os.path.join(SRC, "build")
DRIVER = os.path.join(BUILD, "driver_image")
PHOTOS = [os.path.join(SHARED, "data", "photos", n) for n in ("china.jpg", "flower.jpg")]
DIGITS = os.path.join(SHARED, "data", "digits")

try:
    import numpy as np
    from PIL import Image
    from safetensors.numpy import load_file
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil
except ImportError as e:
    print(f"SKIP: oracle missing: {e}")
    sys.exit(77)
for p in PHOTOS + [os.path.join(DIGITS, "digits.csv.gz")]:
    if not os.path.exists(p):
        print(f"SKIP: {p} not found")
        sys.exit(77)
if not os.path.exists(DRIVER):
    print(f"FAIL: {DRIVER} not built")
    sys.exit(1)

failures = []
TMP = tempfile.mkdtemp(prefix="vision_", dir=BUILD)


def fail(msg):
    failures.append(msg)
    print("FAIL: " + msg)


def driver(*args):
    return subprocess.run([DRIVER, *args], capture_output=True, text=True)


def c_decode(path):
    out = os.path.join(TMP, "decoded.safetensors")
    r = driver("decode", path, out)
    if r.returncode:
        return None, r.stderr
    from safetensors import safe_open
    with safe_open(out, "np") as f:
        mode = f.metadata()["mode"]
    return load_file(out), mode


# ------------------------------------------------------------------ 1. decoding
def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_png(path, rows, width, height, depth, color_type):
    """A PNG written by hand (for the bit depths PIL cannot write); rows: bytes per row."""
    raw = b"".join(b"\0" + r for r in rows)
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(raw))
                + png_chunk(b"IEND", b""))


def make_images(rng):
    """(path, description) of PNGs and JPEGs in every mode, under TMP."""
    made = []
    h, w = 37, 23
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    # smooth content too, so JPEG's subsampling and upsampling have something to do
    yy, xx = np.mgrid[0:h, 0:w]
    smooth = np.stack([(xx * 11) % 256, (yy * 7) % 256, ((xx + yy) * 5) % 256], -1).astype(np.uint8)
    alpha = rng.integers(0, 256, (h, w), dtype=np.uint8)
    alpha[0, :5] = 0
    alpha[1, :5] = 255

    def save(im, name, **kw):
        p = os.path.join(TMP, name)
        im.save(p, **kw)
        made.append((p, name))

    save(Image.fromarray(rgb), "rgb.png")
    save(Image.fromarray(np.dstack([rgb, alpha])), "rgba.png")
    save(Image.fromarray(rgb[..., 0]), "l.png")
    save(Image.fromarray(np.dstack([rgb[..., 0], alpha])), "la.png")
    save(Image.fromarray(rgb[..., 0] > 127), "bilevel.png")
    save(Image.fromarray(rgb).quantize(37), "p.png")
    save(Image.fromarray(rgb).quantize(37), "p_trns.png", transparency=3)
    save(Image.fromarray(rgb[..., 0]), "l_trns.png", transparency=int(rgb[0, 0, 0]))
    save(Image.fromarray(rgb), "rgb_trns.png", transparency=tuple(int(v) for v in rgb[2, 3]))
    g16 = rng.integers(0, 65536, (h, w)).astype(np.uint16)
    g16[0, :8] = [0, 1, 17, 200, 255, 256, 300, 65535]  # around PIL's clamp at 255
    save(Image.fromarray(g16), "i16.png")
    # bit depths and 16-bit colour PNGs that PIL does not write
    for depth in (2, 4):
        vals = rng.integers(0, 1 << depth, (h, w))
        per = 8 // depth
        rows = []
        for r in vals:
            r = np.concatenate([r, np.zeros((-len(r)) % per, dtype=r.dtype)])
            rows.append(bytes(int(sum(int(v) << (8 - depth * (k + 1)) for k, v in enumerate(r[i:i + per])))
                              for i in range(0, len(r), per)))
        p = os.path.join(TMP, f"gray{depth}.png")
        write_png(p, rows, w, h, depth, 0)
        made.append((p, f"gray{depth}.png"))
    for name, ch, ct in (("rgb16.png", 3, 2), ("rgba16.png", 4, 6), ("la16.png", 2, 4)):
        v = rng.integers(0, 65536, (h, w, ch)).astype(">u2")
        p = os.path.join(TMP, name)
        write_png(p, [r.tobytes() for r in v], w, h, 16, ct)
        made.append((p, name))
    save(Image.fromarray(smooth), "rgb420.jpg", quality=90, subsampling=2)
    save(Image.fromarray(smooth), "rgb422.jpg", quality=75, subsampling=1)
    save(Image.fromarray(rgb), "rgb444.jpg", quality=95, subsampling=0)
    save(Image.fromarray(smooth), "progressive.jpg", quality=80, progressive=True)
    save(Image.fromarray(smooth[..., 1]), "gray.jpg", quality=85)
    save(Image.fromarray(smooth).convert("CMYK"), "cmyk.jpg", quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to display
    save(Image.fromarray(smooth), "exif6.jpg", quality=90, exif=exif)
    return made


def check_decode(path, name):
    t, mode = c_decode(path)
    if t is None:
        fail(f"decode {name}: driver failed: {mode.strip()}")
        return
    im = Image.open(path)
    ref = np.array(im.convert("RGB"))
    if mode != im.mode:
        fail(f"decode {name}: mode {mode}, PIL says {im.mode}")
    if t["rgb"].shape != ref.shape or (t["rgb"] != ref).any():
        n = int((t["rgb"] != ref).sum()) if t["rgb"].shape == ref.shape else -1
        fail(f"decode {name}: rgb differs from PIL's convert('RGB') ({n} values)")
    has_alpha = "A" in im.getbands() or im.info.get("transparency") is not None
    if has_alpha != ("alpha" in t):
        fail(f"decode {name}: alpha present {('alpha' in t)}, PIL {has_alpha}")
    elif has_alpha:
        ref_a = np.array(im.convert("RGBA"))[..., 3]
        if (t["alpha"] != ref_a).any():
            fail(f"decode {name}: alpha differs from PIL's convert('RGBA') ({int((t['alpha'] != ref_a).sum())})")
    return t


rng = np.random.default_rng(14)
made = make_images(rng)
for p in PHOTOS:
    check_decode(p, os.path.basename(p))
for p, name in made:
    check_decode(p, name)
if Image.open(os.path.join(TMP, "exif6.jpg")).getexif().get(0x0112) != 6:
    fail("exif6.jpg: PIL wrote no orientation tag (the EXIF check would prove nothing)")

# digits: PIL and the values of digits.csv.gz (round(v * 255 / 16), SOURCE.txt)
rows = [list(map(float, l.split(","))) for l in gzip.open(os.path.join(DIGITS, "digits.csv.gz"), "rt") if l.strip()]
n_digits = 0
for idx in range(0, len(rows), 29):
    split = "train" if idx < 1500 else "test"
    label = int(rows[idx][64])
    p = os.path.join(DIGITS, split, str(label), f"{idx:04d}.png")
    t = check_decode(p, p)
    want = np.floor(np.array(rows[idx][:64]).reshape(8, 8) * 255 / 16 + 0.5).astype(np.uint8)
    if t is not None and (t["rgb"][..., 0] != want).any():
        fail(f"{p}: pixels differ from digits.csv.gz row {idx}")
    n_digits += 1
print(f"decode: {len(PHOTOS) + len(made) + n_digits} files identical to PIL ({n_digits} digits)")

# ------------------------------------------------------------------ 2. resize, bit for bit
noise = os.path.join(TMP, "noise.png")
Image.fromarray(rng.integers(0, 256, (19, 31, 3), dtype=np.uint8)).save(noise)
cases = [(PHOTOS[0], ["224x224", "640x1", "1x427", "641x428", "1000x900", "17x13", "333x427", "640x200",
                      "320x214", "3x3", "1280x854", "639x426", "97x131", "1000x100", "100x600", "641x426", "600x340",
                      "600x347"]),
         (PHOTOS[1], ["224x224", "384x384", "113x77", "640x427"]),
         (noise, ["224x224", "31x40", "50x19", "7x5", "1x1", "62x38", "300x11", "40x5", "25x10", "25x9",
                  "28x12", "28x13", "32x18", "32x20"])]  # around Pillow 13's pass-order rule
n_resized = 0
for path, sizes in cases:
    im = Image.open(path).convert("RGB")
    for f in (0, 2, 3):
        out = os.path.join(TMP, "resized.safetensors")
        r = driver("resize", path, out, str(f), *sizes)
        if r.returncode:
            fail(f"resize {path}: {r.stderr.strip()}")
            continue
        t = load_file(out)
        for s in sizes:
            w, h = map(int, s.split("x"))
            ref = np.array(im.resize((w, h), resample=f))
            d = np.abs(t[s].astype(int) - ref.astype(int))
            if d.max():
                fail(f"resize {os.path.basename(path)} -> {s} filter {f}: {int((d > 0).sum())} values differ, max {d.max()}")
            n_resized += 1
print(f"resize: {n_resized} resizes identical to PIL's uint8 output")

# ------------------------------------------------------------------ 3. pixel_values vs transformers
VIT = {"image_processor_type": "ViTImageProcessor", "do_resize": True, "size": {"height": 224, "width": 224},
       "resample": 2, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
       "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}
CLIP = {"do_resize": True, "size": {"shortest_edge": 224}, "resample": 3, "do_center_crop": True,
        "crop_size": {"height": 224, "width": 224}, "do_rescale": True, "rescale_factor": 1 / 255,
        "do_normalize": True, "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711], "do_convert_rgb": True}
NEAREST = {"size": {"height": 97, "width": 131}, "resample": 0, "image_mean": [0.485, 0.456, 0.406],
           "image_std": [0.229, 0.224, 0.225], "do_convert_rgb": True}
SHORT = {"size": {"shortest_edge": 50}, "resample": 2, "do_convert_rgb": True}  # keeps the aspect ratio
configs = {"vit": VIT, "vit_rgb": dict(VIT, do_convert_rgb=True), "clip": CLIP, "nearest": NEAREST, "short": SHORT}
digit_paths = [os.path.join(DIGITS, "train", str(d), f) for d in (0, 7)
               for f in sorted(os.listdir(os.path.join(DIGITS, "train", str(d))))[:2]]
images = {"vit": PHOTOS + [os.path.join(TMP, n) for n in ("rgb.png", "rgb420.jpg")],
          "vit_rgb": digit_paths + [os.path.join(TMP, n) for n in ("rgba.png", "la.png", "p_trns.png", "cmyk.jpg",
                                                                  "i16.png", "rgb_trns.png", "gray.jpg")],
          "clip": PHOTOS + [os.path.join(TMP, n) for n in ("rgba.png", "exif6.jpg")] + digit_paths[:1],
          "nearest": PHOTOS + [os.path.join(TMP, "p_trns.png")],
          "short": [PHOTOS[0], os.path.join(TMP, "exif6.jpg"), os.path.join(TMP, "la.png")]}
worst = 0.0
for cname, cfg in configs.items():
    cfg_path = os.path.join(TMP, f"{cname}.json")
    json.dump(cfg, open(cfg_path, "w"))
    proc = ViTImageProcessorPil(**{k: v for k, v in cfg.items() if k != "image_processor_type"})
    for p in images[cname]:
        want = proc(Image.open(p), return_tensors="np")["pixel_values"][0]
        out = os.path.join(TMP, "pv.safetensors")
        r = driver("preprocess", p, cfg_path, out)
        if r.returncode:
            fail(f"preprocess {cname} {p}: {r.stderr.strip()}")
            continue
        got = load_file(out)["pixel_values"]
        if got.shape != want.shape:
            fail(f"preprocess {cname} {os.path.basename(p)}: shape {got.shape}, transformers {want.shape}")
            continue
        d = float(np.abs(got - want).max())
        worst = max(worst, d)
        if d > 1e-3:
            fail(f"preprocess {cname} {os.path.basename(p)}: max |diff| {d:.3g} > 1e-3")
print(f"pixel_values: max |diff| vs ViTImageProcessorPil {worst:.3g} over "
      f"{sum(len(v) for v in images.values())} (config, image) pairs")

# without do_convert_rgb a gray image is refused by transformers and by peft.c
try:
    ViTImageProcessorPil(**{k: v for k, v in VIT.items() if k != "image_processor_type"})(
        Image.open(digit_paths[0]), return_tensors="np")
    fail("transformers accepted a gray image without do_convert_rgb (the check below proves nothing)")
except ValueError:
    pass
r = driver("preprocess", digit_paths[0], os.path.join(TMP, "vit.json"), os.path.join(TMP, "pv.safetensors"))
if r.returncode != 1 or "do_convert_rgb" not in r.stderr:
    fail(f"gray image without do_convert_rgb: rc {r.returncode}, {r.stderr.strip()!r}")

# ------------------------------------------------------------------ 4. corrupt files
jpg = open(PHOTOS[0], "rb").read()
png = open(os.path.join(TMP, "rgb.png"), "rb").read()
ihdr_big = struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0)
sof = jpg.index(b"\xff\xc0")
bad = {
    "empty.png": b"",
    "text.jpg": b"hello, not an image\n",
    "trunc_half.jpg": jpg[:len(jpg) // 2],
    "trunc_header.jpg": jpg[:300],
    "trunc_sig.jpg": jpg[:3],
    "garbage.jpg": jpg[:sof] + b"\xff\xc0\x00\x11\x08\x00\x00\x00\x00" + jpg[sof + 9:],  # SOF with 0x0 size
    "noise_body.jpg": jpg[:len(jpg) // 3] + bytes(rng.integers(0, 256, len(jpg) // 3, dtype=np.uint8)),
    "trunc_half.png": png[:len(png) // 2],
    "trunc_sig.png": png[:8],
    "bad_crc.png": png[:29] + bytes([png[29] ^ 0xFF]) + png[30:],
    "bad_idat.png": png[:40] + bytes(200) + png[240:],
    "bomb.png": b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr_big)
                + png_chunk(b"IDAT", zlib.compress(bytes(64))) + png_chunk(b"IEND", b""),
    "bomb.jpg": jpg[:sof + 5] + struct.pack(">HH", 60000, 60000) + jpg[sof + 9:],  # within JPEG's limit
}
for name, data in bad.items():
    p = os.path.join(TMP, name)
    open(p, "wb").write(data)
    r = driver("decode", p, os.path.join(TMP, "x.safetensors"))
    if r.returncode != 1 or p not in r.stderr:
        fail(f"corrupt {name}: rc {r.returncode} (want 1, no crash), message {r.stderr.strip()!r}")
    # PIL refuses them too (else the case would not be a corrupt file)
    try:
        Image.open(p).convert("RGB")
        fail(f"corrupt {name}: PIL decodes it")
    except Exception:
        pass
for name in ("bomb.png", "bomb.jpg"):
    r = driver("decode", os.path.join(TMP, name), os.path.join(TMP, "x.safetensors"))
    if "decompression bomb" not in r.stderr:
        fail(f"{name}: want the pixel-count limit, got {r.stderr.strip()!r}")
r = driver("decode", os.path.join(TMP, "missing.png"), os.path.join(TMP, "x.safetensors"))
if r.returncode != 1 or "missing.png" not in r.stderr:
    fail(f"missing file: rc {r.returncode}, {r.stderr.strip()!r}")
print(f"corrupt: {len(bad) + 1} bad files refused with a message naming them")


# ------------------------------------------------------------------ 5. ImageFolder
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from imagefolder import torchvision_imagefolder  # noqa: E402


def c_folder(root):
    r = driver("folder", root)
    if r.returncode:
        return None, r.stderr
    lines = r.stdout.splitlines()
    classes = [l[6:] for l in lines if l.startswith("class ")]
    items = [(int(l.split(" ", 2)[1]), l.split(" ", 2)[2]) for l in lines if l.startswith("item ")]
    skipped = int([l for l in lines if l.startswith("skipped ")][0].split()[1])
    return (classes, items, skipped), None


train = os.path.join(DIGITS, "train")
res, msg = c_folder(train)
if res is None:
    fail(f"folder {train}: {msg.strip()}")
else:
    classes, items, _ = res
    if (classes, items) != torchvision_imagefolder(train):
        fail("digits/train: classes or items differ from torchvision's ImageFolder order")
    labels = [int(rows[int(os.path.basename(p)[:4])][64]) for _, p in items]
    if len(items) != 1500 or [l for l, _ in items] != [int(classes[l]) for l, _ in items] or \
            [int(classes[l]) for l, _ in items] != labels:
        fail(f"digits/train: {len(items)} items (want 1500) or labels differ from digits.csv.gz")
    print(f"folder: digits/train {len(items)} items, {len(classes)} classes, labels = digits.csv.gz")

tree = os.path.join(TMP, "tree")
for d in ("b", "a/sub/deeper", "a/sub0", "B", ".hidden"):
    os.makedirs(os.path.join(tree, d))
for f in ("b/2.png", "b/10.PNG", "a/z.jpg", "a/sub/y.jpeg", "a/sub/deeper/x.png", "a/sub0/w.png", "B/v.png",
          ".hidden/u.png", "a/README.txt", "b/notes"):
    shutil.copy(os.path.join(TMP, "rgb.png"), os.path.join(tree, f))
res, msg = c_folder(tree)
if res is None:
    fail(f"folder tree: {msg.strip()}")
else:
    classes, items, skipped = res
    if (classes, items) != torchvision_imagefolder(tree) or skipped != 2:
        fail(f"tree: {classes} {items} skipped {skipped} differ from torchvision's {torchvision_imagefolder(tree)}")
open(os.path.join(tree, "B", "t.bmp"), "wb").write(b"BM")
res, msg = c_folder(tree)
if res is not None or "t.bmp" not in msg:
    fail(f"tree with a .bmp: want an error naming it, got {msg!r}")
os.remove(os.path.join(tree, "B", "t.bmp"))
os.makedirs(os.path.join(tree, "empty"))
res, msg = c_folder(tree)
if res is not None or "empty" not in msg:
    fail(f"tree with an empty class: want an error naming it, got {msg!r}")

shutil.rmtree(TMP, ignore_errors=True)
if failures:
    print(f"{len(failures)} failure(s)")
    sys.exit(1)
print("OK")
