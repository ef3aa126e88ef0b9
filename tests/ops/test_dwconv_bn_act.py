"""Every test of dwconv_bn_act: its cases on every backend (tests/ops/op_harness.py) against
reference.dwconv_bn_act, forward and backward; gradcheck, opcheck, errors, the old dwconv_bn_relu
call, "same" padding against timm's Conv2dSame, the narrower CPU builds; then the checks written
against the registered ops of several backends (Target: cpu, Triton, CUDA, the CUDA emulator),
and the cases only one backend's kernels need (test_cpu_*, test_triton_*, test_cuda_*).

The DASP stage calls it in the "relu form": symmetric padding, ReLU or none, dilation 1."""
import re

import pytest
import torch

import dasp_kernels
from dasp_kernels import _backends, _checks, cases, reference
from inputs import dw_inputs, make_x, place
from op_harness import BACKENDS, HALF_TOL, LAYOUTS, backends, check_all, check_format, close
from op_harness import check_autograd, close_scaled, close_to_ref, device_of, make_runner
from op_harness import make_target
from op_harness import masked_grad, output_format_is
from op_harness import emu_ops  # noqa: F401  (the emulator's fixture)
from op_harness import narrower_build_check
from dwconv_helpers import ACT_ARGS, ACT_CASES, ACT_SHAPES, ALL_LAYOUTS, CPU, CPU_SHAPES, WIDE
from dwconv_helpers import GRADCHECK_GEOMETRIES, RELU_FORM_CASES, RELU_FORM_SHAPES
from dwconv_helpers import TRITON_GRADCHECKS, act_masked_grad, act_padding, act_reference
from dwconv_helpers import check_relu_form, check_relu_form_float64, cpu_only, direct_errors
from dwconv_helpers import dw_relu, dw_relu_backward, relu_form_reference_grads, skip_half_on_cpu

OP = "dwconv_bn_act"


@pytest.fixture(params=BACKENDS)
def run(request):
    return make_runner(request, OP)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_matches_reference(run, layout):
    check_all(run, layout)


@pytest.mark.parametrize("act", sorted(cases.ACT_ARGS))
@pytest.mark.parametrize("backend", backends("cpu", "cuda", "emu"))
def test_gradcheck(backend, act, request):
    # The Triton interpreter is too slow for finite differences; its backward is compared with
    # the reference's autograd in test_matches_reference.
    run = make_runner(request, OP, backend)
    case = cases.dw_case(2, 3, 6, 7, 3, 2, (1, 2, 0, 1), 2, act)
    gen = torch.Generator().manual_seed(1)
    x, params = cases.make_inputs(case, gen)
    for layout in ("contiguous", "channels_last"):
        leaves = [cases.with_layout(x, layout).requires_grad_(),
                  *(p.clone().requires_grad_() for p in params)]
        assert torch.autograd.gradcheck(lambda *t: run(case, t[0], list(t[1:])), leaves)


# (shape, K, stride, padding [top, bottom, left, right], dilation, act, alpha, beta)
OPCHECK_CASES = [((2, 4, 7, 6), 3, 2, [0, 1, 0, 1], 1, "silu", 0.0, 0.0),  # "same"
                 ((2, 3, 9, 8), 3, 2, [1, 0, 2, 1], 2, "hardtanh", -0.5, 0.5)]


@pytest.mark.parametrize("case", range(len(OPCHECK_CASES)))
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("backend", backends("cpu", "triton", "cuda"))
def test_opcheck(backend, layout, case, request):
    """Registration, fake and strides of the op and its backward op."""
    tgt = make_target(request, backend)
    shape, k, *conf = OPCHECK_CASES[case]
    x, params = dw_inputs(shape, k, layout, device=tgt.device)
    leaves = [t.requires_grad_() for t in (x, *params)]
    torch.library.opcheck(tgt.dwconv_bn_act, (*leaves, *conf))
    y = tgt.dwconv_bn_act(x.detach(), *[p.detach() for p in params], *conf)
    torch.library.opcheck(tgt._dwconv_bn_act_backward,
                          (torch.randn_like(y), x.detach(), *[p.detach() for p in params], *conf))


def _ok():
    return dict(x=torch.randn(1, 3, 8, 8), weight=torch.randn(3, 1, 3, 3), scale=torch.randn(3),
                shift=torch.randn(3), stride=1, padding=[1, 1, 1, 1], dilation=1, act="relu")


BAD = {
    "dtype mismatch": dict(weight=torch.randn(3, 1, 3, 3, dtype=torch.float64)),
    "rank": dict(x=torch.randn(3, 8, 8)),
    "weight not square": dict(weight=torch.randn(3, 1, 3, 5)),
    "weight channels": dict(weight=torch.randn(4, 1, 3, 3)),
    "scale channels": dict(scale=torch.randn(4)),
    "shift rank": dict(shift=torch.randn(3, 1)),
    "K > 9": dict(weight=torch.randn(3, 1, 11, 11), padding=[5, 5, 5, 5]),
    "stride 3": dict(stride=3),
    "dilation 0": dict(dilation=0),
    "negative padding": dict(padding=[1, -1, 1, 1]),
    "padding beyond the kernel": dict(padding=[1, 1, 3, 1]),
    "too small": dict(x=torch.randn(1, 3, 1, 8), weight=torch.randn(3, 1, 5, 5)),
    "dilated too small": dict(x=torch.randn(1, 3, 4, 8), dilation=3),
    "unknown activation": dict(act="relu7"),
}


@pytest.mark.parametrize("name", BAD)
def test_errors_say_the_same_everywhere(name):
    """The wrapper's ValueError, the fake's and the C++ kernel's errors say the same words."""
    if _backends.backend_status()["cpu"] is not None:
        pytest.skip("the C++ extension did not load")
    a = {**_ok(), **BAD[name]}
    with pytest.raises(ValueError) as py_err:
        dasp_kernels.dwconv_bn_act(a["x"], a["weight"], a["scale"], a["shift"], stride=a["stride"],
                                   padding=a["padding"], dilation=a["dilation"], act=a["act"],
                                   backend="cpu")
    msg = str(py_err.value)
    assert msg.startswith("dwconv_bn_act: expected"), msg
    args = (a["x"], a["weight"], a["scale"], a["shift"], a["stride"], a["padding"], a["dilation"],
            a["act"], 0.0, 0.0)
    with pytest.raises(RuntimeError, match=re.escape(msg)):
        torch.ops.dasp_kernels.dwconv_bn_act(*args)
    with pytest.raises(RuntimeError, match=re.escape(msg)):
        torch.ops.dasp_kernels._dwconv_bn_act_backward(torch.zeros(1), *args)
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode, pytest.raises(Exception, match=re.escape(msg)):
        fake = [mode.from_tensor(t) if isinstance(t, torch.Tensor) else t for t in args]
        torch.ops.dasp_kernels.dwconv_bn_act(*fake)


def test_dwconv_bn_relu_is_dwconv_bn_act():
    """The old call is the new op with act "relu" or "none", bit for bit."""
    x, (w, sc, sh) = cases.make_inputs(cases.dw_case(2, 8, 13, 11, 5), torch.Generator())
    x, w, sc, sh = (t.float() for t in (x, w, sc, sh))
    for backend in dasp_kernels.available_backends():
        if backend in ("cuda",) or (backend == "triton" and torch.cuda.is_available()):
            continue
        for relu, act in ((True, "relu"), (False, "none")):
            old = dasp_kernels.dwconv_bn_relu(x, w, sc, sh, stride=2, padding=2, relu=relu,
                                              backend=backend)
            new = dasp_kernels.dwconv_bn_act(x, w, sc, sh, stride=2, padding=2, act=act,
                                             backend=backend)
            assert torch.equal(old, new), backend


def test_same_padding_matches_timm_conv2d_same():
    """padding="same" is timm's Conv2dSame (TensorFlow's "SAME"), which no one here wrote."""
    timm_layers = pytest.importorskip("timm.layers")
    for (h, w), k, s, d in [((9, 10), 3, 2, 1), ((7, 7), 5, 2, 1), ((8, 11), 3, 1, 2),
                            ((12, 13), 4, 2, 1)]:
        conv = timm_layers.Conv2dSame(6, 6, k, stride=s, dilation=d, groups=6, bias=True).double()
        x = torch.randn(2, 6, h, w, dtype=torch.float64)
        ones, zeros = torch.ones(6, dtype=torch.float64), torch.zeros(6, dtype=torch.float64)
        with torch.no_grad():
            want = conv(x)
            for backend in dasp_kernels.available_backends():
                if backend == "cuda" or (backend == "triton" and torch.cuda.is_available()):
                    continue
                got = dasp_kernels.dwconv_bn_act(x, conv.weight, ones, zeros, bias=conv.bias,
                                                 stride=s, padding="same", dilation=d, act="none",
                                                 backend=backend)
                torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10, msg=backend)


@pytest.mark.parametrize("isa", ["avx2", "default"])
def test_narrower_isa_builds(isa):
    narrower_build_check(OP, isa)


def test_wrapper_only_arguments_say_what_is_wrong():
    """padding forms and bias exist only in the wrapper: its own clear errors."""
    x, (w, sc, sh) = cases.make_inputs(cases.dw_case(1, 3, 8, 8, 3), torch.Generator())
    with pytest.raises(ValueError, match=re.escape(
            "dwconv_bn_act: expected padding as an int, (pad_h, pad_w), (top, bottom, left, "
            "right) or 'same', got 'valid'")):
        dasp_kernels.dwconv_bn_act(x, w, sc, sh, padding="valid", backend="reference")
    with pytest.raises(ValueError, match=re.escape("got (1, 1, 1)")):
        dasp_kernels.dwconv_bn_act(x, w, sc, sh, padding=(1, 1, 1), backend="reference")
    with pytest.raises(ValueError, match=re.escape(
            "dwconv_bn_act: expected bias to have the dtype of x (float64), got float32")):
        dasp_kernels.dwconv_bn_act(x, w, sc, sh, bias=torch.zeros(3), backend="reference")
    with pytest.raises(ValueError, match=re.escape(
            "dwconv_bn_act: expected bias of shape [3], got [4]")):
        dasp_kernels.dwconv_bn_act(x, w, sc, sh, bias=torch.zeros(4, dtype=torch.float64),
                                   backend="reference")


# ---------------------------------------------------------------------------------------------
# The registered ops of several backends, called directly (op_harness.Target).

@pytest.fixture(params=backends("cpu", "cuda", "emu"))
def tgt(request):
    return make_target(request)


@pytest.mark.parametrize("layout", ALL_LAYOUTS)
@pytest.mark.parametrize("k,s,p", RELU_FORM_CASES)
def test_relu_form_forward_backward(tgt, k, s, p, layout):
    """float32 against the float64 reference; gradients masked near ReLU's kink."""
    i = RELU_FORM_CASES.index((k, s, p))
    relu = (i + ALL_LAYOUTS.index(layout)) % 3 != 0
    shape = RELU_FORM_SHAPES[(i + ALL_LAYOUTS.index(layout)) % len(RELU_FORM_SHAPES)]
    x, (w, sc, sh) = dw_inputs(shape, k, layout, device=tgt.device)
    y = dw_relu(tgt, x, w, sc, sh, s, p, relu)
    y64 = reference.dwconv_bn_relu(x.double(), w.double(), sc.double(), sh.double(), s, p, False)
    yr = torch.relu(y64) if relu else y64
    assert y.shape == yr.shape and y.dtype == x.dtype
    check_format(y, x)
    close(y, yr, 1e-5)
    g = torch.randn(yr.shape, device=tgt.device)
    if relu:
        g = masked_grad(g, y64, 1e-3)
    grads = dw_relu_backward(tgt, g, x, w, sc, sh, s, p, relu)
    check_format(grads[0], x)
    for got, exp, like in zip(grads, relu_form_reference_grads(x, w, sc, sh, s, p, relu, g),
                              (x, w, sc, sh)):
        assert got.shape == like.shape and got.dtype == like.dtype
        close(got, exp, 2e-4)
    assert all(t.is_contiguous() for t in grads[1:])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("k,s,p", [(3, 2, 1), (7, 2, 3), (4, 1, 2)])
def test_relu_form_dtypes(tgt, dtype, layout, k, s, p):
    skip_half_on_cpu(tgt, dtype)
    x, (w, sc, sh) = dw_inputs((2, 6, 13, 10), k, layout, dtype, tgt.device)
    y = dw_relu(tgt, x, w, sc, sh, s, p, True)
    assert y.dtype == dtype
    check_format(y, x)
    # The half types against the float64 reference on the same (rounded) inputs.
    y64 = reference.dwconv_bn_relu(x.double(), w.double(), sc.double(), sh.double(), s, p, False)
    tol = HALF_TOL.get(dtype, 1e-12)
    close(y, torch.relu(y64), tol)
    g = masked_grad(torch.randn(y.shape, device=tgt.device), y64, 0.05).to(dtype)
    grads = dw_relu_backward(tgt, g, x, w, sc, sh, s, p, True)
    for got, exp in zip(grads, relu_form_reference_grads(x, w, sc, sh, s, p, True, g)):
        assert got.dtype == dtype
        close_scaled(got, exp, tol)  # reductions over N*Ho*Wo terms


def test_relu_form_backward_deterministic(tgt):
    x, (w, sc, sh) = dw_inputs((2, 8, 40, 37), 5, "channels_last", device=tgt.device)
    g = torch.randn(2, 8, 20, 19, device=tgt.device)
    a = dw_relu_backward(tgt, g, x, w, sc, sh, 2, 2, True)
    b = dw_relu_backward(tgt, g, x, w, sc, sh, 2, 2, True)
    for u, v in zip(a, b):
        assert torch.equal(u, v)


def test_all_padding_rows(tgt):
    # H = 1 with padding K - 1: most taps fall in the padding; a whole output row sees only padding.
    x, (w, sc, sh) = dw_inputs((2, 3, 1, 6), 5, device=tgt.device)
    y = dw_relu(tgt, x, w, sc, sh, 1, 4, False)
    close(y, reference.dwconv_bn_relu(x, w, sc, sh, 1, 4, False), 1e-5)


@pytest.mark.parametrize("layout", ALL_LAYOUTS)
@pytest.mark.parametrize("k,s,d", ACT_CASES)
def test_act_forward_backward(tgt, k, s, d, layout):
    # float64: the kernels' sums agree with the reference to ~1e-15, so no kink needs masking and
    # every activation's backward is checked everywhere.
    i = ACT_CASES.index((k, s, d)) * len(ALL_LAYOUTS) + ALL_LAYOUTS.index(layout)
    act = _checks.ACTIVATIONS[i % len(_checks.ACTIVATIONS)]
    pad = act_padding(i, k, d)
    n, c, h, w = ACT_SHAPES[i % len(ACT_SHAPES)]
    span = d * (k - 1)  # the map must hold one window: H + top + bottom > span
    shape = (n, c, max(h, span + 1 - pad[0] - pad[1]), max(w, span + 2 - pad[2] - pad[3]))
    conf = (s, pad, d, act, *ACT_ARGS.get(act, (0.0, 0.0)))
    x, (w, sc, sh) = dw_inputs(shape, k, layout, torch.float64, tgt.device)
    y = tgt.dwconv_bn_act(x, w, sc, sh, *conf)
    g = torch.randn(y.shape, device=tgt.device, dtype=torch.float64)
    yr, expected = act_reference(x, w, sc, sh, conf, g)
    assert y.shape == yr.shape and y.dtype == x.dtype
    check_format(y, x)
    close(y, yr, 1e-12)
    grads = tgt._dwconv_bn_act_backward(g, x, w, sc, sh, *conf)
    check_format(grads[0], x)
    for got, exp, like in zip(grads, expected, (x, w, sc, sh)):
        assert got.shape == like.shape and got.dtype == like.dtype
        close(got, exp, 1e-10)
    assert all(t.is_contiguous() for t in grads[1:])


@pytest.mark.parametrize("act", _checks.ACTIVATIONS)
def test_act_float32(tgt, act):
    # float32 in, float64 reference: the activation formulas in single precision.
    i = _checks.ACTIVATIONS.index(act)
    layout = ("contiguous", "channels_last")[i % 2]
    k, s, d = ((3, 2, 1), (5, 1, 2), (9, 1, 1), (7, 2, 1))[i % 4]
    conf = (s, act_padding(i, k, d), d, act, *ACT_ARGS.get(act, (0.0, 0.0)))
    x, (w, sc, sh) = dw_inputs((2, 6, 19, 17), k, layout, device=tgt.device)
    x = x * 3  # reach hardswish's and gelu's tails
    y = tgt.dwconv_bn_act(x, w, sc, sh, *conf)
    g = act_masked_grad(torch.randn(y.shape, device=tgt.device), x, w, sc, sh, conf, 1e-3)
    yr, expected = act_reference(x, w, sc, sh, conf, g)
    close(y, yr, 1e-5)
    for got, exp in zip(tgt._dwconv_bn_act_backward(g, x, w, sc, sh, *conf), expected):
        assert got.dtype == torch.float32
        close_scaled(got, exp, 2e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("k,s,d,act", [(3, 2, 1, "hardswish"), (9, 1, 2, "gelu")])
def test_act_half_dtypes(tgt, dtype, layout, k, s, d, act):
    skip_half_on_cpu(tgt, dtype)
    conf = (s, act_padding(1, k, d), d, act, 0.0, 0.0)
    x, (w, sc, sh) = dw_inputs((2, 6, 20, 19), k, layout, dtype, tgt.device)
    y = tgt.dwconv_bn_act(x, w, sc, sh, *conf)
    assert y.dtype == dtype
    check_format(y, x)
    g = act_masked_grad(torch.randn(y.shape, device=tgt.device), x, w, sc, sh, conf, 0.05)
    g = g.to(dtype)
    yr, expected = act_reference(x, w, sc, sh, conf, g)
    close(y, yr, HALF_TOL[dtype])
    for got, exp in zip(tgt._dwconv_bn_act_backward(g, x, w, sc, sh, *conf), expected):
        assert got.dtype == dtype
        close_scaled(got, exp, HALF_TOL[dtype])


@pytest.mark.parametrize("backend", BACKENDS)
def test_act_nan_and_edges(backend, request):
    # NaN propagates through every activation as in torch; hardtanh's edges and relu's 0 pass no
    # gradient (autograd's rule), which a product with a 0/1 mask would turn into NaN for inf.
    tgt = make_target(request, backend)
    x = make_x(1, 2, 6, 7, "contiguous", torch.float64, tgt.device)
    x[0, 0, 2, 3] = float("nan")
    x[0, 1, 0, :3] = torch.tensor([-0.5, 0.75, 0.0])
    w = torch.ones(2, 1, 1, 1, device=tgt.device, dtype=torch.float64)
    sc = torch.ones(2, device=tgt.device, dtype=torch.float64)
    sh = torch.zeros(2, device=tgt.device, dtype=torch.float64)
    for act in _checks.ACTIVATIONS:
        conf = (1, [0, 0, 0, 0], 1, act, *ACT_ARGS.get(act, (0.0, 0.0)))
        y = tgt.dwconv_bn_act(x, w, sc, sh, *conf)
        close(y, reference.dwconv_bn_act(x, w, sc, sh, *conf), 1e-12)
        g = torch.ones_like(y)
        g[0, 1, 0, :3] = float("inf")
        gx = tgt._dwconv_bn_act_backward(g, x, w, sc, sh, *conf)[0]
        _, (ex, *_) = act_reference(x, w, sc, sh, conf, g)
        if act in ("hardswish", "hardtanh"):  # ATen's answer at NaN depends on the position
            gx[0, 0, 2, 3] = ex[0, 0, 2, 3] = 0
        close(gx, ex, 1e-12)


def test_act_backward_deterministic(tgt):
    x, (w, sc, sh) = dw_inputs((2, 8, 40, 37), 5, "channels_last", device=tgt.device)
    conf = (2, [1, 3, 4, 2], 2, "silu", 0.0, 0.0)
    g = torch.randn(2, 8, 18, 18, device=tgt.device)
    a = tgt._dwconv_bn_act_backward(g, x, w, sc, sh, *conf)
    b = tgt._dwconv_bn_act_backward(g, x, w, sc, sh, *conf)
    for u, v in zip(a, b):
        assert torch.equal(u, v)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend, layout, request):
    """N = 0: the output's shape and format; zero weight gradients, from the backward op and (but
    on the emulator, which has no autograd) through autograd."""
    tgt = make_target(request, backend)
    x, (w, sc, sh) = dw_inputs((0, 3, 9, 8), 3, layout, device=tgt.device)
    for conf, out_hw in (((2, [1] * 4, 1, "relu", 0.0, 0.0), (5, 4)),
                         ((2, [0, 1, 2, 1], 2, "gelu", 0.0, 0.0), (3, 4))):
        y = tgt.dwconv_bn_act(x, w, sc, sh, *conf)
        assert y.shape == (0, 3, *out_hw)
        check_format(y, x)
        grads = tgt._dwconv_bn_act_backward(y, x, w, sc, sh, *conf)
        assert grads[0].shape == x.shape and all(bool((t == 0).all()) for t in grads[1:])
        if backend == "emu":
            continue
        leaves = [t.detach().clone().requires_grad_() for t in (x, w, sc, sh)]
        tgt.dwconv_bn_act(*leaves, *conf).sum().backward()
        assert leaves[0].grad.shape == x.shape
        assert all(not t.grad.any() for t in leaves[1:])


# ---------------------------------------------------------------------------------------------
# The CPU kernels' own cases: bands, planes, vector blocks, streamed outputs, masks.

@cpu_only
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("k", range(1, 8))
def test_cpu_relu_form_every_padding(k, stride):
    """Every padding 0..K-1 over odd and degenerate shapes (H = 1, W = 1, C = 1, 64, 128) and
    three layouts, float32."""
    for shape in CPU_SHAPES:
        for pad in range(k):
            if shape[2] + 2 * pad < k or shape[3] + 2 * pad < k:
                continue
            x, params = dw_inputs(shape, k)
            relu = (pad + k) % 2 == 0  # both activations over the matrix
            for layout in LAYOUTS:
                check_relu_form(place(x, layout), params, stride, pad, relu,
                                tag=f"{shape} K={k} s={stride} p={pad} relu={relu} {layout}")


@cpu_only
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_cpu_float64_backward_exact(layout):
    check_relu_form_float64([((2, 3, 13, 12), 7, 2), ((1, 16, 10, 11), 3, 1), ((1, 9, 8, 9), 4, 2),
                             ((1, 3, 7, 6), 6, 1)], lambda k: (0, k // 2, k - 1), layout)


@cpu_only
@pytest.mark.parametrize("threads", [3, 4])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_cpu_bands(layout, threads):
    """Images tall enough to be cut into several row bands per plane (one task each): the
    backward's halo rows and the per-band weight-gradient sums must add up exactly once."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        check_relu_form_float64([((1, 3, 150, 37), 7, 2), ((1, 2, 133, 20), 5, 1),
                                 ((2, 8, 70, 9), 3, 1), ((1, 3, 97, 21), 4, 2)],
                                lambda k: (0, k - 1), layout)
    finally:
        torch.set_num_threads(old)


@cpu_only
@pytest.mark.parametrize("k,stride", [(7, 2), (3, 1), (4, 2), (5, 2), (1, 1)])
def test_cpu_few_channels_last_runs_by_planes(k, stride):
    """Channels-last inputs with fewer than 4 channels go forward plane by plane (the NCHW kernel
    reading strided pixels; 3 float channels split from each pixel row in one pass and interleaved
    back, fwd_rgb): wide rows that use the full vector blocks, rows narrower than one vector, same
    bits as NCHW."""
    for shape in [(2, 3, 19, 301), (1, 3, 6, 5), (1, 3, 11, 40), (1, 1, 9, 130), (1, 2, 8, 75)]:
        x0, (w, sc, sh) = dw_inputs(shape, k)
        x = place(x0, "channels_last")
        y = dw_relu(CPU, x, w, sc, sh, stride, k // 2, True)
        check_format(y, x)
        close_to_ref(y, reference.dwconv_bn_relu(x0, w, sc, sh, stride, k // 2, True),
                     torch.float32)
        assert torch.equal(y, dw_relu(CPU, x0, w, sc, sh, stride, k // 2, True))


@cpu_only
def test_cpu_rgb_channels_last_large_output_streamed():
    """A channels-last RGB output of 16 MiB and more goes out in non-temporal vector stores."""
    x0, (w, sc, sh) = dw_inputs((1, 3, 1201, 1203), 3)
    y = dw_relu(CPU, place(x0, "channels_last"), w, sc, sh, 1, 1, True)
    assert y.numel() * 4 >= 16 * 2**20 and y.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(y, dw_relu(CPU, x0, w, sc, sh, 1, 1, True))


@cpu_only
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_cpu_large_outputs_streamed(layout):
    """Outputs of 16 MiB and more are written with non-temporal stores: aligned and odd rows."""
    for (h, w), s in (((513, 511), 1), ((1024, 1030), 2)):
        x, (wt, sc, sh) = dw_inputs((1, 16, h, w), 3, layout)
        y = dw_relu(CPU, x, wt, sc, sh, s, 1, True)
        close_to_ref(y, reference.dwconv_bn_relu(x, wt, sc, sh, s, 1, True), torch.float32)
        go = torch.randn_like(y)
        gx = dw_relu_backward(CPU, go, x, wt, sc, sh, s, 1, True)[0]
        want = relu_form_reference_grads(x, wt, sc, sh, s, 1, True, go, torch.float32)[0]
        close_to_ref(gx, want, torch.float32, grad=True)


@cpu_only
@pytest.mark.parametrize("k", [3, 5, 7])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_cpu_wide_stride2_rows(k, layout):
    # The stride-2 tap loop's full blocks, single vectors and masked row ends, forward and backward.
    x, (w, sc, sh) = dw_inputs((2, 3, 11, WIDE), k, layout)
    y = dasp_kernels.dwconv_bn_relu(x, w, sc, sh, stride=2, padding=k // 2, backend="cpu")
    torch.testing.assert_close(y, reference.dwconv_bn_relu(x, w, sc, sh, 2, k // 2, True),
                               rtol=1e-4, atol=1e-4)
    go = torch.randn_like(y)
    want = relu_form_reference_grads(x, w, sc, sh, 2, k // 2, True, go, torch.float32)
    got = dw_relu_backward(CPU, go, x, w, sc, sh, 2, k // 2, True)
    for name, a, b in zip(("x", "weight", "scale", "shift"), got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-3,
                                   msg=lambda m, n=name: f"grad {n}: {m}")


@cpu_only
def test_cpu_relu_mask_and_nan():
    """The ReLU backward is torch.relu's (zero where relu(y) <= 0): y == 0 passes no gradient, a
    NaN y passes it; NaN and inf in x propagate as in the reference, also from columns that no
    output reads."""
    x, (w, sc, sh) = dw_inputs((1, 4, 9, 10), 3)
    x[0, 0, 4, 4] = float("nan")
    x[0, 1, 2, 9] = float("inf")  # last column: read only by the stride-1 outputs
    sh[2] = 0.0
    w[2] = 0.0  # channel 2: y == 0 exactly everywhere
    for s in (1, 2):
        for pad in (0, 1):
            _, got = check_relu_form(x, (w, sc, sh), s, pad, True)
            assert got[1][2].abs().sum() == 0 and got[3][2] == 0


@pytest.mark.parametrize("backend", backends("cpu", "cuda", "emu"))
def test_grad_out_any_strides(backend, request):
    tgt = make_target(request, backend)
    x, (w, sc, sh) = dw_inputs((2, 3, 8, 9), 3, "channels_last", device=tgt.device)
    y = dw_relu(tgt, x, w, sc, sh, 2, 1, False)
    ones = torch.ones(1, device=tgt.device).expand(y.shape)
    transposed = torch.randn(y.shape[::-1], device=tgt.device).permute(3, 2, 1, 0)
    for go in (ones, transposed):
        got = dw_relu_backward(tgt, go, x, w, sc, sh, 2, 1, False)
        want = relu_form_reference_grads(x, w, sc, sh, 2, 1, False, go, torch.float32)
        for a, b in zip(got, want):
            close_to_ref(a, b, torch.float32, grad=True)


@pytest.mark.parametrize("geometry", range(len(GRADCHECK_GEOMETRIES)))
@pytest.mark.parametrize("backend", backends("cpu", "triton", "cuda"))
def test_gradcheck_geometries(backend, geometry, request):
    """Finite differences of the registered op, float64, over K, padding and dilation forms (the
    Triton interpreter: the small ones, in fast mode)."""
    if backend == "triton" and geometry not in TRITON_GRADCHECKS:
        pytest.skip("too slow for the Triton interpreter: a small geometry covers its kernels")
    tgt = make_target(request, backend)
    shape, k, s, pad, d, act, layouts, fast = GRADCHECK_GEOMETRIES[geometry]
    for layout in layouts:
        x, params = dw_inputs(shape, k, layout, torch.float64, tgt.device)
        leaves = [t.requires_grad_() for t in (x, *params)]
        assert torch.autograd.gradcheck(lambda *a: tgt.dwconv_bn_act(*a, s, pad, d, act, 0.0, 0.0),
                                        leaves, fast_mode=fast)


@pytest.mark.parametrize("backend", backends("cpu", "cuda"))
def test_autograd_is_the_backward_op(backend, request):
    """Autograd through the op gives exactly what its backward op gives."""
    tgt = make_target(request, backend)
    x, params = dw_inputs((2, 5, 11, 9), 3, "channels_last", device=tgt.device)
    leaves = [t.requires_grad_() for t in (x, *params)]
    for conf in ((2, [1] * 4, 1, "relu", 0.0, 0.0), (2, [1, 0, 2, 1], 2, "silu", 0.0, 0.0)):
        y = tgt.dwconv_bn_act(*leaves, *conf)
        g = torch.randn_like(y)
        got = torch.autograd.grad(y, leaves, g)
        for a, b in zip(got, tgt._dwconv_bn_act_backward(g, *leaves, *conf)):
            assert torch.equal(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
def test_direct_op_errors(backend, request):
    """The registered ops of every backend reject bad arguments with the checks' words; the old
    wrapper dwconv_bn_relu says dwconv_bn_act."""
    tgt = make_target(request, backend)
    x, (w, sc, sh) = dw_inputs((2, 3, 9, 8), 3, device=tgt.device)
    for call, msg in direct_errors(x, w, sc, sh, tgt.device):
        with pytest.raises(RuntimeError, match=re.escape(msg)):
            call(tgt)
    if backend != "emu":
        with pytest.raises(ValueError, match=r"dwconv_bn_act: expected stride 1 or 2, got 3"):
            dasp_kernels.dwconv_bn_relu(x, w, sc, sh, stride=3, backend=backend)


@pytest.mark.parametrize("backend", backends("cuda"))
def test_cuda_public_functions_take_the_cuda_kernels(backend):
    x, (w, sc, sh) = dw_inputs((2, 3, 9, 8), 3, "channels_last", device="cuda")
    y = dasp_kernels.dwconv_bn_relu(x, w, sc, sh, stride=2, padding=1, backend="cuda")
    close(y, reference.dwconv_bn_relu(x, w, sc, sh, 2, 1, True), 1e-5)
    y = dasp_kernels.dwconv_bn_act(x, w, sc, sh, stride=2, padding="same", act="hardswish",
                                   backend="cuda")
    close(y, reference.dwconv_bn_act(x, w, sc, sh, 2, [0, 1, 0, 1], 1, "hardswish"), 1e-5)


# ---------------------------------------------------------------------------------------------
# Small cases through the public functions, against autograd through the reference (sized for
# the Triton interpreter; op_harness.check_autograd).

# (C, H, W, K, stride, padding, layout): every K in 1..7, even K too, every padding class.
SMALL_RELU_FORM_CASES = [
    (3, 9, 11, 1, 1, 0, "contiguous"), (16, 9, 11, 2, 2, 1, "channels_last"),
    (3, 9, 11, 3, 1, 1, "sliced"), (1, 7, 5, 3, 2, 0, "contiguous"),
    (16, 9, 11, 4, 1, 3, "contiguous"), (3, 8, 6, 5, 2, 2, "channels_last"),
    (16, 9, 11, 6, 2, 5, "sliced"), (3, 9, 11, 7, 2, 3, "contiguous"),
    (16, 7, 9, 7, 1, 6, "channels_last"),
    (1, 4, 3, 7, 1, 2, "contiguous"),  # a map smaller than the kernel, only reachable by padding
]
# (C, H, W, K, stride, dilation, padding, act, layout): every activation, K 1..9, dilation 1..3,
# four different sides, each layout. float64, so that no pre-activation is close enough to a kink
# for rounding to pick the other side.
SMALL_ACT_CASES = [
    (3, 9, 11, 1, 2, 1, [0, 0, 0, 0], "none", "contiguous"),
    (16, 9, 11, 3, 1, 2, [2, 0, 1, 4], "relu", "channels_last"),
    (3, 10, 9, 5, 2, 1, [0, 3, 4, 1], "hardtanh", "sliced"),
    (2, 12, 13, 7, 1, 1, [6, 0, 3, 2], "hardswish", "contiguous"),
    (16, 9, 10, 9, 2, 1, [8, 8, 4, 0], "silu", "channels_last"),
    (3, 11, 12, 3, 2, 3, [6, 5, 0, 3], "gelu", "sliced"),
    (1, 8, 9, 4, 1, 2, [1, 2, 6, 0], "gelu_tanh", "contiguous"),
    (5, 16, 15, 9, 1, 2, [16, 3, 0, 9], "leaky_relu", "channels_last"),
    (2, 5, 4, 5, 1, 1, [4, 4, 4, 4], "gelu", "contiguous"),  # smaller than the kernel
]
WRAPPER_BACKENDS = backends("cpu", "triton", "cuda")


def act_wrapper(stride, padding, dilation, act, backend):
    alpha, beta = ACT_ARGS.get(act, (0.0, 0.0))
    if backend == "reference":
        return lambda *a: reference.dwconv_bn_act(*a, stride, padding, dilation, act, alpha, beta)
    return lambda *a: dasp_kernels.dwconv_bn_act(*a, stride=stride, padding=padding,
                                                 dilation=dilation, act=act, alpha=alpha,
                                                 beta=beta, backend=backend)


@pytest.mark.parametrize("c,h,w,k,stride,padding,layout", SMALL_RELU_FORM_CASES)
@pytest.mark.parametrize("backend", WRAPPER_BACKENDS)
def test_small_relu_form_cases(backend, c, h, w, k, stride, padding, layout):
    x, params = dw_inputs((2, c, h, w), k, layout, device=device_of(backend))
    y = check_autograd(
        lambda *a: dasp_kernels.dwconv_bn_relu(*a, stride=stride, padding=padding, backend=backend),
        lambda *a: reference.dwconv_bn_relu(*a, stride, padding, True),
        [x, *params], torch.float32, what=f"K={k} s={stride} p={padding} {layout}")
    output_format_is(y, x, layout)


@pytest.mark.parametrize("backend", WRAPPER_BACKENDS)
def test_no_relu_and_odd_weight_strides(backend):
    x, (w, sc, sh) = dw_inputs((2, 3, 9, 11), 5, device=device_of(backend))
    w = w.transpose(2, 3)  # a non-contiguous [C, 1, K, K]
    check_autograd(lambda *a: dasp_kernels.dwconv_bn_relu(*a, stride=2, padding=2, relu=False,
                                                         backend=backend),
                   lambda *a: reference.dwconv_bn_relu(*a, 2, 2, False), [x, w, sc, sh],
                   torch.float32)


@pytest.mark.parametrize("c,h,w,k,stride,dilation,padding,act,layout", SMALL_ACT_CASES)
@pytest.mark.parametrize("backend", WRAPPER_BACKENDS)
def test_small_act_cases(backend, c, h, w, k, stride, dilation, padding, act, layout):
    x, params = dw_inputs((2, c, h, w), k, layout, torch.float64, device_of(backend))
    y = check_autograd(act_wrapper(stride, padding, dilation, act, backend),
                       act_wrapper(stride, padding, dilation, act, "reference"),
                       [x, *params], torch.float64, what=f"K={k} s={stride} d={dilation} "
                       f"p={padding} {act} {layout}")
    output_format_is(y, x, layout)


@pytest.mark.parametrize("act", ["silu", "gelu", "gelu_tanh", "hardswish"])
@pytest.mark.parametrize("backend", backends("cpu", "triton"))
def test_small_act_float32(backend, act):
    # The activations' float32 formulas; x * 3 reaches the tails of hardswish and the gelus.
    # Smooth in float32 where the kinks of hardswish (+-3) are rarely hit within rounding.
    x, (w, sc, sh) = dw_inputs((2, 6, 9, 10), 3, "channels_last", device=device_of(backend))
    check_autograd(act_wrapper(2, [1, 0, 0, 1], 2, act, backend),
                   act_wrapper(2, [1, 0, 0, 1], 2, act, "reference"),
                   [x * 3, w, sc, sh], torch.float32, what=act)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend", backends("triton"))
def test_triton_dtypes(backend, dtype, request):
    """The half types against the float64 reference with the Triton kernels' tight tolerances."""
    tgt = make_target(request, backend)
    x, params = dw_inputs((2, 16, 9, 11), 3, "channels_last", dtype, tgt.device)
    check_autograd(lambda *a: dw_relu(tgt, *a, 2, 1, True),
                   lambda *a: reference.dwconv_bn_relu(*a, 2, 1, True), [x, *params], dtype)
    if dtype != torch.float64:
        x, params = dw_inputs((2, 16, 9, 11), 5, "channels_last", dtype, tgt.device)
        check_autograd(lambda *a: tgt.dwconv_bn_act(*a, 1, [2, 1, 0, 3], 2, "gelu", 0.0, 0.0),
                       act_wrapper(1, [2, 1, 0, 3], 2, "gelu", "reference"), [x, *params], dtype)


@pytest.mark.parametrize("backend", backends("cpu", "triton"))
def test_meta_tensors_give_shapes_and_strides(backend, request):
    tgt = make_target(request, backend)
    x, (w, s, b) = (t.to("meta") if isinstance(t, torch.Tensor) else [u.to("meta") for u in t]
                    for t in dw_inputs((2, 3, 9, 11), 3))
    conf = (2, [1, 0, 2, 1], 2, "silu", 0.0, 0.0)
    y = tgt.dwconv_bn_act(x, w, s, b, *conf)
    assert y.device.type == "meta" and y.shape == (2, 3, 3, 5)
    gx, gw, gs, gb = tgt._dwconv_bn_act_backward(torch.empty(2, 3, 3, 5, device="meta"),
                                                 x, w, s, b, *conf)
    assert gx.shape == x.shape and gw.shape == w.shape and gs.shape == gb.shape == (3,)
