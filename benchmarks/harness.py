"""What every benchmark here shares: one timing helper, the correctness check, the environment that
goes into every row, and the CSV file.

Timing: warm-up calls, then the median and the 20% / 80% quantiles of per-call times. On the CPU each
call is timed with time.perf_counter (and its minor page faults are counted: on Linux they are the
price of a fresh large allocation); on a GPU with CUDA events, the L2 cache flushed before each call.
Several callables can be timed interleaved (one call of each per round, in a new order each round)
so that a change of load on a shared machine hits every provider alike.
"""
import csv
import datetime
import functools
import importlib.metadata
import os
import platform
import random
import resource
import subprocess
import time
from dataclasses import dataclass, field

import torch

QUANTILES = (0.5, 0.2, 0.8)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class Timing:
    median_ms: float
    p20_ms: float
    p80_ms: float
    reps: int
    faults_per_call: float = float("nan")  # minor page faults per call (CPU only)
    samples_ms: list = field(default_factory=list, repr=False)


def quantile(values, q):
    """Linear-interpolated quantile (numpy's default) of a non-empty sequence."""
    v = sorted(values)
    pos = (len(v) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def _timing(samples, faults):
    return Timing(quantile(samples, 0.5), quantile(samples, 0.2), quantile(samples, 0.8),
                  len(samples), sum(faults) / len(faults) if faults else float("nan"), samples)


def _minflt():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


class _L2Flush:
    """Zeroes a buffer larger than any current GPU's L2 so each timed call starts cold."""

    def __init__(self, device):
        self.buf = torch.empty(256 * 2**20, dtype=torch.int8, device=device)

    def __call__(self):
        self.buf.zero_()


ORDERS = ("shuffled", "fixed")


def measure_interleaved(fns, *, device="cpu", warmup=2, min_reps=10, max_reps=200,
                        min_time_s=1.0, gap_s=0.001, order="shuffled", seed=0):
    """Time each callable of `fns` ({name: fn}) one call per round, round after round.

    Stops after `min_reps` rounds once every callable has run for `min_time_s` in total, or after
    `max_reps` rounds. On the CPU an untimed pause of `gap_s` before each call lets the worker
    threads of the previous callable (OpenMP, ONNX Runtime) stop spinning, so they do not compete
    with the next. order="shuffled" runs each round in a new order (random, from `seed`): what ran
    just before a call (threads left spinning, or asleep so that the call must wake them, or data
    that evicted its input from the cache) changes its time, and in a fixed order every callable
    would always follow the same neighbour. order="fixed" keeps the order of `fns`.
    Returns {name: Timing}.
    """
    if order not in ORDERS:
        raise ValueError(f"measure_interleaved: expected order {' or '.join(map(repr, ORDERS))}, "
                         f"got {order!r}")
    rng = random.Random(seed)
    names = list(fns)
    device = torch.device(device)
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    flush = _L2Flush(device) if cuda else None
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync()
    samples = {k: [] for k in fns}
    faults = {k: [] for k in fns}
    spent = {k: 0.0 for k in fns}
    for r in range(max_reps):
        if r >= min_reps and all(s >= min_time_s for s in spent.values()):
            break
        if order == "shuffled":
            rng.shuffle(names)
        if cuda:
            events = {}
            for k in names:
                fn = fns[k]
                flush()
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                events[k] = (start, end)
            torch.cuda.synchronize()
            for k, (start, end) in events.items():
                ms = start.elapsed_time(end)
                samples[k].append(ms)
                spent[k] += ms / 1e3
        else:
            for k in names:
                fn = fns[k]
                if gap_s > 0 and len(fns) > 1:
                    time.sleep(gap_s)
                f0 = _minflt()
                t0 = time.perf_counter()
                fn()
                t1 = time.perf_counter()
                faults[k].append(_minflt() - f0)
                samples[k].append((t1 - t0) * 1e3)
                spent[k] += t1 - t0
    return {k: _timing(samples[k], faults[k]) for k in fns}


def measure(fn, **timing):
    """Median and 20% / 80% quantiles (ms) of `fn()` after warm-up calls; `timing`: the keywords
    of measure_interleaved (device, warmup, min_reps, ...)."""
    return measure_interleaved({"fn": fn}, **timing)["fn"]


# ---- correctness -------------------------------------------------------------------------------

RTOL = 1e-3


def check_output(out, ref, rtol=RTOL):
    """(ok, max_abs_diff): `out` matches `ref` elementwise within rtol * (|ref| + max|ref|).

    The max|ref| term makes the bound scale-aware, so reassociation in folded BN, other conv
    algorithms or other layouts pass, while a result wrong by a fraction of its scale does not.
    """
    out = torch.as_tensor(out).to(device="cpu", dtype=torch.float64)
    ref = ref.to(device="cpu", dtype=torch.float64)
    if out.shape != ref.shape:
        return False, float("inf")
    if not torch.isfinite(out).all():
        return False, float("nan")
    diff = (out - ref).abs()
    scale = ref.abs().max().item() if ref.numel() else 0.0
    ok = bool((diff <= rtol * (ref.abs() + scale) + 1e-12).all())
    return ok, diff.max().item() if diff.numel() else 0.0


# ---- environment -------------------------------------------------------------------------------

def _version(pkg):
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


@functools.lru_cache(None)
def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.lru_cache(None)
def git_commit():
    try:
        out = subprocess.run(["git", "-C", REPO, "describe", "--always", "--dirty", "--abbrev=12"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment(device="cpu"):
    """Fields that go into every row: what ran, where, with which libraries."""
    import dasp_kernels
    from dasp_kernels import _loader

    dev = torch.device(device)
    env = {
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": dev.type,
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_model(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "torch_version": torch.__version__,
        "triton_version": _version("triton"),
        "onnxruntime_version": _version("onnxruntime"),
        "numpy_version": _version("numpy"),
        "dasp_kernels_version": dasp_kernels.__version__,
        "dasp_backends": " ".join(dasp_kernels.available_backends()),
        "dasp_cpu_isa": _loader.cpu_isa(),
        "git_commit": git_commit(),
    }
    if dev.type == "cuda":
        env["cuda_version"] = torch.version.cuda
    return env


# ---- result files ------------------------------------------------------------------------------

def read_csv(path):
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def append_csv(path, rows):
    """Appends rows (dicts); when they bring new columns the file is rewritten with the union."""
    if not rows:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    old_fields = []
    if os.path.exists(path):
        with open(path, newline="") as f:
            old_fields = next(csv.reader(f), [])
    fields = list(old_fields)
    for row in rows:
        fields += [k for k in row if k not in fields]
    if old_fields and fields == old_fields:
        with open(path, "a", newline="") as f:
            csv.DictWriter(f, fields, restval="").writerows(rows)
        return
    old = read_csv(path) if old_fields else []
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fields, restval="")
        w.writeheader()
        w.writerows(old)
        w.writerows(rows)
    os.replace(tmp, path)
