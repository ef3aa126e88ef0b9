"""Table I of the paper beside what this code measures on the built modules.

    python -m benchmarks.table1 [--size 1024 1024] [--json]

Parameters are counted from the modules, multiply-accumulates with
torch.utils.flop_counter.FlopCounterMode (2 FLOPs per MAC) on a 1x3xHxW input, and checked against
the analytic Eq. (1)-(4). Then the rows the paper leaves out: the PPM, BatchNorm and the fourth
(1x1, 64->128) layer of the checkpoint-compatible original spatial path.
"""
import argparse
import json

import torch
from torch.utils.flop_counter import FlopCounterMode

from dasp.models import DepthwiseAttentionSpatialPath, PaperSpatialPath, SpatialPath

# The paper's Table I, as printed.
PAPER = {
    "conv": {"params": [9408, 36864, 73728, 120000], "cost": ["2.47G", "2.42G", "1.21G", "6.1G"]},
    "dsc": {"params": [339, 4672, 8768, 13779], "cost": ["88.9M", "306.1M", "143.7M", "538.7M"]},
}
COLUMNS = ["7x7", "3x3^1", "3x3^2", "Total"]


def _macs_by_module(model, size):
    """MACs per module name (relative to the model) from FlopCounterMode, which counts 2 per MAC."""
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, *size))
    root = type(model).__name__
    out = {}
    for name, ops in counter.get_flop_counts().items():
        key = "" if name in (root, "Global") else name.removeprefix(root + ".")
        out[key] = sum(ops.values()) // 2
    return out


def _params(*modules):
    return sum(p.numel() for m in modules for p in m.parameters())


def _analytic_conv(k, c, n, h, w):
    """Eq. (1) and (3): parameters K^2*C*N and cost W_conv * W * H of the output."""
    return k * k * c * n, k * k * c * n * h * w


def _analytic_dsc(k, c, n, h, w):
    """Eq. (2) and (4): parameters K^2*C + C*N and cost W_DSC * W * H of the output."""
    p = k * k * c + c * n
    return p, p * h * w


def fmt_cost(v):
    return f"{v / 1e9:.2f}G" if v >= 1e9 else f"{v / 1e6:.1f}M"


def measure(size=(1024, 1024)):
    torch.manual_seed(0)
    h, w = size
    outs = [((h + 1) // 2, (w + 1) // 2), ((h + 3) // 4, (w + 3) // 4), ((h + 7) // 8, (w + 7) // 8)]
    paper_sp, dasp_sp, ckpt_sp = PaperSpatialPath(), DepthwiseAttentionSpatialPath(), SpatialPath()
    paper_macs, dasp_macs, ckpt_macs = (_macs_by_module(m, size) for m in (paper_sp, dasp_sp, ckpt_sp))
    shapes = [(7, 3, 64), (3, 64, 64), (3, 64, 128)]  # (K, C in, N out) of each stage

    rows = {}
    convs = [paper_sp.conv1, paper_sp.conv2, paper_sp.conv3]
    rows["conv"] = {
        "params": [_params(c.conv) for c in convs],
        "macs": [paper_macs[f"conv{i + 1}.conv"] for i in range(3)],
        "analytic": [_analytic_conv(k, c, n, *o) for (k, c, n), o in zip(shapes, outs)],
    }
    stages = [dasp_sp.stage1, dasp_sp.stage2, dasp_sp.stage3]
    rows["dsc"] = {
        "params": [_params(s.dw.conv, s.pw.conv) for s in stages],
        "macs": [dasp_macs[f"stage{i + 1}.dw.conv"] + dasp_macs[f"stage{i + 1}.pw.conv"]
                 for i in range(3)],
        "analytic": [_analytic_dsc(k, c, n, *o) for (k, c, n), o in zip(shapes, outs)],
    }
    rows["ppm"] = {
        "params": [_params(s.ppm) for s in stages],
        "macs": [dasp_macs[f"stage{i + 1}.ppm.conv"] for i in range(3)],
    }
    # Eval-mode BN is one multiply-add per output element; its parameters are gamma and beta.
    rows["dsc_bn"] = {
        "params": [_params(s.dw.bn, s.pw.bn) for s in stages],
        "macs": [(s.dw.conv.out_channels + s.pw.conv.out_channels) * o[0] * o[1]
                 for s, o in zip(stages, outs)],
    }
    rows["conv_bn"] = {
        "params": [_params(c.bn) for c in convs],
        "macs": [c.conv.out_channels * o[0] * o[1] for c, o in zip(convs, outs)],
    }
    rows["ckpt_conv3_conv_out"] = {
        "params": [_params(ckpt_sp.conv3.conv), _params(ckpt_sp.conv_out.conv)],
        "macs": [ckpt_macs["conv3.conv"], ckpt_macs["conv_out.conv"]],
    }
    for r in rows.values():
        r["params"].append(sum(r["params"]))
        r["macs"].append(sum(r["macs"]))

    ckpt_total_params = _params(*(getattr(ckpt_sp, n).conv for n in ("conv1", "conv2", "conv3", "conv_out")))
    ckpt_total_macs = sum(ckpt_macs[f"{n}.conv"] for n in ("conv1", "conv2", "conv3", "conv_out"))
    conv_p, conv_m = rows["conv"]["params"][-1], rows["conv"]["macs"][-1]
    dsc_p, dsc_m = rows["dsc"]["params"][-1], rows["dsc"]["macs"][-1]
    full_p = dsc_p + rows["ppm"]["params"][-1] + rows["dsc_bn"]["params"][-1]
    full_m = dsc_m + rows["ppm"]["macs"][-1] + rows["dsc_bn"]["macs"][-1]
    conv_full_p = conv_p + rows["conv_bn"]["params"][-1]
    conv_full_m = conv_m + rows["conv_bn"]["macs"][-1]
    factors = {
        "paper (conv vs DSC)": {"params": conv_p / dsc_p, "macs": conv_m / dsc_m},
        "with PPM and BN (both sides' BN counted)": {
            "params": conv_full_p / full_p, "macs": conv_full_m / full_m},
        "checkpoint-compatible original SP (4 convs) vs DSC + PPM": {
            "params": ckpt_total_params / (dsc_p + rows["ppm"]["params"][-1]),
            "macs": ckpt_total_macs / (dsc_m + rows["ppm"]["macs"][-1])},
    }
    return {"input": [1, 3, h, w], "paper": PAPER, "rows": rows, "factors": factors,
            "checkpoint_original_sp": {"params": ckpt_total_params, "macs": ckpt_total_macs}}


def render(res):
    r = res["rows"]
    lines = [f"Table I at input {'x'.join(map(str, res['input']))} "
             "(MACs from FlopCounterMode; 'analytic' = Eq. (1)-(4))", ""]
    head = f"| {'row':<40} | " + " | ".join(f"{c:>11}" for c in COLUMNS) + " |"
    lines += [head, "|" + "-" * 42 + "|" + "|".join(["-" * 13] * 4) + "|"]

    def row(name, vals):
        lines.append(f"| {name:<40} | " + " | ".join(f"{v:>11}" for v in vals) + " |")

    for kind, label in (("conv", "Convolution"), ("dsc", "D.S.C")):
        p = res["paper"][kind]
        row(f"{label} parameters, paper", [f"{v:,}" for v in p["params"]])
        row(f"{label} parameters, measured", [f"{v:,}" for v in r[kind]["params"]])
        row(f"{label} cost, paper", p["cost"])
        row(f"{label} cost, measured", [fmt_cost(v) for v in r[kind]["macs"]])
        analytic = r[kind]["analytic"]
        row(f"{label} cost, analytic", [fmt_cost(m) for _, m in analytic] +
            [fmt_cost(sum(m for _, m in analytic))])
    lines += ["", "The paper prints 306.1M for 4,672 x 256 x 256 = 306,184,192 MACs (306.2M rounded); "
              "every other figure matches to its rounding.", "", "Rows the paper leaves out", ""]
    lines += [head, "|" + "-" * 42 + "|" + "|".join(["-" * 13] * 4) + "|"]
    row("PPM parameters", [f"{v:,}" for v in r["ppm"]["params"]])
    row("PPM cost", [fmt_cost(v) for v in r["ppm"]["macs"]])
    row("D.S.C BatchNorm parameters", [f"{v:,}" for v in r["dsc_bn"]["params"]])
    row("D.S.C BatchNorm cost (eval, 1 MAC/elem)", [fmt_cost(v) for v in r["dsc_bn"]["macs"]])
    row("Convolution BatchNorm parameters", [f"{v:,}" for v in r["conv_bn"]["params"]])
    row("Convolution BatchNorm cost", [fmt_cost(v) for v in r["conv_bn"]["macs"]])
    c = r["ckpt_conv3_conv_out"]
    lines += ["", "Checkpoint-compatible original spatial path (CoinCheung/BiSeNet): its third conv is "
              "3x3 64->64 and a fourth 1x1 64->128 conv follows:",
              f"  conv3 {c['params'][0]:,} params, {fmt_cost(c['macs'][0])}; conv_out "
              f"{c['params'][1]:,} params, {fmt_cost(c['macs'][1])}; whole path "
              f"{res['checkpoint_original_sp']['params']:,} params, "
              f"{fmt_cost(res['checkpoint_original_sp']['macs'])}", "", "Reduction factors"]
    for name, f in res["factors"].items():
        lines.append(f"  {name:<58} params {f['params']:5.2f}x   MACs {f['macs']:5.2f}x")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, nargs=2, default=(1024, 1024), metavar=("H", "W"))
    ap.add_argument("--json", action="store_true", help="print the same as JSON")
    args = ap.parse_args(argv)
    res = measure(tuple(args.size))
    print(json.dumps(res, indent=2) if args.json else render(res))


if __name__ == "__main__":
    main()
