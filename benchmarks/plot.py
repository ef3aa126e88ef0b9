"""PNG plots from the benchmark CSV (by default the latest run in it).

    python -m benchmarks.plot [--csv runs/bench/cpu.csv] [--run-id ID] [--out DIR]

--csv defaults to where benchmarks.bench_cpu writes by default; --out to the CSV's folder.

Per (size, threads): <device>_latency_<size>_t<threads>.png, median latency of every workload under
every provider with 20%-80% whiskers, one panel per allocator; <device>_paths_<size>_t<threads>.png,
the original and the DASP spatial paths side by side; and <device>_bandwidth_<size>_t<threads>.png,
the fused ops' effective GB/s against the copy ceiling of the same run.
"""
import argparse
import math
import os
import sys

from benchmarks.bench_cpu import RESULTS
from benchmarks.harness import read_csv
from benchmarks.report import num, provider_order


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def latest_run(rows):
    """Runs are appended, so the last row belongs to the latest one."""
    return rows[-1].get("run_id") if rows else None


def _ok(r):
    return r.get("status") == "ok" and not math.isnan(num(r.get("median_ms")))


def _grouped_bars(ax, workloads, provs, value, lo=None, hi=None, log=True):
    """Horizontal bars: one group per workload, one bar per provider."""
    import numpy as np

    n = max(len(provs), 1)
    height = 0.8 / n
    y = np.arange(len(workloads))
    for i, p in enumerate(provs):
        vals = [value(w, p) for w in workloads]
        xerr = None
        if lo and hi:
            xerr = [[max(v - lo(w, p), 0) if not math.isnan(v) else 0 for w, v in zip(workloads, vals)],
                    [max(hi(w, p) - v, 0) if not math.isnan(v) else 0 for w, v in zip(workloads, vals)]]
        vals = [0 if math.isnan(v) else v for v in vals]
        ax.barh(y + (i - (n - 1) / 2) * height, vals, height, xerr=xerr, label=p,
                error_kw={"elinewidth": 0.8, "capsize": 1.5})
    ax.set_yticks(y, workloads)
    ax.invert_yaxis()
    if log:
        ax.set_xscale("log")
    ax.grid(axis="x", alpha=0.3, which="both")


def _lookup(rows):
    idx = {}
    for r in rows:
        if _ok(r):
            idx[(r["allocator"], r["workload"], r["provider"])] = r
    return idx


def plot_latency(rows, workloads, title, path):
    plt = _plt()
    allocs = sorted({r["allocator"] for r in rows})
    provs = [p for p in provider_order(rows) if any(_ok(r) and r["provider"] == p for r in rows)]
    idx = _lookup(rows)

    def get(alloc, field):
        return lambda w, p: num(idx.get((alloc, w, p), {}).get(field))

    fig, axes = plt.subplots(1, len(allocs), figsize=(6.5 * len(allocs), 1.8 + 0.11 * len(provs)
                                                      * len(workloads)), squeeze=False, sharex=True)
    for ax, alloc in zip(axes[0], allocs):
        _grouped_bars(ax, workloads, provs, get(alloc, "median_ms"), get(alloc, "p20_ms"),
                      get(alloc, "p80_ms"))
        ax.set_title(f"allocator: {alloc}")
        ax.set_xlabel("median latency, ms (log; whiskers: 20%-80%)")
    _finish(fig, axes, title, path)


def _finish(fig, axes, title, path):
    """Provider legend below the panels (it would hide bars inside them), title above."""
    plt = _plt()
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 8), fontsize=8)
    fig.suptitle(title)
    height = fig.get_size_inches()[1]
    fig.tight_layout(rect=(0, 0.5 / height, 1, 1 - 0.35 / height))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_bandwidth(rows, workloads, title, path):
    plt = _plt()
    allocs = sorted({r["allocator"] for r in rows})
    provs = [p for p in provider_order(rows) if any(_ok(r) and r["provider"] == p for r in rows)]
    idx = _lookup(rows)
    fig, axes = plt.subplots(1, len(allocs), figsize=(6.5 * len(allocs), 1.8 + 0.11 * len(provs)
                                                      * len(workloads)), squeeze=False, sharex=True)
    for ax, alloc in zip(axes[0], allocs):
        _grouped_bars(ax, workloads, provs,
                      lambda w, p: num(idx.get((alloc, w, p), {}).get("gbps")), log=False)
        copy = idx.get((alloc, "stream/copy", "torch"))
        if copy:
            gbps = num(copy["gbps"])
            ax.axvline(gbps, color="k", ls="--", lw=1)
            ax.annotate(f"copy {gbps:.1f} GB/s", (gbps, 1.0), xycoords=("data", "axes fraction"),
                        xytext=(2, -10), textcoords="offset points", fontsize=7)
        ax.set_title(f"allocator: {alloc}")
        ax.set_xlabel("effective GB/s (inputs + output + weights, once)")
    _finish(fig, axes, title, path)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.plot", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--csv", default=os.path.join(RESULTS, "cpu.csv"))
    p.add_argument("--run-id", help="default: the latest run in the CSV")
    p.add_argument("--out", help="folder for the PNGs (default: the CSV's folder)")
    args = p.parse_args(argv)
    rows = read_csv(args.csv)
    if not rows:
        print(f"no rows in {args.csv}; run python -m benchmarks.bench_cpu first", file=sys.stderr)
        return 1
    run = args.run_id or latest_run(rows)
    rows = [r for r in rows if r.get("run_id") == run]
    if not rows:
        print(f"no rows of run {run!r} in {args.csv}", file=sys.stderr)
        return 1
    out = args.out or os.path.dirname(os.path.abspath(args.csv))
    os.makedirs(out, exist_ok=True)
    dev = rows[0].get("device", "cpu")
    where = f"{rows[0].get('device_name', '')}, commit {rows[0].get('git_commit', '')}"
    stream = [r for r in rows if r["kind"] == "stream"]
    written = []
    for size in dict.fromkeys(r["size"] for r in rows if r["kind"] != "stream"):
        for threads in dict.fromkeys(r["threads"] for r in rows if r["size"] == size):
            rs = [r for r in rows if r["size"] == size and r["threads"] == threads]
            tag = f"{size}_t{threads}"
            what = f"{size}, {threads} thread(s), {where}"
            workloads = list(dict.fromkeys(r["workload"] for r in rs))
            path = os.path.join(out, f"{dev}_latency_{tag}.png")
            plot_latency(rs, workloads, f"DASP benchmark: {what}", path)
            written.append(path)
            paths = [w for w in ("SpatialPath", "DASP", "dasp_spatial_path") if w in workloads]
            if paths:
                path = os.path.join(out, f"{dev}_paths_{tag}.png")
                plot_latency(rs, paths, f"Original vs DASP spatial path: {what}", path)
                written.append(path)
            ops = [w for w in workloads if "/" in w and not w.startswith(("BiSeNet", "DASPStage"))]
            if ops:
                st = [r for r in stream if r["threads"] == threads]
                path = os.path.join(out, f"{dev}_bandwidth_{tag}.png")
                plot_bandwidth(rs + st, ops, f"Fused ops, effective bandwidth: {what}", path)
                written.append(path)
    for path in written:
        print("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
