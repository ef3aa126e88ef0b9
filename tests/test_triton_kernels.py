"""Triton backend against dasp_kernels.reference: values, gradients, registration, errors.

Runs on a GPU, or on the CPU under TRITON_INTERPRET=1 (set before Python starts: triton reads it
when the kernels are decorated). The interpreter pays per executed op, so shapes stay small and
every launch is one or two programs.
"""
import os
import re

import pytest
import torch

pytest.importorskip("triton")

if not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"):
    pytest.skip("no CUDA device and TRITON_INTERPRET=1 is not set: the Triton kernels cannot run",
                allow_module_level=True)

import dasp_kernels  # noqa: E402
from dasp_kernels import _checks, reference  # noqa: E402
from dasp_kernels.triton import _common  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
OPS = torch.ops.dasp_kernels
TOL = {torch.float32: 1e-5, torch.float64: 1e-12, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def close(actual, expected, tol, what=""):
    """Elementwise |a - e| <= tol * (|e| + max|e|): relative, and not fooled by values near 0."""
    assert actual.shape == expected.shape, what
    actual, expected = actual.double(), expected.double()
    scale = expected.abs().max().item() if expected.numel() else 0.0
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol * max(scale, 1e-30),
                               equal_nan=True, msg=lambda m: f"{what}: {m}")


def layout(t, kind):
    """t as a contiguous, channels_last, or strided (sliced out of a larger buffer) tensor."""
    if kind == "contiguous":
        return t.contiguous()
    if kind == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    n, c, h, w = t.shape
    big = torch.zeros(n, 2 * c, h + 1, 2 * w, dtype=t.dtype, device=t.device)
    view = big[:, 1::2, 1:, ::2]
    view.copy_(t)
    return view


def leaves(*ts):
    return [t.detach().clone().requires_grad_() for t in ts]


def bn_params(c, dtype):
    scale = (torch.rand(c, dtype=torch.float64) + 0.5).to(dtype=dtype, device=DEV)
    shift = (torch.randn(c, dtype=torch.float64) * 0.2).to(dtype=dtype, device=DEV)
    return scale, shift


def randn(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=torch.float64).to(dtype=dtype, device=DEV)


def check_against_reference(ours, ref, inputs, dtype, grads=True, what=""):
    """Forward and, with grads, every input gradient of ours vs autograd through ref (float64)."""
    mine = leaves(*inputs)
    theirs = [t.detach().double().requires_grad_() for t in inputs]
    y = ours(*mine)
    y_ref = ref(*theirs)
    assert y.dtype == dtype
    close(y, y_ref, TOL[dtype], f"{what} forward")
    if not grads:
        return y
    g = torch.randn_like(y_ref)
    y.backward(g.to(dtype))
    y_ref.backward(g)
    for i, (a, b) in enumerate(zip(mine, theirs)):
        assert a.grad is not None and a.grad.dtype == dtype, f"{what} grad {i}"
        close(a.grad, b.grad, TOL[dtype], f"{what} grad {i}")
    return y


# ---------------------------------------------------------------- dwconv_bn_act, the DASP form

def dw_relu(x, weight, scale, shift, stride, padding, relu):
    """dwconv_bn_act_triton as the DASP stages call it: symmetric padding, ReLU or none."""
    return OPS.dwconv_bn_act_triton(x, weight, scale, shift, stride, [padding] * 4, 1,
                                    "relu" if relu else "none", 0.0, 0.0)


# (C, H, W, K, stride, padding, memory layout): every K in 1..7, even K too, every padding class.
DW_CASES = [
    (3, 9, 11, 1, 1, 0, "contiguous"),
    (16, 9, 11, 2, 2, 1, "channels_last"),
    (3, 9, 11, 3, 1, 1, "strided"),
    (1, 7, 5, 3, 2, 0, "contiguous"),
    (16, 9, 11, 4, 1, 3, "contiguous"),
    (3, 8, 6, 5, 2, 2, "channels_last"),
    (16, 9, 11, 6, 2, 5, "strided"),
    (3, 9, 11, 7, 2, 3, "contiguous"),
    (16, 7, 9, 7, 1, 6, "channels_last"),
    (1, 4, 3, 7, 1, 2, "contiguous"),  # a map smaller than the kernel, only reachable by padding
]


def dw_inputs(c, h, w, k, kind, dtype=torch.float32, n=2):
    x = layout(randn(n, c, h, w, dtype=dtype), kind)
    weight = randn(c, 1, k, k, dtype=dtype) / k
    return (x, weight, *bn_params(c, dtype))


@pytest.mark.parametrize("c,h,w,k,stride,padding,kind", DW_CASES)
def test_dwconv_matches_reference(c, h, w, k, stride, padding, kind):
    inputs = dw_inputs(c, h, w, k, kind)
    y = check_against_reference(
        lambda *a: dasp_kernels.dwconv_bn_relu(*a, stride=stride, padding=padding,
                                               backend="triton"),
        lambda *a: reference.dwconv_bn_relu(*a, stride, padding, True),
        inputs, torch.float32, what=f"dwconv K={k} s={stride} p={padding} {kind}")
    cl = kind == "channels_last" and c > 1
    assert y.is_contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)


def test_dwconv_without_relu_and_odd_weight_strides():
    x, weight, scale, shift = dw_inputs(3, 9, 11, 5, "contiguous")
    weight = weight.transpose(2, 3)  # a non-contiguous [C, 1, K, K]
    check_against_reference(
        lambda *a: dw_relu(*a, 2, 2, False),
        lambda *a: reference.dwconv_bn_relu(*a, 2, 2, False),
        (x, weight, scale, shift), torch.float32, what="no relu")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_dwconv_dtypes(dtype):
    inputs = dw_inputs(16, 9, 11, 3, "channels_last", dtype)
    check_against_reference(lambda *a: dw_relu(*a, 2, 1, True),
                            lambda *a: reference.dwconv_bn_relu(*a, 2, 1, True),
                            inputs, dtype, what=str(dtype))


def test_dwconv_gradcheck_float64():
    x, weight, scale, shift = leaves(*dw_inputs(2, 5, 4, 3, "contiguous", torch.float64, n=1))
    assert torch.autograd.gradcheck(lambda *a: dw_relu(*a, 2, 1, True),
                                    (x, weight, scale, shift), fast_mode=True)
    x, weight, scale, shift = leaves(*dw_inputs(1, 4, 5, 2, "contiguous", torch.float64, n=1))
    assert torch.autograd.gradcheck(lambda *a: dw_relu(*a, 1, 1, False),
                                    (x, weight, scale, shift), fast_mode=True)


# ---------------------------------------------------------------- dwconv_bn_act

# alpha, beta per activation: hardtanh's min and max, leaky_relu's slope; the others ignore them.
ACT_ARGS = {"hardtanh": (-0.5, 0.75), "leaky_relu": (0.1, 0.0)}
# (C, H, W, K, stride, dilation, padding [top, bottom, left, right], act, layout): every
# activation, K 1..9, dilation 1..3, four different sides, each layout. float64, so that no
# pre-activation is close enough to a kink for rounding to pick the other side.
DWA_CASES = [
    (3, 9, 11, 1, 2, 1, [0, 0, 0, 0], "none", "contiguous"),
    (16, 9, 11, 3, 1, 2, [2, 0, 1, 4], "relu", "channels_last"),
    (3, 10, 9, 5, 2, 1, [0, 3, 4, 1], "hardtanh", "strided"),
    (2, 12, 13, 7, 1, 1, [6, 0, 3, 2], "hardswish", "contiguous"),
    (16, 9, 10, 9, 2, 1, [8, 8, 4, 0], "silu", "channels_last"),
    (3, 11, 12, 3, 2, 3, [6, 5, 0, 3], "gelu", "strided"),
    (1, 8, 9, 4, 1, 2, [1, 2, 6, 0], "gelu_tanh", "contiguous"),
    (5, 16, 15, 9, 1, 2, [16, 3, 0, 9], "leaky_relu", "channels_last"),
    (2, 5, 4, 5, 1, 1, [4, 4, 4, 4], "gelu", "contiguous"),  # smaller than the kernel
]


def dwa_op(stride, padding, dilation, act, backend=None):
    alpha, beta = ACT_ARGS.get(act, (0.0, 0.0))
    if backend is not None:
        return lambda *a: dasp_kernels.dwconv_bn_act(*a, stride=stride, padding=padding,
                                                     dilation=dilation, act=act, alpha=alpha,
                                                     beta=beta, backend=backend)
    return lambda *a: OPS.dwconv_bn_act_triton(*a, stride, padding, dilation, act, alpha, beta)


def dwa_ref(stride, padding, dilation, act):
    alpha, beta = ACT_ARGS.get(act, (0.0, 0.0))
    return lambda *a: reference.dwconv_bn_act(*a, stride, padding, dilation, act, alpha, beta)


@pytest.mark.parametrize("c,h,w,k,stride,dilation,padding,act,kind", DWA_CASES)
def test_dwconv_act_matches_reference(c, h, w, k, stride, dilation, padding, act, kind):
    inputs = dw_inputs(c, h, w, k, kind, torch.float64)
    y = check_against_reference(
        dwa_op(stride, padding, dilation, act, backend="triton"),
        dwa_ref(stride, padding, dilation, act), inputs, torch.float64,
        what=f"dwconv_bn_act K={k} s={stride} d={dilation} p={padding} {act} {kind}")
    cl = kind == "channels_last" and c > 1
    assert y.is_contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)


@pytest.mark.parametrize("act", ["silu", "gelu", "gelu_tanh", "hardswish"])
def test_dwconv_act_float32(act):
    # The activations' float32 formulas; x * 3 reaches the tails of hardswish and the gelus.
    # Smooth in float32 where the kinks of hardswish (+-3) are rarely hit within rounding.
    x, weight, scale, shift = dw_inputs(6, 9, 10, 3, "channels_last")
    check_against_reference(dwa_op(2, [1, 0, 0, 1], 2, act), dwa_ref(2, [1, 0, 0, 1], 2, act),
                            (x * 3, weight, scale, shift), torch.float32, what=act)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_dwconv_act_half_dtypes(dtype):
    inputs = dw_inputs(16, 9, 11, 5, "channels_last", dtype)
    check_against_reference(dwa_op(1, [2, 1, 0, 3], 2, "gelu"), dwa_ref(1, [2, 1, 0, 3], 2, "gelu"),
                            inputs, dtype, what=str(dtype))


def test_dwconv_act_nan_and_inf_gradients_follow_autograd():
    # NaN propagates as in torch; relu's 0 and hardtanh's edges pass no gradient, even an inf one.
    x = randn(1, 2, 6, 7, dtype=torch.float64)
    x[0, 0, 2, 3] = float("nan")
    x[0, 1, 0, :3] = torch.tensor([-0.5, 0.75, 0.0], dtype=torch.float64)
    weight = torch.ones(2, 1, 1, 1, dtype=torch.float64, device=DEV)
    scale = torch.ones(2, dtype=torch.float64, device=DEV)
    shift = torch.zeros(2, dtype=torch.float64, device=DEV)
    for act in _checks.ACTIVATIONS:
        alpha, beta = ACT_ARGS.get(act, (0.0, 0.0))
        conf = (1, [0, 0, 0, 0], 1, act, alpha, beta)
        y = OPS.dwconv_bn_act_triton(x, weight, scale, shift, *conf)
        torch.testing.assert_close(y, reference.dwconv_bn_act(x, weight, scale, shift, *conf),
                                   rtol=1e-12, atol=1e-12, equal_nan=True)
        g = torch.ones_like(y)
        g[0, 1, 0, :3] = float("inf")
        gx = OPS._dwconv_bn_act_backward_triton(g, x, weight, scale, shift, *conf)[0]
        xr = x.clone().requires_grad_()
        reference.dwconv_bn_act(xr, weight, scale, shift, *conf).backward(g)
        if act in ("hardswish", "hardtanh"):  # ATen's answer at NaN depends on the position
            gx[0, 0, 2, 3] = xr.grad[0, 0, 2, 3] = 0
        torch.testing.assert_close(gx, xr.grad, rtol=1e-12, atol=1e-12, equal_nan=True,
                                   msg=lambda m: f"{act}: {m}")


def test_dwconv_act_gradcheck_float64():
    for act, stride, padding, dilation in (("gelu_tanh", 2, [1, 0, 2, 1], 2),
                                           ("silu", 1, [0, 1, 1, 0], 1)):
        x, weight, scale, shift = leaves(*dw_inputs(2, 6, 5, 3, "contiguous", torch.float64, n=1))
        assert torch.autograd.gradcheck(dwa_op(stride, padding, dilation, act),
                                        (x, weight, scale, shift), fast_mode=True)


# ---------------------------------------------------------------- ppm_add

# (Cin, Cout, H, W, layout): odd and even maps, tiny and >16 channel counts (tl.dot pads to 16).
PPM_CASES = [
    (3, 16, 9, 11, "contiguous"),
    (16, 5, 8, 7, "channels_last"),
    (20, 40, 5, 6, "strided"),
    (1, 1, 1, 1, "contiguous"),
    (3, 20, 7, 4, "channels_last"),
]


def ppm_inputs(cin, cout, h, w, kind, dtype=torch.float32, n=2):
    x = layout(randn(n, cin, h, w, dtype=dtype), kind)
    weight = randn(cout, cin, 1, 1, dtype=dtype) / cin ** 0.5
    residual = layout(randn(n, cout, (h + 1) // 2, (w + 1) // 2, dtype=dtype), kind)
    return x, weight, residual


@pytest.mark.parametrize("cin,cout,h,w,kind", PPM_CASES)
def test_ppm_add_matches_reference(cin, cout, h, w, kind):
    y = check_against_reference(
        lambda *a: dasp_kernels.ppm_add(*a, backend="triton"), reference.ppm_add,
        ppm_inputs(cin, cout, h, w, kind), torch.float32, what=f"ppm {cin}->{cout} {kind}")
    cl = kind == "channels_last" and cin > 1
    assert y.is_contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_ppm_add_dtypes(dtype):
    check_against_reference(OPS.ppm_add_triton, reference.ppm_add,
                            ppm_inputs(16, 20, 9, 11, "contiguous", dtype), dtype, what=str(dtype))


@pytest.mark.filterwarnings("ignore:invalid value encountered in matmul:RuntimeWarning")
@pytest.mark.parametrize("kind", ["contiguous", "channels_last"])
def test_ppm_add_ties_nan_and_inf_follow_max_pool2d(kind):
    # Small integers make ties in most windows; NaN and -inf exercise the special rules.
    x = torch.randint(-2, 3, (2, 3, 7, 9), device=DEV).float()
    x[0, 0, 0, 1] = float("nan")
    x[0, 1, 2, :2] = float("nan")
    x[1, 2, 4:6, 4:6] = float("-inf")
    x[1, 0, 6, 8] = float("-inf")  # a 1x1 edge window of -inf
    x = layout(x, kind)
    weight = torch.eye(3, device=DEV).view(3, 3, 1, 1)  # output = pooled + residual, exactly
    residual = torch.zeros(2, 3, 4, 5, device=DEV)
    mine = leaves(x, weight, residual)
    theirs = leaves(x, weight, residual)
    y = OPS.ppm_add_triton(*mine)
    y_ref = reference.ppm_add(*theirs)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0, equal_nan=True)
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    # The gradient lands on exactly the element max_pool2d chose (first max, last NaN).
    torch.testing.assert_close(mine[0].grad, theirs[0].grad, rtol=0, atol=0)


def test_ppm_add_gradcheck_float64():
    inputs = leaves(*ppm_inputs(2, 3, 5, 4, "contiguous", torch.float64, n=1))
    assert torch.autograd.gradcheck(OPS.ppm_add_triton, inputs, fast_mode=True)


def test_ppm_add_grad_residual_is_grad_out_without_aliasing_the_op():
    x, weight, residual = leaves(*ppm_inputs(3, 4, 5, 6, "contiguous"))
    y = OPS.ppm_add_triton(x, weight, residual)
    g = torch.randn_like(y)
    y.backward(g)
    torch.testing.assert_close(residual.grad, g, rtol=0, atol=0)
    gx, gw = OPS._ppm_add_backward_triton(g, x.detach(), weight.detach())
    assert gx.data_ptr() != g.data_ptr() and gw.data_ptr() != g.data_ptr()


# ---------------------------------------------------------------- dasp_stage

# (Cin, Cout, K, H, W, layout): Cin 3 takes the per-channel path, Cin >= 16 the tl.dot one.
STAGE_CASES = [
    (3, 16, 7, 9, 11, "contiguous"),
    (16, 16, 3, 8, 7, "channels_last"),
    (20, 40, 5, 5, 6, "strided"),
    (3, 5, 1, 6, 9, "channels_last"),
]


def stage_inputs(cin, cout, k, h, w, kind, dtype=torch.float32, n=2):
    x = layout(randn(n, cin, h, w, dtype=dtype), kind)
    dw_weight = randn(cin, 1, k, k, dtype=dtype) / k
    pw_weight = randn(cout, cin, 1, 1, dtype=dtype) / cin ** 0.5
    ppm_weight = randn(cout, cin, 1, 1, dtype=dtype) / cin ** 0.5
    return (x, dw_weight, *bn_params(cin, dtype), pw_weight, *bn_params(cout, dtype), ppm_weight)


@pytest.mark.parametrize("cin,cout,k,h,w,kind", STAGE_CASES)
def test_dasp_stage_matches_reference(cin, cout, k, h, w, kind):
    y = check_against_reference(
        lambda *a: dasp_kernels.dasp_stage(*a, backend="triton"), reference.dasp_stage,
        stage_inputs(cin, cout, k, h, w, kind), torch.float32,
        what=f"stage {cin}->{cout} K={k} {kind}")
    cl = kind == "channels_last" and cin > 1
    assert y.is_contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_dasp_stage_dtypes(dtype):
    # Half precision: forward only. The unfused reference rounds every intermediate to half, so a
    # pre-activation near 0 may take the other side of a ReLU and move a gradient by O(1).
    check_against_reference(OPS.dasp_stage_triton, reference.dasp_stage,
                            stage_inputs(16, 16, 3, 7, 9, "channels_last", dtype), dtype,
                            grads=dtype == torch.float64, what=str(dtype))


def test_dasp_stage_gradcheck_float64():
    inputs = leaves(*stage_inputs(2, 3, 3, 4, 3, "contiguous", torch.float64, n=1))
    assert torch.autograd.gradcheck(OPS.dasp_stage_triton, inputs, fast_mode=True)


# ---------------------------------------------------------------- all ops

def test_int64_offsets_give_the_same_results(monkeypatch):
    """The IDX64 variant (taken for tensors past 2**30 elements) computes exactly the same."""
    cases = [
        (lambda *a: dw_relu(*a, 2, 3, True), dw_inputs(3, 9, 11, 7, "strided")),
        (dwa_op(2, [3, 1, 0, 4], 2, "gelu"), dw_inputs(3, 9, 11, 3, "channels_last")),
        (OPS.ppm_add_triton, ppm_inputs(16, 5, 8, 7, "channels_last")),
        (OPS.dasp_stage_triton, stage_inputs(16, 16, 3, 5, 6, "contiguous")),
    ]
    for op, inputs in cases:
        results = []
        for force in (False, True):
            monkeypatch.setattr(_common, "FORCE_INT64_INDEX", force)
            mine = leaves(*inputs)
            y = op(*mine)
            y.backward(torch.ones_like(y))
            results.append([y.detach()] + [t.grad for t in mine])
        for a, b in zip(*results):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def _opcheck_cases():
    # Registration, fakes and strides are what opcheck tests: few taps keep the interpreter quick.
    dw = dw_inputs(3, 5, 6, 2, "channels_last", n=1)
    ppm = ppm_inputs(3, 4, 5, 6, "contiguous", n=1)
    stage = stage_inputs(3, 4, 1, 5, 6, "contiguous", n=1)
    g = randn(1, 4, 3, 3)
    return {
        "dwconv_bn_act_triton": (leaves(*dw) + [2, [1, 0, 0, 1], 2, "hardtanh", -0.5, 0.5]),
        "_dwconv_bn_act_backward_triton": ([randn(1, 3, 2, 3).contiguous(
            memory_format=torch.channels_last), *dw, 2, [1, 0, 0, 1], 2, "silu", 0.0, 0.0]),
        "ppm_add_triton": leaves(*ppm),
        "_ppm_add_backward_triton": [g, *ppm[:2]],
        "dasp_stage_triton": leaves(*stage),
        "_dasp_stage_backward_triton": [g, *stage],
    }


@pytest.mark.parametrize("name", list(_opcheck_cases()))
def test_opcheck(name):
    torch.library.opcheck(getattr(OPS, name), _opcheck_cases()[name])


def test_empty_batch():
    x, w, s, b = leaves(*dw_inputs(3, 9, 11, 3, "contiguous", n=0))
    y = dw_relu(x, w, s, b, 2, 1, True)
    assert y.shape == (0, 3, 5, 6)
    y.sum().backward()
    assert x.grad.shape == x.shape and not w.grad.any() and not s.grad.any() and not b.grad.any()

    x, w, s, b = leaves(*dw_inputs(3, 9, 11, 3, "channels_last", n=0))
    y = OPS.dwconv_bn_act_triton(x, w, s, b, 2, [1, 0, 2, 1], 2, "gelu", 0.0, 0.0)
    assert y.shape == (0, 3, 3, 5)
    y.sum().backward()
    assert x.grad.shape == x.shape and not w.grad.any() and not s.grad.any() and not b.grad.any()

    x, w, r = leaves(*ppm_inputs(3, 4, 9, 11, "channels_last", n=0))
    y = OPS.ppm_add_triton(x, w, r)
    assert y.shape == (0, 4, 5, 6)
    y.sum().backward()
    assert not w.grad.any()

    inputs = leaves(*stage_inputs(3, 4, 3, 9, 11, "contiguous", n=0))
    y = OPS.dasp_stage_triton(*inputs)
    assert y.shape == (0, 4, 5, 6)
    y.sum().backward()
    assert all(t.grad is not None and not t.grad.any() for t in inputs)


def test_meta_tensors_give_shapes_and_strides():
    inputs = [t.to("meta") for t in stage_inputs(3, 4, 3, 9, 11, "channels_last")]
    y = OPS.dasp_stage_triton(*inputs)
    assert y.device.type == "meta" and y.shape == (2, 4, 5, 6)
    assert y.is_contiguous(memory_format=torch.channels_last)
    x, w, s, b = (t.to("meta") for t in dw_inputs(3, 9, 11, 3, "contiguous"))
    y = OPS.dwconv_bn_act_triton(x, w, s, b, 2, [1, 0, 2, 1], 2, "silu", 0.0, 0.0)
    assert y.device.type == "meta" and y.shape == (2, 3, 3, 5)
    gx, gw, gs, gb = OPS._dwconv_bn_act_backward_triton(torch.empty(2, 3, 3, 5, device="meta"),
                                                        x, w, s, b, 2, [1, 0, 2, 1], 2, "silu",
                                                        0.0, 0.0)
    assert gx.shape == x.shape and gw.shape == w.shape and gs.shape == gb.shape == (3,)


# ---------------------------------------------------------------- errors

def test_direct_op_calls_validate_like_the_wrappers():
    x, w, s, b = dw_inputs(3, 9, 11, 3, "contiguous")
    # The old wrapper is dwconv_bn_act with act "relu" (functional.py), and says so.
    with pytest.raises(ValueError, match=r"dwconv_bn_act: expected stride 1 or 2, got 3"):
        dasp_kernels.dwconv_bn_relu(x, w, s, b, stride=3, backend="triton")
    with pytest.raises(RuntimeError, match=r"dwconv_bn_act: expected stride 1 or 2, got 3"):
        dw_relu(x, w, s, b, 3, 0, True)
    with pytest.raises(RuntimeError, match=re.escape(
            "expected padding [top, bottom, left, right], each 0 <= p <= dilation * (K - 1) = 2, "
            "got [3, 3, 3, 3]")):
        dw_relu(x, w, s, b, 1, 3, True)
    with pytest.raises(RuntimeError, match=r"expected weight of shape \[C, 1, K, K\] with C = 3, "
                                           r"got \[4, 1, 3, 3\]"):
        dw_relu(x, randn(4, 1, 3, 3), s, b, 1, 1, True)
    with pytest.raises(RuntimeError, match=r"expected scale to have the dtype of x \(float32\), "
                                           r"got float64"):
        dw_relu(x, w, s.double(), b, 1, 1, True)
    with pytest.raises(RuntimeError, match=r"expected x of dtype float32, float64, float16 or "
                                           r"bfloat16, got int64"):
        dw_relu(x.long(), w.long(), s.long(), b.long(), 1, 1, True)
    with pytest.raises(RuntimeError, match=r"_dwconv_bn_act_backward: expected grad_out of shape "
                                           r"\[2, 3, 9, 11\], got \[2, 3, 9, 10\]"):
        OPS._dwconv_bn_act_backward_triton(randn(2, 3, 9, 10), x, w, s, b, 1, [1] * 4, 1, "relu",
                                           0.0, 0.0)

    act_args = (1, [1, 1, 1, 1], 1, "relu", 0.0, 0.0)
    with pytest.raises(RuntimeError, match=r"dwconv_bn_act: expected act in none, relu, hardtanh, "
                                           r"hardswish, silu, gelu, gelu_tanh, leaky_relu, got "
                                           r"'tanh'"):
        OPS.dwconv_bn_act_triton(x, w, s, b, 1, [1, 1, 1, 1], 1, "tanh", 0.0, 0.0)
    with pytest.raises(RuntimeError, match=r"dwconv_bn_act: expected padding \[top, bottom, left, "
                                           r"right\], each 0 <= p <= dilation \* \(K - 1\) = 4, "
                                           r"got \[1, 5, 0, 0\]"):
        OPS.dwconv_bn_act_triton(x, w, s, b, 1, [1, 5, 0, 0], 2, "relu", 0.0, 0.0)
    with pytest.raises(RuntimeError, match=r"dwconv_bn_act: expected dilation >= 1, got 0"):
        OPS.dwconv_bn_act_triton(x, w, s, b, 1, [0, 0, 0, 0], 0, "relu", 0.0, 0.0)
    with pytest.raises(RuntimeError, match=r"_dwconv_bn_act_backward: expected grad_out of shape "
                                           r"\[2, 3, 9, 11\], got \[2, 3, 9, 10\]"):
        OPS._dwconv_bn_act_backward_triton(randn(2, 3, 9, 10), x, w, s, b, *act_args)

    x, w, r = ppm_inputs(3, 4, 9, 11, "contiguous")
    with pytest.raises(RuntimeError, match=r"ppm_add: expected residual of shape \[N, Cout, "
                                           r"ceil\(H/2\), ceil\(W/2\)\] = \[2, 4, 5, 6\], got "
                                           r"\[2, 4, 4, 6\]"):
        OPS.ppm_add_triton(x, w, r[:, :, :4])
    with pytest.raises(RuntimeError, match=r"_ppm_add_backward: expected grad_out of shape "
                                           r"\[2, 4, 5, 6\], got \[2, 4, 5, 5\]"):
        OPS._ppm_add_backward_triton(r[..., :5], x, w)

    inputs = list(stage_inputs(3, 4, 3, 9, 11, "contiguous"))
    inputs[1] = randn(3, 1, 4, 4)
    with pytest.raises(RuntimeError, match=r"dasp_stage: expected an odd kernel size K in 1, 3, 5, "
                                           r"7, got K = 4"):
        OPS.dasp_stage_triton(*inputs)
    with pytest.raises(ValueError, match=r"dasp_stage: expected an odd kernel size"):
        dasp_kernels.dasp_stage(*inputs, backend="triton")


@pytest.mark.skipif(DEV != "cpu", reason="the message is for CPU tensors without the interpreter")
def test_cpu_tensors_without_the_interpreter_say_so(monkeypatch):
    monkeypatch.setattr(_common, "INTERPRET", False)
    x, w, s, b = dw_inputs(3, 9, 11, 3, "contiguous")
    with pytest.raises(RuntimeError, match=r"dwconv_bn_act: got cpu tensors, but the Triton "
                                           r"kernels run on the CPU only under the interpreter: "
                                           r"set TRITON_INTERPRET=1"):
        dw_relu(x, w, s, b, 1, 1, True)


# ---------------------------------------------------------------- torch.compile

def test_compile_fullgraph_through_the_functional_api():
    """torch.compile(fullgraph=True) takes the op (on a GPU, its kernels) and its backward."""
    import torch._dynamo

    def functional(x, w, s, b):
        return dasp_kernels.dwconv_bn_relu(x, w, s, b, stride=2, padding=1, backend="triton") * 2

    def direct(x, w, s, b):
        return dw_relu(x, w, s, b, 2, 1, True) * 2

    def run(f):
        torch._dynamo.reset()
        x, w, s, b = leaves(*dw_inputs(3, 9, 11, 3, "channels_last"))
        y = torch.compile(f, fullgraph=True)(x, w, s, b)
        g = torch.randn_like(y)
        y.backward(g)
        ref_in = leaves(x, w, s, b)
        y_ref = reference.dwconv_bn_relu(*ref_in, 2, 1, True) * 2
        y_ref.backward(g)
        got = [y.detach()] + [t.grad for t in (x, w, s, b)]
        for a, e in zip(got, [y_ref.detach()] + [t.grad for t in ref_in]):
            close(a, e, TOL[torch.float32], "compiled")

    try:
        run(functional)
    except torch._dynamo.exc.Unsupported as e:
        # backend="auto"/"triton" picking reads _loader.built_with_cuda(), a dispatcher query
        # that Dynamo cannot trace while the C++ extension is loaded. The op itself must compile.
        if "_dispatch_has_kernel_for_dispatch_key" not in str(e):
            raise
        run(direct)
        pytest.xfail("dasp_kernels._loader.built_with_cuda() is not traceable by Dynamo; the op "
                     "compiles, the functional wrapper's backend pick does not")
