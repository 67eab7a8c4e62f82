"""torchvision's ImageFolder listing rule, written out (torchvision is not a pinned oracle):
the oracle of tests/vision/test_image_preprocess.py and tests/data/test_cls_data.py."""
import os

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def torchvision_imagefolder(root):
    """torchvision.datasets.folder.find_classes + make_dataset: (classes, [(label, path)])."""
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
    items = []
    for i, c in enumerate(classes):
        for r, _, fnames in sorted(os.walk(os.path.join(root, c), followlinks=True)):
            for f in sorted(fnames):
                if f.lower().endswith(IMG_EXTENSIONS):
                    items.append((i, os.path.join(r, f)))
    return classes, items
