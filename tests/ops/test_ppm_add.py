"""ppm_add on every backend (tests/ops/op_harness.py) against reference.ppm_add, forward and
backward; max-pool ties and NaN, thread counts, streamed large outputs, empty batch, gradcheck,
opcheck, errors, and the narrower CPU builds."""
import re

import pytest
import torch

import dasp_kernels
from dasp_kernels import cases, reference
from op_harness import BACKENDS, LAYOUTS, check_all, emu_ops, make_runner  # noqa: F401
from op_harness import narrower_build_check, skip_unless

OP = "ppm_add"
ops = torch.ops.dasp_kernels
cpu_only = skip_unless("cpu")


@pytest.fixture(params=BACKENDS)
def run(request):
    return make_runner(request, OP)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_matches_reference(run, layout):
    check_all(run, layout)


def ppm_inputs(n, cin, cout, h, w, dtype=torch.float32):
    x, (wt, res) = cases.make_inputs(cases.ppm_case(n, cin, cout, h, w), torch.Generator())
    return x.to(dtype), wt.to(dtype), res.to(dtype)


def close(got, want, dtype, grad=False):
    """Float rounding, scaled to the magnitudes; gradients of the weights are sums over the
    whole image: a longer sum, a larger allowance."""
    finite = want[torch.isfinite(want)]
    scale = max(1.0, finite.abs().max().item()) if finite.numel() else 1.0
    tol = (dict(rtol=1e-9, atol=1e-9 * scale) if dtype == torch.float64
           else dict(rtol=1e-5, atol=(1e-4 if grad else 1e-5) * scale))
    torch.testing.assert_close(got, want, equal_nan=True, **tol)


def check_cpu(x, wt, res, dtype=torch.float32):
    """ppm_add and both its gradients on the CPU kernels against the reference (NaN equal)."""
    y = ops.ppm_add(x, wt, res)
    close(y, reference.ppm_add(x, wt, res), dtype)
    go = torch.randn_like(y)
    xx, ww = x.detach().clone().requires_grad_(), wt.detach().clone().requires_grad_()
    want = torch.autograd.grad(reference.ppm_add(xx, ww, res), (xx, ww), go)
    for a, b in zip(ops._ppm_add_backward(go, x, wt), want):
        close(a, b, dtype, grad=True)


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
        _, wt, res = ppm_inputs(n, cin, cout, h, w)
        check_cpu(cases.with_layout(x, layout), wt, res)


@cpu_only
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_float64_bands_any_thread_count(layout):
    old = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        for shape in [(1, 6, 7, 71, 40), (3, 20, 9, 25, 27)]:
            x, wt, res = ppm_inputs(*shape, dtype=torch.float64)
            check_cpu(cases.with_layout(x, layout), wt, res, torch.float64)
    finally:
        torch.set_num_threads(old)


@cpu_only
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_large_outputs_streamed(layout):
    for shape in [(1, 8, 64, 512, 512), (1, 4, 40, 1023, 1021)]:
        x, wt, res = ppm_inputs(*shape)
        check_cpu(cases.with_layout(x, layout), wt, cases.with_layout(res, layout))


@cpu_only
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_gradcheck_and_opcheck(layout):
    x, wt, res = ppm_inputs(2, 2, 3, 5, 3, torch.float64)
    leaves = [cases.with_layout(x, layout).requires_grad_(), wt.requires_grad_(),
              res.requires_grad_()]
    torch.autograd.gradcheck(ops.ppm_add, leaves)
    torch.autograd.gradcheck(lambda *a: dasp_kernels.ppm_add(*a, backend="cpu"), leaves)
    x, wt, res = ppm_inputs(2, 6, 5, 7, 8)
    x = cases.with_layout(x, layout)
    torch.library.opcheck(ops.ppm_add, (x.requires_grad_(), wt, res))
    torch.library.opcheck(ops._ppm_add_backward, (torch.randn_like(res), x.detach(), wt))


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
