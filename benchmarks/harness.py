"""What every benchmark here shares: the timing helper (dasp_kernels.timing, which `dasp-kernels
check --bench` uses too), the correctness check, the environment that goes into every row, and the
CSV file.
"""
import csv
import datetime
import functools
import importlib.metadata
import os
import platform
import subprocess

import torch

from dasp_kernels.timing import ORDERS, Timing, measure, measure_interleaved, quantile  # noqa: F401

QUANTILES = (0.5, 0.2, 0.8)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

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
