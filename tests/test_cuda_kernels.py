"""The CUDA kernels of csrc/cuda against dasp_kernels.reference.

Two targets run the same matrix:
  cuda: torch.ops.dasp_kernels.* on a GPU, against the reference on the same GPU. Skipped (with the
        reason) without a GPU or without CUDA kernels in the extension.
  emu:  the same .cu sources compiled for the CPU emulator of tests/cuda_emu (one fiber per CUDA
        thread, real barriers), as torch.ops.dasp_emu.* on CPU tensors. Slow to build (minutes), so
        it only runs with DASP_CUDA_EMU=1; it checks the kernels' logic on machines without a GPU.
GPU-only: opcheck, gradcheck, autograd registration, error messages, streams, large tensors.
test_cuda_kernels_compiled_in runs wherever the extension was built with the CUDA sources.
"""
import os
import re
import sys

import pytest
import torch
import torch.nn.functional as F

from dasp_kernels import _checks, _loader
from dasp_kernels import reference as ref

OPS = ("dwconv_bn_act", "_dwconv_bn_act_backward",
       "ppm_add", "_ppm_add_backward", "dasp_stage", "_dasp_stage_backward")
CUDA_SOURCES = ("dwconv_bn_act.cu", "ppm_add.cu", "dasp_stage.cu")


def _cuda_skip_reason():
    if not _loader.has_cpu_extension():
        return f"the extension dasp_kernels._C did not load ({_loader.load_error})"
    if not _loader.built_with_cuda():
        return "the extension was built without the CUDA sources"
    if not torch.cuda.is_available():
        return "no CUDA device is visible (torch.cuda.is_available() is False)"
    return None


CUDA_REASON = _cuda_skip_reason()
EMU = os.environ.get("DASP_CUDA_EMU") == "1"
cuda_only = [pytest.mark.needs_cuda,
             pytest.mark.skipif(CUDA_REASON is not None, reason=f"CUDA kernels: {CUDA_REASON}")]
TARGETS = [
    pytest.param("cuda", marks=cuda_only),
    pytest.param("emu", marks=[pytest.mark.slow, pytest.mark.skipif(
        not EMU, reason="emulated CUDA kernels: set DASP_CUDA_EMU=1 to build and run them")]),
]


def gpu_test(f):
    for m in reversed(cuda_only):
        f = m(f)
    return f


class Target:
    def __init__(self, name, ops, device):
        self.name, self.ops, self.device = name, ops, device

    def __repr__(self):
        return self.name


@pytest.fixture(scope="module")
def emu_ops():
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "cuda_emu"))
    import build as emu_build

    emu_build.build()
    return torch.ops.dasp_emu


@pytest.fixture(params=TARGETS)
def tgt(request):
    if request.param == "cuda":
        return Target("cuda", torch.ops.dasp_kernels, torch.device("cuda"))
    return Target("emu", request.getfixturevalue("emu_ops"), torch.device("cpu"))


# ------------------------------------------------------------------------------------------------
# helpers

def dw_relu(ops, x, w, sc, sh, stride, padding, relu):
    """The DASP stage's depthwise form of dwconv_bn_act: symmetric padding, ReLU or none."""
    return ops.dwconv_bn_act(x, w, sc, sh, stride, [padding] * 4, 1, "relu" if relu else "none",
                             0.0, 0.0)


def dw_relu_backward(ops, g, x, w, sc, sh, stride, padding, relu):
    return ops._dwconv_bn_act_backward(g, x, w, sc, sh, stride, [padding] * 4, 1,
                                       "relu" if relu else "none", 0.0, 0.0)


LAYOUTS = ("contiguous", "channels_last", "sliced", "channels_last_sliced")


def make_x(shape, layout, device, dtype=torch.float32, gen=torch.randn):
    n, c, h, w = shape
    if layout == "contiguous":
        x = gen(n, c, h, w).to(device=device, dtype=dtype)
    elif layout == "channels_last":
        x = gen(n, c, h, w).to(device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    elif layout == "sliced":  # NCHW order, no stride contiguous
        x = gen(n, c + 1, h + 2, 2 * w).to(device=device, dtype=dtype)[:, 1:, 1:-1, ::2]
    elif layout == "channels_last_sliced":
        x = gen(n, c, h + 1, w + 2).to(device=device, dtype=dtype)
        x = x.contiguous(memory_format=torch.channels_last)[:, :, 1:, 1:-1]
    else:
        raise ValueError(layout)
    if layout.endswith("sliced") and x.numel() > 0:
        assert not x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last)
    return x


def check_format(out, x):
    fmt = _checks.output_memory_format(x)
    assert out.is_contiguous(memory_format=fmt), (out.shape, out.stride(), fmt)


def close(a, b, tol):
    torch.testing.assert_close(a, b.to(a.dtype), rtol=tol, atol=tol, equal_nan=True)


def masked_grad(g, pre, margin):
    """Zero grad_out where the ReLU input is within `margin` of 0: there the kernel's rounding may
    legitimately land on the other side of the kink than the reference's."""
    return g * (pre.abs() > margin).to(g.dtype)


HALF_TOL = {torch.float16: 2e-2, torch.bfloat16: 6e-2}

# ------------------------------------------------------------------------------------------------
# dwconv_bn_act in the DASP stage's form (symmetric padding, ReLU or none)

DW_SHAPES = [(2, 3, 9, 11), (1, 5, 7, 7), (3, 4, 16, 13), (1, 2, 37, 70), (2, 33, 8, 7)]
DW_CASES = [(k, s, p) for k in range(1, 8) for s in (1, 2) for p in sorted({0, k // 2, k - 1})]


def dw_params(c, k, device, dtype=torch.float32):
    w = torch.randn(c, 1, k, k) / k
    scale = torch.rand(c) + 0.5
    shift = torch.randn(c) * 0.5
    return [t.to(device=device, dtype=dtype) for t in (w, scale, shift)]


def dw_reference_grads(x, w, sc, sh, s, p, relu, g):
    """Autograd through the reference, in float64 on the same device."""
    ins = [t.detach().double().requires_grad_() for t in (x, w, sc, sh)]
    y = ref.dwconv_bn_relu(*ins, s, p, relu)
    return torch.autograd.grad(y, ins, g.double())


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("k,s,p", DW_CASES)
def test_dwconv_forward_backward(tgt, k, s, p, layout):
    i = DW_CASES.index((k, s, p))
    relu = (i + LAYOUTS.index(layout)) % 3 != 0
    shape = DW_SHAPES[(i + LAYOUTS.index(layout)) % len(DW_SHAPES)]
    x = make_x(shape, layout, tgt.device)
    w, sc, sh = dw_params(shape[1], k, tgt.device)
    y = dw_relu(tgt.ops, x, w, sc, sh, s, p, relu)
    y64 = ref.dwconv_bn_relu(x.double(), w.double(), sc.double(), sh.double(), s, p, False)
    yr = torch.relu(y64) if relu else y64
    assert y.shape == yr.shape and y.dtype == x.dtype
    check_format(y, x)
    close(y, yr, 1e-5)

    g = torch.randn(yr.shape, device=tgt.device)
    if relu:
        g = masked_grad(g, y64, 1e-3)
    grads = dw_relu_backward(tgt.ops, g, x, w, sc, sh, s, p, relu)
    expected = dw_reference_grads(x, w, sc, sh, s, p, relu, g)
    check_format(grads[0], x)
    for got, exp, like in zip(grads, expected, (x, w, sc, sh)):
        assert got.shape == like.shape and got.dtype == like.dtype
        close(got, exp, 2e-4)
    assert all(t.is_contiguous() for t in grads[1:])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("k,s,p", [(3, 2, 1), (7, 2, 3), (4, 1, 2)])
def test_dwconv_dtypes(tgt, dtype, layout, k, s, p):
    shape = (2, 6, 13, 10)
    x = make_x(shape, layout, tgt.device, dtype)
    w, sc, sh = dw_params(shape[1], k, tgt.device, dtype)
    y = dw_relu(tgt.ops, x, w, sc, sh, s, p, True)
    assert y.dtype == dtype
    check_format(y, x)
    # The half types against the float32 reference on the same (rounded) inputs.
    y32 = ref.dwconv_bn_relu(x.double(), w.double(), sc.double(), sh.double(), s, p, False)
    tol = HALF_TOL.get(dtype, 1e-12)
    close(y, torch.relu(y32), tol)
    g = masked_grad(torch.randn(y.shape, device=tgt.device), y32, 0.05).to(dtype)
    grads = dw_relu_backward(tgt.ops, g, x, w, sc, sh, s, p, True)
    expected = dw_reference_grads(x, w, sc, sh, s, p, True, g)
    for got, exp in zip(grads, expected):
        assert got.dtype == dtype
        # reductions over N*Ho*Wo terms: compare relative to the largest gradient
        close(got / exp.abs().max().clamp_min(1), exp / exp.abs().max().clamp_min(1), tol)


def test_dwconv_deterministic(tgt):
    x = make_x((2, 8, 40, 37), "channels_last", tgt.device)
    w, sc, sh = dw_params(8, 5, tgt.device)
    g = torch.randn(2, 8, 20, 19, device=tgt.device)
    a = dw_relu_backward(tgt.ops, g, x, w, sc, sh, 2, 2, True)
    b = dw_relu_backward(tgt.ops, g, x, w, sc, sh, 2, 2, True)
    for u, v in zip(a, b):
        assert torch.equal(u, v)


def test_dwconv_all_padding_rows(tgt):
    # H = 1 with padding K - 1: most taps fall in the padding; a whole output row sees only padding.
    x = make_x((2, 3, 1, 6), "contiguous", tgt.device)
    w, sc, sh = dw_params(3, 5, tgt.device)
    y = dw_relu(tgt.ops, x, w, sc, sh, 1, 4, False)
    close(y, ref.dwconv_bn_relu(x, w, sc, sh, 1, 4, False), 1e-5)


# ------------------------------------------------------------------------------------------------
# dwconv_bn_act

# alpha, beta per activation: hardtanh's min and max, leaky_relu's slope; the others ignore them.
ACT_ARGS = {"hardtanh": (-0.5, 0.75), "leaky_relu": (0.1, 0.0)}
# Points where an activation's derivative jumps: a gradient there depends on rounding.
ACT_KINKS = {"relu": (0.0,), "leaky_relu": (0.0,), "hardtanh": ACT_ARGS["hardtanh"],
             "hardswish": (-3.0, 3.0)}
DWA_SHAPES = [(2, 3, 19, 21), (1, 5, 17, 18), (2, 33, 18, 17), (1, 2, 23, 40), (3, 4, 20, 19)]
# Every K of the tiled kernels' odd sizes, both strides, dilation 1 (tiled kernels) and 2, 3 (the
# direct kernel; the same index arithmetic in the backward).
DWA_CASES = [(k, s, d) for k in (1, 3, 5, 7, 9) for s in (1, 2) for d in (1, 2, 3)
             if not (k == 1 and d > 1)] + [(2, 2, 1), (4, 1, 2), (8, 2, 1), (6, 1, 3)]


def dwa_padding(i, k, d):
    """Four different sides where K allows: [top, bottom, left, right], each 0..d*(K-1)."""
    span = d * (k - 1)
    return [(i * 5 + j * 3) % (span + 1) for j in range(4)]


def dwa_reference(x, w, sc, sh, conf, g):
    """Output and (x, w, scale, shift) gradients of autograd through the reference, in float64."""
    ins = [t.detach().double().requires_grad_() for t in (x, w, sc, sh)]
    y = ref.dwconv_bn_act(*ins, *conf)
    return y.detach(), torch.autograd.grad(y, ins, g.double())


def dwa_pre_activation(x, w, sc, sh, conf):
    stride, padding, dilation = conf[:3]
    return ref.dwconv_bn_act(x.double(), w.double(), sc.double(), sh.double(), stride, padding,
                             dilation, "none")


def kink_masked_grad(g, pre, act, margin):
    """Zero grad_out where the pre-activation is within `margin` of a kink of `act`."""
    keep = torch.ones_like(pre, dtype=torch.bool)
    for p in ACT_KINKS.get(act, ()):
        keep &= (pre - p).abs() > margin
    return g * keep.to(g.dtype)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("k,s,d", DWA_CASES)
def test_dwconv_act_forward_backward(tgt, k, s, d, layout):
    # float64: the kernels' sums agree with the reference to ~1e-15, so no kink needs masking and
    # every activation's backward is checked everywhere.
    i = DWA_CASES.index((k, s, d)) * len(LAYOUTS) + LAYOUTS.index(layout)
    act = _checks.ACTIVATIONS[i % len(_checks.ACTIVATIONS)]
    alpha, beta = ACT_ARGS.get(act, (0.0, 0.0))
    pad = dwa_padding(i, k, d)
    n, c, h, w = DWA_SHAPES[i % len(DWA_SHAPES)]
    span = d * (k - 1)  # the map must hold one window: H + top + bottom > span
    shape = (n, c, max(h, span + 1 - pad[0] - pad[1]), max(w, span + 2 - pad[2] - pad[3]))
    conf = (s, pad, d, act, alpha, beta)
    x = make_x(shape, layout, tgt.device, torch.float64)
    w, sc, sh = dw_params(shape[1], k, tgt.device, torch.float64)
    y = tgt.ops.dwconv_bn_act(x, w, sc, sh, *conf)
    g = torch.randn(y.shape, device=tgt.device, dtype=torch.float64)
    yr, expected = dwa_reference(x, w, sc, sh, conf, g)
    assert y.shape == yr.shape and y.dtype == x.dtype
    check_format(y, x)
    close(y, yr, 1e-12)
    grads = tgt.ops._dwconv_bn_act_backward(g, x, w, sc, sh, *conf)
    check_format(grads[0], x)
    for got, exp, like in zip(grads, expected, (x, w, sc, sh)):
        assert got.shape == like.shape and got.dtype == like.dtype
        close(got, exp, 1e-10)
    assert all(t.is_contiguous() for t in grads[1:])


@pytest.mark.parametrize("act", _checks.ACTIVATIONS)
def test_dwconv_act_float32(tgt, act):
    # float32 in, float64 reference: the activation formulas in single precision.
    i = _checks.ACTIVATIONS.index(act)
    layout = ("contiguous", "channels_last")[i % 2]
    k, s, d = ((3, 2, 1), (5, 1, 2), (9, 1, 1), (7, 2, 1))[i % 4]
    alpha, beta = ACT_ARGS.get(act, (0.0, 0.0))
    conf = (s, dwa_padding(i, k, d), d, act, alpha, beta)
    x = make_x((2, 6, 19, 17), layout, tgt.device) * 3  # reach hardswish's and gelu's tails
    w, sc, sh = dw_params(6, k, tgt.device)
    y = tgt.ops.dwconv_bn_act(x, w, sc, sh, *conf)
    pre = dwa_pre_activation(x, w, sc, sh, conf)
    g = kink_masked_grad(torch.randn(y.shape, device=tgt.device), pre, act, 1e-3)
    yr, expected = dwa_reference(x, w, sc, sh, conf, g)
    close(y, yr, 1e-5)
    grads = tgt.ops._dwconv_bn_act_backward(g, x, w, sc, sh, *conf)
    for got, exp in zip(grads, expected):
        assert got.dtype == torch.float32
        close(got / exp.abs().max().clamp_min(1), exp / exp.abs().max().clamp_min(1), 2e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("k,s,d,act", [(3, 2, 1, "hardswish"), (9, 1, 2, "gelu")])
def test_dwconv_act_half_dtypes(tgt, dtype, layout, k, s, d, act):
    conf = (s, dwa_padding(1, k, d), d, act, 0.0, 0.0)
    x = make_x((2, 6, 20, 19), layout, tgt.device, dtype)
    w, sc, sh = dw_params(6, k, tgt.device, dtype)
    y = tgt.ops.dwconv_bn_act(x, w, sc, sh, *conf)
    assert y.dtype == dtype
    check_format(y, x)
    pre = dwa_pre_activation(x, w, sc, sh, conf)
    g = kink_masked_grad(torch.randn(y.shape, device=tgt.device), pre, act, 0.05).to(dtype)
    yr, expected = dwa_reference(x, w, sc, sh, conf, g)
    tol = HALF_TOL[dtype]
    close(y, yr, tol)
    grads = tgt.ops._dwconv_bn_act_backward(g, x, w, sc, sh, *conf)
    for got, exp in zip(grads, expected):
        assert got.dtype == dtype
        close(got / exp.abs().max().clamp_min(1), exp / exp.abs().max().clamp_min(1), tol)


def test_dwconv_act_nan_and_edges(tgt):
    # NaN propagates through every activation as in torch; hardtanh's edges and relu's 0 pass no
    # gradient (autograd's rule), which a product with a 0/1 mask would turn into NaN for inf.
    x = make_x((1, 2, 6, 7), "contiguous", tgt.device, torch.float64)
    x[0, 0, 2, 3] = float("nan")
    w = torch.zeros(2, 1, 1, 1, device=tgt.device, dtype=torch.float64) + 1
    sc = torch.ones(2, device=tgt.device, dtype=torch.float64)
    sh = torch.zeros(2, device=tgt.device, dtype=torch.float64)
    x[0, 1, 0, :3] = torch.tensor([-0.5, 0.75, 0.0])
    for act in _checks.ACTIVATIONS:
        alpha, beta = ACT_ARGS.get(act, (0.0, 0.0))
        conf = (1, [0, 0, 0, 0], 1, act, alpha, beta)
        y = tgt.ops.dwconv_bn_act(x, w, sc, sh, *conf)
        close(y, ref.dwconv_bn_act(x, w, sc, sh, *conf), 1e-12)
        g = torch.ones_like(y)
        g[0, 1, 0, :3] = float("inf")
        gx = tgt.ops._dwconv_bn_act_backward(g, x, w, sc, sh, *conf)[0]
        _, (ex, *_) = dwa_reference(x, w, sc, sh, conf, g)
        if act in ("hardswish", "hardtanh"):  # ATen's answer at NaN depends on the position
            gx[0, 0, 2, 3] = ex[0, 0, 2, 3] = 0
        close(gx, ex, 1e-12)


def test_dwconv_act_deterministic(tgt):
    x = make_x((2, 8, 40, 37), "channels_last", tgt.device)
    w, sc, sh = dw_params(8, 5, tgt.device)
    conf = (2, [1, 3, 4, 2], 2, "silu", 0.0, 0.0)
    g = torch.randn(2, 8, 18, 18, device=tgt.device)
    a = tgt.ops._dwconv_bn_act_backward(g, x, w, sc, sh, *conf)
    b = tgt.ops._dwconv_bn_act_backward(g, x, w, sc, sh, *conf)
    for u, v in zip(a, b):
        assert torch.equal(u, v)


# ------------------------------------------------------------------------------------------------
# ppm_add

PPM_SHAPES = [(2, 3, 5, 7, 9), (1, 20, 70, 5, 4), (3, 17, 3, 1, 1), (2, 4, 6, 10, 13),
              (1, 8, 130, 33, 31)]


def ppm_inputs(shape, layout, device, dtype=torch.float32, gen=torch.randn):
    n, cin, cout, h, w = shape
    x = make_x((n, cin, h, w), layout, device, dtype, gen)
    weight = (torch.randn(cout, cin, 1, 1) / cin ** 0.5).to(device=device, dtype=dtype)
    residual = torch.randn(n, cout, (h + 1) // 2, (w + 1) // 2).to(device=device, dtype=dtype)
    return x, weight, residual


def ppm_reference_grads(x, weight, residual, g):
    ins = [t.detach().double().requires_grad_() for t in (x, weight)]
    out = ref.ppm_add(ins[0], ins[1], residual.double())
    return torch.autograd.grad(out, ins, g.double())


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", PPM_SHAPES)
def test_ppm_add_forward_backward(tgt, shape, layout):
    x, weight, residual = ppm_inputs(shape, layout, tgt.device)
    out = tgt.ops.ppm_add(x, weight, residual)
    expected = ref.ppm_add(x.double(), weight.double(), residual.double())
    assert out.shape == expected.shape and out.dtype == x.dtype
    check_format(out, x)
    close(out, expected, 1e-5)
    g = torch.randn(out.shape, device=tgt.device)
    gx, gw = tgt.ops._ppm_add_backward(g, x, weight)
    ex, ew = ppm_reference_grads(x, weight, residual, g)
    check_format(gx, x)
    assert gw.is_contiguous() and gw.shape == weight.shape
    close(gx, ex, 1e-5)
    close(gw, ew, 1e-4)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_ppm_add_ties_and_nan(tgt, layout):
    # Small integers: most 2x2 windows have ties; the gradient must go to the first maximum in scan
    # order, as in torch's max_pool2d. NaN wins its window (the last NaN, as in torch).
    x, weight, residual = ppm_inputs((2, 3, 4, 7, 9), layout, tgt.device,
                                     gen=lambda *s: torch.randint(-2, 3, s).float())
    x = x.clone()
    x[0, 0, 0, 0] = float("nan")
    x[1, 2, 4, 2] = x[1, 2, 5, 3] = float("nan")
    x[1, 1, 6, 8] = float("nan")  # the ceil-mode edge window
    out = tgt.ops.ppm_add(x, weight, residual)
    close(out, ref.ppm_add(x, weight, residual), 1e-5)
    g = torch.randn(out.shape, device=tgt.device)
    gx, gw = tgt.ops._ppm_add_backward(g, x, weight)
    # autograd through torch's max_pool2d on the same device is the oracle for the argmax
    ex, ew = ppm_reference_grads(x, weight, residual, g)
    close(gx, ex, 1e-5)
    assert torch.equal(gx != 0, ex != 0)
    n, c = x.shape[:2]
    assert int((gx != 0).sum()) == n * c * out.shape[2] * out.shape[3]  # one per window
    close(gw, ew, 1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_ppm_add_dtypes(tgt, dtype, layout):
    x, weight, residual = ppm_inputs((2, 20, 70, 9, 8), layout, tgt.device, dtype)
    out = tgt.ops.ppm_add(x, weight, residual)
    assert out.dtype == dtype
    check_format(out, x)
    tol = HALF_TOL.get(dtype, 1e-12)
    close(out, ref.ppm_add(x.double(), weight.double(), residual.double()), tol)
    g = torch.randn(out.shape, device=tgt.device).to(dtype)
    gx, gw = tgt.ops._ppm_add_backward(g, x, weight)
    ex, ew = ppm_reference_grads(x, weight, residual, g)
    assert gx.dtype == dtype and gw.dtype == dtype
    close(gx, ex, tol)
    close(gw / ew.abs().max(), ew / ew.abs().max(), tol)


# ------------------------------------------------------------------------------------------------
# dasp_stage

STAGE_SHAPES = [(2, 3, 5, 7, 9), (1, 18, 66, 5, 6), (2, 3, 64, 16, 15), (1, 64, 128, 9, 8)]


def stage_inputs(shape, k, layout, device, dtype=torch.float32):
    n, cin, cout, h, w = shape
    x = make_x((n, cin, h, w), layout, device, dtype)
    params = [torch.randn(cin, 1, k, k) / k, torch.rand(cin) + 0.5, torch.randn(cin) * 0.5,
              torch.randn(cout, cin, 1, 1) / cin ** 0.5, torch.rand(cout) + 0.5,
              torch.randn(cout) * 0.5, torch.randn(cout, cin, 1, 1) / cin ** 0.5]
    return [x] + [t.to(device=device, dtype=dtype) for t in params]


def stage_pre_activation(args):
    """The pointwise branch's ReLU input, in float64."""
    x, dw_w, dw_sc, dw_sh, pw_w, pw_sc, pw_sh, _ = [t.double() for t in args]
    k = dw_w.shape[-1]
    y = ref.dwconv_bn_relu(x, dw_w, dw_sc, dw_sh, 2, k // 2, True)
    return F.conv2d(y, pw_w) * pw_sc.view(1, -1, 1, 1) + pw_sh.view(1, -1, 1, 1)


def stage_reference_grads(args, g):
    ins = [t.detach().double().requires_grad_() for t in args]
    return torch.autograd.grad(ref.dasp_stage(*ins), ins, g.double())


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", STAGE_SHAPES)
@pytest.mark.parametrize("k", [1, 3, 5, 7])
def test_dasp_stage_forward_backward(tgt, k, shape, layout):
    args = stage_inputs(shape, k, layout, tgt.device)
    out = tgt.ops.dasp_stage(*args)
    expected = ref.dasp_stage(*[t.double() for t in args])
    assert out.shape == expected.shape and out.dtype == args[0].dtype
    check_format(out, args[0])
    close(out, expected, 1e-4)
    g = masked_grad(torch.randn(out.shape, device=tgt.device), stage_pre_activation(args), 1e-3)
    grads = tgt.ops._dasp_stage_backward(g, *args)
    check_format(grads[0], args[0])
    for got, exp, like in zip(grads, stage_reference_grads(args, g), args):
        assert got.shape == like.shape and got.dtype == like.dtype
        close(got / exp.abs().max().clamp_min(1), exp / exp.abs().max().clamp_min(1), 1e-4)
    assert all(t.is_contiguous() for t in grads[1:])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_dasp_stage_dtypes(tgt, dtype, layout):
    args = stage_inputs((2, 20, 70, 9, 8), 3, layout, tgt.device, dtype)
    out = tgt.ops.dasp_stage(*args)
    assert out.dtype == dtype
    check_format(out, args[0])
    tol = HALF_TOL.get(dtype, 1e-12)
    expected = ref.dasp_stage(*[t.double() for t in args])
    close(out / expected.abs().max(), expected / expected.abs().max(), tol)
    g = masked_grad(torch.randn(out.shape, device=tgt.device), stage_pre_activation(args), 0.05)
    grads = tgt.ops._dasp_stage_backward(g.to(dtype), *args)
    for got, exp in zip(grads, stage_reference_grads(args, g.to(dtype))):
        assert got.dtype == dtype
        close(got / exp.abs().max().clamp_min(1), exp / exp.abs().max().clamp_min(1), tol)


def test_dasp_stage_deterministic(tgt):
    args = stage_inputs((2, 16, 32, 21, 20), 3, "channels_last", tgt.device)
    g = torch.randn(2, 32, 11, 10, device=tgt.device)
    a = tgt.ops._dasp_stage_backward(g, *args)
    b = tgt.ops._dasp_stage_backward(g, *args)
    for u, v in zip(a, b):
        assert torch.equal(u, v)


# ------------------------------------------------------------------------------------------------
# empty batch

@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_empty_batch(tgt, layout):
    x = make_x((0, 3, 9, 8), layout, tgt.device)
    w, sc, sh = dw_params(3, 3, tgt.device)
    y = dw_relu(tgt.ops, x, w, sc, sh, 2, 1, True)
    assert y.shape == (0, 3, 5, 4)
    check_format(y, x)
    grads = dw_relu_backward(tgt.ops, y, x, w, sc, sh, 2, 1, True)
    assert grads[0].shape == x.shape and all(bool((t == 0).all()) for t in grads[1:])
    conf = (2, [0, 1, 2, 1], 2, "gelu", 0.0, 0.0)
    y = tgt.ops.dwconv_bn_act(x, w, sc, sh, *conf)
    assert y.shape == (0, 3, 3, 4)
    check_format(y, x)
    grads = tgt.ops._dwconv_bn_act_backward(y, x, w, sc, sh, *conf)
    assert grads[0].shape == x.shape and all(bool((t == 0).all()) for t in grads[1:])

    xp, weight, residual = ppm_inputs((0, 3, 5, 9, 8), layout, tgt.device)
    out = tgt.ops.ppm_add(xp, weight, residual)
    assert out.shape == (0, 5, 5, 4)
    gx, gw = tgt.ops._ppm_add_backward(out, xp, weight)
    assert gx.shape == xp.shape and bool((gw == 0).all())

    args = stage_inputs((0, 3, 5, 9, 8), 3, layout, tgt.device)
    out = tgt.ops.dasp_stage(*args)
    assert out.shape == (0, 5, 5, 4)
    grads = tgt.ops._dasp_stage_backward(out, *args)
    assert grads[0].shape == args[0].shape
    assert all(t.shape == a.shape and bool((t == 0).all()) for t, a in zip(grads[1:], args[1:]))


# ------------------------------------------------------------------------------------------------
# GPU only: autograd registration, opcheck, gradcheck, errors, streams, large tensors

CUDA = torch.device("cuda")


@gpu_test
def test_autograd_through_ops_matches_backward_ops():
    x = make_x((2, 5, 11, 9), "channels_last", CUDA).requires_grad_()
    w, sc, sh = [t.requires_grad_() for t in dw_params(5, 3, CUDA)]
    y = dw_relu(torch.ops.dasp_kernels, x, w, sc, sh, 2, 1, True)
    g = torch.randn_like(y)
    got = torch.autograd.grad(y, [x, w, sc, sh], g)
    direct = dw_relu_backward(torch.ops.dasp_kernels, g, x, w, sc, sh, 2, 1, True)
    for a, b in zip(got, direct):
        assert torch.equal(a, b)
    conf = (2, [1, 0, 2, 1], 2, "silu", 0.0, 0.0)
    y = torch.ops.dasp_kernels.dwconv_bn_act(x, w, sc, sh, *conf)
    g = torch.randn_like(y)
    got = torch.autograd.grad(y, [x, w, sc, sh], g)
    direct = torch.ops.dasp_kernels._dwconv_bn_act_backward(g, x, w, sc, sh, *conf)
    for a, b in zip(got, direct):
        assert torch.equal(a, b)
    args = [t.requires_grad_() for t in stage_inputs((2, 8, 16, 11, 10), 5, "contiguous", CUDA)]
    out = torch.ops.dasp_kernels.dasp_stage(*args)
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, args, g)
    for a, b in zip(got, torch.ops.dasp_kernels._dasp_stage_backward(g, *args)):
        assert torch.equal(a, b)
    xp, weight, residual = [t.requires_grad_() for t in ppm_inputs((2, 3, 4, 7, 9), "sliced", CUDA)]
    out = torch.ops.dasp_kernels.ppm_add(xp, weight, residual)
    g = torch.randn_like(out)
    gx, gw, gr = torch.autograd.grad(out, [xp, weight, residual], g)
    assert torch.equal(gr, g)


def _opcheck_samples():
    samples = []
    for layout in ("contiguous", "channels_last"):
        x = make_x((2, 3, 9, 8), layout, CUDA)
        w, sc, sh = dw_params(3, 3, CUDA)
        conf = (2, [1, 0, 2, 1], 2, "hardtanh", -0.5, 0.5)
        samples.append(("dwconv_bn_act", (x, w, sc, sh, *conf)))
        samples.append(("_dwconv_bn_act_backward",
                        (torch.randn(2, 3, 3, 4, device=CUDA), x, w, sc, sh, *conf)))
        xp, weight, residual = ppm_inputs((2, 3, 5, 9, 8), layout, CUDA)
        samples.append(("ppm_add", (xp, weight, residual)))
        samples.append(("_ppm_add_backward", (torch.randn_like(residual), xp, weight)))
        args = stage_inputs((2, 3, 5, 9, 8), 3, layout, CUDA)
        samples.append(("dasp_stage", tuple(args)))
        samples.append(("_dasp_stage_backward", (torch.randn(2, 5, 5, 4, device=CUDA), *args)))
    return samples


@gpu_test
@pytest.mark.parametrize("op", OPS)
def test_opcheck(op):
    for name, args in _opcheck_samples():
        if name != op:
            continue
        if not name.startswith("_"):
            args = tuple(a.detach().requires_grad_() if isinstance(a, torch.Tensor) else a
                         for a in args)
        torch.library.opcheck(getattr(torch.ops.dasp_kernels, op).default, args)


@gpu_test
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("k,s,p", [(3, 2, 1), (4, 1, 3), (1, 2, 0)])
def test_gradcheck_dwconv(layout, k, s, p):
    x = make_x((2, 3, 6, 5), layout, CUDA, torch.float64).requires_grad_()
    params = [t.requires_grad_() for t in dw_params(3, k, CUDA, torch.float64)]
    assert torch.autograd.gradcheck(
        lambda *a: dw_relu(torch.ops.dasp_kernels, *a, s, p, True), (x, *params))


@gpu_test
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("k,s,d,act", [(3, 2, 2, "gelu_tanh"), (5, 1, 1, "silu"), (1, 2, 1, "gelu")])
def test_gradcheck_dwconv_act(layout, k, s, d, act):
    x = make_x((2, 3, 7, 6), layout, CUDA, torch.float64).requires_grad_()
    params = [t.requires_grad_() for t in dw_params(3, k, CUDA, torch.float64)]
    pad = dwa_padding(3, k, d)
    assert torch.autograd.gradcheck(
        lambda *a: torch.ops.dasp_kernels.dwconv_bn_act(*a, s, pad, d, act, 0.0, 0.0), (x, *params))


@gpu_test
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_gradcheck_ppm_add(layout):
    args = [t.requires_grad_() for t in ppm_inputs((2, 3, 4, 5, 7), layout, CUDA, torch.float64)]
    assert torch.autograd.gradcheck(torch.ops.dasp_kernels.ppm_add, args)


@gpu_test
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("k", [1, 3])
def test_gradcheck_dasp_stage(layout, k):
    args = [t.requires_grad_() for t in stage_inputs((2, 3, 4, 5, 7), k, layout, CUDA, torch.float64)]
    assert torch.autograd.gradcheck(torch.ops.dasp_kernels.dasp_stage, args)


@gpu_test
def test_public_api_picks_cuda():
    import dasp_kernels

    x = make_x((2, 3, 9, 8), "channels_last", CUDA)
    w, sc, sh = dw_params(3, 3, CUDA)
    y = dasp_kernels.dwconv_bn_relu(x, w, sc, sh, stride=2, padding=1, backend="cuda")
    close(y, ref.dwconv_bn_relu(x, w, sc, sh, 2, 1, True), 1e-5)
    y = dasp_kernels.dwconv_bn_act(x, w, sc, sh, stride=2, padding="same", act="hardswish",
                                   backend="cuda")
    close(y, ref.dwconv_bn_act(x, w, sc, sh, 2, [0, 1, 0, 1], 1, "hardswish"), 1e-5)


@gpu_test
def test_error_messages():
    ops = torch.ops.dasp_kernels
    x = make_x((2, 3, 9, 8), "contiguous", CUDA)
    w, sc, sh = dw_params(3, 3, CUDA)
    with pytest.raises(RuntimeError, match=r"dwconv_bn_act: expected weight of shape \[C, 1, K, K\] "
                                           r"with C = 3, got \[3, 1, 3, 2\]"):
        dw_relu(ops, x, w[..., :2], sc, sh, 1, 0, True)
    with pytest.raises(RuntimeError, match=r"dwconv_bn_act: expected stride 1 or 2, got 3"):
        dw_relu(ops, x, w, sc, sh, 3, 0, True)
    with pytest.raises(RuntimeError, match=re.escape(
            "dwconv_bn_act: expected padding [top, bottom, left, right], each 0 <= p <= dilation * "
            "(K - 1) = 2, got [3, 3, 3, 3]")):
        dw_relu(ops, x, w, sc, sh, 1, 3, True)
    with pytest.raises(RuntimeError, match=r"dwconv_bn_act: expected weight on the device of x "
                                           r"\(cuda:0\), got cpu"):
        dw_relu(ops, x, w.cpu(), sc, sh, 1, 0, True)
    with pytest.raises(RuntimeError, match=r"dwconv_bn_act: expected scale to have the dtype of x "
                                           r"\(float32\), got float64"):
        dw_relu(ops, x, w, sc.double(), sh, 1, 0, True)
    with pytest.raises(RuntimeError, match=r"dwconv_bn_act: expected x of dtype float32, float64, "
                                           r"float16 or bfloat16, got int32"):
        dw_relu(ops, x.int(), w.int(), sc.int(), sh.int(), 1, 0, True)
    with pytest.raises(RuntimeError, match=r"_dwconv_bn_act_backward: expected grad_out of shape "
                                           r"\[2, 3, 9, 8\], got \[2, 3, 9, 7\]"):
        dw_relu_backward(ops, torch.randn(2, 3, 9, 7, device=CUDA), x, w, sc, sh, 1, 1, True)
    with pytest.raises(RuntimeError, match=r"dwconv_bn_act: expected act in none, relu, hardtanh, "
                                           r"hardswish, silu, gelu, gelu_tanh, leaky_relu, got 'elu'"):
        ops.dwconv_bn_act(x, w, sc, sh, 1, [1, 1, 1, 1], 1, "elu", 0.0, 0.0)
    with pytest.raises(RuntimeError, match=r"dwconv_bn_act: expected kernel size 1 <= K <= 9, "
                                           r"got K = 10"):
        ops.dwconv_bn_act(x, torch.randn(3, 1, 10, 10, device=CUDA), sc, sh, 1, [0] * 4, 1,
                          "relu", 0.0, 0.0)
    with pytest.raises(RuntimeError, match=r"dwconv_bn_act: expected padding \[top, bottom, left, "
                                           r"right\], each 0 <= p <= dilation \* \(K - 1\) = 2, "
                                           r"got \[0, 3, 0, 0\]"):
        ops.dwconv_bn_act(x, w, sc, sh, 1, [0, 3, 0, 0], 1, "relu", 0.0, 0.0)
    with pytest.raises(RuntimeError, match=r"_dwconv_bn_act_backward: expected grad_out of shape "
                                           r"\[2, 3, 9, 8\], got \[2, 3, 9, 7\]"):
        ops._dwconv_bn_act_backward(torch.randn(2, 3, 9, 7, device=CUDA), x, w, sc, sh, 1,
                                    [1, 1, 1, 1], 1, "relu", 0.0, 0.0)
    xp, weight, residual = ppm_inputs((2, 3, 5, 7, 9), "contiguous", CUDA)
    with pytest.raises(RuntimeError, match=r"ppm_add: expected residual of shape \[N, Cout, ceil\(H/2\), "
                                           r"ceil\(W/2\)\] = \[2, 5, 4, 5\], got \[2, 5, 4, 4\]"):
        ops.ppm_add(xp, weight, residual[..., :4])
    with pytest.raises(RuntimeError, match=r"ppm_add: expected weight of shape \[Cout, Cin, 1, 1\] "
                                           r"with Cin = 3, got \[5, 4, 1, 1\]"):
        ops.ppm_add(xp, torch.randn(5, 4, 1, 1, device=CUDA), residual)
    with pytest.raises(RuntimeError, match=r"_ppm_add_backward: expected grad_out of shape "
                                           r"\[2, 5, 4, 5\], got \[2, 5, 4, 4\]"):
        ops._ppm_add_backward(residual[..., :4], xp, weight)
    args = stage_inputs((2, 3, 5, 7, 9), 3, "contiguous", CUDA)
    bad = list(args)
    bad[1] = torch.randn(3, 1, 4, 4, device=CUDA)
    with pytest.raises(RuntimeError, match=r"dasp_stage: expected an odd kernel size K in 1, 3, 5, 7, "
                                           r"got K = 4"):
        ops.dasp_stage(*bad)
    bad = list(args)
    bad[7] = torch.randn(5, 2, 1, 1, device=CUDA)
    with pytest.raises(RuntimeError, match=r"dasp_stage: expected ppm_weight of shape \[5, 3, 1, 1\], "
                                           r"got \[5, 2, 1, 1\]"):
        ops.dasp_stage(*bad)
    with pytest.raises(RuntimeError, match=r"_dasp_stage_backward: expected grad_out of shape "
                                           r"\[2, 5, 4, 5\], got \[2, 5, 4, 4\]"):
        ops._dasp_stage_backward(torch.randn(2, 5, 4, 4, device=CUDA), *args)


@gpu_test
def test_current_stream_is_used():
    x = make_x((4, 16, 64, 63), "channels_last", CUDA)
    w, sc, sh = dw_params(16, 7, CUDA)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        y = dw_relu(torch.ops.dasp_kernels, x, w, sc, sh, 2, 3, True)
        out = torch.ops.dasp_kernels.dasp_stage(*stage_inputs((2, 16, 32, 33, 31), 3, "contiguous", CUDA))
        # the kernels were queued on `stream`: the default stream sees them only after syncing
    torch.cuda.current_stream().wait_stream(stream)
    close(y, ref.dwconv_bn_relu(x, w, sc, sh, 2, 3, True), 1e-5)
    assert torch.isfinite(out).all()


@gpu_test
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_second_device():
    dev = torch.device("cuda", 1)
    x = make_x((2, 3, 9, 8), "contiguous", dev)
    w, sc, sh = dw_params(3, 3, dev)
    y = dw_relu(torch.ops.dasp_kernels, x, w, sc, sh, 2, 1, True)
    assert y.device == dev
    close(y, ref.dwconv_bn_relu(x, w, sc, sh, 2, 1, True), 1e-5)


@gpu_test
@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available()
                    or torch.cuda.get_device_properties(0).total_memory < 24 * 2 ** 30,
                    reason="needs a CUDA device with 24 GiB")
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_more_than_2_31_elements(layout):
    # 1 x 2 x 32769 x 32769 float16 > 2^31 elements: only int64 offsets reach the last rows.
    h = 32769
    x = torch.empty(1, 2, h, h, device=CUDA, dtype=torch.float16)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    x.normal_()
    w, sc, sh = dw_params(2, 3, CUDA, torch.float16)
    y = dw_relu(torch.ops.dasp_kernels, x, w, sc, sh, 1, 1, False)
    tail = ref.dwconv_bn_relu(x[:, :, -4:].float(), w.float(), sc.float(), sh.float(), 1, 1, False)
    close(y[:, :, -2:], tail[:, :, -2:], 2e-2)
    del y
    xp = x[:, :, -9:]
    weight = torch.randn(3, 2, 1, 1, device=CUDA, dtype=torch.float16)
    out = torch.ops.dasp_kernels.ppm_add(x, weight, torch.zeros(1, 3, (h + 1) // 2, (h + 1) // 2,
                                                                device=CUDA, dtype=torch.float16))
    close(out[:, :, -4:], ref.ppm_add(xp.float(), weight.float(), torch.zeros(1, 3, 5, (h + 1) // 2,
                                                                              device=CUDA))[:, :, -4:], 2e-2)


# ------------------------------------------------------------------------------------------------
# Runs wherever the extension was built with the CUDA sources, GPU or not.

def _so_mentions_cuda_sources():
    if _loader._C is None:
        return False
    with open(_loader._C.__file__, "rb") as f:
        blob = f.read()
    return any(name.encode() in blob for name in CUDA_SOURCES)


@pytest.mark.skipif(not (_loader.built_with_cuda() or _so_mentions_cuda_sources()),
                    reason="the extension was built without the CUDA sources")
def test_cuda_kernels_compiled_in():
    with open(_loader._C.__file__, "rb") as f:
        blob = f.read()
    for name in CUDA_SOURCES:  # each TORCH_LIBRARY_IMPL records its __FILE__
        assert name.encode() in blob, f"{name} is not compiled into {_loader._C.__file__}"
    missing = [op for op in OPS
               if not torch._C._dispatch_has_kernel_for_dispatch_key(f"dasp_kernels::{op}", "CUDA")]
    assert not missing, f"no CUDA kernel registered for {missing}"
