"""`dasp segment`: colour masks (Cityscapes palette) and overlays for images or folders of images.

Any input size works: the normalised image is padded at the bottom/right to a multiple of 32 and the
prediction cropped back, so outputs have the input's size.
"""
import os

import numpy as np
import torch
from PIL import Image

from dasp.data import colorize, pad_to_multiple, read_image, to_tensor, train_ids_to_cityscapes_ids, unpad

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def find_images(inputs):
    """(path, output stem relative to the output folder) for each image in files/folders `inputs`."""
    found = []
    for inp in inputs:
        if os.path.isdir(inp):
            hits = []
            for root, _, files in os.walk(inp):
                for f in files:
                    if f.lower().endswith(IMAGE_EXTS):
                        p = os.path.join(root, f)
                        hits.append((p, os.path.splitext(os.path.relpath(p, inp))[0]))
            if not hits:
                raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTS)}) in folder {inp!r}")
            found += sorted(hits)
        elif os.path.isfile(inp):
            found.append((inp, os.path.splitext(os.path.basename(inp))[0]))
        else:
            raise FileNotFoundError(f"no such image file or folder: {inp!r}")
    return found


@torch.no_grad()
def segment_image(model, img, device="cpu"):
    """Train-id map (H, W) uint8 for a uint8 RGB image (H, W, 3) of any size."""
    x, size = pad_to_multiple(to_tensor(img)[None].to(device), 32)
    return unpad(model(x), size).argmax(1)[0].to(torch.uint8).cpu().numpy()


def overlay(img, mask_rgb, alpha=0.5):
    return (img.astype(np.float32) * (1 - alpha) + mask_rgb.astype(np.float32) * alpha).round().astype(np.uint8)


def add_args(p):
    p.add_argument("inputs", nargs="+", help="image files and/or folders (searched recursively)")
    p.add_argument("--checkpoint", required=True, help="state_dict or dasp training checkpoint")
    p.add_argument("--spatial-path", choices=("original", "dasp"), default=None,
                   help="checked against the weights when given")
    p.add_argument("--output", "-o", required=True, help="output folder")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the mask (0.5)")
    p.add_argument("--label-ids", action="store_true",
                   help="also write <name>_labelIds.png in Cityscapes label ids")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--no-progress", action="store_true")


def run(args):
    from tqdm import tqdm

    from dasp.checkpoint import load_model
    from dasp.distributed import pick_device

    if not 0.0 <= args.alpha <= 1.0:
        raise ValueError(f"--alpha must be in [0, 1], got {args.alpha}")
    device = pick_device(args.device)
    images = find_images(args.inputs)
    model = load_model(args.checkpoint, args.spatial_path, device)
    for path, stem in tqdm(images, desc="segment", disable=args.no_progress):
        img = read_image(path, "RGB")
        pred = segment_image(model, img, device)
        mask = colorize(pred)
        out = os.path.join(args.output, stem)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        Image.fromarray(mask).save(out + "_color.png")
        Image.fromarray(overlay(img, mask, args.alpha)).save(out + "_overlay.png")
        if args.label_ids:
            Image.fromarray(train_ids_to_cityscapes_ids(pred).astype(np.uint8)).save(out + "_labelIds.png")
    print(f"wrote {len(images)} mask(s) and overlay(s) to {args.output}")
    return 0
