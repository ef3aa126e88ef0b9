"""dwconv_bn_act on the CPU against oneDNN's depthwise conv (F.conv2d, BN folded, then the
activation) at MobileNet / EfficientNet / segmentation shapes, in both memory formats (issue 18).

    python benchmarks/bench_dwconv_shapes.py [--threads 2] [--time 0.5] [--rows NAME,...]
        [--clock wall|thread]

Every row checks our output against the eager one before timing. Times are medians (us) of
calls interleaved round by round with harness.measure_interleaved, so that a busy machine slows
every provider alike, back to back (gap_s=0: after measure_interleaved's default 1 ms pause the
worker threads sleep, and waking them added 100-400 us per call on a 2-core VM). The last rows
time the per-call overhead at 960x7x7: the Python wrapper (dasp_kernels.dwconv_bn_act), the
bare op (torch.ops) and F.conv2d alone. --clock thread (with --threads 1) times the CPU time of the
calling thread instead of the wall clock: kernel work is comparable on a machine busy with other
work (builds, tests), where wall times are not. No results are stored.
"""
import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import dasp_kernels  # noqa: E402
from benchmarks import harness  # noqa: E402
from dasp_kernels import reference  # noqa: E402

# name: (C, H, W, K, stride, dilation, act)
ROWS = {
    "96x112x112 K3 s2": (96, 112, 112, 3, 2, 1, "relu"),
    "144x56x56 K3 s1": (144, 56, 56, 3, 1, 1, "relu"),
    "384x14x14 K3 s1": (384, 14, 14, 3, 1, 1, "relu"),
    "960x7x7 K3 s1": (960, 7, 7, 3, 1, 1, "relu"),
    "240x28x28 K5 s1": (240, 28, 28, 5, 1, 1, "relu"),
    "672x14x14 K5 s2": (672, 14, 14, 5, 2, 1, "relu"),
    "96x256x512 K3 s2": (96, 256, 512, 3, 2, 1, "relu"),
    "240x64x128 K5 s1": (240, 64, 128, 5, 1, 1, "relu"),
    "960x32x64 K3 s1": (960, 32, 64, 3, 1, 1, "relu"),
    "960x32x64 K3 d2": (960, 32, 64, 3, 1, 2, "relu"),
    "240x28x28 K5 silu": (240, 28, 28, 5, 1, 1, "silu"),
    "672x14x14 K5 s2 hswish": (672, 14, 14, 5, 2, 1, "hardswish"),
    "960x7x7 K3 hswish": (960, 7, 7, 3, 1, 1, "hardswish"),
    "144x56x56 K3 silu": (144, 56, 56, 3, 1, 1, "silu"),
}


def inputs(c, h, w, k, cl):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, c, h, w, generator=g)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    wt = torch.randn(c, 1, k, k, generator=g)
    return x, wt, torch.rand(c, generator=g) + 0.5, torch.randn(c, generator=g)


def providers(c, h, w, k, s, d, act, cl):
    """{name: fn} for one memory format, after checking ours against eager."""
    x, wt, sc, sh = inputs(c, h, w, k, cl)
    pad = d * (k - 1) // 2
    ops = torch.ops.dasp_kernels
    ours = lambda: ops.dwconv_bn_act(x, wt, sc, sh, s, [pad] * 4, d, act, 0.0, 0.0)  # noqa: E731
    # BN folded into the conv's weight and bias, the activation a second op.
    wf, bf = wt * sc.view(-1, 1, 1, 1), sh.clone()
    if cl:
        wf = wf.contiguous(memory_format=torch.channels_last)
    eager = lambda: reference.activation(F.conv2d(x, wf, bf, s, pad, d, c), act)  # noqa: E731
    ok, diff = harness.check_output(ours(), eager())
    fmt = "cl" if cl else "nchw"
    if not ok:
        raise SystemExit(f"{c}x{h}x{w} K{k} s{s} d{d} {act} {fmt}: ours differs from eager by "
                         f"{diff}")
    return {f"ours {fmt}": ours, f"eager {fmt}": eager}


def overhead_rows(args):
    """The time of a 960x7x7 call through each entry point."""
    x, wt, sc, sh = inputs(960, 7, 7, 3, False)
    ops = torch.ops.dasp_kernels
    fns = {
        "dasp_kernels.dwconv_bn_act": lambda: dasp_kernels.dwconv_bn_act(x, wt, sc, sh,
                                                                         padding=1),
        "torch.ops.dasp_kernels.dwconv_bn_act": lambda: ops.dwconv_bn_act(
            x, wt, sc, sh, 1, [1, 1, 1, 1], 1, "relu", 0.0, 0.0),
        "F.conv2d": lambda: F.conv2d(x, wt, None, 1, 1, 1, 960),
    }
    t = harness.measure_interleaved(fns, min_time_s=args.time, max_reps=5000, gap_s=0.0,
                                    clock=args.clock)
    for name, tm in t.items():
        ms = tm.median_ms if args.stat == "median" else tm.p20_ms
        print(f"  960x7x7 NCHW relu via {name:38s} {ms * 1e3:8.1f} us")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--time", type=float, default=0.5, help="seconds per provider and row")
    ap.add_argument("--rows", default="", help="comma-separated row names (default: all)")
    ap.add_argument("--no-overhead", action="store_true")
    ap.add_argument("--stat", choices=("median", "p20"), default="median",
                    help="p20: the 20%% quantile, less moved by other work on a shared machine")
    ap.add_argument("--clock", choices=("wall", "thread"), default="wall",
                    help="thread: CPU time of the calling thread (needs --threads 1)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    names = [r.strip() for r in args.rows.split(",") if r.strip()] or list(ROWS)
    print(f"threads {args.threads}, clock {args.clock}, cpu_isa {dasp_kernels.cpu_isa()}, {harness.cpu_model()}, "
          f"load {os.getloadavg()[0]:.2f}")
    print(f"{'shape':26s} {'ours nchw':>10s} {'ours cl':>10s} {'eager nchw':>11s} "
          f"{'eager cl':>10s}   (us, {args.stat})")
    with torch.no_grad():
        for name in names:
            fns = {}
            for cl in (False, True):
                fns.update(providers(*ROWS[name], cl))
            t = harness.measure_interleaved(fns, min_time_s=args.time, max_reps=2000,
                                            gap_s=0.0, clock=args.clock)
            us = {k: (v.median_ms if args.stat == "median" else v.p20_ms) * 1e3
                  for k, v in t.items()}
            print(f"{name:26s} {us['ours nchw']:10.1f} {us['ours cl']:10.1f} "
                  f"{us['eager nchw']:11.1f} {us['eager cl']:10.1f}")
        if not args.no_overhead:
            overhead_rows(args)


if __name__ == "__main__":
    main()
