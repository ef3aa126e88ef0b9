"""The two spatial paths of BiSeNet V1: the original one and the paper's DASP.

Both take (N, 3, H, W) and return (N, 128, ceil(H/8), ceil(W/8)) for any H, W >= 1.
"""
import torch.nn as nn

from dasp.models.layers import ConvBNReLU


class SpatialPath(nn.Module):
    """BiSeNet's original spatial path: 7x7, 3x3, 3x3 convs of stride 2, then a 1x1 conv 64 -> 128.

    The fourth layer (`conv_out`) is not in the paper's Table I; it is kept so that the reference
    implementation's Cityscapes checkpoints (CoinCheung/BiSeNet) load with strict=True.
    """

    def __init__(self):
        super().__init__()
        self.conv1 = ConvBNReLU(3, 64, 7, 2, 3)
        self.conv2 = ConvBNReLU(64, 64, 3, 2, 1)
        self.conv3 = ConvBNReLU(64, 64, 3, 2, 1)
        self.conv_out = ConvBNReLU(64, 128, 1, 1, 0)

    def forward(self, x):
        return self.conv_out(self.conv3(self.conv2(self.conv1(x))))


class PaperSpatialPath(nn.Module):
    """The original spatial path as the paper's Table I counts it: 7x7 3->64, 3x3 64->64,
    3x3 64->128, all stride 2 (T_i -> T_7x7 -> T^1_3x3 -> T^2_3x3). Used for Table I only: the
    checkpoint-compatible `SpatialPath` has 64->64 then a 1x1 64->128 instead."""

    def __init__(self):
        super().__init__()
        self.conv1 = ConvBNReLU(3, 64, 7, 2, 3)
        self.conv2 = ConvBNReLU(64, 64, 3, 2, 1)
        self.conv3 = ConvBNReLU(64, 128, 3, 2, 1)

    def forward(self, x):
        return self.conv3(self.conv2(self.conv1(x)))


class PoolingPointwise(nn.Module):
    """PPM: 2x2 max pooling (ceil mode, so odd sizes match the stride-2 branch) then a 1x1 conv."""

    def __init__(self, cin, cout):
        super().__init__()
        self.pool = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x):
        return self.conv(self.pool(x))


class DASPStage(nn.Module):
    """One stage of Eq. (5): F[i+1] = PPM(F[i]) + DSC(F[i]).

    DSC = depthwise KxK stride-2 conv + BN + ReLU (`dw`), then 1x1 conv + BN + ReLU (`pw`).
    """

    # Tells dasp_kernels.fuse that forward is exactly PPM(x) + pw(dw(x)).
    dasp_kernels_pattern = "dasp_stage"

    def __init__(self, cin, cout, k):
        super().__init__()
        self.dw = ConvBNReLU(cin, cin, k, 2, k // 2, groups=cin)
        self.pw = ConvBNReLU(cin, cout, 1, 1, 0)
        self.ppm = PoolingPointwise(cin, cout)

    def forward(self, x):
        return self.ppm(x) + self.pw(self.dw(x))


class DepthwiseAttentionSpatialPath(nn.Module):
    """The paper's DASP: three stages, channels 3 -> 64 -> 64 -> 128, kernels 7, 3, 3."""

    # Tells dasp_kernels.fuse that forward applies the children, all DASP stages, in order.
    dasp_kernels_pattern = "dasp_spatial_path"

    def __init__(self):
        super().__init__()
        self.stage1 = DASPStage(3, 64, 7)
        self.stage2 = DASPStage(64, 64, 3)
        self.stage3 = DASPStage(64, 128, 3)

    def forward(self, x):
        return self.stage3(self.stage2(self.stage1(x)))


def build_spatial_path(kind):
    if kind == "original":
        return SpatialPath()
    if kind == "dasp":
        return DepthwiseAttentionSpatialPath()
    raise ValueError(f"spatial_path must be 'original' or 'dasp', got {kind!r}")
