"""Public functions: validate input (got vs expected), pick a backend, call exactly one op.

Under torch.autocast each first casts its tensors as the ops' own autocast kernels do
(dasp_kernels/autocast.py), so that the checks see what the op will run on.
"""
import torch

from dasp_kernels import _backends, _checks, reference
from dasp_kernels.autocast import cast_args


def _triton():
    from dasp_kernels import triton as triton_ops  # registers the triton ops on first use

    return triton_ops


def same_padding(size, k, stride, dilation):
    """TensorFlow's / timm's "same" padding of one dimension: (before, after), after >= before."""
    total = max((-(-size // stride) - 1) * stride + dilation * (k - 1) + 1 - size, 0)
    return total // 2, total - total // 2


def _padding4(padding, x, k, stride, dilation, op="dwconv_bn_act"):
    """padding as [top, bottom, left, right] from an int, (pad_h, pad_w), 4 ints or "same"."""
    if padding == "same":
        if x.dim() != 4:
            return [0] * 4  # the rank check says what is wrong
        return [*same_padding(x.shape[2], k, stride, dilation),
                *same_padding(x.shape[3], k, stride, dilation)]
    if isinstance(padding, int):
        return [padding] * 4
    if isinstance(padding, (tuple, list)) and all(isinstance(p, int) for p in padding):
        if len(padding) == 2:
            return [padding[0], padding[0], padding[1], padding[1]]
        if len(padding) == 4:
            return list(padding)
    raise ValueError(f"{op}: expected padding as an int, (pad_h, pad_w), "
                     f"(top, bottom, left, right) or 'same', got {padding!r}")


def dwconv_bn_act(x, weight, scale, shift, *, bias=None, stride=1, padding=0, dilation=1,
                  act="relu", alpha=0.0, beta=0.0, backend="auto"):
    """act(depthwise_conv2d(x, weight, bias, stride, padding, dilation) * scale[c] + shift[c]).

    x: (N, C, H, W); weight: (C, 1, K, K) as nn.Conv2d(C, C, K, groups=C).weight, 1 <= K <= 9;
    scale, shift: (C,), e.g. a folded eval-mode BatchNorm (see dasp_kernels.fold_bn); bias: (C,)
    or None, the conv's (folded into shift). stride 1 or 2; dilation >= 1; padding an int, (pad_h,
    pad_w), (top, bottom, left, right) or "same" (TensorFlow's and timm's: computed from the input
    size, the extra row/column at the bottom/right). act: "none", "relu", "hardtanh" (min alpha,
    max beta; ReLU6 is alpha=0, beta=6), "hardswish", "silu", "gelu", "gelu_tanh" or "leaky_relu"
    (negative slope alpha). The output has x's memory format.
    """
    x, weight, scale, shift, bias = cast_args((x, weight, scale, shift, bias))
    k = weight.shape[2] if weight.dim() == 4 else 0
    pad = _padding4(padding, x, k, stride, dilation)
    if bias is not None:
        _checks._same_device_dtype("dwconv_bn_act", _checks.raise_value_error, x,
                                   [("bias", bias)])
        if not (bias.dim() == 1 and bias.shape[0] == x.shape[1]):
            raise ValueError(f"dwconv_bn_act: expected bias of shape [{x.shape[1]}], got "
                             f"{_checks.shape_str(bias.shape)}")
        shift = shift + scale * bias
    _checks.check_dwconv_bn_act(x, weight, scale, shift, stride, pad, dilation, act,
                                _checks.raise_value_error)
    b = _backends.pick(backend, x, "dwconv_bn_act")
    args = (x, weight, scale, shift, stride, pad, dilation, act, float(alpha), float(beta))
    if b == "reference":
        return reference.dwconv_bn_act(*args)
    if b == "triton":
        _triton()
        return torch.ops.dasp_kernels.dwconv_bn_act_triton(*args)
    return torch.ops.dasp_kernels.dwconv_bn_act(*args)


def dwconv_bn_relu(x, weight, scale, shift, *, stride=1, padding=0, relu=True, backend="auto"):
    """relu(depthwise_conv2d(x, weight, stride, padding) * scale[c] + shift[c]) (or without the
    ReLU): dwconv_bn_act with act "relu" or "none", the form the DASP stages use."""
    return dwconv_bn_act(x, weight, scale, shift, stride=stride, padding=padding,
                         act="relu" if relu else "none", backend=backend)


def ppm_add(x, weight, residual, *, backend="auto"):
    """conv1x1(maxpool2d(x, 2, 2, ceil_mode=True), weight) + residual.

    x: (N, Cin, H, W); weight: (Cout, Cin, 1, 1); residual: (N, Cout, ceil(H/2), ceil(W/2)).
    The output has x's memory format.
    """
    x, weight, residual = cast_args((x, weight, residual))
    _checks.check_ppm_add(x, weight, residual, _checks.raise_value_error)
    b = _backends.pick(backend, x, "ppm_add")
    if b == "reference":
        return reference.ppm_add(x, weight, residual)
    if b == "triton":
        _triton()
        return torch.ops.dasp_kernels.ppm_add_triton(x, weight, residual)
    return torch.ops.dasp_kernels.ppm_add(x, weight, residual)


def dasp_stage(x, dw_weight, dw_scale, dw_shift, pw_weight, pw_scale, pw_shift, ppm_weight, *,
               backend="auto"):
    """One whole DASP stage (Eq. 5) in one pass: PPM(x) + pw(dw(x)).

    dw: depthwise KxK (K odd), stride 2, padding K // 2, then scale/shift (folded BN) and ReLU;
    pw: 1x1 conv (pw_weight (Cout, Cin, 1, 1)), scale/shift and ReLU; PPM: 2x2 ceil-mode max pool,
    then 1x1 conv (ppm_weight (Cout, Cin, 1, 1)). Output (N, Cout, ceil(H/2), ceil(W/2)) in x's
    memory format.
    """
    args = cast_args((x, dw_weight, dw_scale, dw_shift, pw_weight, pw_scale, pw_shift,
                      ppm_weight))
    _checks.check_dasp_stage(*args, _checks.raise_value_error)
    b = _backends.pick(backend, x, "dasp_stage")
    if b == "reference":
        return reference.dasp_stage(*args)
    if b == "triton":
        _triton()
        return torch.ops.dasp_kernels.dasp_stage_triton(*args)
    return torch.ops.dasp_kernels.dasp_stage(*args)


def dasp_spatial_path(x, stage_params, *, backend="auto"):
    """The whole DASP spatial path in one op: dasp_stage once per 7 tensors of stage_params.

    stage_params: for each stage, (dw_weight, dw_scale, dw_shift, pw_weight, pw_scale, pw_shift,
    ppm_weight) as dasp_stage takes them, flattened into one list (21 tensors for the paper's
    three stages 3 -> 64 -> 64 -> 128). On the CPU the stages run row-interleaved, so no stage's
    output but the last is ever written to memory. Backends without a whole-path kernel run one
    fused dasp_stage op per stage. The output has x's memory format.
    """
    x, stage_params = cast_args((x, list(stage_params)))
    _checks.check_dasp_spatial_path(x, stage_params, _checks.raise_value_error)
    b = _backends.pick(backend, x, "dasp_spatial_path")
    if b == "reference":
        return reference.dasp_spatial_path(x, stage_params)
    if b == "cpu":  # the only backend with a whole-path kernel
        return torch.ops.dasp_kernels.dasp_spatial_path(x, stage_params)
    for i in range(0, len(stage_params), 7):
        x = dasp_stage(x, *stage_params[i:i + 7], backend=b)
    return x


def inverted_residual_op_args(x, dw_weight, dw_scale, dw_shift, project_weight, project_scale,
                              project_shift, *, expand_weight=None, expand_scale=None,
                              expand_shift=None, expand_act="relu", expand_alpha=0.0,
                              expand_beta=0.0, stride=1, padding=None, dilation=1, dw_act="relu",
                              dw_alpha=0.0, dw_beta=0.0, project_act="none", project_alpha=0.0,
                              project_beta=0.0, residual=False, se_reduce_weight=None,
                              se_reduce_bias=None, se_expand_weight=None, se_expand_bias=None,
                              se_act="relu", se_alpha=0.0, se_beta=0.0, se_gate="sigmoid"):
    """The positional arguments of torch.ops.dasp_kernels.inverted_residual (the padding as
    [top, bottom, left, right]) from inverted_residual's; those of SE only when it is given, so
    that the block without SE calls the op as before."""
    k = dw_weight.shape[2] if dw_weight.dim() == 4 else 0
    if padding is None:
        padding = dilation * (k // 2)
    pad = _padding4(padding, x, k, stride, dilation, "inverted_residual")
    return (x, expand_weight, expand_scale, expand_shift, expand_act, float(expand_alpha),
            float(expand_beta), dw_weight, dw_scale, dw_shift, stride, pad, dilation, dw_act,
            float(dw_alpha), float(dw_beta), project_weight, project_scale, project_shift,
            project_act, float(project_alpha), float(project_beta), bool(residual)) + _se_tail(
        (se_reduce_weight, se_reduce_bias, se_expand_weight, se_expand_bias, se_act,
         float(se_alpha), float(se_beta), se_gate))


def _se_tail(se):
    """The SE arguments to pass: none where all are the defaults (the block without SE calls the
    op as it did before SE existed)."""
    same = all(a is b if b is None else a == b for a, b in zip(se, _checks.SE_DEFAULTS))
    return () if same else se


def inverted_residual(x, dw_weight, dw_scale, dw_shift, project_weight, project_scale,
                      project_shift, *, backend="auto", **kwargs):
    """MobileNetV2's inverted-residual block in one op, the wide tensor never written to memory:

        y = expand_act(conv1x1(x, expand_weight) * expand_scale + expand_shift)  (y = x without)
        z = dw_act(depthwise(y, dw_weight, stride, padding, dilation) * dw_scale + dw_shift)
        z = z * se_gate(conv1x1(se_act(conv1x1(mean_hw(z), se_reduce_weight) + se_reduce_bias),
                                se_expand_weight) + se_expand_bias)        (with SE only)
        out = project_act(conv1x1(z, project_weight) * project_scale + project_shift) (+ x)

    x: (N, C, H, W). Keywords: expand_weight (E, C, 1, 1), expand_scale, expand_shift (E,), or
    all three None (the block without expansion, E = C); dw_weight (E, 1, K, K), 1 <= K <= 9,
    dw_scale, dw_shift (E,); project_weight (Co, E, 1, 1), project_scale, project_shift (Co,)
    (folded BatchNorms: dasp_kernels.fold_bn). stride 1 or 2, dilation >= 1, padding as
    dwconv_bn_act takes it (default dilation * (K // 2) on every side; the zeros pad the expanded
    tensor). Each <stage>_act with its <stage>_alpha, <stage>_beta is one of dwconv_bn_act's
    activations (defaults: relu, relu, none). residual=True adds x (the output must have x's
    shape). Squeeze-and-excitation (MobileNetV3's, EfficientNet's): se_reduce_weight (S, E, 1, 1),
    se_reduce_bias (S,), se_expand_weight (E, S, 1, 1), se_expand_bias (E,), all four or none;
    se_act (with se_alpha, se_beta) one of the activations (default relu), se_gate "sigmoid" or
    "hardsigmoid". The output has x's memory format.
    """
    args = inverted_residual_op_args(x, dw_weight, dw_scale, dw_shift, project_weight,
                                     project_scale, project_shift, **kwargs)
    return inverted_residual_of_op_args(args, backend)


def inverted_residual_of_op_args(args, backend="auto"):
    """inverted_residual on the op's positional arguments (inverted_residual_op_args)."""
    args = cast_args(tuple(args))
    x = args[0]
    _checks.check_inverted_residual_args(args, _checks.raise_value_error)
    b = _backends.pick(backend, x, "inverted_residual")
    if b == "reference":
        return reference.inverted_residual(*args)
    if b == "triton":
        _triton()
        return torch.ops.dasp_kernels.inverted_residual_triton(*args)
    return torch.ops.dasp_kernels.inverted_residual(*args)

