"""Every inverted-residual block of torchvision's mobilenet_v2, alone at its own input shape:
inverted_residual (one op per block) against the block as PyTorch runs it.

    OMP_NUM_THREADS=2 python -m benchmarks.bench_inverted_residual [--size 1x3x512x1024] \
        [--threads 2] [--time 0.5] [--blocks 3,5] [--no-compile]

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
    from torchvision.models.mobilenetv2 import InvertedResidual

    seen = []
    hooks = [m.register_forward_pre_hook(lambda m, a, name=n: seen.append((name, m, a[0])))
             for n, m in model.named_modules() if isinstance(m, InvertedResidual)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return seen


def folded(conv, bn):
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return conv.weight.detach(), scale.detach(), (bn.bias - bn.running_mean * scale).detach()


def act_of(seq):
    """inverted_residual's (act, alpha, beta) for a Conv2dNormActivation's activation."""
    a = seq[2] if len(seq) > 2 else None
    if isinstance(a, nn.ReLU6):
        return "hardtanh", 0.0, 6.0
    if isinstance(a, nn.ReLU):
        return "relu", 0.0, 0.0
    if a is None:
        return "none", 0.0, 0.0
    raise SystemExit(f"unexpected activation {a}")


def op_args(block):
    """The op's arguments for a torchvision InvertedResidual block: the layers of block.conv are
    [expand ConvBNAct]? , depthwise ConvBNAct, project Conv2d, BatchNorm2d."""
    layers = list(block.conv)
    expand = layers[0] if len(layers) == 4 else None
    dw_seq, proj, proj_bn = layers[-3], layers[-2], layers[-1]
    if expand is not None:
        ew, es, eb = folded(expand[0], expand[1])
        ea = act_of(expand)
    else:
        ew = es = eb = None
        ea = ("none", 0.0, 0.0)
    dconv = dw_seq[0]
    dw, ds, db = folded(dconv, dw_seq[1])
    k, s, p, d = dconv.kernel_size[0], dconv.stride[0], dconv.padding[0], dconv.dilation[0]
    pw, ps, pb = folded(proj, proj_bn)
    return (ew, es, eb, *ea, dw, ds, db, s, [p, p, p, p], d, *act_of(dw_seq), pw, ps, pb,
            "none", 0.0, 0.0, block.use_res_connect)


def flops(x, args):
    n, c, h, w = x.shape
    ew, dw, s, pad, d, pw = args[0], args[6], args[9], args[10], args[11], args[15]
    e, k, co = dw.shape[0], dw.shape[2], pw.shape[0]
    ho = (h + pad[0] + pad[1] - d * (k - 1) - 1) // s + 1
    wo = (w + pad[2] + pad[3] - d * (k - 1) - 1) // s + 1
    macs = (n * h * w * c * e if ew is not None else 0) + n * ho * wo * e * (k * k + co)
    return 2 * macs


def providers(block, x, use_compile):
    import torch._inductor.config as inductor_config

    xc = x.contiguous(memory_format=CL)
    args = op_args(block)
    op = torch.ops.dasp_kernels.inverted_residual
    fold = copy.deepcopy(block)
    for seq in fold.conv:  # Conv2dNormActivation: fold its BN; the last conv with the block's BN
        if isinstance(seq, nn.Sequential) and isinstance(seq[1], nn.BatchNorm2d):
            seq[0] = torch.nn.utils.fusion.fuse_conv_bn_eval(seq[0], seq[1])
            seq[1] = nn.Identity()
    layers = fold.conv
    layers[-2] = torch.nn.utils.fusion.fuse_conv_bn_eval(layers[-2], layers[-1])
    layers[-1] = nn.Identity()
    fold = fold.to(memory_format=CL)
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
    return fns, flops(x, args)


def describe(block, x):
    args = op_args(block)
    dw, s, pw = args[6], args[9], args[15]
    e = f"{dw.shape[0]}" if args[0] is not None else "-"
    res = " res" if args[-1] else ""
    return f"{x.shape[1]}>{e}>{pw.shape[0]} {x.shape[2]}x{x.shape[3]} s{s}{res}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="1x3x512x1024", help="the model's input, NxCxHxW")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--time", type=float, default=0.5, help="seconds per provider and block")
    ap.add_argument("--blocks", default="", help="comma-separated block indices (default all)")
    ap.add_argument("--no-compile", action="store_true", help="leave torch.compile out")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    import torchvision

    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    model = torchvision.models.mobilenet_v2(weights=None).eval()
    randomize_bn(model, gen)
    size = [int(v) for v in args.size.split("x")]
    x = torch.randn(*size, generator=gen).contiguous(memory_format=CL)
    blocks = block_inputs(model.to(memory_format=CL), x)
    pick = {int(b) for b in args.blocks.split(",") if b}
    cols = ["ours", "eager"] + ([] if args.no_compile else ["compile"])
    print(f"mobilenet_v2 {args.size}, threads {args.threads}, cpu_isa {dasp_kernels.cpu_isa()}, "
          f"{harness.cpu_model()}, load {os.getloadavg()[0]:.2f}")
    print(f"{'#':>2s} {'block':18s} {'C>E>Co HxW s':26s}" + "".join(f"{c:>10s}" for c in cols)
          + f"{'x best':>8s}{'GFLOP/s':>9s}   (us, median)")
    total = dict.fromkeys(cols, 0.0)
    total_flops = 0
    with torch.no_grad():
        for i, (name, block, xin) in enumerate(blocks):
            if pick and i not in pick:
                continue
            fns, fl = providers(block, xin, not args.no_compile)
            t = measure_interleaved(fns, min_time_s=args.time, max_reps=2000)
            us = {c: t[c].median_ms * 1e3 for c in cols}
            for c in cols:
                total[c] += us[c]
            total_flops += fl
            best = min(us[c] for c in cols if c != "ours")
            print(f"{i:2d} {name:18s} {describe(block, xin):26s}"
                  + "".join(f"{us[c]:10.1f}" for c in cols)
                  + f"{best / us['ours']:8.2f}{fl / us['ours'] / 1e3:9.1f}")
    best = min(total[c] for c in cols if c != "ours")
    print(f"{'':2s} {'sum':18s} {'':26s}" + "".join(f"{total[c]:10.1f}" for c in cols)
          + f"{best / total['ours']:8.2f}{total_flops / total['ours'] / 1e3:9.1f}")
    print(f"load at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
