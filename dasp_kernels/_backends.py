"""Which backends this install can run, and which one "auto" picks."""
import importlib.util
import os

import torch

from dasp_kernels import _loader

BACKENDS = ("reference", "cpu", "cuda", "triton")
# dtypes each compiled backend accepts; "reference" takes whatever torch does.
DTYPES = {
    # bfloat16: a real kernel where csrc/cpu has one, else computed in float32 and rounded
    # (csrc/cpu/bf16_via_float.h); float16 refused (no AVX512_FP16 here: it would be float32 work).
    "cpu": (torch.float32, torch.float64, torch.bfloat16),
    "cuda": (torch.float32, torch.float64, torch.float16, torch.bfloat16),
    "triton": (torch.float32, torch.float64, torch.float16, torch.bfloat16),
}


def triton_interpret():
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None


def _triton_installed():
    return _TRITON_INSTALLED


def _why_not(backend):
    """None if `backend` can run on this install and machine now, else the reason it cannot."""
    if backend == "reference":
        return None
    if not _loader.has_cpu_extension() and backend in ("cpu", "cuda"):
        return f"the C++ extension dasp_kernels._C did not load ({_loader.load_error})"
    if backend == "cpu":
        return None
    if backend == "cuda":
        if not _loader.built_with_cuda():
            return "the extension was built without CUDA sources (no toolkit at build time)"
        if not torch.cuda.is_available():
            return "no CUDA device is visible (torch.cuda.is_available() is False)"
        return None
    if not _triton_installed():
        return "triton is not installed"
    if not (torch.cuda.is_available() or triton_interpret()):
        return "no CUDA device, and TRITON_INTERPRET=1 is not set for the CPU interpreter"
    return None


def backend_status():
    """{backend: None if usable, else the reason it is not} for this install and machine."""
    return {b: _why_not(b) for b in BACKENDS}


def available_backends():
    """Backends this install can run now, best first per device: e.g. ['reference', 'cpu']."""
    return [b for b, why in backend_status().items() if why is None]


def pick(backend, x, op):
    """Resolve `backend` for input x, raising a ValueError that says why one cannot be used."""
    # Only the backends this call could use are asked about (each call pays for what it asks).
    if backend == "auto":
        order = ("cuda", "triton") if x.device.type == "cuda" else ("cpu",)
        for b in order:
            if _why_not(b) is None:
                return b
        return "reference"
    if backend not in BACKENDS:
        raise ValueError(f"{op}: expected backend 'auto', 'reference', 'cpu', 'cuda' or 'triton', "
                         f"got {backend!r}")
    why = _why_not(backend)
    if why is not None:
        raise ValueError(f"{op}: backend {backend!r} is not available: {why}")
    if backend == "cpu" and x.device.type != "cpu":
        raise ValueError(f"{op}: backend 'cpu' expects tensors on cpu, got {x.device}")
    if backend == "cuda" and x.device.type != "cuda":
        raise ValueError(f"{op}: backend 'cuda' expects tensors on a cuda device, got {x.device}")
    if backend == "triton" and x.device.type == "cpu" and not triton_interpret():
        raise ValueError(f"{op}: backend 'triton' got cpu tensors; set TRITON_INTERPRET=1 to run "
                         "Triton kernels on the CPU interpreter")
    if backend in DTYPES and x.dtype not in DTYPES[backend]:
        names = ", ".join(str(d).removeprefix("torch.") for d in DTYPES[backend])
        raise ValueError(f"{op}: backend {backend!r} supports {names}, got "
                         f"{str(x.dtype).removeprefix('torch.')}")
    return backend
