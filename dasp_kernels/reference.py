"""Every op of the library in plain torch: the test oracle, the benchmark baseline and the fallback.

One definition per op; the kernels in csrc/ and dasp_kernels/triton/ must agree with these to float
rounding. Autograd through these functions is the reference for the backward kernels.
"""
import torch
import torch.nn.functional as F


def activation(z, act, alpha=0.0, beta=0.0):
    """dwconv_bn_act's activations (dasp_kernels._checks.ACTIVATIONS) in plain torch."""
    if act == "none":
        return z
    if act == "relu":
        return torch.relu(z)
    if act == "hardtanh":
        return F.hardtanh(z, alpha, beta)
    if act == "hardswish":
        return F.hardswish(z)
    if act == "silu":
        return F.silu(z)
    if act == "gelu":
        return F.gelu(z)
    if act == "gelu_tanh":
        return F.gelu(z, approximate="tanh")
    if act == "leaky_relu":
        return F.leaky_relu(z, alpha)
    raise ValueError(f"unknown activation {act!r}")


def dwconv_bn_act(x, weight, scale, shift, stride=1, padding=(0, 0, 0, 0), dilation=1,
                  act="relu", alpha=0.0, beta=0.0):
    """act(depthwise_conv2d(x, weight, stride, padding, dilation) * scale[c] + shift[c]).

    padding = [top, bottom, left, right] zeros around x.
    """
    top, bottom, left, right = padding
    x = F.pad(x, (left, right, top, bottom))
    y = F.conv2d(x, weight, None, stride, 0, dilation, x.shape[1])
    y = y * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)
    return activation(y, act, alpha, beta)


def dwconv_bn_relu(x, weight, scale, shift, stride=1, padding=0, relu=True):
    """act(depthwise_conv2d(x, weight, stride, padding) * scale[c] + shift[c])."""
    return dwconv_bn_act(x, weight, scale, shift, stride, (padding,) * 4, 1,
                         "relu" if relu else "none")


def pointwise_bn_act(x, weight, scale, shift, act="none", alpha=0.0, beta=0.0):
    """act(conv1x1(x, weight) * scale[c] + shift[c])."""
    y = F.conv2d(x, weight) * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)
    return activation(y, act, alpha, beta)


def squeeze_excitation(z, reduce_weight, reduce_bias, expand_weight, expand_bias, act="relu",
                       alpha=0.0, beta=0.0, gate="sigmoid"):
    """The per-image, per-channel gate of squeeze-and-excitation on z (N, E, H, W):
    gate(conv1x1(act(conv1x1(mean_hw(z), reduce) + b), expand) + b), shape (N, E, 1, 1)."""
    m = z.mean((2, 3), keepdim=True)
    s = activation(F.conv2d(m, reduce_weight, reduce_bias), act, alpha, beta)
    s = F.conv2d(s, expand_weight, expand_bias)
    if gate == "sigmoid":
        return torch.sigmoid(s)
    if gate == "hardsigmoid":
        return F.hardsigmoid(s)
    raise ValueError(f"unknown gate {gate!r}")


def inverted_residual(x, expand_weight, expand_scale, expand_shift, expand_act, expand_alpha,
                      expand_beta, dw_weight, dw_scale, dw_shift, stride, padding, dilation,
                      dw_act, dw_alpha, dw_beta, project_weight, project_scale, project_shift,
                      project_act, project_alpha, project_beta, residual, se_reduce_weight=None,
                      se_reduce_bias=None, se_expand_weight=None, se_expand_bias=None,
                      se_act="relu", se_alpha=0.0, se_beta=0.0, se_gate="sigmoid"):
    """MobileNetV2/V3's block: 1x1 expansion (skipped when expand_weight is None), depthwise,
    squeeze-and-excitation (skipped when se_reduce_weight is None: z times its gate,
    squeeze_excitation), 1x1 projection, each with its scale/shift and activation, then + x if
    residual.

    The depthwise stage's zero padding is applied to the expanded tensor, as in the models.
    """
    y = x
    if expand_weight is not None:
        y = pointwise_bn_act(y, expand_weight, expand_scale, expand_shift, expand_act,
                             expand_alpha, expand_beta)
    y = dwconv_bn_act(y, dw_weight, dw_scale, dw_shift, stride, padding, dilation, dw_act,
                      dw_alpha, dw_beta)
    if se_reduce_weight is not None:
        y = y * squeeze_excitation(y, se_reduce_weight, se_reduce_bias, se_expand_weight,
                                   se_expand_bias, se_act, se_alpha, se_beta, se_gate)
    y = pointwise_bn_act(y, project_weight, project_scale, project_shift, project_act,
                         project_alpha, project_beta)
    return y + x if residual else y


def ppm_add(x, weight, residual):
    """conv1x1(maxpool2d(x, 2, 2, ceil_mode=True), weight) + residual."""
    return F.conv2d(F.max_pool2d(x, 2, 2, ceil_mode=True), weight) + residual


def dasp_stage(x, dw_weight, dw_scale, dw_shift, pw_weight, pw_scale, pw_shift, ppm_weight):
    """One DASP stage, Eq. (5): PPM(x) + pw(dw(x)), depthwise stride 2 and padding K // 2."""
    k = dw_weight.shape[-1]
    y = dwconv_bn_relu(x, dw_weight, dw_scale, dw_shift, 2, k // 2, True)
    y = F.conv2d(y, pw_weight) * pw_scale.view(1, -1, 1, 1) + pw_shift.view(1, -1, 1, 1)
    return ppm_add(x, ppm_weight, torch.relu(y))


def dasp_spatial_path(x, stage_params):
    """dasp_stage applied once per 7 tensors of stage_params (the DASP spatial path: 3 stages)."""
    for i in range(0, len(stage_params), 7):
        x = dasp_stage(x, *stage_params[i:i + 7])
    return x


def fold_bn(bn):
    """(scale, shift) of an eval-mode BatchNorm2d: scale = gamma / sqrt(var + eps)."""
    var, mean = bn.running_var, bn.running_mean
    scale = torch.rsqrt(var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale, shift
