"""Every inverted-residual block of torchvision's mobilenet_v2 (or mobilenet_v3_large), alone at
its own input shape: inverted_residual (one op per block) against the block as PyTorch runs it.

    OMP_NUM_THREADS=2 python -m benchmarks.bench_inverted_residual [--size 1x3x512x1024] \
        [--threads 2] [--time 0.5] [--blocks 3,5] [--no-compile] \
        [--model mobilenet_v3_large [--se-only] [--pieces]]

Per block, median us of:
- `ours`: torch.ops.dasp_kernels.inverted_residual on a channels_last input, BatchNorms folded
  into scale/shift once beforehand (as a fused model calls it);
- `eager`: the block module, each BatchNorm folded into its conv (torch.nn.utils.fusion), module
  and input channels_last: oneDNN's convolutions one after the other, the expanded tensor
  written to memory and read back;
- `compile`: torch.compile of the (unfolded) block in eval, inductor with freezing
  (torch._inductor.config.freezing = True, TORCHINDUCTOR_COMPILE_THREADS=1), channels_last input.
Inputs are the block's real input in the model (random weights and BatchNorm statistics, a
random image; captured with a hook). Every provider's output is checked against the block run
in float64 before timing, and the providers of a block are timed interleaved
(dasp_kernels.timing.measure_interleaved). `x best` is the fastest peer's time over ours;
GFLOP/s counts the block's multiply-adds (2 flops each) at ours' time.

--pieces (blocks with squeeze-and-excitation) adds two measured pieces of the SE design choice
(inverted_residual_kernel.h): `noSE`, the same block without SE in one pass (expansion,
depthwise and projection; the depthwise output never stored), and `dwonly`, the same without SE
and with a 1-channel projection and no residual (about the expansion and depthwise alone). The
alternative design, two passes recomputing the expansion and depthwise, costs about
dwonly + noSE (`recomp~`, an estimate from those two measurements, not a measured kernel).
"""
import argparse
import copy
import os

os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")  # noqa: E402 (before torch reads it)

import torch
import torch.nn as nn

import dasp_kernels
from benchmarks import harness
from dasp_kernels.timing import measure_interleaved

CL = torch.channels_last


def randomize_bn(model, gen):
    """Random BatchNorm statistics and affine parameters, so folding them is not a no-op."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=gen) * 0.1)


def block_inputs(model, x):
    """[(name, block, its input)] of every InvertedResidual in the model, in call order."""
    seen = []
    hooks = [m.register_forward_pre_hook(lambda m, a, name=n: seen.append((name, m, a[0])))
             for n, m in model.named_modules() if type(m).__name__ == "InvertedResidual"]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return seen


def op_args(block):
    """The op's arguments (without x) for a torchvision InvertedResidual block, its BatchNorms
    folded, as fuse() calls it (dasp_kernels.fuse_blocks)."""
    from dasp_kernels import fuse_blocks

    plan, why = fuse_blocks.block_plan(block)
    if plan is None:
        raise SystemExit(f"the op cannot run {block}: {why}")
    with torch.no_grad():
        args = fuse_blocks.op_args(block, plan, torch.empty(1, 1, 8, 8))[1:]
    return tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)


def has_se(args):
    return len(args) > 22 and args[22] is not None


def pieces(args):
    """The op's arguments for --pieces: (the block without SE, that with a 1-channel projection
    and no residual)."""
    nose = args[:22]
    pw, ps, pb = args[15][:1], args[16][:1], args[17][:1]
    return nose, (*args[:15], pw, ps, pb, *args[18:21], False)


def flops(x, args):
    n, c, h, w = x.shape
    ew, dw, s, pad, d, pw = args[0], args[6], args[9], args[10], args[11], args[15]
    e, k, co = dw.shape[0], dw.shape[2], pw.shape[0]
    ho = (h + pad[0] + pad[1] - d * (k - 1) - 1) // s + 1
    wo = (w + pad[2] + pad[3] - d * (k - 1) - 1) // s + 1
    macs = (n * h * w * c * e if ew is not None else 0) + n * ho * wo * e * (k * k + co)
    if has_se(args):  # the mean and the gate's product; the FCs are negligible
        macs += n * ho * wo * e
    return 2 * macs


def folded_block(block):
    """The block with each BatchNorm folded into its conv, channels_last."""
    fold = copy.deepcopy(block)
    layers = fold.conv if hasattr(fold, "conv") else fold.block
    for seq in layers:  # Conv2dNormActivation: fold its BN
        if isinstance(seq, nn.Sequential) and isinstance(seq[1], nn.BatchNorm2d):
            seq[0] = torch.nn.utils.fusion.fuse_conv_bn_eval(seq[0], seq[1])
            seq[1] = nn.Identity()
    if isinstance(layers[-1], nn.BatchNorm2d):  # mobilenet_v2: the last conv and the block's BN
        layers[-2] = torch.nn.utils.fusion.fuse_conv_bn_eval(layers[-2], layers[-1])
        layers[-1] = nn.Identity()
    return fold.to(memory_format=CL)


def providers(block, x, use_compile, with_pieces=False):
    import torch._inductor.config as inductor_config

    xc = x.contiguous(memory_format=CL)
    args = op_args(block)
    op = torch.ops.dasp_kernels.inverted_residual
    fold = folded_block(block)
    fns = {"ours": lambda: op(xc, *args), "eager": lambda: fold(xc)}
    if use_compile:
        inductor_config.freezing = True
        torch._dynamo.reset()
        compiled = torch.compile(copy.deepcopy(block), backend="inductor", dynamic=False)
        fns["compile"] = lambda: compiled(xc)
    ref = copy.deepcopy(block).double()(x.double())
    for name, fn in fns.items():
        ok, diff = harness.check_output(fn(), ref)
        if not ok:
            raise SystemExit(f"{name} differs from the float64 block by {diff}")
    if with_pieces and has_se(args):
        nose, dwonly = pieces(args)
        fns["noSE"] = lambda: op(xc, *nose)
        fns["dwonly"] = lambda: op(xc, *dwonly)
    return fns, flops(x, args)


def describe(block, x):
    args = op_args(block)
    dw, s, pw = args[6], args[9], args[15]
    e = f"{dw.shape[0]}" if args[0] is not None else "-"
    res = " res" if args[21] else ""
    se = " se" if has_se(args) else ""
    return f"{x.shape[1]}>{e}>{pw.shape[0]} {x.shape[2]}x{x.shape[3]} s{s}{res}{se}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="1x3x512x1024", help="the model's input, NxCxHxW")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--time", type=float, default=0.5, help="seconds per provider and block")
    ap.add_argument("--blocks", default="", help="comma-separated block indices (default all)")
    ap.add_argument("--no-compile", action="store_true", help="leave torch.compile out")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default="mobilenet_v2",
                    choices=["mobilenet_v2", "mobilenet_v3_large"])
    ap.add_argument("--se-only", action="store_true", help="only blocks with SE")
    ap.add_argument("--pieces", action="store_true",
                    help="SE blocks: also the pieces of the design choice (see above)")
    args = ap.parse_args()
    import torchvision

    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    model = getattr(torchvision.models, args.model)(weights=None).eval()
    randomize_bn(model, gen)
    size = [int(v) for v in args.size.split("x")]
    x = torch.randn(*size, generator=gen).contiguous(memory_format=CL)
    blocks = block_inputs(model.to(memory_format=CL), x)
    pick = {int(b) for b in args.blocks.split(",") if b}
    cols = ["ours", "eager"] + ([] if args.no_compile else ["compile"])
    extra = ["noSE", "dwonly", "recomp~"] if args.pieces else []
    print(f"{args.model} {args.size}, threads {args.threads}, cpu_isa {dasp_kernels.cpu_isa()}, "
          f"{harness.cpu_model()}, load {os.getloadavg()[0]:.2f}")
    print(f"{'#':>2s} {'block':18s} {'C>E>Co HxW s':26s}" + "".join(f"{c:>10s}" for c in cols)
          + f"{'x best':>8s}{'GFLOP/s':>9s}" + "".join(f"{c:>10s}" for c in extra)
          + "   (us, median)")
    total = dict.fromkeys(cols, 0.0)
    total_flops = 0
    with torch.no_grad():
        for i, (name, block, xin) in enumerate(blocks):
            if pick and i not in pick or args.se_only and not has_se(op_args(block)):
                continue
            fns, fl = providers(block, xin, not args.no_compile, args.pieces)
            t = measure_interleaved(fns, min_time_s=args.time, max_reps=2000)
            us = {c: t[c].median_ms * 1e3 for c in fns}
            if "noSE" in us:
                us["recomp~"] = us["dwonly"] + us["noSE"]
            for c in cols:
                total[c] += us[c]
            total_flops += fl
            best = min(us[c] for c in cols if c != "ours")
            print(f"{i:2d} {name:18s} {describe(block, xin):26s}"
                  + "".join(f"{us[c]:10.1f}" for c in cols)
                  + f"{best / us['ours']:8.2f}{fl / us['ours'] / 1e3:9.1f}"
                  + "".join(f"{us[c]:10.1f}" if c in us else f"{'':10s}" for c in extra))
    best = min(total[c] for c in cols if c != "ours")
    print(f"{'':2s} {'sum':18s} {'':26s}" + "".join(f"{total[c]:10.1f}" for c in cols)
          + f"{best / total['ours']:8.2f}{total_flops / total['ours'] / 1e3:9.1f}")
    print(f"load at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
