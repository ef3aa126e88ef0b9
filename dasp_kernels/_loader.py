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


def built_with_cuda() -> bool:
    """True when the extension holds CUDA kernels (whether or not a GPU is present)."""
    if _C is None:
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key("dasp_kernels::dwconv_bn_relu", "CUDA")
