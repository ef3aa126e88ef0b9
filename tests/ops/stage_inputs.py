"""Inputs of the DASP stage and path tests (tests/ops/test_dasp_stage.py,
test_dasp_spatial_path.py): weights, every input layout, the float64-reference comparison."""
import math

import pytest
import torch

from dasp_kernels import reference


def stage_params(cin, cout, k, dtype=torch.float32):
    return [torch.randn(cin, 1, k, k, dtype=dtype) / k, torch.rand(cin, dtype=dtype) + 0.5,
            0.1 * torch.randn(cin, dtype=dtype), torch.randn(cout, cin, 1, 1, dtype=dtype) / cin ** 0.5,
            torch.rand(cout, dtype=dtype) + 0.5, 0.1 * torch.randn(cout, dtype=dtype),
            torch.randn(cout, cin, 1, 1, dtype=dtype) / cin ** 0.5]


def make_x(n, c, h, w, layout, dtype=torch.float32):
    if layout == "nchw":
        return torch.randn(n, c, h, w, dtype=dtype)
    if layout == "cl":
        return torch.randn(n, c, h, w, dtype=dtype).contiguous(memory_format=torch.channels_last)
    if layout == "sliced":  # no unit stride anywhere
        return torch.randn(n, 2 * c, h + 2, 2 * w + 1, dtype=dtype)[:, ::2, 1:-1, 1::2]
    if layout == "cl_sliced":  # channels contiguous, pixels 2 * C apart
        big = torch.randn(n, c, h, 2 * w, dtype=dtype).contiguous(memory_format=torch.channels_last)
        return big[..., ::2]
    raise ValueError(layout)


def assert_close_to_ref(got, x, params):
    ref = reference.dasp_stage(x.double(), *[p.double() for p in params])
    assert got.shape == ref.shape
    assert got.dtype == x.dtype
    if x.dtype == torch.float64:
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)
    else:
        atol = 1e-6 * math.sqrt(x.shape[1]) * max(1.0, ref.abs().max().item())
        torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=atol)


def expected_format(x):
    from torch._prims_common import suggest_memory_format

    return suggest_memory_format(x)


def path_params(chans=(3, 64, 64, 128), ks=(7, 3, 3), dtype=torch.float32):
    return [t for cin, cout, k in zip(chans[:-1], chans[1:], ks)
            for t in stage_params(cin, cout, k, dtype)]


def both_raise(call_op, call_wrapper, match):
    with pytest.raises(RuntimeError, match=match):
        call_op()
    with pytest.raises(ValueError, match=match):
        call_wrapper()
