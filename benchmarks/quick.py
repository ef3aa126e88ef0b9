"""The headline comparisons in a few minutes: what `make run` prints after Table I.

    python -m benchmarks.quick [--out runs/quick] [--size 1x3x1024x1024] [--threads 2]
                               [--no-models] [--min-time 0.3] [--providers ...]

Runs benchmarks.bench_cpu on the DASP spatial path (as `fuse` gives it: one dasp_spatial_path call),
the original spatial path and the whole BiSeNetV1 with the DASP path, at one size and thread count
under glibc's default allocator, and prints one short table: the fastest of ours against the
fastest peer (eager, eager with BN folded and channels_last, torch.compile, ONNX Runtime) with the
ratio. Everything else goes to --out (untracked: runs/ is in .gitignore): the full markdown
summary (latest.md), the rows with their environment (cpu.csv, appended), the benchmark's log
(log.txt) and the plots. The committed results in benchmarks/results/ are written only by the
commands of docs/benchmarks.md.
"""
import argparse
import contextlib
import math
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The DASP path's workloads the headline compares (make run times the module, "DASP"; rows of the
# op, "dasp_spatial_path", count too when a CSV has them).
PATHS = ("DASP", "dasp_spatial_path")
MODEL = "BiSeNetV1/dasp"
# The peers, ours on the CPU, and, for the whole model, ours under torch.compile with the arena
# (fuse() alone leaves the ResNet-18 context path to eager PyTorch; docs/benchmarks.md).
PROVIDERS = ["eager", "eager+fold+cl", "compile", "onnxruntime", "ours:cpu", "ours:cpu+cl",
             "ours:cpu+compile+arena"]


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.quick", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.path.join(ROOT, "runs", "quick"),
                   help="folder for the full results, log and plots (default: runs/quick)")
    p.add_argument("--size", default="1x3x1024x1024", help="input image Nx3xHxW")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-models", action="store_true", help="leave out the whole BiSeNetV1")
    p.add_argument("--min-time", type=float, default=0.3,
                   help="seconds of timed calls per provider at least")
    p.add_argument("--providers", nargs="+", default=PROVIDERS,
                   help=f"providers to time (default: {' '.join(PROVIDERS)})")
    return p.parse_args(argv)


def bench_argv(args):
    workloads = ["SpatialPath", "DASP"] + ([] if args.no_models else [MODEL])
    return ["--quick", "--workloads", *workloads, "--sizes", args.size, "--threads",
            str(args.threads), "--allocators", "default", "--providers", *args.providers,
            "--min-time", str(args.min_time), "--results-dir", args.out]


def _ms(r):
    return float(r["median_ms"])


def _best(rows, workloads, pred):
    cands = [r for r in rows if r["workload"] in workloads and r.get("status") == "ok"
             and pred(r["provider"]) and not math.isnan(_ms(r))]
    return min(cands, key=_ms) if cands else None


def headline(rows):
    """[(what, ours row, peer row)]: the comparisons of the table, from one run's rows."""
    from benchmarks.suite import PEER_PROVIDERS, is_ours

    def peer(p):
        return p in PEER_PROVIDERS

    out = [("DASP spatial path vs the fastest peer", _best(rows, PATHS, is_ours),
            _best(rows, PATHS, peer)),
           ("DASP spatial path vs the original spatial path", _best(rows, PATHS, is_ours),
            _best(rows, ("SpatialPath",), peer)),
           ("BiSeNetV1 (DASP path) vs the fastest peer", _best(rows, (MODEL,), is_ours),
            _best(rows, (MODEL,), peer))]
    return [(what, o, p) for what, o, p in out if o is not None or p is not None]


def _fmt_ms(v):
    return f"{v:.2f}" if v < 10 else f"{v:.1f}"


def table(comparisons):
    lines = ["| comparison | ours | ms | fastest peer | ms | ratio |",
             "|---|---|---|---|---|---|"]
    for what, ours, peer in comparisons:
        o = f"{ours['provider']} ({ours['workload']})" if ours else "—"
        p = f"{peer['provider']} ({peer['workload']})" if peer else "—"
        ratio = f"{_ms(peer) / _ms(ours):.2f}x" if ours and peer else "—"
        lines.append(f"| {what} | {o} | {_fmt_ms(_ms(ours)) if ours else '—'} | {p} | "
                     f"{_fmt_ms(_ms(peer)) if peer else '—'} | {ratio} |")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    os.makedirs(args.out, exist_ok=True)
    log_path = os.path.join(args.out, "log.txt")
    cmd = [sys.executable, "-m", "benchmarks.bench_cpu", *bench_argv(args)]
    what = "the spatial paths" + ("" if args.no_models else " and the whole BiSeNetV1")
    print(f"Timing {what} at {args.size}, {args.threads} thread(s), against eager, "
          f"torch.compile and ONNX Runtime (a few minutes; progress in {log_path}) ...", flush=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in [env.get("PYTHONPATH")] if p])
    t0 = time.time()
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env).returncode
    if rc != 0:
        print(f"the benchmark failed (exit code {rc}); see {log_path}", file=sys.stderr)
        return rc

    from benchmarks import harness, plot

    csv_path = os.path.join(args.out, "cpu.csv")
    rows = harness.read_csv(csv_path)
    run = plot.latest_run(rows)
    rows = [r for r in rows if r.get("run_id") == run]
    r0 = rows[0]
    print(f"\nHeadline ({args.size}, {args.threads} thread(s), fp32, eval, median ms; "
          f"{r0.get('device_name', '')}, load {r0.get('loadavg_1m', '')}; "
          f"{time.time() - t0:.0f} s):\n")
    print(table(headline(rows)))
    print("\n`ours`: dasp_kernels.fuse(model); `+cl`: channels_last "
          "input; `+compile+arena`: the fused model under torch.compile, each call inside "
          "dasp_kernels.cpu_arena().")
    try:
        with open(os.path.join(args.out, "plot.txt"), "w") as f, contextlib.redirect_stdout(f):
            plot.main(["--csv", csv_path, "--out", args.out])
    except ImportError as e:  # matplotlib is a benchmark dependency, not the library's
        print(f"no plots: {e}")
    pngs = sorted(n for n in os.listdir(args.out) if n.endswith(".png"))
    rel = os.path.relpath(args.out)
    print(f"\nFull results: {rel}/latest.md (every provider, quantiles, page faults), {rel}/cpu.csv "
          f"(with the environment), {rel}/log.txt")
    if pngs:
        print("Plots: " + ", ".join(f"{rel}/{n}" for n in pngs))
    print("Committed results of the full benchmark and how to rerun it: docs/benchmarks.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
