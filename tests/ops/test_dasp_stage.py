"""Every test of dasp_stage: its cases on every backend (tests/ops/op_harness.py) against
reference.dasp_stage; the CPU kernel over every input layout, thread counts, empty batch, output
reuse, gradients, opcheck, errors and the narrower builds; the registered ops of several backends
(op_harness.Target): dtypes, determinism, empty batch, gradcheck, opcheck, errors, meta tensors.

fp32 results are compared with the float64 reference of the same inputs. The kernels sum the Cin
products of each 1x1 convolution in another order than oneDNN does (and fold the BN scales into
the weights), so the tolerance is 1e-5 relative plus 1e-6 * sqrt(Cin) times the output's
magnitude.
"""
import os
import re
import subprocess
import sys

import pytest
import torch

import dasp_kernels
from dasp_kernels import functional as F
from dasp_kernels import reference

from op_harness import BACKENDS, HALF_TOL, LAYOUTS, backends, check_all, check_autograd
from op_harness import check_format, close, close_scaled, emu_ops, make_runner  # noqa: F401
from op_harness import device_of, make_target, masked_grad, output_format_is
from inputs import assert_close_to_ref, both_raise, expected_format, make_x, stage_inputs
from inputs import stage_params

from conftest import needs_cpu_ext

OPS = torch.ops.dasp_kernels


@pytest.fixture(params=BACKENDS)
def run(request):
    return make_runner(request, "dasp_stage")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_matches_reference_every_backend(run, layout):
    check_all(run, layout)



# (N, Cin, Cout, K, H, W, layout): odd and unit sizes, every K, the paper's channel counts, rows
# wider than one chunk of pixels (Wo > 48 for Cin = 64), each input layout.
SHAPES = [
    (2, 3, 64, 7, 33, 37, "nchw"),
    (1, 3, 64, 7, 20, 19, "cl"),
    (1, 64, 64, 3, 17, 20, "cl"),
    (1, 64, 64, 3, 9, 101, "cl"),
    (1, 64, 64, 3, 9, 101, "nchw"),
    (2, 64, 128, 3, 9, 31, "cl"),
    (1, 1, 1, 1, 5, 7, "nchw"),
    (2, 3, 16, 5, 1, 1, "nchw"),
    (1, 64, 1, 3, 7, 7, "sliced"),
    (2, 8, 24, 5, 13, 1, "cl"),
    (1, 16, 64, 1, 6, 9, "cl_sliced"),
    (1, 64, 64, 7, 1, 9, "cl"),
    (1, 3, 8, 7, 3, 1001, "nchw"),
]


# float32 runs the vector kernel of this process's build (dasp_kernels.cpu_isa()), the scalar one
# in the portable build; float64 always the scalar one. The narrower builds run in a subprocess
# (test_narrower_builds_match_reference).
DTYPES = [torch.float32, torch.float64]
DTYPE_IDS = ["fp32", "fp64"]

# Set in the subprocess of test_narrower_builds_match_reference: the build it must be running.
ISA_UNDER_TEST = "DASP_TEST_CPU_ISA"


@needs_cpu_ext
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_dasp_stage_matches_reference(shape, dtype):
    n, cin, cout, k, h, w, layout = shape
    x = make_x(n, cin, h, w, layout, dtype)
    params = stage_params(cin, cout, k, dtype)
    got = F.dasp_stage(x, *params, backend="cpu")
    assert_close_to_ref(got, x, params)
    assert got.is_contiguous(memory_format=expected_format(x))


@needs_cpu_ext
@pytest.mark.parametrize("threads", [1, 3])
def test_dasp_stage_any_thread_count(threads):
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = make_x(3, 64, 23, 18, "cl")
        params = stage_params(64, 64, 3)
        assert_close_to_ref(OPS.dasp_stage(x, *params), x, params)
    finally:
        torch.set_num_threads(old)


@needs_cpu_ext
def test_dasp_stage_empty_batch():
    params = stage_params(3, 64, 7)
    y = OPS.dasp_stage(torch.randn(0, 3, 9, 8), *params)
    assert y.shape == (0, 64, 5, 4)


def test_build_under_test():
    want = os.environ.get(ISA_UNDER_TEST)
    if want is None:
        pytest.skip("only in the subprocess of test_narrower_builds_match_reference")
    assert dasp_kernels.cpu_isa() == want


@pytest.mark.parametrize("isa", ["avx2", "default"])
def test_narrower_builds_match_reference(isa):
    # The stage and path tests above again, in a fresh process started with ATEN_CPU_CAPABILITY
    # lowered, which dasp_kernels follows (as tests/test_cpu_backend.py's test_narrower_builds_agree).
    if os.environ.get(ISA_UNDER_TEST):
        pytest.skip("already in a narrower build's process")
    here = torch.backends.cpu.get_cpu_capability()
    if isa == "avx2" and here != "AVX512":
        pytest.skip(f"ATen runs {here}: the AVX2 build is this process's own (or unusable)")
    env = {**os.environ, "ATEN_CPU_CAPABILITY": isa, ISA_UNDER_TEST: isa}
    pkg_root = os.path.dirname(os.path.dirname(os.path.abspath(dasp_kernels.__file__)))
    env["PYTHONPATH"] = pkg_root + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "pytest", os.path.abspath(__file__), "-q", "-p",
           "no:cacheprovider", "-k", "dasp_stage_matches_reference or build_under_test"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]


@needs_cpu_ext
def test_outputs_never_alias_a_held_result():
    # Outputs of 1 MiB and more are reused only once nothing refers to them any more.
    x = make_x(1, 64, 64, 64, "cl")
    params = stage_params(64, 128, 3)
    a = OPS.dasp_stage(x, *params)
    b = OPS.dasp_stage(x, *params)
    assert a.data_ptr() != b.data_ptr()
    view = a[0, :1]
    ptr = a.data_ptr()
    del a
    c = OPS.dasp_stage(x, *params)
    assert c.data_ptr() != ptr  # the view still holds a's storage
    torch.testing.assert_close(view, c[0, :1])
    del view, c
    d = OPS.dasp_stage(x * 2, *params)
    torch.testing.assert_close(d, F.dasp_stage(x * 2, *params, backend="reference"),
                               rtol=1e-5, atol=1e-4)


@needs_cpu_ext
def test_gradcheck_dasp_stage():
    x = torch.randn(2, 2, 5, 4, dtype=torch.float64, requires_grad=True)
    params = [p.requires_grad_() for p in stage_params(2, 3, 3, torch.float64)]
    assert torch.autograd.gradcheck(lambda *a: F.dasp_stage(*a, backend="cpu"), (x, *params))


@needs_cpu_ext
@pytest.mark.parametrize("layout", ["nchw", "cl"])
def test_backward_matches_autograd_through_reference(layout):
    x = make_x(2, 64, 19, 22, layout)
    params = stage_params(64, 128, 3)
    g = torch.randn(2, 128, 10, 11)

    def grads(fn):
        xs = x.detach().requires_grad_()
        ps = [p.detach().requires_grad_() for p in params]
        fn(xs, *ps).backward(g)
        return [xs.grad] + [p.grad for p in ps]

    ours = grads(lambda *a: F.dasp_stage(*a, backend="cpu"))
    ref = grads(lambda *a: reference.dasp_stage(*a))
    assert ours[0].is_contiguous(memory_format=expected_format(x))
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * max(1.0, b.abs().max().item()))


@needs_cpu_ext
def test_errors_dasp_stage_match_wrapper():
    x = torch.randn(1, 3, 8, 8)
    p = stage_params(3, 64, 7)
    cases = [
        ((torch.randn(3, 8, 8), *p), r"dasp_stage: expected x to be 4-D \(N, C, H, W\), got 3-D of shape \[3, 8, 8\]"),
        ((x, torch.randn(3, 1, 4, 4), *p[1:]), r"dasp_stage: expected an odd kernel size K in 1, 3, 5, 7, got K = 4"),
        ((x, *p[:1], torch.rand(4), *p[2:]), r"dasp_stage: expected dw_scale of shape \[3\], got \[4\]"),
        ((x, *p[:3], torch.randn(64, 4, 1, 1), *p[4:]), r"dasp_stage: expected pw_weight of shape \[Cout, Cin, 1, 1\] with Cin = 3, got \[64, 4, 1, 1\]"),
        ((x, *p[:6], torch.randn(64, 3, 1, 1).double()), r"dasp_stage: expected ppm_weight to have the dtype of x \(float32\), got float64"),
        ((x.half(), *[t.half() for t in p]), r"dasp_stage: backend 'cpu' supports float32, float64, bfloat16, got float16"),
    ]
    for args, match in cases:
        both_raise(lambda: OPS.dasp_stage(*args), lambda: F.dasp_stage(*args, backend="cpu"), match)


@needs_cpu_ext
def test_backward_checks_grad_out():
    x = torch.randn(1, 3, 8, 8)
    p = stage_params(3, 64, 7)
    with pytest.raises(RuntimeError, match=r"_dasp_stage_backward: expected grad_out of shape \[1, 64, 4, 4\], got \[1, 64, 4, 5\]"):
        OPS._dasp_stage_backward(torch.randn(1, 64, 4, 5), x, *p)


# ---------------------------------------------------------------------------------------------
# The registered ops of several backends, called directly (op_harness.Target).

@pytest.fixture(params=backends("cpu", "cuda", "emu"))
def tgt(request):
    return make_target(request)


ALL_LAYOUTS = ("contiguous", "channels_last", "sliced", "channels_last_sliced")
# (N, Cin, Cout, H, W)
TARGET_SHAPES = [(2, 3, 5, 7, 9), (1, 18, 66, 5, 6), (2, 3, 64, 16, 15), (1, 64, 128, 9, 8)]


def pre_activation(args):
    """The pointwise branch's ReLU input, in float64."""
    x, dw_w, dw_sc, dw_sh, pw_w, pw_sc, pw_sh, _ = [t.double() for t in args]
    k = dw_w.shape[-1]
    y = reference.dwconv_bn_relu(x, dw_w, dw_sc, dw_sh, 2, k // 2, True)
    return torch.nn.functional.conv2d(y, pw_w) * pw_sc.view(1, -1, 1, 1) + pw_sh.view(1, -1, 1, 1)


def reference_grads(args, g):
    ins = [t.detach().double().requires_grad_() for t in args]
    return torch.autograd.grad(reference.dasp_stage(*ins), ins, g.double())


@pytest.mark.parametrize("layout", ALL_LAYOUTS)
@pytest.mark.parametrize("shape", TARGET_SHAPES)
@pytest.mark.parametrize("k", [1, 3, 5, 7])
def test_forward_backward(tgt, k, shape, layout):
    args = stage_inputs(shape, k, layout, device=tgt.device)
    out = tgt.dasp_stage(*args)
    expected = reference.dasp_stage(*[t.double() for t in args])
    assert out.shape == expected.shape and out.dtype == args[0].dtype
    check_format(out, args[0])
    close(out, expected, 1e-4)
    g = masked_grad(torch.randn(out.shape, device=tgt.device), pre_activation(args), 1e-3)
    grads = tgt._dasp_stage_backward(g, *args)
    check_format(grads[0], args[0])
    for got, exp, like in zip(grads, reference_grads(args, g), args):
        assert got.shape == like.shape and got.dtype == like.dtype
        close_scaled(got, exp, 1e-4)
    assert all(t.is_contiguous() for t in grads[1:])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_dtypes(tgt, dtype, layout):
    if tgt.backend == "cpu" and dtype == torch.float16:
        pytest.skip("the CPU kernels take float32, float64 and bfloat16")
    args = stage_inputs((2, 20, 70, 9, 8), 3, layout, dtype, tgt.device)
    out = tgt.dasp_stage(*args)
    assert out.dtype == dtype
    check_format(out, args[0])
    tol = HALF_TOL.get(dtype, 1e-12)
    expected = reference.dasp_stage(*[t.double() for t in args])
    close(out / expected.abs().max(), expected / expected.abs().max(), tol)
    g = masked_grad(torch.randn(out.shape, device=tgt.device), pre_activation(args), 0.05)
    grads = tgt._dasp_stage_backward(g.to(dtype), *args)
    for got, exp in zip(grads, reference_grads(args, g.to(dtype))):
        assert got.dtype == dtype
        close_scaled(got, exp, tol)


def test_backward_deterministic(tgt):
    args = stage_inputs((2, 16, 32, 21, 20), 3, "channels_last", device=tgt.device)
    g = torch.randn(2, 32, 11, 10, device=tgt.device)
    a = tgt._dasp_stage_backward(g, *args)
    b = tgt._dasp_stage_backward(g, *args)
    for u, v in zip(a, b):
        assert torch.equal(u, v)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend, layout, request):
    tgt = make_target(request, backend)
    args = stage_inputs((0, 3, 5, 9, 8), 3, layout, device=tgt.device)
    out = tgt.dasp_stage(*args)
    assert out.shape == (0, 5, 5, 4)
    grads = tgt._dasp_stage_backward(out, *args)
    assert grads[0].shape == args[0].shape
    assert all(t.shape == a.shape and bool((t == 0).all()) for t, a in zip(grads[1:], args[1:]))
    if backend != "emu":  # the emulator's ops have no autograd
        leaves = [t.clone().requires_grad_() for t in args]
        tgt.dasp_stage(*leaves).sum().backward()
        assert all(t.grad is not None and not t.grad.any() for t in leaves)


@pytest.mark.parametrize("backend", backends("cpu", "cuda"))
def test_autograd_is_the_backward_op(backend, request):
    tgt = make_target(request, backend)
    args = [t.requires_grad_() for t in stage_inputs((2, 8, 16, 11, 10), 5, device=tgt.device)]
    out = tgt.dasp_stage(*args)
    g = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, args, g), tgt._dasp_stage_backward(g, *args)):
        assert torch.equal(a, b)


# (shape, K, layouts, fast_mode): the Triton interpreter runs the small one, fast mode.
GRADCHECKS = [((2, 3, 4, 5, 7), 1, ("contiguous", "channels_last"), False),
              ((2, 3, 4, 5, 7), 3, ("contiguous", "channels_last"), False),
              ((1, 2, 3, 4, 3), 3, ("contiguous",), True)]


@pytest.mark.parametrize("geometry", range(len(GRADCHECKS)))
@pytest.mark.parametrize("backend", backends("cpu", "triton", "cuda"))
def test_gradcheck_registered_op(backend, geometry, request):
    shape, k, layouts, fast = GRADCHECKS[geometry]
    if backend == "triton" and not fast:
        pytest.skip("too slow for the Triton interpreter: the small geometry covers its kernels")
    tgt = make_target(request, backend)
    for layout in layouts:
        args = [t.requires_grad_() for t in stage_inputs(shape, k, layout, torch.float64,
                                                          tgt.device)]
        assert torch.autograd.gradcheck(tgt.dasp_stage, args, fast_mode=fast)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("backend", backends("cpu", "triton", "cuda"))
def test_opcheck_registered_op(backend, layout, request):
    tgt = make_target(request, backend)
    k = 1 if backend == "triton" else 3  # few taps keep the interpreter quick
    args = stage_inputs((2, 3, 5, 9, 8), k, layout, device=tgt.device)
    torch.library.opcheck(tgt.dasp_stage, [t.clone().requires_grad_() for t in args])
    # The backward's output strides follow x's memory format.
    torch.library.opcheck(tgt._dasp_stage_backward,
                          (torch.randn(2, 5, 5, 4, device=tgt.device), *args))


@pytest.mark.parametrize("backend", BACKENDS)
def test_direct_op_errors(backend, request):
    tgt = make_target(request, backend)
    args = stage_inputs((2, 3, 5, 7, 9), 3, device=tgt.device)
    bad = list(args)
    bad[1] = torch.randn(3, 1, 4, 4, device=tgt.device)
    with pytest.raises(RuntimeError, match=re.escape(
            "dasp_stage: expected an odd kernel size K in 1, 3, 5, 7, got K = 4")):
        tgt.dasp_stage(*bad)
    if backend != "emu":
        with pytest.raises(ValueError, match=r"dasp_stage: expected an odd kernel size"):
            F.dasp_stage(*bad, backend=backend)
    bad = list(args)
    bad[7] = torch.randn(5, 2, 1, 1, device=tgt.device)
    with pytest.raises(RuntimeError, match=re.escape(
            "dasp_stage: expected ppm_weight of shape [5, 3, 1, 1], got [5, 2, 1, 1]")):
        tgt.dasp_stage(*bad)
    with pytest.raises(RuntimeError, match=re.escape(
            "_dasp_stage_backward: expected grad_out of shape [2, 5, 4, 5], got [2, 5, 4, 4]")):
        tgt._dasp_stage_backward(torch.randn(2, 5, 4, 4, device=tgt.device), *args)


@pytest.mark.parametrize("backend", backends("cpu", "triton"))
def test_meta_tensors_give_shapes_and_strides(backend, request):
    tgt = make_target(request, backend)
    args = [t.to("meta") for t in stage_inputs((2, 3, 4, 9, 11), 3, "channels_last")]
    y = tgt.dasp_stage(*args)
    assert y.device.type == "meta" and y.shape == (2, 4, 5, 6)
    assert y.is_contiguous(memory_format=torch.channels_last)


# (Cin, Cout, K, H, W, layout): Cin 3 takes Triton's per-channel path, Cin >= 16 the tl.dot one.
SMALL_CASES = [(3, 16, 7, 9, 11, "contiguous"), (16, 16, 3, 8, 7, "channels_last"),
               (20, 40, 5, 5, 6, "sliced"), (3, 5, 1, 6, 9, "channels_last")]


@pytest.mark.parametrize("cin,cout,k,h,w,layout", SMALL_CASES)
@pytest.mark.parametrize("backend", backends("cpu", "triton", "cuda"))
def test_small_cases_through_the_wrapper(backend, cin, cout, k, h, w, layout):
    """Against autograd through the reference (op_harness.check_autograd), sized for the Triton
    interpreter."""
    args = stage_inputs((2, cin, cout, h, w), k, layout, device=device_of(backend))
    y = check_autograd(lambda *a: F.dasp_stage(*a, backend=backend), reference.dasp_stage, args,
                       torch.float32, what=f"{cin}->{cout} K={k} {layout}")
    output_format_is(y, args[0], layout)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend", backends("triton"))
def test_triton_dtypes(backend, dtype, request):
    # Half precision: forward only. The unfused reference rounds every intermediate to half, so a
    # pre-activation near 0 may take the other side of a ReLU and move a gradient by O(1).
    tgt = make_target(request, backend)
    check_autograd(tgt.dasp_stage, reference.dasp_stage,
                   stage_inputs((2, 16, 16, 7, 9), 3, "channels_last", dtype, tgt.device), dtype,
                   grads=dtype == torch.float64)

