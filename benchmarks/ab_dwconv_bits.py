"""Are dwconv_bn_act's CPU forward outputs bit for bit those of another build? For kernel changes
that must not change a single sum (a faster loop over the same taps in the same order).

    python benchmarks/ab_dwconv_bits.py --base /tmp/base_pkg [--isa default,avx2,avx512]

--base: a folder holding another `dasp_kernels` package (e.g. a copy of main's, with its built
_C.abi3.so). This tree's package and that one cannot share a process (same name), so each runs
in a worker process per instruction set (ATEN_CPU_CAPABILITY, which the kernels follow), the
worker saves its outputs and this process compares them as raw bits (NaN-safe).
The matrix: K 1..9, stride 1/2, dilation 1..3, every activation, float32/float64, NCHW and
channels_last, batch 2, odd sizes and channel counts that leave partial vectors, random padding;
then a few real layer shapes (channel groups, bands, streamed output).
"""
import argparse
import itertools
import os
import subprocess
import sys
import tempfile

import torch

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ACTS = ("none", "relu", "hardtanh", "hardswish", "silu", "gelu", "gelu_tanh", "leaky_relu")
# Channel counts: below a vector, partial last vectors, more than one group of 128 floats.
CHANNELS = (3, 5, 19, 37, 130, 200)
# (C, H, W, K, stride, dilation, act): MobileNet/segmentation layers, big enough for bands,
# channel groups and (the 96x112x112 one) streamed stores.
LAYERS = ((96, 112, 112, 3, 2, 1, "relu"), (144, 56, 56, 3, 1, 1, "hardtanh"),
          (960, 7, 7, 3, 1, 1, "hardswish"), (384, 14, 14, 3, 1, 1, "silu"),
          (672, 14, 14, 5, 2, 1, "hardswish"), (120, 33, 65, 5, 1, 1, "gelu"),
          (256, 32, 64, 3, 1, 2, "relu"))


def cases():
    """(x shape, k, stride, pad [t, b, l, r], dilation, act, alpha, beta, seed) of the matrix."""
    g = torch.Generator().manual_seed(1)
    rnd = lambda lo, hi: int(torch.randint(lo, hi + 1, (1,), generator=g))  # noqa: E731
    out = []
    for i, (k, s, d, act) in enumerate(itertools.product(range(1, 10), (1, 2), (1, 2, 3), ACTS)):
        span = d * (k - 1)
        pad = [rnd(0, span) for _ in range(4)]
        # Sizes from barely over the kernel's reach to a few blocks of pixels wide.
        h = max(1, span + 1 - pad[0] - pad[1]) + rnd(0, 9)
        w = max(1, span + 1 - pad[2] - pad[3]) + rnd(0, 21)
        out.append(((2, CHANNELS[i % len(CHANNELS)], h, w), k, s, pad, d, act, -0.5, 1.5, i))
    for j, (c, h, w, k, s, d, act) in enumerate(LAYERS):
        p = d * (k - 1) // 2
        out.append(((1, c, h, w), k, s, [p] * 4, d, act, 0.0, 6.0, 10000 + j))
    return out


def worker(path):
    """Runs the matrix with the dasp_kernels on sys.path, saves [outputs] to path."""
    import dasp_kernels

    want = os.environ.get("ATEN_CPU_CAPABILITY")
    if want and dasp_kernels.cpu_isa() != want:
        print(f"note: ATEN_CPU_CAPABILITY={want} runs the {dasp_kernels.cpu_isa()} kernels")
    ys = []
    for shape, k, s, pad, d, act, alpha, beta, seed in cases():
        g = torch.Generator().manual_seed(seed)
        x0 = torch.randn(shape, generator=g, dtype=torch.float64)
        w0 = torch.randn(shape[1], 1, k, k, generator=g, dtype=torch.float64)
        sc0 = torch.rand(shape[1], generator=g, dtype=torch.float64) + 0.5
        sh0 = torch.randn(shape[1], generator=g, dtype=torch.float64)
        for dt, fmt in itertools.product((torch.float32, torch.float64),
                                         (torch.contiguous_format, torch.channels_last)):
            x = x0.to(dt).contiguous(memory_format=fmt)
            y = torch.ops.dasp_kernels.dwconv_bn_act(x, w0.to(dt), sc0.to(dt), sh0.to(dt), s, pad,
                                                     d, act, alpha, beta)
            ys.append(y.contiguous())
    torch.save(ys, path)


def run_worker(pkg_root, isa, path):
    env = dict(os.environ, PYTHONPATH=pkg_root, ATEN_CPU_CAPABILITY=isa, OMP_NUM_THREADS="2")
    subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", path], env=env,
                   check=True, cwd=tempfile.gettempdir())


def as_bits(t):
    return t.view(torch.int32 if t.dtype == torch.float32 else torch.int64)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", help="folder holding the baseline dasp_kernels package")
    ap.add_argument("--isa", default="default,avx2,avx512",
                    help="ATEN_CPU_CAPABILITY values to compare (those this CPU lacks fall back)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker)
    if not args.base:
        ap.error("--base is required")
    labels = [f"{c[0]} K{c[1]} s{c[2]} pad{c[3]} d{c[4]} {c[5]}" for c in cases()]
    variants = [f"{dt} {fmt}" for dt in ("float32", "float64") for fmt in ("nchw", "cl")]
    bad = 0
    with tempfile.TemporaryDirectory() as tmp:
        for isa in args.isa.split(","):
            got = {}
            for side, root in (("base", args.base), ("this", HERE)):
                path = os.path.join(tmp, f"{side}_{isa}.pt")
                run_worker(root, isa, path)
                got[side] = torch.load(path)
            assert len(got["base"]) == len(got["this"]) == len(labels) * len(variants)
            n_bad = 0
            for i, (a, b) in enumerate(zip(got["base"], got["this"])):
                if a.shape != b.shape or not torch.equal(as_bits(a), as_bits(b)):
                    n_bad += 1
                    if n_bad <= 10:
                        diff = (a - b).abs().max().item() if a.shape == b.shape else "shape"
                        print(f"  {isa}: {labels[i // len(variants)]} "
                              f"{variants[i % len(variants)]}: differs (max {diff})")
            print(f"{isa}: {len(got['this'])} outputs, {n_bad} differ")
            bad += n_bad
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
