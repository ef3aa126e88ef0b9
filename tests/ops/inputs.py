"""Inputs of the tests in tests/ops/: every input layout, and an op's tensors from the shared case
builder (dasp_kernels.cases.make_inputs, the one `dasp-kernels check` uses) in any dtype, layout
and device; the DASP stage's float64-reference comparison."""
import math

import pytest
import torch

from dasp_kernels import cases, reference

CL = torch.channels_last
# Layout names: the long ones, and the short ones the stage tests use.
LAYOUT_NAMES = {"nchw": "contiguous", "cl": "channels_last", "cl_sliced": "channels_last_sliced"}


def place(x, layout):
    """A copy of x as "contiguous", "channels_last", "sliced" (a view with no unit stride, cut out
    of a larger NCHW buffer) or "channels_last_sliced" (channels contiguous, pixels further apart,
    rows and channels offset)."""
    layout = LAYOUT_NAMES.get(layout, layout)
    if layout == "contiguous":
        return x.contiguous()
    if layout == "channels_last":
        return x.contiguous(memory_format=CL)
    n, c, h, w = x.shape
    if layout == "sliced":
        big = torch.zeros(n, c + 2, h + 3, 2 * w + 1, dtype=x.dtype, device=x.device)
        view = big[:, 1:c + 1, 2:h + 2, 1::2]
    elif layout == "channels_last_sliced":
        big = torch.zeros(n, c, h + 1, 2 * w + 2, dtype=x.dtype, device=x.device)
        view = big.contiguous(memory_format=CL)[:, :, 1:, 1:-1:2]
    else:
        raise ValueError(layout)
    view.copy_(x)
    if n and min(c, h, w) > 1:
        assert not view.is_contiguous() and not view.is_contiguous(memory_format=CL)
    return view


def make_x(n, c, h, w, layout, dtype=torch.float32, device="cpu", gen=torch.randn):
    """A random input of shape (n, c, h, w) in `layout` (see place)."""
    return place(gen(n, c, h, w).to(device=device, dtype=dtype), layout)


def _generator():
    # Seeded from torch's global generator (which conftest seeds per test): every call differs,
    # every run is the same.
    return torch.Generator().manual_seed(int(torch.randint(0, 2 ** 62, ())))


def case_inputs(case, layout="contiguous", dtype=torch.float32, device="cpu"):
    """(x, [the op's other tensors]) of a dasp_kernels.cases case, in dtype on device, x in
    `layout`."""
    x, params = cases.make_inputs(case, _generator())
    return place(x.to(device, dtype), layout), [p.to(device, dtype) for p in params]


def dw_inputs(shape, k, layout="contiguous", dtype=torch.float32, device="cpu"):
    """x, [weight (C, 1, K, K), scale, shift] of dwconv_bn_act on an (N, C, H, W) input."""
    return case_inputs(cases.dw_case(*shape, k), layout, dtype, device)


def ppm_inputs(shape, layout="contiguous", dtype=torch.float32, device="cpu"):
    """[x, weight, residual] of ppm_add; shape is (N, Cin, Cout, H, W)."""
    n, cin, cout, h, w = shape
    x, params = case_inputs(cases.ppm_case(n, cin, cout, h, w), layout, dtype, device)
    return [x, *params]


def stage_inputs(shape, k, layout="contiguous", dtype=torch.float32, device="cpu"):
    """[x, the seven stage tensors] of dasp_stage; shape is (N, Cin, Cout, H, W)."""
    n, cin, cout, h, w = shape
    x, params = case_inputs(cases.stage_case(n, cin, cout, h, w, k), layout, dtype, device)
    return [x, *params]


def stage_params(cin, cout, k, dtype=torch.float32):
    return [torch.randn(cin, 1, k, k, dtype=dtype) / k, torch.rand(cin, dtype=dtype) + 0.5,
            0.1 * torch.randn(cin, dtype=dtype), torch.randn(cout, cin, 1, 1, dtype=dtype) / cin ** 0.5,
            torch.rand(cout, dtype=dtype) + 0.5, 0.1 * torch.randn(cout, dtype=dtype),
            torch.randn(cout, cin, 1, 1, dtype=dtype) / cin ** 0.5]


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
