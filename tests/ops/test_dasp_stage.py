"""dasp_stage on every backend (tests/ops/op_harness.py) against reference.dasp_stage, and the
CPU kernel over every input layout, thread counts, empty batch, output reuse, gradients, opcheck,
errors and the narrower builds.

fp32 results are compared with the float64 reference of the same inputs. The kernels sum the Cin
products of each 1x1 convolution in another order than oneDNN does (and fold the BN scales into
the weights), so the tolerance is 1e-5 relative plus 1e-6 * sqrt(Cin) times the output's
magnitude.
"""
import math
import os
import subprocess
import sys

import pytest
import torch
from torch.library import opcheck

import dasp_kernels
from dasp_kernels import functional as F
from dasp_kernels import reference

from op_harness import BACKENDS, LAYOUTS, check_all, emu_ops, make_runner  # noqa: F401
from inputs import assert_close_to_ref, both_raise, expected_format, make_x, stage_params

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
    # lowered, which dasp_kernels follows (as test_cpu_kernels.py's test_narrower_builds_agree).
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
@pytest.mark.parametrize("layout", ["nchw", "cl"])
def test_opcheck(layout):
    x = make_x(2, 8, 9, 6, layout)
    params = stage_params(8, 16, 3)
    opcheck(OPS.dasp_stage.default, (x, *params))
    # The backward's output strides follow x's memory format.
    opcheck(OPS._dasp_stage_backward.default, (torch.randn(2, 16, 5, 3), x, *params))


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
        ((x.half(), *[t.half() for t in p]), r"dasp_stage: backend 'cpu' supports float32, float64, got float16"),
    ]
    for args, match in cases:
        both_raise(lambda: OPS.dasp_stage(*args), lambda: F.dasp_stage(*args, backend="cpu"), match)


@needs_cpu_ext
def test_backward_checks_grad_out():
    x = torch.randn(1, 3, 8, 8)
    p = stage_params(3, 64, 7)
    with pytest.raises(RuntimeError, match=r"_dasp_stage_backward: expected grad_out of shape \[1, 64, 4, 4\], got \[1, 64, 4, 5\]"):
        OPS._dasp_stage_backward(torch.randn(1, 64, 4, 5), x, *p)


