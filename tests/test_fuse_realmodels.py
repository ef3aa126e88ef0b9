"""fuse() on models no one here wrote: torchvision's and timm's depthwise-separable networks.

Fused models must compute what the originals do (fp32, eval, BatchNorm statistics perturbed), say
what they fused and what they left and why, and keep working under torch.autocast(bfloat16).
"""
import collections

import pytest
import torch
import torch.nn as nn

import dasp_kernels

torchvision = pytest.importorskip("torchvision")
pytestmark = pytest.mark.usefixtures("one_thread")

TORCHVISION = {  # name: depthwise convs fuse must fuse
    "mobilenet_v2": 17, "mobilenet_v3_large": 15, "efficientnet_b0": 16,
    "shufflenet_v2_x1_0": 19, "mnasnet1_0": 17,
}


def _perturbed(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)
    return model.eval()


def _features(model, x):
    """The last feature map (the classifier of an untrained model hides differences)."""
    return model.features(x) if hasattr(model, "features") else model.layers(model.conv1(x))


@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_torchvision_models_fuse_and_match(name):
    torch.manual_seed(0)
    model = _perturbed(getattr(torchvision.models, name)())
    fused = dasp_kernels.fuse(model)
    assert fused.dasp_fused["dwconv_bn_relu"] == TORCHVISION[name]
    report = collections.Counter(what for _, what in dasp_kernels.fuse_report(fused))
    assert report == {"fused: FusedDWConvBNReLU": TORCHVISION[name]}
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        out, ref = fused(x), model(x)
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
        if hasattr(model, "features"):
            torch.testing.assert_close(_features(fused, x), _features(model, x), rtol=1e-4, atol=1e-4)


def test_dilated_depthwise_convs_are_left_with_the_reason():
    model = _perturbed(torchvision.models.segmentation.lraspp_mobilenet_v3_large(
        weights=None, weights_backbone=None))
    fused = dasp_kernels.fuse(model)
    left = [(n, w) for n, w in dasp_kernels.fuse_report(fused) if w.startswith("left")]
    assert len(left) == 3 and all(w == "left: dilated or not zero-padded" for _, w in left)
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(fused(x)["out"], model(x)["out"], rtol=1e-4, atol=1e-4)


def test_fused_model_runs_under_bf16_autocast():
    torch.manual_seed(0)
    model = _perturbed(torchvision.models.mobilenet_v2())
    fused = dasp_kernels.fuse(model)
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out, ref = _features(fused, x), _features(model, x)
    assert out.dtype == ref.dtype == torch.bfloat16
    # The fused layers compute in fp32 and round once, autocast's convs in bf16: bf16 agreement.
    torch.testing.assert_close(out.float(), ref.float(), rtol=0.1, atol=0.1)


def test_timm_blocks_are_left_untouched_with_the_reason():
    timm = pytest.importorskip("timm")
    model = _perturbed(timm.create_model("efficientnet_lite0"))
    fused = dasp_kernels.fuse(model)
    rows = dasp_kernels.fuse_report(fused)
    assert fused.dasp_fused["dwconv_bn_relu"] == 0 and len(rows) == 16
    assert all(w.startswith("left: a child of DepthwiseSeparableConv") or w.startswith("left: a child of InvertedResidual")
               for _, w in rows), rows
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        assert torch.equal(fused(x), model(x))
