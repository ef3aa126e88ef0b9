"""Squeeze-and-excitation modules that fuse() runs inside an inverted-residual block's op.

Recognised by their structure: exactly a 1x1 reduce conv (E -> S, bias), an activation, a 1x1
expand conv (S -> E, bias) and a gate, under the names of the two layouts in use
(SE_LAYOUTS: torchvision's SqueezeExcitation, which also holds its AdaptiveAvgPool2d(1), and
timm's SqueezeExcite, which takes the mean in its forward). Both forwards compute
x * gate(expand(act(reduce(mean_hw(x))))), the op's SE stage.
"""
import torch.nn as nn

from dasp_kernels.fuse_depthwise import activation_spec

# (reduce conv, activation, expand conv, gate) attribute names of each layout.
SE_LAYOUTS = (("fc1", "activation", "fc2", "scale_activation"),  # torchvision
              ("conv_reduce", "act1", "conv_expand", "gate"))    # timm
# Gate modules by class name: torch's and timm's (timm's HardSigmoid is relu6(x + 3) / 6 too).
GATES = {"Sigmoid": "sigmoid", "Hardsigmoid": "hardsigmoid", "HardSigmoid": "hardsigmoid"}


def _is_pool1(m):
    return type(m) is nn.AdaptiveAvgPool2d and m.output_size in (1, (1, 1))


def _fc(conv, cin):
    """Whether conv is a plain 1x1 conv with a bias on cin channels."""
    return (type(conv) is nn.Conv2d and conv.kernel_size == (1, 1) and conv.stride == (1, 1)
            and conv.groups == 1 and conv.padding in ((0, 0), "valid") and conv.bias is not None
            and conv.in_channels == cin)


def se_plan(m, path, channels):
    """(reduce conv path, expand conv path, (act, alpha, beta), gate) for an SE module `m` at
    `path` on `channels` channels; a string saying why not when it looks like one but cannot
    run in the op; None when it is no SE module at all."""
    kids = dict(m.named_children())
    layout = next((lay for lay in SE_LAYOUTS if all(n in kids for n in lay)), None)
    if layout is None:
        return None
    reduce, act, expand, gate = (kids[n] for n in layout)
    extra = set(kids) - set(layout) - ({"avgpool"} if layout is SE_LAYOUTS[0] else set())
    if extra or (layout is SE_LAYOUTS[0] and not _is_pool1(kids.get("avgpool"))):
        return f"squeeze-and-excitation ({path}) with other layers ({', '.join(sorted(extra))})"
    if not _fc(reduce, channels) or not _fc(expand, reduce.out_channels) \
            or expand.out_channels != channels:
        return f"squeeze-and-excitation ({path}) whose convs are not 1x1 {channels} -> S -> " \
               f"{channels} with biases"
    spec = activation_spec(act)
    if spec is None:
        return f"squeeze-and-excitation ({path}) with activation {type(act).__name__}"
    if type(gate).__name__ not in GATES:
        return f"squeeze-and-excitation ({path}) with gate {type(gate).__name__}"
    return (f"{path}.{layout[0]}", f"{path}.{layout[2]}", spec, GATES[type(gate).__name__])
