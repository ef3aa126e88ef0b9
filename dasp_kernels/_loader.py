"""Loads the compiled extension if it is there; never raises at import time."""
import importlib

import torch

_C = None
load_error = None
try:
    # Registers torch.ops.dasp_kernels.*; importlib gives a plain "No module named" when unbuilt.
    _C = importlib.import_module("dasp_kernels._C")
except Exception as e:  # ImportError, or an undefined symbol after a torch upgrade
    load_error = f"{type(e).__name__}: {e}"


def has_cpu_extension() -> bool:
    return _C is not None


# Asked once here: dynamo cannot trace the dispatcher query inside a compiled function.
_BUILT_WITH_CUDA = _C is not None and torch._C._dispatch_has_kernel_for_dispatch_key(
    "dasp_kernels::dwconv_bn_act", "CUDA")


def cpu_isa():
    """The instruction set of the CPU kernels this process runs: "avx512", "avx2" or "default"
    (None without the extension). It follows ATen's own choice, so ATEN_CPU_CAPABILITY=avx2 or
    =default selects the narrower builds."""
    return _C.cpu_isa() if _C is not None else None


def built_with_cuda() -> bool:
    """True when the extension holds CUDA kernels (whether or not a GPU is present)."""
    return _BUILT_WITH_CUDA
