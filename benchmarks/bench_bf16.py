"""bfloat16 on the CPU (issue 20): the depthwise op in bf16 against our float32 and oneDNN's bf16,
and fused mobilenet_v2 under torch.autocast(bfloat16).

    python benchmarks/bench_bf16.py [--threads 2] [--time 0.5] [--model] [--no-shapes]

Shapes: channels-last MobileNet rows of bench_dwconv_shapes.py; per row, medians (us) of calls
interleaved round by round (harness.measure_interleaved): ours fp32 (torch.ops.dasp_kernels.
dwconv_bn_act), ours bf16 (the same op on bf16 tensors: the bf16 kernel), oneDNN fp32 and bf16
(F.conv2d on channels-last tensors, BN folded into weight and bias, then the activation). Each
bf16 output is checked against the float32 one first.

--model: torchvision mobilenet_v2 (BatchNorm statistics perturbed, eval) at 1x3x512x1024
channels-last, both under torch.autocast("cpu", bfloat16) and torch.compile (inductor,
freezing): the model as it is, and dasp_kernels.fuse(model). Medians (ms) interleaved; the
argmax of the fused model's logits is compared with the unfused float32 model's.
"""
import argparse
import copy
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import dasp_kernels  # noqa: E402
from benchmarks import harness, suite  # noqa: E402
from benchmarks.bench_dwconv_shapes import ROWS, inputs  # noqa: E402
from dasp_kernels import reference  # noqa: E402

BF16, CL = torch.bfloat16, torch.channels_last
SHAPES = ["96x112x112 K3 s2", "144x56x56 K3 s1", "384x14x14 K3 s1", "960x7x7 K3 s1",
          "240x28x28 K5 s1", "672x14x14 K5 s2", "96x256x512 K3 s2", "240x64x128 K5 s1",
          "960x32x64 K3 s1", "144x56x56 K3 silu"]


def shape_providers(c, h, w, k, s, d, act):
    x, wt, sc, sh = inputs(c, h, w, k, True)
    pad, ops = d * (k - 1) // 2, torch.ops.dasp_kernels
    conf = (s, [pad] * 4, d, act, 0.0, 0.0)
    xb, wb, scb, shb = (t.to(BF16) for t in (x, wt, sc, sh))
    wf = (wt * sc.view(-1, 1, 1, 1)).contiguous(memory_format=CL)
    wfb, bfb = wf.to(BF16), sh.to(BF16)
    fns = {
        "ours fp32": lambda: ops.dwconv_bn_act(x, wt, sc, sh, *conf),
        "ours bf16": lambda: ops.dwconv_bn_act(xb, wb, scb, shb, *conf),
        "onednn fp32": lambda: reference.activation(F.conv2d(x, wf, sh, s, pad, d, c), act),
        "onednn bf16": lambda: reference.activation(F.conv2d(xb, wfb, bfb, s, pad, d, c), act),
    }
    want = fns["ours fp32"]()
    for name in ("ours bf16", "onednn bf16"):
        got = fns[name]().float()
        # Relative to the largest output: the inputs' own rounding to bf16 (u = 2^-8 on each of
        # the K*K products and the shift) moves outputs near 0 by more than their size.
        err = ((got - want).abs().max() / want.abs().max()).item()
        if err > 0.02:
            raise SystemExit(f"{c}x{h}x{w} K{k}: {name} differs from ours fp32 by {err:.3g}")
    return fns


def run_shapes(args):
    print(f"{'shape (channels-last)':24s} {'ours fp32':>10s} {'ours bf16':>10s} "
          f"{'oneDNN fp32':>12s} {'oneDNN bf16':>12s} {'bf16/fp32':>10s} {'vs oneDNN':>10s}"
          f"   (us, median; ratios: speed-ups of ours bf16)")
    for name in SHAPES:
        t = harness.measure_interleaved(shape_providers(*ROWS[name]), min_time_s=args.time,
                                        max_reps=2000, gap_s=0.0)
        us = {k: v.median_ms * 1e3 for k, v in t.items()}
        print(f"{name:24s} {us['ours fp32']:10.1f} {us['ours bf16']:10.1f} "
              f"{us['onednn fp32']:12.1f} {us['onednn bf16']:12.1f} "
              f"{us['ours fp32'] / us['ours bf16']:9.2f}x "
              f"{us['onednn bf16'] / us['ours bf16']:9.2f}x")


def run_model(args):
    import torch._inductor.config as inductor_config
    import torchvision

    inductor_config.freezing = True
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = suite._randomize_bn(torchvision.models.mobilenet_v2(), gen)
    model = model.eval().to(memory_format=CL)
    x = torch.randn(1, 3, 512, 1024).contiguous(memory_format=CL)
    ref = model(x)
    fused = dasp_kernels.fuse(model)
    with torch.autocast("cpu", dtype=BF16):
        fns = {"compile": torch.compile(copy.deepcopy(model)),
               "fuse+compile": torch.compile(fused)}
        outs = {k: f(x) for k, f in fns.items()}  # compiles
        agree = {k: (o.float().argmax(1) == ref.argmax(1)).float().mean().item()
                 for k, o in outs.items()}
        t = harness.measure_interleaved({k: (lambda f=f: f(x)) for k, f in fns.items()},
                                        min_time_s=args.model_time, max_reps=200, gap_s=0.0)
    print("mobilenet_v2 1x3x512x1024 channels-last, torch.autocast(cpu, bfloat16), inductor "
          "freezing:")
    for k, v in t.items():
        print(f"  {k:14s} {v.median_ms:8.2f} ms (median of {v.reps}), out {outs[k].dtype}, "
              f"argmax agreement with fp32 eager {agree[k]:.4f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--time", type=float, default=0.5, help="seconds per provider and shape")
    ap.add_argument("--model", action="store_true", help="also the mobilenet_v2 rows")
    ap.add_argument("--model-time", type=float, default=5.0)
    ap.add_argument("--no-shapes", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"threads {args.threads}, cpu_isa {dasp_kernels.cpu_isa()}, {harness.cpu_model()}, "
          f"load {os.getloadavg()[0]:.2f}, commit {harness.git_commit()}")
    with torch.no_grad():
        if not args.no_shapes:
            run_shapes(args)
        if args.model:
            run_model(args)


if __name__ == "__main__":
    main()
