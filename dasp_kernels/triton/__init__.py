"""Triton backend: importing registers torch.ops.dasp_kernels.<op>_triton and their backward ops.

On a GPU the kernels compile for it; on the CPU they run only under TRITON_INTERPRET=1, which must
be set before triton is imported.
"""
from dasp_kernels.triton import dasp_stage, dwconv_bn_act, inverted_residual, ppm_add  # noqa: F401
from dasp_kernels.triton._common import INTERPRET  # noqa: F401
