import torch.nn as nn


class ConvBNReLU(nn.Sequential):
    """conv (no bias) + BatchNorm + ReLU; children named conv, bn, relu as in the reference code."""

    def __init__(self, cin, cout, k=3, stride=1, padding=None, groups=1):
        padding = k // 2 if padding is None else padding
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)


def init_conv_weights(module):
    """Kaiming-normal (a=1) for every conv, zero biases: the reference implementation's init."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, a=1)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
