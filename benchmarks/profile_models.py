"""Where a model's time goes: torch.profiler on `compile` and `ours:cpu+compile` of benchmark
workloads (the realmodels group, BiSeNetV1), summed by kind of work, as a markdown table.

    python -m benchmarks.profile_models --workloads tv/mobilenet_v2 timm/efficientnet_lite0 \
        --sizes 1x3x224x224 1x3x512x1024 --threads 2 [--calls 10] [--out FILE.md]

Kinds: our ops (dasp_kernels::*), oneDNN convolutions, inductor's generated C++ kernels (recorded
one by one: inductor's cpp.enable_kernel_profile), layout copies, and every other ATen op. Self CPU
time per call, ms, summed over the intra-op threads' work as the profiler sees it on the calling
thread (wall time of each op). Not a timing benchmark: the profiler adds its own cost per op.
"""
import argparse
import collections

import torch

from benchmarks import harness, suite

KINDS = (
    ("ours", lambda n: n.startswith("dasp_kernels::")),
    ("convolution (oneDNN)", lambda n: "convolution" in n or n.startswith("mkldnn::")),
    ("inductor kernels", lambda n: n.startswith("cpp_fused") or n.startswith("cpp_")),
    ("layout copies", lambda n: n in ("aten::copy_", "aten::clone", "aten::contiguous",
                                      "aten::_to_copy", "aten::to")),
)


def kind_of(name):
    for kind, match in KINDS:
        if match(name):
            return kind
    return "other ATen" if name.startswith("aten::") else "other"


def profile(fn, calls):
    """{op name: self CPU ms per call} of fn() over `calls` calls, after warm-up."""
    with torch.no_grad():
        for _ in range(3):
            fn()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for _ in range(calls):
                fn()
    out = collections.Counter()
    for e in prof.key_averages():
        out[e.key] += e.self_cpu_time_total / 1e3 / calls
    return out


def summary_rows(workload, size, provider, per_op, wall_ms):
    by_kind = collections.Counter()
    for name, ms in per_op.items():
        by_kind[kind_of(name)] += ms
    total = sum(by_kind.values())
    top = ", ".join(f"{n} {ms:.2f}" for n, ms in per_op.most_common(4))
    kinds = " | ".join(f"{by_kind[k]:.2f} ({100 * by_kind[k] / total:.0f}%)"
                       for k in [k for k, _ in KINDS] + ["other ATen", "other"])
    return f"| {workload} | {size} | {provider} | {wall_ms:.2f} | {kinds} | {top} |"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workloads", nargs="+", required=True)
    ap.add_argument("--sizes", nargs="+", default=["1x3x224x224"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calls", type=int, default=10)
    ap.add_argument("--out", help="also write the table to this markdown file")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    import torch._inductor.config as inductor_config

    inductor_config.cpp.enable_kernel_profile = True
    head = ("| workload | input | provider | median ms (unprofiled) | "
            + " | ".join(k for k, _ in KINDS) + " | other ATen | other | top ops (ms) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    print("\n".join(lines))
    for size in args.sizes:
        for workload in args.workloads:
            case = suite.make_case(workload, suite.parse_size(size))
            with torch.no_grad():
                want = case.module(*case.inputs)
            for build in (suite._compile, lambda c: suite._ours_compiled(c, "cpu")):
                p = build(case)
                with torch.no_grad():
                    ok, diff = harness.check_output(p.fn(), want)
                if not ok:
                    raise SystemExit(f"{workload} {p.name}: output differs from eager by {diff}")
                with torch.no_grad():
                    wall = harness.measure(p.fn, min_reps=5, min_time_s=0.5).median_ms
                lines.append(summary_rows(workload, size, p.name, profile(p.fn, args.calls), wall))
                print(lines[-1], flush=True)
    if args.out:
        env = harness.environment()
        with open(args.out, "w") as fh:
            fh.write(f"# Where the time goes\n\n- command: `python -m benchmarks.profile_models "
                     f"{' '.join(argv or [])}`\n- commit {env['git_commit']}; {env['cpu_model']} "
                     f"({env['cpu_count']} logical CPUs), load {env['loadavg_1m']} at the end; "
                     f"torch {env['torch_version']}; {args.threads} threads; self CPU ms per "
                     "call by kind of work\n\n")
            fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
