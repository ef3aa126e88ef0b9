"""dasp_spatial_path on every backend (tests/ops/op_harness.py) against
reference.dasp_spatial_path, and the CPU kernel's bands, empty batch, one stage, gradients,
opcheck, errors and the narrower builds."""
import pytest
import torch
from torch.library import opcheck

from dasp_kernels import functional as F
from dasp_kernels import reference
from op_harness import BACKENDS, LAYOUTS, check_all, emu_ops, make_runner  # noqa: F401
from op_harness import narrower_build_check
from inputs import both_raise, expected_format, make_x, path_params, stage_params

from conftest import needs_cpu_ext

OPS = torch.ops.dasp_kernels
DTYPES = [torch.float32, torch.float64]
DTYPE_IDS = ["fp32", "fp64"]


@pytest.fixture(params=BACKENDS)
def run(request):
    return make_runner(request, "dasp_spatial_path")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_matches_reference_every_backend(run, layout):
    check_all(run, layout)


@needs_cpu_ext
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape,layout", [((1, 3, 64, 64), "nchw"), ((2, 3, 37, 53), "cl"),
                                          ((1, 3, 1, 1), "nchw"), ((1, 3, 70, 9), "sliced")])
@needs_cpu_ext
def test_dasp_spatial_path_matches_reference(shape, layout, dtype):
    x = make_x(*shape, layout, dtype)
    params = path_params(dtype=dtype)
    got = F.dasp_spatial_path(x, params, backend="cpu")
    ref = reference.dasp_spatial_path(x.double(), [p.double() for p in params])
    assert got.shape == ref.shape and got.dtype == dtype
    assert got.is_contiguous(memory_format=expected_format(x))
    if dtype == torch.float64:
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)
    else:
        torch.testing.assert_close(got.double(), ref, rtol=1e-5,
                                   atol=1e-6 * 8 * max(1.0, ref.abs().max().item()))


@needs_cpu_ext
@pytest.mark.parametrize("threads", [1, 2, 5])
def test_dasp_spatial_path_bands(threads):
    # Each thread takes a band of output rows and recomputes the earlier stages' halo rows.
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = torch.randn(1, 4, 45, 40)
        params = path_params((4, 16, 8, 24), (5, 1, 7))
        got = OPS.dasp_spatial_path(x, params)
        ref = reference.dasp_spatial_path(x.double(), [p.double() for p in params])
        torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())
    finally:
        torch.set_num_threads(old)


@needs_cpu_ext
def test_dasp_spatial_path_empty_batch_and_one_stage():
    params = path_params()
    assert OPS.dasp_spatial_path(torch.randn(0, 3, 16, 16), params).shape == (0, 128, 2, 2)
    x = torch.randn(2, 3, 11, 12)
    one = stage_params(3, 64, 7)
    torch.testing.assert_close(OPS.dasp_spatial_path(x, one), OPS.dasp_stage(x, *one))


@needs_cpu_ext
def test_gradcheck_dasp_spatial_path():
    x = torch.randn(1, 2, 7, 5, dtype=torch.float64, requires_grad=True)
    params = [p.requires_grad_() for p in path_params((2, 3, 2), (3, 1), torch.float64)]
    assert torch.autograd.gradcheck(
        lambda x, *p: F.dasp_spatial_path(x, list(p), backend="cpu"), (x, *params))


@needs_cpu_ext
def test_opcheck_path():
    x = make_x(2, 8, 9, 6, "cl")
    opcheck(OPS.dasp_spatial_path.default, (x, path_params((8, 16, 4), (3, 5))))


@needs_cpu_ext
def test_opcheck_with_grad():
    x = make_x(1, 3, 8, 7, "nchw").requires_grad_()
    params = [p.requires_grad_() for p in path_params((3, 4, 5), (7, 3))]
    opcheck(OPS.dasp_spatial_path.default, (x, params))
    opcheck(OPS.dasp_stage.default, (x, *params[:7]))


@needs_cpu_ext
def test_errors_dasp_spatial_path_match_wrapper():
    x = torch.randn(1, 3, 16, 16)
    p = path_params()
    bad_stage2 = p[:7] + [torch.randn(32, 1, 3, 3)] + p[8:]
    bad_k = p[:14] + [torch.randn(64, 1, 2, 2)] + p[15:]
    cases = [
        ((x, p[:20]), r"dasp_spatial_path: expected stage_params to hold 7 tensors per stage \(dw_weight, dw_scale, dw_shift, pw_weight, pw_scale, pw_shift, ppm_weight\), got 20"),
        ((x, bad_stage2), r"dasp_spatial_path: stage 2: expected dw_weight of shape \[Cin, 1, K, K\] with Cin = 64, got \[32, 1, 3, 3\]"),
        ((x, bad_k), r"dasp_spatial_path: stage 3: expected an odd kernel size K in 1, 3, 5, 7, got K = 2"),
        ((x.double(), p), r"dasp_spatial_path: stage 1: expected dw_weight to have the dtype of x \(float64\), got float32"),
        ((x[0], p), r"dasp_spatial_path: expected x to be 4-D"),
    ]
    for args, match in cases:
        both_raise(lambda: OPS.dasp_spatial_path(*args),
                    lambda: F.dasp_spatial_path(*args, backend="cpu"), match)


@needs_cpu_ext
def test_reference_backend_and_export_name():
    x = torch.randn(1, 3, 9, 9)
    p = path_params()
    torch.testing.assert_close(F.dasp_spatial_path(x, p, backend="reference"),
                               F.dasp_spatial_path(x, p, backend="cpu"), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("isa", ["avx2", "default"])
def test_narrower_isa_builds(isa):
    narrower_build_check("dasp_spatial_path", isa)
