"""Cityscapes evaluation with the four protocols of the paper's Tables II and III.

The protocols are those of CoinCheung/BiSeNet's `tools/evaluate.py`, the code behind the published
BiSeNet numbers the paper compares with:

- ss:   the full image at scale 1.
- ssc:  sliding crops of crop_size x crop_size (1024) with stride ceil(2/3 * crop_size); an image
        not larger than the crop in both dims is first zero-padded (centred) to at least the crop.
- msf:  scales 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, each also horizontally flipped; softmax summed.
- mscf: the crops of ssc at each of those scales, with flip.

Images are resized with bilinear interpolation (align_corners=True) and outputs resized back the
same way. In ss and msf the scaled size int(scale * H) x int(scale * W) is rounded up to a multiple
of 32 (BiSeNet's stride) before resizing; in ssc and mscf the image is resized to the unrounded size
and cut into crops. In the crop modes the reference adds exp(p + p_flip) for each crop when
flipping, and so do we, so that numbers stay comparable. Checked against the reference's
`tools/evaluate.py` and `configs/bisenetv1_city.py` at its newest commit (6b4b67a, 2026-04).

Differences from the reference, none of which moves a Cityscapes mIoU by 0.001 points:
- Crop sizes must be multiples of 32 (the reference's config uses 1024).
- IoU is tp / (tp + fp + fn) over the classes where it is defined (some ground truth or
  prediction), as the official cityscapesscripts evaluation does; the reference divides by
  tp + fp + fn + 1 and averages every class (an absent class counts as 0). With every class of
  Cityscapes val present and unions of 10^5 to 10^9 pixels, the two agree to 1e-5 relative.
"""
import json
import math
import os
import sys

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from PIL import Image

from dasp import distributed
from dasp.data import CLASS_NAMES, IGNORE_INDEX, CityscapesDataset, train_ids_to_cityscapes_ids

SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
MODES = {
    "ss": dict(scales=(1.0,), flip=False, crop=False),
    "ssc": dict(scales=(1.0,), flip=False, crop=True),
    "msf": dict(scales=SCALES, flip=True, crop=False),
    "mscf": dict(scales=SCALES, flip=True, crop=True),
}
MODE_ORDER = ("ss", "ssc", "msf", "mscf")


def _resize(x, size):
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


def _round_up_32(size):
    return tuple(-(-int(s) // 32) * 32 for s in size)


def _logits(model, x):
    return model(x).float()


def _crop_probs(model, x, num_classes, crop_size, stride_rate, flip):
    n, _, h, w = x.shape
    ch, cw = crop_size
    pad = None
    if not (ch < h and cw < w):
        ph, pw = max(ch, h), max(cw, w)
        top, left = (ph - h) // 2, (pw - w) // 2
        xp = x.new_zeros(n, x.shape[1], ph, pw)
        xp[:, :, top:top + h, left:left + w] = x
        x, pad = xp, (top, left)
    H, W = x.shape[-2:]
    sh, sw = math.ceil(ch * stride_rate), math.ceil(cw * stride_rate)
    nh, nw = math.ceil((H - ch) / sh) + 1, math.ceil((W - cw) / sw) + 1
    probs = x.new_zeros(n, num_classes, H, W, dtype=torch.float32)
    for i in range(nh):
        for j in range(nw):
            bottom, right = min(H, i * sh + ch), min(W, j * sw + cw)
            top, left = bottom - ch, right - cw
            chip = x[:, :, top:bottom, left:right]
            p = _logits(model, chip).softmax(1)
            if flip:
                p = p + _logits(model, chip.flip(3)).flip(3).softmax(1)
                p = p.exp()  # as the reference does; see the module docstring
            probs[:, :, top:bottom, left:right] += p
    if pad is not None:
        probs = probs[:, :, pad[0]:pad[0] + h, pad[1]:pad[1] + w]
    return probs


@torch.no_grad()
def predict_probs(model, img, mode, num_classes, crop_size=1024, crop_stride=2 / 3):
    """Summed class scores (N, C, H, W) of the protocol `mode` for normalised images (N, 3, H, W)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}")
    spec = MODES[mode]
    crop = (crop_size, crop_size) if isinstance(crop_size, int) else tuple(crop_size)
    if spec["crop"] and (crop[0] % 32 or crop[1] % 32 or min(crop) < 32):
        raise ValueError(f"crop size must be a positive multiple of 32, got {crop[0]}x{crop[1]}")
    n, _, h, w = img.shape
    probs = img.new_zeros(n, num_classes, h, w, dtype=torch.float32)
    for s in spec["scales"]:
        size = (int(s * h), int(s * w))
        if spec["crop"]:
            x = _resize(img, size)
            probs += _resize(_crop_probs(model, x, num_classes, crop, crop_stride, spec["flip"]), (h, w))
            continue
        x = _resize(img, _round_up_32(size))
        probs += _resize(_logits(model, x), (h, w)).softmax(1)
        if spec["flip"]:
            probs += _resize(_logits(model, x.flip(3)).flip(3), (h, w)).softmax(1)
    return probs


def confusion_matrix(pred, label, num_classes, ignore_index=IGNORE_INDEX):
    """(C, C) int64 counts, rows ground truth, columns prediction; ignore pixels are skipped."""
    keep = label != ignore_index
    idx = label[keep].long() * num_classes + pred[keep].long()
    return torch.bincount(idx, minlength=num_classes * num_classes).view(num_classes, num_classes)


def iou_from_confusion(hist):
    """Per-class IoU (NaN where a class has neither ground truth nor prediction) and their mean
    over the defined ones."""
    hist = hist.double()
    tp = hist.diag()
    denom = hist.sum(0) + hist.sum(1) - tp
    iou = torch.where(denom > 0, tp / denom.clamp(min=1), torch.full_like(tp, float("nan")))
    valid = ~torch.isnan(iou)
    miou = iou[valid].mean().item() if valid.any() else float("nan")
    return iou.tolist(), miou


def save_label_ids(pred, path):
    """Writes a train-id prediction (H, W) as a Cityscapes label-id PNG."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    ids = train_ids_to_cityscapes_ids(pred.cpu().numpy().astype(np.int64)).astype(np.uint8)
    Image.fromarray(ids).save(path)


def evaluate(model, dataset, modes=("ss",), device="cpu", crop_size=1024, crop_stride=2 / 3,
             save_dir=None, progress=True, workers=0):
    """Evaluates `model` on `dataset` (a CityscapesDataset without transform). When a process group
    is initialised, each process takes every world_size-th image and the confusion matrices are
    summed over processes. Returns {mode: {"miou", "iou": {class: value}, "confusion"}}."""
    device = torch.device(device)
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    num_classes = len(CLASS_NAMES)
    hists = {m: torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device) for m in modes}
    indices = list(range(rank, len(dataset), world))
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, indices), batch_size=1,
                                         num_workers=workers, collate_fn=_first)
    was_training = model.training
    model.eval()
    bar = _tqdm(loader, total=len(indices), desc="eval", disable=not progress or rank != 0)
    with torch.no_grad():
        for img, label, index in bar:
            img = img[None].to(device)
            label = label.to(device)
            if label.numel() == 0:
                raise ValueError("evaluation needs ground-truth labels")
            for m in modes:
                pred = predict_probs(model, img, m, num_classes, crop_size, crop_stride).argmax(1)[0]
                hists[m] += confusion_matrix(pred, label, num_classes)
                if save_dir is not None:
                    sub = save_dir if len(modes) == 1 else os.path.join(save_dir, m)
                    save_label_ids(pred, os.path.join(sub, dataset.name(index) + "_labelIds.png"))
    model.train(was_training)
    results = {}
    for m in modes:
        if dist.is_initialized():
            dist.all_reduce(hists[m], dist.ReduceOp.SUM)
        iou, miou = iou_from_confusion(hists[m])
        results[m] = {"miou": miou, "iou": dict(zip(CLASS_NAMES, iou)),
                      "confusion": hists[m].cpu().tolist()}
    return results


def _first(batch):
    return batch[0]


def _nan_to_none(v):
    return None if isinstance(v, float) and math.isnan(v) else v


def jsonable(results):
    """{mode: {"miou", "iou"}} with undefined (NaN) values as None, for json.dump."""
    return {m: {"miou": _nan_to_none(r["miou"]), "iou": {k: _nan_to_none(v) for k, v in r["iou"].items()}}
            for m, r in results.items()}


def _tqdm(it, **kw):
    from tqdm import tqdm
    return tqdm(it, dynamic_ncols=True, file=sys.stderr, **kw)


def format_table(results, title=None):
    """Per-class IoU and mIoU in %, one column per mode, laid out as the paper's Table II."""
    modes = [m for m in MODE_ORDER if m in results] + [m for m in results if m not in MODE_ORDER]
    fmt = lambda v: "-" if v is None or math.isnan(v) else f"{100 * v:.1f}"
    width = max(len(n) for n in CLASS_NAMES) + 1
    lines = [title] if title else []
    lines.append(" " * 5 + " " * width + "".join(f"{m.upper():>7}" for m in modes))
    for i, name in enumerate(CLASS_NAMES):
        head = "IoU  " if i == 0 else " " * 5
        lines.append(head + f"{name.title():<{width}}" + "".join(
            f"{fmt(results[m]['iou'][name]):>7}" for m in modes))
    lines.append("mIoU " + " " * width + "".join(f"{fmt(results[m]['miou']):>7}" for m in modes))
    return "\n".join(lines)


def add_args(p):
    p.add_argument("--data-root", required=True, help="Cityscapes root (leftImg8bit/, gtFine/)")
    p.add_argument("--split", default="val", help="split to evaluate (default val)")
    p.add_argument("--checkpoint", required=True,
                   help="a state_dict file (e.g. CoinCheung/BiSeNet's) or a dasp training checkpoint")
    p.add_argument("--spatial-path", choices=("original", "dasp"), default=None,
                   help="spatial path of the model; read from the weights when left out, and "
                        "checked against them when given")
    p.add_argument("--mode", nargs="+", default=["ss"], choices=(*MODE_ORDER, "all"),
                   help="protocol(s): ss, ssc, msf, mscf, or all (default ss)")
    p.add_argument("--crop-size", type=int, default=1024,
                   help="crop side for ssc/mscf, a multiple of 32 (default 1024)")
    p.add_argument("--crop-stride", type=float, default=2 / 3,
                   help="crop stride as a fraction of the crop size (default 2/3)")
    p.add_argument("--save-predictions", metavar="DIR", default=None,
                   help="write each prediction as DIR/<city>/<name>_labelIds.png (Cityscapes label "
                        "ids; one sub-folder per mode when several modes are given)")
    p.add_argument("--json", action="store_true",
                   help="print the results as JSON (IoU as fractions, null where undefined)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--workers", type=int, default=2, help="image-loading worker processes (default 2)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args):
    info = distributed.init(args.device)
    try:
        from dasp.checkpoint import load_model
        modes = list(MODE_ORDER) if "all" in args.mode else list(dict.fromkeys(args.mode))
        model = load_model(args.checkpoint, args.spatial_path, info.device)
        if model.num_classes != len(CLASS_NAMES):
            raise ValueError(f"{args.checkpoint!r} has {model.num_classes} classes; Cityscapes "
                             f"evaluation needs {len(CLASS_NAMES)}")
        ds = CityscapesDataset(args.data_root, args.split)
        results = evaluate(model, ds, modes, info.device, args.crop_size, args.crop_stride,
                           args.save_predictions, not args.no_progress, args.workers)
        if info.is_main:
            if args.json:
                out = {"split": args.split, "num_images": len(ds), "checkpoint": args.checkpoint,
                       "spatial_path": model.spatial_path, "classes": list(CLASS_NAMES),
                       "results": jsonable(results)}
                print(json.dumps(out, indent=2))
            else:
                print(format_table(results, f"BiSeNetV1 ({model.spatial_path} spatial path), "
                                            f"Cityscapes {args.split}, {len(ds)} images"))
        return 0
    finally:
        distributed.cleanup()
