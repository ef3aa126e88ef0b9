"""Writes a tiny synthetic dataset in the Cityscapes layout, for tests and smoke runs.

    python -m dasp.synthetic OUT_DIR [--train 8] [--val 4] [--height 64] [--width 128] [--seed 0]

Each image is a few horizontal bands split into blocks; every block is one class, painted in that
class's Cityscapes palette colour plus noise and a per-image brightness change, so colour predicts
the class and a model can learn it in a few dozen steps. Some blocks carry labels that Cityscapes
ignores in evaluation ('unlabeled', 'parking'). Written per image: leftImg8bit, gtFine labelIds,
instanceIds (equal to labelIds: every region is a single unnamed instance) and color, so that both
this project and the official cityscapesscripts evaluation can read it.
"""
import argparse
import os
import sys

import numpy as np
from PIL import Image
from cityscapesscripts.helpers.labels import name2label

# Classes with well separated palette colours, plus two that evaluation ignores.
CLASSES = ("road", "building", "vegetation", "sky", "car", "person", "traffic sign")
IGNORED = ("unlabeled", "parking")
CITIES = {"train": ("alpha", "beta"), "val": ("gamma",), "test": ("delta",)}


def _layout(rng, h, w):
    """Label-id map: 2-4 horizontal bands, each cut into 1-4 blocks with a random class."""
    names = CLASSES + IGNORED
    p = np.array([1.0] * len(CLASSES) + [0.15] * len(IGNORED))
    lab = np.zeros((h, w), dtype=np.uint8)
    rows = np.sort(rng.choice(np.arange(8, h - 7), size=rng.integers(1, 4), replace=False))
    for top, bottom in zip([0, *rows], [*rows, h]):
        cols = np.sort(rng.choice(np.arange(8, w - 7), size=rng.integers(0, 4), replace=False))
        for left, right in zip([0, *cols], [*cols, w]):
            lab[top:bottom, left:right] = name2label[names[rng.choice(len(names), p=p / p.sum())]].id
    return lab


def _render(rng, lab):
    colour = np.zeros((256, 3), dtype=np.float32)
    for name in CLASSES + IGNORED:
        colour[name2label[name].id] = name2label[name].color
    colour[name2label["unlabeled"].id] = (20, 20, 20)
    img = colour[lab] * rng.uniform(0.8, 1.2) + rng.normal(0, 12, size=lab.shape + (3,))
    return np.clip(img, 0, 255).astype(np.uint8)


def write_synthetic(out_dir, n_train=8, n_val=4, n_test=0, height=64, width=128, seed=0):
    """Writes the dataset under out_dir; returns out_dir."""
    if height < 24 or width < 24:
        raise ValueError(f"height and width must be >= 24, got {height}x{width}")
    rng = np.random.default_rng(seed)
    colour_lut = np.zeros((256, 3), dtype=np.uint8)
    for name in CLASSES + IGNORED:
        colour_lut[name2label[name].id] = name2label[name].color
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        cities = CITIES[split]
        for i in range(n):
            city = cities[i % len(cities)]
            stem = f"{city}_{i:06d}_{19:06d}"
            lab = _layout(rng, height, width)
            img = _render(rng, lab)
            img_dir = os.path.join(out_dir, "leftImg8bit", split, city)
            gt_dir = os.path.join(out_dir, "gtFine", split, city)
            os.makedirs(img_dir, exist_ok=True)
            os.makedirs(gt_dir, exist_ok=True)
            Image.fromarray(img).save(os.path.join(img_dir, stem + "_leftImg8bit.png"))
            Image.fromarray(lab).save(os.path.join(gt_dir, stem + "_gtFine_labelIds.png"))
            Image.fromarray(lab.astype(np.uint16)).save(os.path.join(gt_dir, stem + "_gtFine_instanceIds.png"))
            Image.fromarray(colour_lut[lab]).save(os.path.join(gt_dir, stem + "_gtFine_color.png"))
    return out_dir


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m dasp.synthetic", description=__doc__.split("\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--train", type=int, default=8, help="training images (default 8)")
    ap.add_argument("--val", type=int, default=4, help="validation images (default 4)")
    ap.add_argument("--test", type=int, default=0, help="test images (default 0)")
    ap.add_argument("--height", type=int, default=64)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    write_synthetic(a.out_dir, a.train, a.val, a.test, a.height, a.width, a.seed)
    print(f"wrote {a.train} train, {a.val} val, {a.test} test images ({a.width}x{a.height}) to {a.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
