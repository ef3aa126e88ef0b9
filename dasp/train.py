"""Training BiSeNetV1 on Cityscapes: one process, or several under torchrun (DDP).

The recipe is CoinCheung/BiSeNet's (`tools/train_amp.py`, `configs/bisenetv1_city.py`): SGD with
momentum 0.9, weight decay 5e-4 on conv weights only, 10x learning rate on the fusion module and the
three heads, exponential warm-up from 0.1x over 1000 steps then poly decay (power 0.9), OHEM
cross-entropy (threshold 0.7, at least 1/16 of the valid pixels) on the main and both aux heads,
random scale 0.75-2.0, 1024x1024 crops, flip and colour jitter, fp16 autocast on GPU.

Checkpoints hold the model, optimiser, scheduler, grad scaler, step, config and RNG states and are
written atomically. The data stream (order and augmentation) is a function of (seed, step) only, so
a resumed run continues exactly as an uninterrupted one would.
"""
import argparse
import copy
import csv
import json
import math
import os
import random
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from dasp import distributed
from dasp.checkpoint import TRAIN_FORMAT, atomic_save, model_state, read_checkpoint
from dasp.data import IGNORE_INDEX, NUM_CLASSES, CityscapesDataset, StreamBatchSampler, TrainTransform, collate
from dasp.models.bisenetv1 import BiSeNetV1

_REFERENCE = dict(
    spatial_path="dasp", iters=80000, batch_size=8, world_size=2, crop=[1024, 1024],
    scales=[0.75, 2.0], jitter=0.4, lr=0.01, momentum=0.9, weight_decay=5e-4, head_lr_mult=10.0,
    warmup_iters=1000, warmup_ratio=0.1, warmup="exp", power=0.9, ohem_thresh=0.7,
    ohem_min_fraction=1 / 16, aux_weight=1.0, amp=True, sync_bn=False, seed=123,
    split="train", pretrained=None, init_from=None,
)
PRESETS = {
    # CoinCheung/BiSeNet configs/bisenetv1_city.py, run as its README does on 2 GPUs.
    "reference": dict(_REFERENCE),
    # The paper: 4 GPUs x 8 images = batch 32, 160k iterations; the rest is not stated there and
    # taken from the reference implementation, whose published numbers the paper compares with.
    "paper": dict(_REFERENCE, iters=160000, world_size=4),
}
# Options that only change how a run executes, not what it computes: free to change on resume.
RUNTIME_KEYS = {"data_root", "out_dir", "workers", "ckpt_every", "log_every", "device",
                "progress", "val_split", "val_mode", "crop_eval"}


class OhemCrossEntropy(nn.Module):
    """Mean cross-entropy over the pixels whose loss exceeds -log(thresh), or over the
    max(n_valid * min_fraction) hardest pixels when fewer exceed it.

    When no pixel is valid, or none is hard and the minimum rounds to 0, the loss is 0 (the
    reference would return NaN there)."""

    def __init__(self, thresh=0.7, min_fraction=1 / 16, ignore_index=IGNORE_INDEX):
        super().__init__()
        self.thresh = -math.log(thresh)
        self.min_fraction, self.ignore_index = min_fraction, ignore_index

    def forward(self, logits, target):
        loss = F.cross_entropy(logits.float(), target, ignore_index=self.ignore_index,
                               reduction="none").flatten()
        n_min = int(int((target != self.ignore_index).sum()) * self.min_fraction)
        hard = loss[loss > self.thresh]
        if hard.numel() < n_min:
            hard = loss.topk(n_min).values
        if hard.numel() == 0:
            return loss.sum() * 0.0
        return hard.mean()


class WarmupPolyLR(torch.optim.lr_scheduler.LRScheduler):
    """Warm-up from warmup_ratio x lr over warmup_iters steps ('exp': ratio^(1 - t/warmup),
    'linear'), then lr * (1 - (t - warmup) / (max_iters - warmup))^power."""

    def __init__(self, optimizer, max_iters, warmup_iters=1000, warmup_ratio=0.1, warmup="exp",
                 power=0.9, last_epoch=-1):
        if warmup not in ("exp", "linear"):
            raise ValueError(f"warmup must be 'exp' or 'linear', got {warmup!r}")
        self.max_iters, self.warmup_iters = max_iters, min(warmup_iters, max_iters)
        self.warmup_ratio, self.warmup, self.power = warmup_ratio, warmup, power
        super().__init__(optimizer, last_epoch)

    def factor(self, t):
        if t < self.warmup_iters:
            a = t / self.warmup_iters
            if self.warmup == "exp":
                return self.warmup_ratio ** (1 - a)
            return self.warmup_ratio + (1 - self.warmup_ratio) * a
        span = max(1, self.max_iters - self.warmup_iters)
        return max(0.0, 1 - (t - self.warmup_iters) / span) ** self.power

    def get_lr(self):
        f = self.factor(self.last_epoch)
        return [base * f for base in self.base_lrs]


def param_groups(model, lr, weight_decay, head_lr_mult):
    """Four SGD groups as the reference: weight decay only on conv/linear weights, and
    head_lr_mult x lr for the fusion module and the output heads."""
    groups = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        head = name.startswith(("ffm.", "conv_out"))
        decay = p.ndim > 1
        groups.setdefault((head, decay), []).append(p)
    out = []
    for (head, decay), params in sorted(groups.items()):
        out.append({"params": params, "lr": lr * (head_lr_mult if head else 1.0),
                    "weight_decay": weight_decay if decay else 0.0})
    return out


def _rng_state():
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
            "python": random.getstate()}


def _set_rng_state(s):
    torch.set_rng_state(s["torch"])
    if s["cuda"] and torch.cuda.is_available() and len(s["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(s["cuda"])
    n = s["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), *n[2:]))
    v, internal, gauss = s["python"]
    random.setstate((v, tuple(internal), gauss))


def build_config(preset="paper", **overrides):
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {list(PRESETS)}, got {preset!r}")
    cfg = copy.deepcopy(PRESETS[preset])
    cfg["preset"] = preset
    cfg.update(data_root=None, out_dir="runs/bisenetv1", workers=4, ckpt_every=1000, log_every=20,
               device="auto", progress=True, val_split="val", val_mode="ss", crop_eval=1024,
               stop_after=None)
    unknown = set(overrides) - set(cfg)
    if unknown:
        raise ValueError(f"unknown training options: {sorted(unknown)}")
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    for k in ("crop", "scales"):
        v = cfg[k]
        cfg[k] = [int(v), int(v)] if k == "crop" and isinstance(v, int) else [type(x)(x) for x in v]
    if cfg["crop"][0] % 32 or cfg["crop"][1] % 32:
        raise ValueError(f"crop must be multiples of 32, got {cfg['crop']}")
    return cfg


def _log_rows(path, keep_below):
    """Rows of an existing CSV log up to step keep_below (what a resumed run keeps)."""
    if not os.path.isfile(path):
        return []
    with open(path, newline="") as f:
        return [r for r in csv.DictReader(f) if int(r["step"]) <= keep_below]


LOG_FIELDS = ["step", "loss", "loss_main", "loss_aux16", "loss_aux32", "lr", "images_per_s", "elapsed_s"]


def train(cfg, resume=None, explicit=None):
    """Runs (or resumes) training. cfg: a dict from build_config. resume: a checkpoint path, or
    'auto' for <out_dir>/checkpoint_last.pth if present. explicit: the options the user gave
    (resuming refuses those that change the run; the others come from the checkpoint).
    Returns a summary dict."""
    info = distributed.init(cfg["device"])
    try:
        return _train(cfg, resume, explicit or {}, info)
    finally:
        distributed.cleanup()


def _resolve_resume(cfg, resume, explicit):
    if resume is None:
        return None, cfg
    path = resume
    if resume == "auto":
        path = os.path.join(cfg["out_dir"], "checkpoint_last.pth")
        if not os.path.isfile(path):
            return None, cfg
    ckpt = read_checkpoint(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != TRAIN_FORMAT:
        raise ValueError(f"{path!r} is not a dasp training checkpoint (to start from plain weights "
                         f"use --init-from)")
    saved = ckpt["config"]
    clash = {k: (saved.get(k), v) for k, v in explicit.items()
             if k not in RUNTIME_KEYS and k != "stop_after" and saved.get(k) != v}
    if clash:
        detail = ", ".join(f"{k}: checkpoint {a!r} vs given {b!r}" for k, (a, b) in sorted(clash.items()))
        raise ValueError(f"cannot resume {path!r} with different training options ({detail})")
    merged = dict(saved)
    merged.update({k: v for k, v in explicit.items() if k in RUNTIME_KEYS})
    if resume == "auto" or "out_dir" not in explicit:
        # keep writing next to the checkpoint being resumed
        merged["out_dir"] = os.path.dirname(os.path.abspath(path))
    merged["stop_after"] = cfg["stop_after"]  # belongs to this invocation only
    return ckpt, merged


def _train(cfg, resume, explicit, info):
    ckpt, cfg = _resolve_resume(cfg, resume, explicit)
    say = (lambda *a: print(*a, file=sys.stderr, flush=True)) if info.is_main else (lambda *a: None)
    if cfg["data_root"] is None:
        raise ValueError("data_root is required")
    dev = info.device
    use_amp = bool(cfg["amp"]) and dev.type == "cuda"
    if cfg["sync_bn"] and info.distributed and dev.type != "cuda":
        raise ValueError("--sync-bn needs CUDA: torch's SyncBatchNorm only works with GPU modules")
    preset = PRESETS[cfg["preset"]]
    expected = preset["world_size"] * preset["batch_size"]
    if info.world_size * cfg["batch_size"] != expected:
        say(f"note: preset {cfg['preset']!r} is {preset['world_size']} processes x "
            f"{preset['batch_size']} = {expected} images per step; this run uses "
            f"{info.world_size} x {cfg['batch_size']} = {info.world_size * cfg['batch_size']}")
    if cfg["pretrained"] is None and cfg["init_from"] is None and ckpt is None:
        say("note: no --pretrained ImageNet ResNet18 weights given; training from scratch "
            "(the paper and the reference start from ImageNet weights)")

    ds = CityscapesDataset(cfg["data_root"], cfg["split"],
                           transform=TrainTransform(cfg["scales"], cfg["crop"], cfg["jitter"]))

    torch.manual_seed(cfg["seed"])
    model = BiSeNetV1(NUM_CLASSES, cfg["spatial_path"], aux=True, pretrained=cfg["pretrained"])
    if cfg["init_from"] is not None and ckpt is None:
        model.load_state_dict(model_state(read_checkpoint(cfg["init_from"]), cfg["init_from"]))
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
    if cfg["sync_bn"] and info.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(dev).train()
    bare = model
    if info.distributed:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[dev.index] if dev.type == "cuda" else None)

    opt = torch.optim.SGD(param_groups(bare, cfg["lr"], cfg["weight_decay"], cfg["head_lr_mult"]),
                          lr=cfg["lr"], momentum=cfg["momentum"])
    sched = WarmupPolyLR(opt, cfg["iters"], cfg["warmup_iters"], cfg["warmup_ratio"], cfg["warmup"],
                         cfg["power"])
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    start = 0
    if ckpt is not None:
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        _set_rng_state(ckpt["rng"])
        start = int(ckpt["step"])
        say(f"resumed from step {start}")
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True

    end = cfg["iters"] if cfg["stop_after"] is None else min(cfg["iters"], start + cfg["stop_after"])
    sampler = StreamBatchSampler(len(ds), cfg["batch_size"], end, cfg["seed"], start, info.rank,
                                 info.world_size)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, num_workers=cfg["workers"],
                                         collate_fn=collate, pin_memory=dev.type == "cuda")
    crit = OhemCrossEntropy(cfg["ohem_thresh"], cfg["ohem_min_fraction"])

    os.makedirs(cfg["out_dir"], exist_ok=True)
    ckpt_path = os.path.join(cfg["out_dir"], "checkpoint_last.pth")
    log_path = os.path.join(cfg["out_dir"], "train_log.csv")
    log_file = writer = None
    if info.is_main:
        kept = _log_rows(log_path, start) if ckpt is not None else []
        log_file = open(log_path, "w", newline="")
        writer = csv.DictWriter(log_file, LOG_FIELDS)
        writer.writeheader()
        writer.writerows(kept)
        log_file.flush()

    def save(step):
        if info.is_main:
            atomic_save({"format": TRAIN_FORMAT, "step": step, "config": cfg,
                         "model": bare.state_dict(), "optimizer": opt.state_dict(),
                         "scheduler": sched.state_dict(), "scaler": scaler.state_dict(),
                         "rng": _rng_state(), "elapsed_s": time.perf_counter() - t0}, ckpt_path)
        distributed.barrier()

    from tqdm import tqdm
    bar = tqdm(total=end, initial=start, desc="train", dynamic_ncols=True, file=sys.stderr,
               disable=not (cfg["progress"] and info.is_main))
    acc = torch.zeros(4, dtype=torch.float64, device=dev)
    t_last = time.perf_counter()
    n_acc, t0 = 0, t_last - (float(ckpt.get("elapsed_s", 0.0)) if ckpt is not None else 0.0)
    step, last_loss = start, float("nan")
    for imgs, labels, _ in loader:
        imgs = imgs.to(dev, non_blocking=True)
        labels = labels.to(dev, non_blocking=True)
        with torch.autocast(dev.type, dtype=torch.float16, enabled=use_amp):
            logits, aux16, aux32 = model(imgs)
        parts = torch.stack([crit(logits, labels), crit(aux16, labels), crit(aux32, labels)])
        loss = parts[0] + cfg["aux_weight"] * (parts[1] + parts[2])
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        lr_used = opt.param_groups[0]["lr"]  # base-group rate of this step (heads get 10x)
        sched.step()
        step += 1
        acc += torch.cat([loss.detach()[None], parts.detach()]).double()
        n_acc += 1
        if step % cfg["log_every"] == 0 or step == end:
            if info.distributed:
                dist.all_reduce(acc)
                acc /= info.world_size
            vals = (acc / n_acc).tolist()
            last_loss = vals[0]
            now = time.perf_counter()
            if info.is_main:
                writer.writerow(dict(zip(LOG_FIELDS, [
                    step, *(f"{v:.6g}" for v in vals), f"{lr_used:.6g}",
                    f"{n_acc * cfg['batch_size'] * info.world_size / (now - t_last):.3g}",
                    f"{now - t0:.1f}"])))
                log_file.flush()
            bar.set_postfix(loss=f"{vals[0]:.4f}", lr=f"{lr_used:.3g}")
            acc.zero_()
            n_acc, t_last = 0, now
        bar.update(1)
        if step % cfg["ckpt_every"] == 0 and step != end:
            save(step)
    bar.close()
    if info.distributed:
        # DDP copies rank 0's BatchNorm statistics to the others at the start of each forward, so
        # after the last step they differ; rank 0's are the ones saved, so all use those.
        for buf in bare.buffers():
            dist.broadcast(buf, 0)
    save(step)
    summary = {"step": step, "finished": step >= cfg["iters"], "loss": last_loss,
               "checkpoint": ckpt_path, "log": log_path}
    if step >= cfg["iters"]:
        final = os.path.join(cfg["out_dir"], "model_final.pth")
        if info.is_main:
            atomic_save(bare.state_dict(), final)
        summary["model"] = final
        val_root = os.path.join(cfg["data_root"], "leftImg8bit", cfg["val_split"] or "")
        if cfg["val_split"] and os.path.isdir(val_root):
            from dasp.evaluate import evaluate, format_table, jsonable
            vds = CityscapesDataset(cfg["data_root"], cfg["val_split"])
            res = evaluate(bare, vds, [cfg["val_mode"]], dev, cfg["crop_eval"],
                           progress=cfg["progress"])
            summary["val"] = {m: {"miou": r["miou"], "iou": r["iou"]} for m, r in res.items()}
            if info.is_main:
                with open(os.path.join(cfg["out_dir"], "val_results.json"), "w") as f:
                    json.dump({"step": step, "split": cfg["val_split"], "results": jsonable(res)}, f,
                              indent=2)
            say(format_table(res, f"{cfg['val_split']} after {step} steps"))
    else:
        say(f"stopped at step {step} of {cfg['iters']}; resume with --resume {ckpt_path}")
    if log_file is not None:
        log_file.close()
    return summary


def add_args(p):
    g = p.add_argument_group("data and run")
    g.add_argument("--data-root", required=True, help="Cityscapes root (leftImg8bit/, gtFine/)")
    g.add_argument("--out-dir", default=None, help="checkpoints and log (default runs/bisenetv1)")
    g.add_argument("--preset", choices=sorted(PRESETS), default="paper",
                   help="paper: 4 procs x 8 images, 160k steps, 1024x1024 crops; reference: "
                        "CoinCheung/BiSeNet bisenetv1_city (2 procs x 8, 80k steps). Default paper")
    g.add_argument("--resume", default=None, metavar="CKPT|auto",
                   help="resume from a training checkpoint ('auto': <out-dir>/checkpoint_last.pth "
                        "if it exists)")
    g.add_argument("--stop-after", type=int, default=None, metavar="N",
                   help="run N steps of this invocation, save a checkpoint and exit")
    g.add_argument("--device", default=None, help="auto, cpu, cuda (default auto)")
    g.add_argument("--workers", type=int, default=None, help="data-loading processes (default 4)")
    g.add_argument("--ckpt-every", type=int, default=None, help="steps between checkpoints (1000)")
    g.add_argument("--log-every", type=int, default=None, help="steps between log rows (20)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--val-split", default=None, help="split evaluated at the end (val; '' for none)")
    g.add_argument("--val-mode", default=None, choices=("ss", "ssc", "msf", "mscf"),
                   help="protocol of that evaluation (ss)")
    g = p.add_argument_group("model and recipe (override the preset)")
    g.add_argument("--spatial-path", choices=("original", "dasp"), default=None, help="default dasp")
    g.add_argument("--pretrained", default=None, help="ImageNet ResNet18 weights (torchvision layout)")
    g.add_argument("--init-from", default=None, help="start from these BiSeNetV1 weights")
    g.add_argument("--split", default=None, help="training split (train)")
    g.add_argument("--iters", type=int, default=None)
    g.add_argument("--batch-size", type=int, default=None, help="images per process")
    g.add_argument("--crop", type=int, nargs="+", default=None, metavar="N", help="crop H [W]")
    g.add_argument("--scales", type=float, nargs=2, default=None, metavar=("MIN", "MAX"))
    g.add_argument("--jitter", type=float, default=None, help="colour jitter strength (0.4)")
    g.add_argument("--lr", type=float, default=None)
    g.add_argument("--weight-decay", type=float, default=None)
    g.add_argument("--warmup-iters", type=int, default=None)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--amp", action=_BoolAction, default=None, help="fp16 autocast on GPU (on)")
    g.add_argument("--sync-bn", action=_BoolAction, default=None, help="SyncBatchNorm (off; GPU only)")


class _BoolAction(argparse.Action):
    """--flag / --no-flag."""

    def __init__(self, option_strings, dest, **kw):
        opts = list(option_strings) + [s.replace("--", "--no-", 1) for s in option_strings]
        super().__init__(opts, dest, nargs=0, **kw)

    def __call__(self, parser, ns, values, option_string=None):
        setattr(ns, self.dest, not option_string.startswith("--no-"))


_ARG_TO_CFG = ["data_root", "out_dir", "resume", "stop_after", "device", "workers", "ckpt_every",
               "log_every", "val_split", "val_mode", "spatial_path", "pretrained", "init_from",
               "split", "iters", "batch_size", "crop", "scales", "jitter", "lr", "weight_decay",
               "warmup_iters", "seed", "amp", "sync_bn"]


def run(args):
    explicit = {k: getattr(args, k) for k in _ARG_TO_CFG if getattr(args, k) is not None and k != "resume"}
    if "crop" in explicit:
        c = explicit["crop"]
        if len(c) not in (1, 2):
            raise ValueError(f"--crop takes H or H W, got {c}")
        explicit["crop"] = [c[0], c[-1]]
    if "scales" in explicit:
        explicit["scales"] = list(explicit["scales"])
    if args.no_progress:
        explicit["progress"] = False
    cfg = build_config(args.preset, **explicit)
    if args.val_split == "":
        cfg["val_split"] = None
    summary = train(cfg, args.resume, {k: cfg[k] for k in explicit})
    return 0 if summary else 1
