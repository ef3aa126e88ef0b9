"""The `realmodels` workloads: depthwise-separable networks no one here wrote, as people run them.

torchvision's classifiers and segmentation models (their "out") and timm's, built with random
weights (nothing is downloaded); the suite perturbs their BatchNorm statistics like every model's.
torchvision (0.29.x for torch 2.14) and timm are benchmark and test extras, not dependencies.
"""
import copy

import torch.nn as nn

TORCHVISION_CLASSIFIERS = ("mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0",
                           "shufflenet_v2_x1_0", "mnasnet1_0")
TORCHVISION_SEGMENTATION = ("lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large")
TIMM = ("efficientnet_lite0", "mobilenetv4_conv_small")
WORKLOADS = ([f"tv/{n}" for n in TORCHVISION_CLASSIFIERS + TORCHVISION_SEGMENTATION]
             + [f"timm/{n}" for n in TIMM])
CLASSIFIERS = [f"tv/{n}" for n in TORCHVISION_CLASSIFIERS] + [f"timm/{n}" for n in TIMM]
# Single blocks at the input they see inside their model for the case's image size:
# "tvblock/<model>/<i>" is torchvision <model>'s features[i] (an inverted-residual block).
# mobilenet_v3_large's blocks with squeeze-and-excitation: features 4-6 and 11-15.
MNV3_SE_BLOCKS = (4, 5, 6, 11, 12, 13, 14, 15)
BLOCKS = ([f"tvblock/mobilenet_v2/{i}" for i in range(1, 18)]
          + [f"tvblock/mobilenet_v3_large/{i}" for i in MNV3_SE_BLOCKS])


class SegmentationOut(nn.Module):
    """A torchvision segmentation model's "out" tensor (its forward returns a dict)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)["out"]


def build(workload):
    """The eval-mode nn.Module of a realmodels workload ('tv/<name>' or 'timm/<name>')."""
    lib, _, name = workload.partition("/")
    if lib == "tv" and name in TORCHVISION_CLASSIFIERS:
        import torchvision

        return getattr(torchvision.models, name)(weights=None).eval()
    if lib == "tv" and name in TORCHVISION_SEGMENTATION:
        import torchvision

        seg = getattr(torchvision.models.segmentation, name)(weights=None, weights_backbone=None)
        return SegmentationOut(seg).eval()
    if lib == "timm" and name in TIMM:
        import timm

        return timm.create_model(name, pretrained=False).eval()
    raise ValueError(f"unknown realmodels workload {workload!r}; expected one of {WORKLOADS}")


def build_block(workload, image_shape):
    """(the eval-mode block of a BLOCKS workload, the shape of its input for an image of
    image_shape)."""
    import torch
    import torchvision

    _, name, index = workload.split("/")
    if workload not in BLOCKS:
        raise ValueError(f"unknown block workload {workload!r}; expected one of {BLOCKS}")
    features = getattr(torchvision.models, name)(weights=None).eval().features
    with torch.device("meta"), torch.no_grad():  # shapes only
        x = copy.deepcopy(features[:int(index)]).to("meta")(torch.zeros(image_shape))
    return features[int(index)], tuple(x.shape)
