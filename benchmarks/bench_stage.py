"""Times the fused DASP stage op on the CPU against eager PyTorch, stage by stage and chained.

    python -m benchmarks.bench_stage [--threads 2] [--runs 20] [--size 1024 1024] [--allocators]

Workloads (fp32, eval, BN folded): each stage at its Table I input (3x1024x1024 K7 -> 64,
64x512x512 K3 -> 64, 64x256x256 K3 -> 128) and the three stages chained (the DASP spatial path).
Providers, in the same process: eager reference (reference.dasp_stage, BN folded, channels_last
input), our dasp_stage op on the input as the previous stage gives it (NCHW image for stage 1,
channels_last after), and for the chain also our whole-path op dasp_spatial_path.
Prints the median and 20%/80% quantiles in ms over --runs runs after warm-up.

--allocators runs the whole thing twice, each in its own process: under the default allocator and
under MALLOC_MMAP_MAX_=0 (freed memory is reused, so fresh large tensors cost no page faults).
"""
import argparse
import os
import statistics
import subprocess
import sys
import time

import torch

import dasp_kernels
from dasp_kernels import reference

STAGES = [(3, 64, 7), (64, 64, 3), (64, 128, 3)]  # (Cin, Cout, K)


def stage_params(cin, cout, k, gen):
    def r(*s):
        return torch.randn(*s, generator=gen)

    return (r(cin, 1, k, k) / k, torch.rand(cin, generator=gen) + 0.5, 0.1 * r(cin),
            r(cout, cin, 1, 1) / cin ** 0.5, torch.rand(cout, generator=gen) + 0.5, 0.1 * r(cout),
            r(cout, cin, 1, 1) / cin ** 0.5)


def timeit(fn, runs, warmup=3):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
    ts.sort()
    q = lambda f: ts[min(len(ts) - 1, int(f * len(ts)))]
    return statistics.median(ts), q(0.2), q(0.8)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--size", type=int, nargs=2, default=[1024, 1024])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--allocators", action="store_true",
                    help="run once per allocator setting, each in its own process")
    ap.add_argument("--only", default="", help="comma list of workloads to run (stage1,..,path)")
    args = ap.parse_args(argv)
    if args.allocators:
        rest = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--allocators"]
        for label, env in (("default", {}), ("MALLOC_MMAP_MAX_=0", {"MALLOC_MMAP_MAX_": "0"})):
            print(f"== allocator: {label}", flush=True)
            subprocess.run([sys.executable, "-m", "benchmarks.bench_stage", *rest],
                           env={**os.environ, **env}, check=True)
        return

    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    h, w = args.size
    params = [stage_params(*s, gen) for s in STAGES]
    x0 = torch.randn(args.batch, 3, h, w, generator=gen)
    # Inputs of stages 2 and 3 as the previous stage produces them (channels_last).
    xs = [x0]
    with torch.no_grad():
        for p in params[:2]:
            xs.append(reference.dasp_stage(xs[-1].contiguous(memory_format=torch.channels_last), *p))
    xs = [xs[0]] + [t.contiguous(memory_format=torch.channels_last) for t in xs[1:]]
    op = torch.ops.dasp_kernels
    path_op = getattr(op, "dasp_spatial_path", None)
    flat = [t for p in params for t in p]

    def eager_chain():
        y = x0
        for p in params:
            y = reference.dasp_stage(y.contiguous(memory_format=torch.channels_last), *p)
        return y

    def ours_chain():
        y = x0
        for p in params:
            y = op.dasp_stage(y, *p)
        return y

    work = []
    for i, (x, p) in enumerate(zip(xs, params)):
        x_cl = x.contiguous(memory_format=torch.channels_last)
        work.append((f"stage{i + 1} {tuple(x.shape)}",
                     [("eager folded cl", lambda x=x_cl, p=p: reference.dasp_stage(x, *p)),
                      ("ours dasp_stage", lambda x=x, p=p: op.dasp_stage(x, *p))]))
    chain = [("eager folded cl", eager_chain), ("ours 3x dasp_stage", ours_chain)]
    if path_op is not None:
        chain.append(("ours dasp_spatial_path", lambda: path_op(x0, flat)))
    work.append((f"path {tuple(x0.shape)}", chain))
    only = [s for s in args.only.split(",") if s]

    load = os.getloadavg()[0]
    print(f"threads={args.threads} runs={args.runs} torch={torch.__version__} "
          f"MALLOC_MMAP_MAX_={os.environ.get('MALLOC_MMAP_MAX_', '(unset)')} load1={load:.2f}")
    print(f"{'workload':28s} {'provider':24s} {'median ms':>10s} {'p20':>8s} {'p80':>8s}")
    with torch.no_grad():
        for name, provs in work:
            if only and name.split()[0] not in only:
                continue
            base = None
            for pname, fn in provs:
                med, lo, hi = timeit(fn, args.runs)
                base = base or med
                print(f"{name:28s} {pname:24s} {med:10.2f} {lo:8.2f} {hi:8.2f}   x{base / med:.2f}",
                      flush=True)
    print(f"load1 at the end: {os.getloadavg()[0]:.2f} (the machine has {os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
