"""The CUDA backend as a whole: the kernels are compiled in and registered, run on the current
stream and on a second device, and reach past 2**31 elements. Each op's own tests, on a GPU and on
the CPU emulator of tests/cuda_emu (DASP_CUDA_EMU=1): tests/ops/test_<op>.py."""
import pytest
import torch

from dasp_kernels import _loader, cases
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
gpu_test = pytest.mark.skipif(CUDA_REASON is not None, reason=f"CUDA kernels: {CUDA_REASON}")
CUDA = torch.device("cuda")


def inputs(case, device, dtype=torch.float32, channels_last=False):
    """[x, the op's other tensors] of a dasp_kernels.cases case on device."""
    x, params = cases.make_inputs(case, torch.Generator().manual_seed(0))
    x = x.to(device, dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return [x, *[p.to(device, dtype) for p in params]]


def close(a, b, tol):
    torch.testing.assert_close(a, b.to(a.dtype), rtol=tol, atol=tol, equal_nan=True)


def dw_relu(x, w, sc, sh, stride, padding):
    return torch.ops.dasp_kernels.dwconv_bn_act(x, w, sc, sh, stride, [padding] * 4, 1, "relu",
                                                0.0, 0.0)


@pytest.mark.needs_cuda
@gpu_test
def test_current_stream_is_used():
    x, w, sc, sh = inputs(cases.dw_case(4, 16, 64, 63, 7), CUDA, channels_last=True)
    stage = inputs(cases.stage_case(2, 16, 32, 33, 31, 3), CUDA)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        y = dw_relu(x, w, sc, sh, 2, 3)
        out = torch.ops.dasp_kernels.dasp_stage(*stage)
        # the kernels were queued on `stream`: the default stream sees them only after syncing
    torch.cuda.current_stream().wait_stream(stream)
    close(y, ref.dwconv_bn_relu(x, w, sc, sh, 2, 3, True), 1e-5)
    assert torch.isfinite(out).all()


@pytest.mark.needs_cuda
@gpu_test
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_second_device():
    dev = torch.device("cuda", 1)
    x, w, sc, sh = inputs(cases.dw_case(2, 3, 9, 8, 3), dev)
    y = dw_relu(x, w, sc, sh, 2, 1)
    assert y.device == dev
    close(y, ref.dwconv_bn_relu(x, w, sc, sh, 2, 1, True), 1e-5)


@pytest.mark.needs_cuda
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
    _, w, sc, sh = inputs(cases.dw_case(1, 2, 1, 1, 3), CUDA, torch.float16)
    y = torch.ops.dasp_kernels.dwconv_bn_act(x, w, sc, sh, 1, [1] * 4, 1, "none", 0.0, 0.0)
    tail = ref.dwconv_bn_relu(x[:, :, -4:].float(), w.float(), sc.float(), sh.float(), 1, 1, False)
    close(y[:, :, -2:], tail[:, :, -2:], 2e-2)
    del y
    xp = x[:, :, -9:]
    weight = torch.randn(3, 2, 1, 1, device=CUDA, dtype=torch.float16)
    out = torch.ops.dasp_kernels.ppm_add(x, weight, torch.zeros(1, 3, (h + 1) // 2, (h + 1) // 2,
                                                                device=CUDA, dtype=torch.float16))
    close(out[:, :, -4:], ref.ppm_add(xp.float(), weight.float(), torch.zeros(1, 3, 5, (h + 1) // 2,
                                                                              device=CUDA))[:, :, -4:], 2e-2)


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
