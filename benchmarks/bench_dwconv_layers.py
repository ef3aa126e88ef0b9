"""Every depthwise layer fuse() fuses in a real model, alone at its own input shape: ours against
what the unfused model runs in its place (issue 18).

    python -m benchmarks.bench_dwconv_layers --workload tv/mobilenet_v3_large \
        --size 1x3x512x1024 [--threads 2] [--time 0.3]

Per layer, median us of:
- `ours cl` / `ours nchw`: our op (torch.ops.dasp_kernels.dwconv_bn_act, the norm folded into
  scale and shift once, as the fused layer caches it) on a channels_last / NCHW input;
- `onednn cl`: what `torch.compile` with freezing runs for the unfused layer: oneDNN's
  convolution, BN folded into its weight (packed in its own layout), the activation a post-op
  (called directly, without a compiled graph's per-call overhead);
- `eager nchw`: conv, BatchNorm and activation one after the other, as the eager model runs them.
Both kernels are called bare: the fused layer's Python around either (FusedDWConv2d's
_inference_fast, ~25 us) is the same for both and is not what is compared.
Inputs are the layer's real input in the model (captured with a hook), outputs are checked
against `eager nchw` before timing. The two channels-last providers of a layer are timed
interleaved, then the two NCHW ones, back to back (no pause between calls, as a model's layers
run: after a 1 ms pause the worker threads sleep, and waking them added 100-400 us per call on a
2-core VM, more than the 7x7 layers themselves take). The last line sums each column: the part
of the model's time these layers take in each form. `ours` is always our kernel; a fused model
picks per layer (dasp_kernels/dw_choice.py).
"""
import argparse
import os

os.environ["DASP_KERNELS_DW_IMPL"] = "dasp"  # noqa: E402 (before dasp_kernels reads it)
# Fused blocks run their layers: the depthwise layers are what is timed, and a block's first-call
# choice would run its layers many times under the capturing hooks.
os.environ["DASP_KERNELS_IR_IMPL"] = "layers"

import torch
import torch.nn as nn
import torch.nn.functional as F

import dasp_kernels
from benchmarks import harness, suite
from dasp_kernels import dw_choice, functional, fuse_depthwise, reference
from dasp_kernels.fuse_depthwise import FusedDWConv2d


class ConvNormAct(nn.Module):
    """The unfused form of a fused layer: its conv, its norm's statistics, its activation."""

    def __init__(self, layer):
        super().__init__()
        self.conv = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size,
                              layer.stride, 0, layer.dilation, layer.groups,
                              layer.bias is not None)
        self.conv.load_state_dict(nn.Conv2d.state_dict(layer))
        bn = layer._dasp[0]
        self.bn = nn.BatchNorm2d(bn.num_features, bn.eps).eval()
        self.bn.load_state_dict({k: v for k, v in bn.state_dict().items()
                                 if k in self.bn.state_dict()})
        self.pad = layer._dasp[2]
        self.act = layer.act_spec

    def forward(self, x):
        k, s, d = self.conv.kernel_size[0], self.conv.stride[0], self.conv.dilation[0]
        top, bottom, left, right = functional._padding4(self.pad, x, k, s, d)
        if top == bottom and left == right:  # the conv pads, as the model's own does
            y = F.conv2d(x, self.conv.weight, self.conv.bias, s, (top, left), d, self.conv.groups)
        else:  # timm's Conv2dSame pads first
            y = self.conv(F.pad(x, (left, right, top, bottom)))
        return reference.activation(self.bn(y), *self.act)


def layer_inputs(fused, x):
    """[(name, layer, its input)] of every FusedDWConv2d in the fused model, in call order."""
    seen = []
    hooks = [m.register_forward_pre_hook(lambda m, a, name=n: seen.append((name, m, a[0])))
             for n, m in fused.named_modules() if isinstance(m, FusedDWConv2d)]
    with torch.no_grad():
        fused(x)
    for h in hooks:
        h.remove()
    return seen


def providers(layer, x):
    unfused = ConvNormAct(layer).eval()
    xc = x.contiguous(memory_format=torch.channels_last)
    k, s, d = layer.kernel_size[0], layer.stride[0], layer.dilation[0]
    pad = functional._padding4(layer._dasp[2], x, k, s, d)
    scale, shift = fuse_depthwise.folded(layer, layer._dasp[0])
    w = torch.ops.mkldnn._reorder_convolution_weight(
        layer.weight * scale.view(-1, 1, 1, 1), [pad[0], pad[2]], [s, s], [d, d], layer.groups,
        list(x.shape))
    ops = torch.ops.dasp_kernels
    fns = {"ours cl": lambda: ops.dwconv_bn_act(xc, layer.weight, scale, shift, s, pad, d,
                                                *layer.act_spec),
           "onednn cl": lambda: dw_choice.onednn_conv_act(xc, w, shift, s, pad, d,
                                                          *layer.act_spec),
           "ours nchw": lambda: ops.dwconv_bn_act(x, layer.weight, scale, shift, s, pad, d,
                                                  *layer.act_spec),
           "eager nchw": lambda: unfused(x)}
    ref = unfused(x)
    for name, fn in fns.items():
        ok, diff = harness.check_output(fn(), ref)
        if not ok:
            raise SystemExit(f"{name} differs from eager by {diff}")
    return fns


def time_layer(fns, seconds):
    """{provider: Timing}: the channels-last pair interleaved, then the NCHW pair, so that the
    eager path's large temporaries do not evict the input of the channels-last calls."""
    t = {}
    for pair in (("ours cl", "onednn cl"), ("ours nchw", "eager nchw")):
        t.update(harness.measure_interleaved({c: fns[c] for c in pair}, min_time_s=seconds,
                                             max_reps=2000, gap_s=0.0))
    return t


def describe(layer, x):
    act = layer.act_spec[0]
    return (f"{x.shape[1]}x{x.shape[2]}x{x.shape[3]} K{layer.kernel_size[0]} "
            f"s{layer.stride[0]} d{layer.dilation[0]} {act}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workload", default="tv/mobilenet_v2")
    ap.add_argument("--size", default="1x3x224x224")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--time", type=float, default=0.3, help="seconds per provider and layer")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    case = suite.make_case(args.workload, suite.parse_size(args.size))
    fused, x = dasp_kernels.fuse(case.module), case.inputs[0]
    cols = ("ours cl", "onednn cl", "ours nchw", "eager nchw")
    print(f"{args.workload} {args.size}, threads {args.threads}, cpu_isa "
          f"{dasp_kernels.cpu_isa()}, {harness.cpu_model()}, load {os.getloadavg()[0]:.2f}")
    print(f"{'layer':34s} {'shape':30s}" + "".join(f"{c:>12s}" for c in cols) + "   (us, median)")
    total = dict.fromkeys(cols, 0.0)
    with torch.no_grad():
        for name, layer, xin in layer_inputs(fused, x):
            t = time_layer(providers(layer, xin), args.time)
            us = {c: t[c].median_ms * 1e3 for c in cols}
            for c in cols:
                total[c] += us[c]
            print(f"{name[-34:]:34s} {describe(layer, xin):30s}"
                  + "".join(f"{us[c]:12.1f}" for c in cols))
    print(f"{'sum':34s} {'':30s}" + "".join(f"{total[c]:12.1f}" for c in cols))
    print(f"load at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
