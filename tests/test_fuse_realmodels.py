"""fuse() on models no one here wrote: torchvision's and timm's depthwise-separable networks.

Fused models must compute what the originals do (fp32, eval, BatchNorm statistics perturbed), say
what they fused and what they left and why, and keep working under torch.autocast(bfloat16).
"""
import collections

import pytest
import torch
import torch.nn as nn

import dasp_kernels
from conftest import perturbed_bn

torchvision = pytest.importorskip("torchvision")
pytestmark = pytest.mark.usefixtures("one_thread")

TORCHVISION = {  # name: {activation: depthwise convs fuse must fuse with it}
    "mobilenet_v2": {"hardtanh": 17}, "mobilenet_v3_large": {"relu": 6, "hardswish": 9},
    "efficientnet_b0": {"silu": 16}, "shufflenet_v2_x1_0": {"none": 19}, "mnasnet1_0": {"relu": 17},
}


def _features(model, x):
    """The last feature map (the classifier of an untrained model hides differences)."""
    return model.features(x) if hasattr(model, "features") else model.layers(model.conv1(x))


@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_torchvision_models_fuse_and_match(name):
    torch.manual_seed(0)
    model = perturbed_bn(getattr(torchvision.models, name)())
    fused = dasp_kernels.fuse(model)
    assert fused.dasp_fused["dwconv_bn_act"] == sum(TORCHVISION[name].values())
    report = collections.Counter(what for _, what in dasp_kernels.fuse_report(fused)
                                 if "inverted_residual" not in what  # tests/test_fuse_blocks.py
                                 and not what.startswith("left as layers"))
    assert report == {f"fused: dwconv_bn_act ({a})": n for a, n in TORCHVISION[name].items()}
    assert list(fused.state_dict()) == list(model.state_dict())
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        out, ref = fused(x), model(x)
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
        if hasattr(model, "features"):
            torch.testing.assert_close(_features(fused, x), _features(model, x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large"])
def test_segmentation_models_fuse_their_dilated_convs(name):
    model = perturbed_bn(getattr(torchvision.models.segmentation, name)(
        weights=None, weights_backbone=None))
    fused = dasp_kernels.fuse(model)
    rows = [(q, w) for q, w in dasp_kernels.fuse_report(fused) if "inverted_residual" not in w
            and not w.startswith("left as layers")]  # the blocks: tests/test_fuse_blocks.py
    assert len(rows) == 15 and all(w.startswith("fused") for _, w in rows), rows
    dilated = [m for m in fused.modules() if isinstance(m, nn.Conv2d) and m.dilation != (1, 1)
               and m.groups > 1]
    assert len(dilated) == 3 and all(type(m).__name__ == "FusedDWConv2d" for m in dilated)
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(fused(x)["out"], model(x)["out"], rtol=1e-4, atol=1e-4)


def test_fused_model_runs_under_bf16_autocast():
    torch.manual_seed(0)
    model = perturbed_bn(torchvision.models.mobilenet_v2())
    fused = dasp_kernels.fuse(model)
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out, ref = _features(fused, x), _features(model, x)
    assert out.dtype == ref.dtype == torch.bfloat16
    # Both run their convs in bf16 (ours: float32 sums rounded once, autocast.py): bf16 agreement.
    torch.testing.assert_close(out.float(), ref.float(), rtol=0.1, atol=0.1)


@pytest.mark.parametrize("name", ["efficientnet_lite0", "mobilenetv4_conv_small"])
def test_timm_models_fuse_and_match(name):
    """timm's blocks (DepthwiseSeparableConv, InvertedResidual, UniversalInvertedResidual's
    ConvNormAct) with BatchNormAct2d: the activation inside the norm is fused, never dropped."""
    timm = pytest.importorskip("timm")
    model = perturbed_bn(timm.create_model(name))
    fused = dasp_kernels.fuse(model)
    rows = [(q, w) for q, w in dasp_kernels.fuse_report(fused) if "inverted_residual" not in w
            and not w.startswith("left as layers")]  # the blocks: tests/test_fuse_blocks.py
    want = {"efficientnet_lite0": {"hardtanh": 16},
            "mobilenetv4_conv_small": {"relu": 11, "none": 4}}[name]
    assert collections.Counter(w for _, w in rows) == {
        f"fused: dwconv_bn_act ({a})": n for a, n in want.items()}
    assert list(fused.state_dict()) == list(model.state_dict())
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        want_out = model(x)
        scale = want_out.abs().max()
        torch.testing.assert_close(fused(x) / scale, want_out / scale, rtol=1e-5, atol=1e-5)


def test_fused_model_compiles_without_breaks_or_layout_copies(monkeypatch):
    """Under torch.compile (freezing, as the benchmarks run it) the fused mobilenet_v3_large is
    one graph and inductor feeds our op the channels_last tensors its convs make: no copy
    kernel is generated for our op's input (inductor would name it cpp_fused_dwconv_bn_act_N)."""
    from torch._inductor.utils import run_and_get_code

    if dasp_kernels.backend_status()["cpu"] is not None:
        pytest.skip("the C++ extension did not load")
    monkeypatch.setenv("TORCHINDUCTOR_COMPILE_THREADS", "1")
    torch._dynamo.reset()
    model = perturbed_bn(torchvision.models.mobilenet_v3_large())
    compiled = torch.compile(dasp_kernels.fuse(model), fullgraph=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad(), torch._inductor.config.patch(freezing=True):
        out, code = run_and_get_code(compiled, x)
        torch.testing.assert_close(out, model(x), rtol=1e-4, atol=1e-4)
    src = "\n".join(code)
    # All 15 blocks (8 with squeeze-and-excitation) run as one op each, depthwise layer included.
    assert src.count("torch.ops.dasp_kernels.inverted_residual.default(") == 15
    assert src.count("torch.ops.dasp_kernels.dwconv_bn_act.default(") == 0
    assert "cpp_fused_dwconv_bn_act" not in src and "cpp_fused_inverted_residual" not in src
