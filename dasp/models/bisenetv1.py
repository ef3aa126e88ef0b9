"""BiSeNet V1 (ResNet18 context path) with a choice of spatial path.

With spatial_path="original" this is CoinCheung/BiSeNet's `lib/models/bisenetv1.py` as it stands
since July 2021 (commits c0422a1, e40b825; unchanged in the forward since): the fusion module's
attention is a 1x1 conv + BatchNorm, and each head ends in a 1x1 classifier and bilinear upsampling.
Same key names, shapes and function, so its published Cityscapes checkpoint
(`model_final_v1_city_new.pth`) loads with strict=True and gives the same logits. With "dasp" only
keys under `sp.` differ. The layout of 2020 (a two-layer MLP attention and PixelShuffle heads) is
refused with a message naming it; see `dasp.models.layout`.
"""
import torch
import torch.nn as nn

from dasp.models.layers import ConvBNReLU, init_conv_weights
from dasp.models.layout import check_layout, model_layout, read_layout
from dasp.models.resnet import ResNet18
from dasp.models.spatial_path import build_spatial_path


class AttentionRefinementModule(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv = ConvBNReLU(cin, cout, 3, 1, 1)
        self.conv_atten = nn.Conv2d(cout, cout, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(cout)

    def forward(self, x):
        feat = self.conv(x)
        atten = torch.sigmoid(self.bn_atten(self.conv_atten(feat.mean((2, 3), keepdim=True))))
        return feat * atten


class ContextPath(nn.Module):
    def __init__(self):
        super().__init__()
        self.resnet = ResNet18()
        self.arm16 = AttentionRefinementModule(256, 128)
        self.arm32 = AttentionRefinementModule(512, 128)
        self.conv_head32 = ConvBNReLU(128, 128, 3, 1, 1)
        self.conv_head16 = ConvBNReLU(128, 128, 3, 1, 1)
        self.conv_avg = ConvBNReLU(512, 128, 1, 1, 0)
        self.up32 = nn.Upsample(scale_factor=2.0)
        self.up16 = nn.Upsample(scale_factor=2.0)

    def forward(self, x):
        feat8, feat16, feat32 = self.resnet(x)
        avg = self.conv_avg(feat32.mean((2, 3), keepdim=True))
        feat32_up = self.conv_head32(self.up32(self.arm32(feat32) + avg))
        feat16_up = self.conv_head16(self.up16(self.arm16(feat16) + feat32_up))
        return feat16_up, feat32_up  # 1/8 and 1/16 resolution


class FeatureFusionModule(nn.Module):
    """1x1 ConvBNReLU over [spatial, context]; channel attention = sigmoid(BN(1x1 conv(mean))),
    applied as feat * atten + feat."""

    def __init__(self, cin, cout):
        super().__init__()
        self.convblk = ConvBNReLU(cin, cout, 1, 1, 0)
        self.conv = nn.Conv2d(cout, cout, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, fsp, fcp):
        feat = self.convblk(torch.cat([fsp, fcp], dim=1))
        atten = torch.sigmoid(self.bn(self.conv(feat.mean((2, 3), keepdim=True))))
        return feat * atten + feat


class BiSeNetOutput(nn.Module):
    """3x3 ConvBNReLU, 1x1 classifier (with bias) to n_classes, bilinear upsampling by up_factor
    (align_corners=False)."""

    def __init__(self, cin, mid, n_classes, up_factor):
        super().__init__()
        self.conv = ConvBNReLU(cin, mid, 3, 1, 1)
        self.conv_out = nn.Conv2d(mid, n_classes, 1, bias=True)
        self.up = nn.Upsample(scale_factor=up_factor, mode="bilinear", align_corners=False)

    def forward(self, x):
        return self.up(self.conv_out(self.conv(x)))


class BiSeNetV1(nn.Module):
    """BiSeNet V1. Train mode returns (logits, aux16, aux32) (only logits when aux=False); eval mode
    returns logits (CoinCheung's aux_mode="eval" returns them in a 1-tuple). All at input
    resolution, which must be a multiple of 32.

    pretrained: local path to ImageNet ResNet18 weights in torchvision's key layout (nothing is
    downloaded).
    """

    def __init__(self, num_classes=19, spatial_path="original", aux=True, pretrained=None):
        super().__init__()
        self.num_classes = num_classes
        self.spatial_path = spatial_path
        self.aux = aux
        self.cp = ContextPath()
        self.sp = build_spatial_path(spatial_path)
        self.ffm = FeatureFusionModule(256, 256)
        self.conv_out = BiSeNetOutput(256, 256, num_classes, 8)
        if aux:
            self.conv_out16 = BiSeNetOutput(128, 64, num_classes, 8)
            self.conv_out32 = BiSeNetOutput(128, 64, num_classes, 16)
        init_conv_weights(self)
        if pretrained is not None:
            self.cp.resnet.load_imagenet(pretrained)

    def forward(self, x):
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"BiSeNetV1 expects input of shape (N, 3, H, W), got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if h % 32 or w % 32:
            raise ValueError(f"BiSeNetV1 needs H and W to be multiples of 32, got H={h}, W={w}; "
                             "pad the input (dasp.data.pad_to_multiple) or resize it")
        feat_cp8, feat_cp16 = self.cp(x)
        feat_sp = self.sp(x)
        logits = self.conv_out(self.ffm(feat_sp, feat_cp8))
        if self.training and self.aux:
            return logits, self.conv_out16(feat_cp8), self.conv_out32(feat_cp16)
        return logits

    def load_state_dict(self, state_dict, strict=True, assign=False):
        """As nn.Module's; with strict=True a state_dict of another layout (the 2020 one, another
        spatial path, other classes or aux heads) is refused with a message naming both layouts."""
        if strict:
            check_layout(read_layout(state_dict), model_layout(self))
        return super().load_state_dict(state_dict, strict=strict, assign=assign)
