"""The DASP benchmark: every workload under every provider, side by side, one process per allocator.

    python -m benchmarks.bench_cpu [--quick] [--workloads ...] [--threads 1 2] [--sizes ...]
                                   [--allocators default nofault nommap thp] [--device cpu|cuda]

Appends one row per (allocator, threads, size, workload, provider) with the environment to
cpu.csv (cuda.csv on a GPU) in --results-dir, prints a markdown summary and writes it to latest.md
(latest_cuda.md) there. --results-dir defaults to runs/bench (untracked); the committed results are
rewritten only by naming their folder (benchmarks/results/..., see docs/benchmarks.md).
`python -m benchmarks.plot --csv DIR/cpu.csv` draws the PNGs.

--quick: 1x3x1024x1024, 2 threads, the fused ops, both spatial paths and the copy ceiling.

Allocators (each in its own process, since glibc reads its variables at start-up):
  default  glibc as configured: blocks above the mmap threshold are mmap'd per allocation and
           returned to the OS on free, so every large fresh tensor is paid again in page faults
  nofault  MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=64 GiB: large blocks come from the heap and
           freed memory stays there for reuse: no page faults once warm
  nommap   MALLOC_MMAP_MAX_=0 alone (the first benchmarks' setting). glibc then still trims the top of the
           heap on free (M_TRIM_THRESHOLD, 128 KiB), so eager keeps most of its faults
  thp      THP_MEM_ALLOC_ENABLE=1: torch's CPU allocator asks for transparent huge pages
           (2 MiB pages, far fewer faults) on allocations of 2 MiB and more
The faults_per_call column shows the difference.
"""
import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile

ALLOCATORS = {
    "default": {},
    "nofault": {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(64 * 2**30)},
    "nommap": {"MALLOC_MMAP_MAX_": "0"},
    "thp": {"THP_MEM_ALLOC_ENABLE": "1"},
}
_ALLOC_VARS = ("MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_",
               "MALLOC_TOP_PAD_", "THP_MEM_ALLOC_ENABLE")
QUICK = {"sizes": ["1x3x1024x1024"], "threads": [2], "workloads": ["ops", "paths", "stream"]}
FULL = {"sizes": ["1x3x1024x1024", "1x3x1024x2048", "4x3x512x1024"], "threads": [1, 2],
        "workloads": ["ops", "stages", "paths", "models", "stream"]}
# Untracked (.gitignore: /runs/): a run writes into benchmarks/results only when told to.
RESULTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "runs", "bench")
# Column order of the CSV; environment fields follow.
COLUMNS = ["run_id", "timestamp", "device", "allocator", "threads", "workload", "kind", "size",
           "input_shape", "provider", "status", "median_ms", "p20_ms", "p80_ms", "reps", "gflop",
           "gflops", "min_mb", "gbps", "max_abs_diff", "faults_per_call", "speedup_of_ours",
           "best_ours_ms", "setup_s", "load_at_case", "note"]


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_cpu", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="1x3x1024x1024, 2 threads, ops + spatial paths + stream (a few minutes)")
    p.add_argument("--workloads", nargs="+", help="groups (ops stages paths models stream), "
                   "names or prefixes (dasp_stage, DASPStage/s1, SpatialPath)")
    p.add_argument("--threads", nargs="+", type=int)
    p.add_argument("--sizes", nargs="+", help="input images Nx3xHxW, e.g. 1x3x1024x2048")
    p.add_argument("--allocators", nargs="+", choices=sorted(ALLOCATORS),
                   default=["default", "nofault"])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--providers", nargs="+", help="keep only these providers (e.g. eager compile "
                   "onnxruntime ours:cpu)")
    p.add_argument("--backends", nargs="+", help="our backends (default: reference cpu on the "
                   "CPU, cuda triton on a GPU)")
    p.add_argument("--reps", type=int, help="exactly this many timed calls per provider")
    p.add_argument("--order", choices=["shuffled", "fixed"], default="shuffled",
                   help="order of the providers in each round of calls: a new random one each "
                   "round (default), or always the order they are listed in")
    p.add_argument("--min-time", type=float, help="seconds of timed calls per provider at least "
                   "(default 1, --quick 0.3)")
    p.add_argument("--stream-mb", type=int, default=256, help="buffer size of the copy benchmark")
    p.add_argument("--results-dir", default=RESULTS,
                   help="where cpu.csv and latest.md go (default: runs/bench, untracked)")
    p.add_argument("--no-save", action="store_true", help="print only; write no CSV or markdown")
    p.add_argument("--child", metavar="JSON", help=argparse.SUPPRESS)
    p.add_argument("--run-id", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    preset = QUICK if args.quick else FULL
    args.sizes = args.sizes or preset["sizes"]
    args.threads = args.threads or preset["threads"]
    args.workloads = args.workloads or preset["workloads"]
    if args.min_time is None:
        args.min_time = 0.3 if args.quick else 1.0
    from benchmarks import suite  # after argparse so --help is instant

    try:
        args.workload_list = suite.select_workloads(args.workloads)
        args.shapes = [suite.parse_size(s) for s in args.sizes]
    except ValueError as e:
        p.error(str(e))
    if any(t < 1 for t in args.threads):
        p.error(f"--threads must be >= 1, got {args.threads}")
    return args


def timing_kwargs(args):
    if args.reps:
        reps = {"warmup": 1, "min_reps": args.reps, "max_reps": args.reps, "min_time_s": 0.0}
    elif args.quick:
        reps = {"warmup": 2, "min_reps": 7, "max_reps": 60, "min_time_s": args.min_time}
    else:
        reps = {"warmup": 2, "min_reps": 10, "max_reps": 200, "min_time_s": args.min_time}
    return {**reps, "order": args.order}


def child_env(allocator):
    env = dict(os.environ)
    for k in _ALLOC_VARS:
        env.pop(k, None)
    env.update(ALLOCATORS.get(allocator, {}))
    env.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def allocator_env_str(allocator):
    if allocator not in ALLOCATORS:
        return ""
    return " ".join(f"{k}={v}" for k, v in ALLOCATORS[allocator].items()) or "(none set)"


def run_child(args):
    """One process: every (threads, size, workload) under one allocator; rows to args.child."""
    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
    import torch

    from benchmarks import harness, suite

    allocator = args.allocators[0]
    device = args.device
    if device == "cuda":
        # fp32 means fp32 (as in the tests); cuDNN picks its fastest algorithm per shape.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = True
    backends = args.backends or suite.default_backends(device)
    env = harness.environment(device)
    env["allocator_env"] = allocator_env_str(allocator)
    print(f"[{allocator}] {env['device_name']}, torch {env['torch_version']}, "
          f"load {env['loadavg_1m']}, backends {env['dasp_backends']}", flush=True)
    rows = []
    stream = [w for w in args.workload_list if w.startswith("stream/")]
    others = [w for w in args.workload_list if not w.startswith("stream/")]

    def log(line):
        print(f"[{allocator}]" + line, flush=True)

    for threads in args.threads:
        torch.set_num_threads(threads)
        for w in stream:
            case = suite.make_case(w, args.shapes[0], device, stream_mb=args.stream_mb)
            if case.inputs:  # the copy and triad buffers (stream/fma works in registers)
                case.size = f"{args.stream_mb}MB"
            rows += suite.run_case(case, threads=threads, backends=backends,
                                   timing=timing_kwargs(args), log=log)
            del case
        for shape in args.shapes:
            for w in others:
                case = suite.make_case(w, shape, device)
                rows += suite.run_case(case, threads=threads, backends=backends,
                                       providers=args.providers, timing=timing_kwargs(args), log=log)
                del case
    command = "python -m benchmarks.bench_cpu " + " ".join(args.argv)
    out = []
    for r in rows:
        r.update(run_id=args.run_id, device=env["device"], allocator=allocator,
                 timestamp=env["timestamp"])
        full = {k: r.get(k, "") for k in COLUMNS}
        full.update({k: v for k, v in env.items() if k not in full})
        full["command"] = command.strip()
        out.append(full)
    with open(args.child, "w") as f:
        json.dump(out, f)
    return 0


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    args.argv = [a for a in argv]
    if args.child:
        # The child's command line is the parent's plus --child/--run-id/--allocators.
        args.argv = json.loads(os.environ.get("DASP_BENCH_ARGV", "[]"))
        return run_child(args)

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("GPU mode skipped: torch.cuda.is_available() is False (no CUDA device visible to "
              f"torch {torch.__version__}). Run without --device cuda for the CPU benchmark.")
        return 0
    allocators = args.allocators if args.device == "cpu" else ["cuda-caching"]
    run_id = datetime.datetime.now().strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"
    rows, failed = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for alloc in allocators:
            out = os.path.join(tmp, f"{alloc}.json")
            cmd = [sys.executable, "-m", "benchmarks.bench_cpu", *argv, "--child", out,
                   "--run-id", run_id, "--allocators"]
            cmd += [alloc] if alloc in ALLOCATORS else ["default"]
            env = child_env(alloc if alloc in ALLOCATORS else "none")
            env["DASP_BENCH_ARGV"] = json.dumps(argv)
            print(f"== allocator {alloc}: {allocator_env_str(alloc) or 'CUDA caching allocator'}",
                  flush=True)
            rc = subprocess.run(cmd, env=env).returncode
            if rc != 0 or not os.path.exists(out):
                failed.append(f"{alloc} (exit code {rc})")
                continue
            with open(out) as f:
                part = json.load(f)
            if alloc not in ALLOCATORS:
                for r in part:
                    r["allocator"], r["allocator_env"] = alloc, ""
            rows += part

    from benchmarks import report

    md = report.markdown(rows)
    print(md)
    if not args.no_save and rows:
        from benchmarks import harness

        name = "cpu" if args.device == "cpu" else "cuda"
        csv_path = os.path.join(args.results_dir, f"{name}.csv")
        harness.append_csv(csv_path, rows)
        md_path = os.path.join(args.results_dir, "latest.md" if name == "cpu" else "latest_cuda.md")
        with open(md_path, "w") as f:
            f.write(md)
        print(f"appended {len(rows)} rows to {csv_path}; wrote {md_path}")
    if failed:
        print("benchmark processes failed: " + ", ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
