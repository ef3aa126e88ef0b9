"""Train mode vs eval mode of the fused DASP spatial path, beside the unfused module.

    python -m benchmarks.bench_train [--size 1x3x512x512] [--threads 2]

Train mode (batch statistics, forward + backward) runs the fused kernels for the convolutions and
stock BatchNorm2d for the statistics, so it is slower than the fused eval path; this measures by how
much, against the unfused module in the same run. Appends to benchmarks/results/train.csv and writes
benchmarks/results/train.md.
"""
import argparse
import copy
import os

import torch

import dasp_kernels
from benchmarks import harness
from dasp.models import DepthwiseAttentionSpatialPath

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="1x3x512x512")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    shape = [int(s) for s in args.size.split("x")]
    torch.manual_seed(0)
    unfused = DepthwiseAttentionSpatialPath()
    fused = dasp_kernels.fuse(unfused)
    x = torch.randn(*shape)

    def train_step(model):
        model.train()
        xx = x.clone().requires_grad_()
        model(xx).sum().backward()

    def eval_fwd(model):
        model.eval()
        with torch.no_grad():
            model(x)

    # The same inputs give the same gradients: a fused train step that computes garbage is caught.
    a, b = copy.deepcopy(unfused), copy.deepcopy(fused)
    train_step(a), train_step(b)
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-3, msg=lambda m: f"{n}: {m}")

    fns = {"unfused train fwd+bwd": lambda: train_step(unfused),
           "fused train fwd+bwd": lambda: train_step(fused),
           "unfused eval fwd": lambda: eval_fwd(unfused),
           "fused eval fwd": lambda: eval_fwd(fused)}
    times = harness.measure_interleaved(fns, min_reps=5, min_time_s=0.5)
    env = harness.environment()
    rows = [{**env, "size": args.size, "threads": args.threads, "provider": k,
             "median_ms": round(t.median_ms, 3), "p20_ms": round(t.p20_ms, 3),
             "p80_ms": round(t.p80_ms, 3), "reps": t.reps} for k, t in times.items()]
    harness.append_csv(os.path.join(RESULTS, "train.csv"), rows)
    ft, fe = times["fused train fwd+bwd"].median_ms, times["fused eval fwd"].median_ms
    ut = times["unfused train fwd+bwd"].median_ms
    lines = [f"# Train vs eval mode, DASP spatial path, {args.size}, {args.threads} threads",
             "", f"- command: `python -m benchmarks.bench_train --size {args.size} --threads {args.threads}`",
             f"- commit `{env['git_commit']}`, {env['cpu_model']}, torch {env['torch_version']}, "
             f"load {env['loadavg_1m']}", "", "| provider | median ms | p20 | p80 |", "|---|---|---|---|"]
    lines += [f"| {k} | {t.median_ms:.1f} | {t.p20_ms:.1f} | {t.p80_ms:.1f} |" for k, t in times.items()]
    lines += ["", f"Fused train step / fused eval forward: {ft / fe:.1f}x; "
                  f"fused train step vs unfused train step: {ut / ft:.2f}x faster."]
    text = "\n".join(lines) + "\n"
    with open(os.path.join(RESULTS, "train.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
