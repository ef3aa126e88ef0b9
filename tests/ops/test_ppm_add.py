"""Every test of ppm_add: its cases on every backend (tests/ops/op_harness.py) against
reference.ppm_add, forward and backward; max-pool ties, NaN and -inf, thread counts, streamed large
outputs, empty batch, dtypes, gradcheck, opcheck, errors, and the narrower CPU builds; the
registered ops of several backends through op_harness.Target."""
import re

import pytest
import torch

import dasp_kernels
from dasp_kernels import cases, reference
from inputs import make_x, ppm_inputs
from op_harness import BACKENDS, HALF_TOL, LAYOUTS, backends, check_all, check_autograd
from op_harness import check_format, close, close_to_ref, emu_ops, make_runner  # noqa: F401
from op_harness import device_of, make_target, narrower_build_check, output_format_is
from op_harness import skip_unless

OP = "ppm_add"
ops = torch.ops.dasp_kernels
cpu_only = skip_unless("cpu")


@pytest.fixture(params=BACKENDS)
def run(request):
    return make_runner(request, OP)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_matches_reference(run, layout):
    check_all(run, layout)


def cpu_inputs(n, cin, cout, h, w, dtype=torch.float32):
    return ppm_inputs((n, cin, cout, h, w), dtype=dtype)


def check_cpu(x, wt, res, dtype=torch.float32):
    """ppm_add and both its gradients on the CPU kernels against the reference (NaN equal)."""
    y = ops.ppm_add(x, wt, res)
    close_to_ref(y, reference.ppm_add(x, wt, res), dtype)
    go = torch.randn_like(y)
    xx, ww = x.detach().clone().requires_grad_(), wt.detach().clone().requires_grad_()
    want = torch.autograd.grad(reference.ppm_add(xx, ww, res), (xx, ww), go)
    for a, b in zip(ops._ppm_add_backward(go, x, wt), want):
        close_to_ref(a, b, dtype, grad=True)


@cpu_only
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_ties_and_nan(layout):
    """First max in scan order wins a tie, NaN wins and propagates; grad_x goes to that argmax,
    exactly as autograd through max_pool2d."""
    torch.manual_seed(1)
    for n, cin, cout, h, w in [(2, 5, 3, 9, 11), (1, 16, 8, 6, 34)]:
        x = torch.randint(-1, 2, (n, cin, h, w)).float()  # many ties
        x[0, 0, 0, :] = float("-inf")
        x[0, 1, 2, 3] = float("nan")
        x[-1, 2, 4, 4:6] = float("nan")  # two NaN in one window
        _, wt, res = cpu_inputs(n, cin, cout, h, w)
        check_cpu(cases.with_layout(x, layout), wt, res)


@cpu_only
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_float64_bands_any_thread_count(layout):
    old = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        for shape in [(1, 6, 7, 71, 40), (3, 20, 9, 25, 27)]:
            x, wt, res = cpu_inputs(*shape, dtype=torch.float64)
            check_cpu(cases.with_layout(x, layout), wt, res, torch.float64)
    finally:
        torch.set_num_threads(old)


@cpu_only
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_large_outputs_streamed(layout):
    for shape in [(1, 8, 64, 512, 512), (1, 4, 40, 1023, 1021)]:
        x, wt, res = cpu_inputs(*shape)
        check_cpu(cases.with_layout(x, layout), wt, cases.with_layout(res, layout))


@cpu_only
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_gradcheck_through_the_wrapper(layout):
    """The registered op's gradcheck and opcheck: test_gradcheck_registered_op,
    test_opcheck_registered_op."""
    x, wt, res = cpu_inputs(2, 2, 3, 5, 3, torch.float64)
    leaves = [cases.with_layout(x, layout).requires_grad_(), wt.requires_grad_(),
              res.requires_grad_()]
    assert torch.autograd.gradcheck(lambda *a: dasp_kernels.ppm_add(*a, backend="cpu"), leaves)


def _ok():
    return dict(x=torch.randn(2, 4, 7, 6), weight=torch.randn(5, 4, 1, 1),
                residual=torch.randn(2, 5, 4, 3))


BAD = {
    "dtype mismatch": dict(residual=torch.randn(2, 5, 4, 3, dtype=torch.float64)),
    "rank": dict(x=torch.randn(4, 7, 6)),
    "weight shape": dict(weight=torch.randn(5, 4, 3, 3)),
    "channel mismatch": dict(weight=torch.randn(5, 3, 1, 1)),
    "residual shape": dict(residual=torch.randn(2, 5, 3, 3)),
    "float16 on cpu": dict(x=torch.randn(2, 4, 7, 6).half(), weight=torch.randn(5, 4, 1, 1).half(),
                           residual=torch.randn(2, 5, 4, 3).half()),
}


@cpu_only
@pytest.mark.parametrize("name", BAD)
def test_errors_say_the_same_everywhere(name):
    """The wrapper's ValueError, the fake's and the C++ kernel's errors say the same words."""
    a = {**_ok(), **BAD[name]}
    args = (a["x"], a["weight"], a["residual"])
    with pytest.raises(ValueError) as py_err:
        dasp_kernels.ppm_add(*args, backend="cpu")
    msg = str(py_err.value)
    with pytest.raises(RuntimeError, match=re.escape(msg)):
        ops.ppm_add(*args)
    if "backend 'cpu' supports" in msg:
        return  # a backend's limit: the fake (any backend) accepts float16
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode, pytest.raises(Exception, match=re.escape(msg)):
        ops.ppm_add(*[mode.from_tensor(t) for t in args])


@cpu_only
def test_backward_errors():
    a = _ok()
    with pytest.raises(RuntimeError, match=re.escape(
            "_ppm_add_backward: expected grad_out of shape [2, 5, 4, 3], got [2, 5, 4, 4]")):
        ops._ppm_add_backward(torch.zeros(2, 5, 4, 4), a["x"], a["weight"])
    with pytest.raises(RuntimeError, match=re.escape(
            "ppm_add: expected weight of shape [Cout, Cin, 1, 1] with Cin = 4, got [5, 3, 1, 1]")):
        ops._ppm_add_backward(torch.zeros(2, 5, 4, 3), a["x"], torch.randn(5, 3, 1, 1))


@pytest.mark.parametrize("isa", ["avx2", "default"])
def test_narrower_isa_builds(isa):
    narrower_build_check(OP, isa)


# ---------------------------------------------------------------------------------------------
# The registered ops of several backends, called directly (op_harness.Target).

@pytest.fixture(params=backends("cpu", "cuda", "emu"))
def tgt(request):
    return make_target(request)


ALL_LAYOUTS = ("contiguous", "channels_last", "sliced", "channels_last_sliced")
# (N, Cin, Cout, H, W)
SHAPES = [(2, 3, 5, 7, 9), (1, 20, 70, 5, 4), (3, 17, 3, 1, 1), (2, 4, 6, 10, 13),
          (1, 8, 130, 33, 31)]


def reference_grads(x, weight, residual, g):
    """Autograd through the reference in float64: (grad_x, grad_weight)."""
    ins = [t.detach().double().requires_grad_() for t in (x, weight)]
    out = reference.ppm_add(ins[0], ins[1], residual.double())
    return torch.autograd.grad(out, ins, g.double())


@pytest.mark.parametrize("layout", ALL_LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_backward(tgt, shape, layout):
    x, weight, residual = ppm_inputs(shape, layout, device=tgt.device)
    out = tgt.ppm_add(x, weight, residual)
    expected = reference.ppm_add(x.double(), weight.double(), residual.double())
    assert out.shape == expected.shape and out.dtype == x.dtype
    check_format(out, x)
    close(out, expected, 1e-5)
    g = torch.randn(out.shape, device=tgt.device)
    gx, gw = tgt._ppm_add_backward(g, x, weight)
    ex, ew = reference_grads(x, weight, residual, g)
    check_format(gx, x)
    assert gw.is_contiguous() and gw.shape == weight.shape
    close(gx, ex, 1e-5)
    close(gw, ew, 1e-4)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_and_nan_one_gradient_per_window(backend, layout, request):
    # Small integers: most 2x2 windows have ties; the gradient must go to the first maximum in scan
    # order, as in torch's max_pool2d. NaN wins its window (the last NaN, as in torch).
    tgt = make_target(request, backend)
    x, weight, residual = ppm_inputs((2, 3, 4, 7, 9), layout, device=tgt.device)
    x = make_x(2, 3, 7, 9, layout, device=tgt.device,
               gen=lambda *s: torch.randint(-2, 3, s).float())
    x[0, 0, 0, 0] = float("nan")
    x[1, 2, 4, 2] = x[1, 2, 5, 3] = float("nan")
    x[1, 1, 6, 8] = float("nan")  # the ceil-mode edge window
    out = tgt.ppm_add(x, weight, residual)
    close(out, reference.ppm_add(x, weight, residual), 1e-5)
    g = torch.randn(out.shape, device=tgt.device)
    gx, gw = tgt._ppm_add_backward(g, x, weight)
    # autograd through torch's max_pool2d on the same device is the oracle for the argmax
    ex, ew = reference_grads(x, weight, residual, g)
    close(gx, ex, 1e-5)
    assert torch.equal(gx != 0, ex != 0)
    n, c = x.shape[:2]
    assert int((gx != 0).sum()) == n * c * out.shape[2] * out.shape[3]  # one per window
    close(gw, ew, 1e-4)


@pytest.mark.filterwarnings("ignore:invalid value encountered in matmul:RuntimeWarning")
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_nan_and_inf_exactly_as_max_pool2d(backend, layout, request):
    # Small integers make ties in most windows; NaN and -inf exercise the special rules.
    tgt = make_target(request, backend)
    x = torch.randint(-2, 3, (2, 3, 7, 9)).float()
    x[0, 0, 0, 1] = float("nan")
    x[0, 1, 2, :2] = float("nan")
    x[1, 2, 4:6, 4:6] = float("-inf")
    x[1, 0, 6, 8] = float("-inf")  # a 1x1 edge window of -inf
    x = make_x(2, 3, 7, 9, layout, device=tgt.device, gen=lambda *s: x)
    weight = torch.eye(3, device=tgt.device).view(3, 3, 1, 1)  # output = pooled + residual, exactly
    residual = torch.zeros(2, 3, 4, 5, device=tgt.device)
    mine = [t.clone().requires_grad_() for t in (x, weight, residual)]
    theirs = [t.clone().requires_grad_() for t in (x, weight, residual)]
    y = tgt.ppm_add(*mine[:3]) if backend != "emu" else tgt.ppm_add(x, weight, residual)
    y_ref = reference.ppm_add(*theirs)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0, equal_nan=True)
    g = torch.randn_like(y)
    y_ref.backward(g)
    gx = tgt._ppm_add_backward(g, x, weight)[0]
    # The gradient lands on exactly the element max_pool2d chose (first max, last NaN).
    torch.testing.assert_close(gx, theirs[0].grad, rtol=0, atol=0)
    if backend != "emu":  # and autograd takes the backward op
        y.backward(g)
        torch.testing.assert_close(mine[0].grad, theirs[0].grad, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_dtypes(tgt, dtype, layout):
    if tgt.backend == "cpu" and dtype == torch.float16:
        pytest.skip("the CPU kernels take float32, float64 and bfloat16")
    x, weight, residual = ppm_inputs((2, 20, 70, 9, 8), layout, dtype, tgt.device)
    out = tgt.ppm_add(x, weight, residual)
    assert out.dtype == dtype
    check_format(out, x)
    tol = HALF_TOL.get(dtype, 1e-12)
    close(out, reference.ppm_add(x.double(), weight.double(), residual.double()), tol)
    g = torch.randn(out.shape, device=tgt.device).to(dtype)
    gx, gw = tgt._ppm_add_backward(g, x, weight)
    ex, ew = reference_grads(x, weight, residual, g)
    assert gx.dtype == dtype and gw.dtype == dtype
    close(gx, ex, tol)
    close(gw / ew.abs().max(), ew / ew.abs().max(), tol)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend, layout, request):
    tgt = make_target(request, backend)
    x, weight, residual = ppm_inputs((0, 3, 5, 9, 8), layout, device=tgt.device)
    out = tgt.ppm_add(x, weight, residual)
    assert out.shape == (0, 5, 5, 4)
    gx, gw = tgt._ppm_add_backward(out, x, weight)
    assert gx.shape == x.shape and bool((gw == 0).all())
    if backend != "emu":  # the emulator's ops have no autograd
        leaves = [t.clone().requires_grad_() for t in (x, weight, residual)]
        tgt.ppm_add(*leaves).sum().backward()
        assert not leaves[1].grad.any()


@pytest.mark.parametrize("backend", backends("cpu", "triton", "cuda"))
def test_grad_residual_is_grad_out_without_aliasing_the_op(backend, request):
    tgt = make_target(request, backend)
    leaves = [t.requires_grad_() for t in ppm_inputs((2, 3, 4, 7, 9), "sliced", device=tgt.device)]
    y = tgt.ppm_add(*leaves)
    g = torch.randn_like(y)
    assert torch.equal(torch.autograd.grad(y, leaves[2], g)[0], g)
    gx, gw = tgt._ppm_add_backward(g, leaves[0].detach(), leaves[1].detach())
    assert gx.data_ptr() != g.data_ptr() and gw.data_ptr() != g.data_ptr()


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("backend", backends("cpu", "triton", "cuda"))
def test_gradcheck_registered_op(backend, layout, request):
    """Finite differences, float64 (the Triton interpreter: a smaller map, fast mode)."""
    tgt = make_target(request, backend)
    shape = (1, 2, 3, 5, 4) if backend == "triton" else (2, 3, 4, 5, 7)
    args = [t.requires_grad_() for t in ppm_inputs(shape, layout, torch.float64, tgt.device)]
    assert torch.autograd.gradcheck(tgt.ppm_add, args, fast_mode=backend == "triton")


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("backend", backends("cpu", "triton", "cuda"))
def test_opcheck_registered_op(backend, layout, request):
    tgt = make_target(request, backend)
    x, weight, residual = ppm_inputs((2, 3, 5, 9, 8), layout, device=tgt.device)
    torch.library.opcheck(tgt.ppm_add, [t.clone().requires_grad_() for t in (x, weight, residual)])
    torch.library.opcheck(tgt._ppm_add_backward, (torch.randn_like(residual), x, weight))


@pytest.mark.parametrize("backend", BACKENDS)
def test_direct_op_errors(backend, request):
    tgt = make_target(request, backend)
    x, weight, residual = ppm_inputs((2, 3, 5, 7, 9), device=tgt.device)
    with pytest.raises(RuntimeError, match=re.escape(
            "ppm_add: expected residual of shape [N, Cout, ceil(H/2), ceil(W/2)] = [2, 5, 4, 5], "
            "got [2, 5, 4, 4]")):
        tgt.ppm_add(x, weight, residual[..., :4])
    with pytest.raises(RuntimeError, match=re.escape(
            "ppm_add: expected weight of shape [Cout, Cin, 1, 1] with Cin = 3, got [5, 4, 1, 1]")):
        tgt.ppm_add(x, torch.randn(5, 4, 1, 1, device=tgt.device), residual)
    with pytest.raises(RuntimeError, match=re.escape(
            "_ppm_add_backward: expected grad_out of shape [2, 5, 4, 5], got [2, 5, 4, 4]")):
        tgt._ppm_add_backward(residual[..., :4], x, weight)


# (Cin, Cout, H, W, layout): odd and even maps, tiny and >16 channel counts (Triton's tl.dot pads
# to 16).
SMALL_CASES = [(3, 16, 9, 11, "contiguous"), (16, 5, 8, 7, "channels_last"),
               (20, 40, 5, 6, "sliced"), (1, 1, 1, 1, "contiguous"), (3, 20, 7, 4, "channels_last")]


@pytest.mark.parametrize("cin,cout,h,w,layout", SMALL_CASES)
@pytest.mark.parametrize("backend", backends("cpu", "triton", "cuda"))
def test_small_cases_through_the_wrapper(backend, cin, cout, h, w, layout):
    """Against autograd through the reference (op_harness.check_autograd), sized for the Triton
    interpreter; the residual in the input's layout too."""
    x, weight, residual = ppm_inputs((2, cin, cout, h, w), layout, device=device_of(backend))
    residual = make_x(*residual.shape, layout, device=residual.device, gen=lambda *s: residual)
    y = check_autograd(lambda *a: dasp_kernels.ppm_add(*a, backend=backend), reference.ppm_add,
                       [x, weight, residual], torch.float32, what=f"{cin}->{cout} {layout}")
    output_format_is(y, x, layout)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend", backends("triton"))
def test_triton_dtypes(backend, dtype, request):
    """The half types against the float64 reference with the Triton kernels' tight tolerances."""
    tgt = make_target(request, backend)
    check_autograd(tgt.ppm_add, reference.ppm_add,
                   ppm_inputs((2, 16, 20, 9, 11), dtype=dtype, device=tgt.device), dtype)
