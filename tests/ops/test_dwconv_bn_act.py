"""dwconv_bn_act on every backend (tests/ops/op_harness.py) against reference.dwconv_bn_act,
forward and backward; gradcheck, opcheck, errors, the old dwconv_bn_relu call, "same" padding
against timm's Conv2dSame, and the narrower CPU builds."""
import re

import pytest
import torch

import dasp_kernels
from dasp_kernels import _backends, cases
from op_harness import BACKENDS, LAYOUTS, backends, check_all, emu_ops, make_runner  # noqa: F401
from op_harness import narrower_build_check

OP = "dwconv_bn_act"


@pytest.fixture(params=BACKENDS)
def run(request):
    return make_runner(request, OP)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_matches_reference(run, layout):
    check_all(run, layout)


@pytest.mark.parametrize("act", sorted(cases.ACT_ARGS))
@pytest.mark.parametrize("backend", backends("cpu", "emu"))
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


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_opcheck(backend, layout):
    if _backends.backend_status()[backend] is not None:
        pytest.skip(f"backend {backend!r}: {_backends.backend_status()[backend]}")
    if backend == "triton":
        from dasp_kernels import triton  # noqa: F401  (registers the op)
    op = getattr(torch.ops.dasp_kernels,
                 "dwconv_bn_act" if backend == "cpu" else "dwconv_bn_act_triton")
    dev = "cuda" if backend == "triton" and torch.cuda.is_available() else "cpu"
    case = cases.dw_case(2, 4, 7, 6, 3, 2, "same", 1, "silu")
    x, params = cases.make_inputs(case, torch.Generator().manual_seed(0))
    x = cases.with_layout(x.float().to(dev), layout).requires_grad_()
    params = [p.float().to(dev).requires_grad_() for p in params]
    torch.library.opcheck(op, cases.op_args(case, x, params))
    if backend == "cpu":
        y = op(*cases.op_args(case, x.detach(), [p.detach() for p in params]))
        args = cases.op_args(case, x.detach(), [p.detach() for p in params])
        torch.library.opcheck(torch.ops.dasp_kernels._dwconv_bn_act_backward,
                              (torch.randn_like(y), *args))


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
