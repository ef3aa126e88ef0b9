"""Fused kernels for the Depthwise Attention Spatial Path (DASP) of BiSeNet.

    import dasp_kernels
    y = dasp_kernels.dwconv_bn_act(x, w, scale, shift, stride=2, padding=3, act="relu")
    z = dasp_kernels.ppm_add(x, w_pw, residual)
    dasp_kernels.available_backends()   # e.g. ['reference', 'cpu']
    dasp_kernels.cpu_isa()              # the CPU kernels' build: 'avx512', 'avx2' or 'default'
    with dasp_kernels.cpu_arena():      # large CPU tensors reuse freed memory: no page faults
        y = model(x)

Importing never fails for want of the compiled extension or of a GPU: `backend_status()` says what
is missing and why.
"""
from dasp_kernels import ops as _ops  # loads _C and registers fakes and autograd, if it loads
from dasp_kernels import nn
from dasp_kernels._backends import available_backends, backend_status
from dasp_kernels._loader import cpu_isa
from dasp_kernels.arena import cpu_arena, cpu_arena_release, cpu_arena_stats
from dasp_kernels.functional import (dasp_spatial_path, dasp_stage, dwconv_bn_act, dwconv_bn_relu,
                                     inverted_residual, ppm_add)
from dasp_kernels.nn import fuse, fuse_report
from dasp_kernels.reference import fold_bn

__version__ = "0.1.0"
__all__ = ["available_backends", "backend_status", "cpu_arena", "cpu_arena_release",
           "cpu_arena_stats", "cpu_isa", "dasp_spatial_path", "dasp_stage", "dwconv_bn_act",
           "dwconv_bn_relu", "fold_bn", "inverted_residual", "fuse", "fuse_report", "nn", "ppm_add"]
