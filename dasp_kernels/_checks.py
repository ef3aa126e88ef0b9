"""Input checks shared by the public wrappers and the fake kernels.

The C++ kernels (csrc/checks.h) say the same things in the same words: shapes are printed as
[a, b, c], dtypes as float32/float64/float16/bfloat16, devices as cpu / cuda:0.
`check(cond, make_msg)` is `torch._check` in fake kernels and a ValueError raiser in wrappers.
"""
import torch

def shape_str(shape):
    return "[" + ", ".join(str(int(s)) if not isinstance(s, torch.SymInt) else str(s) for s in shape) + "]"


def dtype_str(dtype):
    return str(dtype).removeprefix("torch.")


def raise_value_error(cond, make_msg):
    if not cond:
        raise ValueError(make_msg())


def _same_device_dtype(op, check, x, others):
    for name, t in others:
        check(t.device == x.device,
              lambda: f"{op}: expected {name} on the device of x ({x.device}), got {t.device}")
        check(t.dtype == x.dtype,
              lambda: f"{op}: expected {name} to have the dtype of x ({dtype_str(x.dtype)}), "
                      f"got {dtype_str(t.dtype)}")


def _floating(op, check, x):
    check(x.dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16),
          lambda: f"{op}: expected x of dtype float32, float64, float16 or bfloat16, "
                  f"got {dtype_str(x.dtype)}")


def _rank4(op, check, name, t):
    check(t.dim() == 4,
          lambda: f"{op}: expected {name} to be 4-D (N, C, H, W), got {t.dim()}-D of shape "
                  f"{shape_str(t.shape)}")


# dwconv_bn_act's activations, as the op's `act` argument names them: act(z) with z the
# depthwise output after scale/shift. alpha, beta: hardtanh's min and max, leaky_relu's slope
# (alpha); the others ignore them. "gelu" is the erf form (nn.GELU()), "gelu_tanh"
# nn.GELU(approximate="tanh").
ACTIVATIONS = ("none", "relu", "hardtanh", "hardswish", "silu", "gelu", "gelu_tanh", "leaky_relu")
DW_MAX_K = 9


def dwconv_bn_act_out_size(size, k, stride, pad_begin, pad_end, dilation):
    return (size + pad_begin + pad_end - dilation * (k - 1) - 1) // stride + 1


def dwconv_bn_act_out_shape(x, weight, stride, padding, dilation):
    """padding = [top, bottom, left, right]."""
    k = weight.shape[2]
    top, bottom, left, right = padding
    return (x.shape[0], x.shape[1],
            dwconv_bn_act_out_size(x.shape[2], k, stride, top, bottom, dilation),
            dwconv_bn_act_out_size(x.shape[3], k, stride, left, right, dilation))


def check_dwconv_bn_act(x, weight, scale, shift, stride, padding, dilation, act, check):
    op = "dwconv_bn_act"
    _rank4(op, check, "x", x)
    _floating(op, check, x)
    _same_device_dtype(op, check, x, [("weight", weight), ("scale", scale), ("shift", shift)])
    _check_depthwise(op, check, x, weight, scale, shift, stride, padding, dilation, act)


def _check_depthwise(op, check, x, weight, scale, shift, stride, padding, dilation, act,
                     prefix="", c_name="C", c=None):
    """The depthwise stage's arguments, named `<prefix>weight` ..., on an input of x's H and W
    and c channels (default x's), which errors call c_name."""
    c = x.shape[1] if c is None else c
    check(weight.dim() == 4 and weight.shape[0] == c and weight.shape[1] == 1
          and weight.shape[2] == weight.shape[3],
          lambda: f"{op}: expected {prefix}weight of shape [{c_name}, 1, K, K] with {c_name} = "
                  f"{c}, got {shape_str(weight.shape)}")
    k = weight.shape[2]
    check(1 <= k <= DW_MAX_K,
          lambda: f"{op}: expected kernel size 1 <= K <= {DW_MAX_K}, got K = {k}")
    for name, t in ((prefix + "scale", scale), (prefix + "shift", shift)):
        check(t.dim() == 1 and t.shape[0] == c,
              lambda: f"{op}: expected {name} of shape [{c}], got {shape_str(t.shape)}")
    check(stride in (1, 2), lambda: f"{op}: expected stride 1 or 2, got {stride}")
    check(dilation >= 1, lambda: f"{op}: expected dilation >= 1, got {dilation}")
    span = dilation * (k - 1)  # the kernel's reach beyond its first tap
    check(len(padding) == 4 and all(0 <= p <= span for p in padding),
          lambda: f"{op}: expected padding [top, bottom, left, right], each 0 <= p <= "
                  f"dilation * (K - 1) = {span}, got {list(padding)}")
    h, w = x.shape[2], x.shape[3]
    check(h + padding[0] + padding[1] > span and w + padding[2] + padding[3] > span,
          lambda: f"{op}: expected H + top + bottom > dilation * (K - 1) and W + left + right > "
                  f"dilation * (K - 1), got H = {h}, W = {w}, padding = {list(padding)}, "
                  f"dilation * (K - 1) = {span}")
    _check_act(op, check, prefix + "act", act)


def _check_act(op, check, name, act):
    check(act in ACTIVATIONS,
          lambda: f"{op}: expected {name} in {', '.join(ACTIVATIONS)}, got {act!r}")


def _check_pointwise(op, check, prefix, weight, scale, shift, cin, cin_name, cout_name):
    """A 1x1 conv + scale/shift stage named `<prefix>weight` ... on cin input channels; returns its
    output channels."""
    check(weight.dim() == 4 and weight.shape[1] == cin and weight.shape[2] == 1
          and weight.shape[3] == 1,
          lambda: f"{op}: expected {prefix}weight of shape [{cout_name}, {cin_name}, 1, 1] with "
                  f"{cin_name} = {cin}, got {shape_str(weight.shape)}")
    cout = weight.shape[0]
    for name, t in ((prefix + "scale", scale), (prefix + "shift", shift)):
        check(t.dim() == 1 and t.shape[0] == cout,
              lambda: f"{op}: expected {name} of shape [{cout}], got {shape_str(t.shape)}")
    return cout


def inverted_residual_out_shape(x, dw_weight, stride, padding, dilation, project_weight):
    _, _, ho, wo = dwconv_bn_act_out_shape(x, dw_weight, stride, padding, dilation)
    return (x.shape[0], project_weight.shape[0], ho, wo)


def check_inverted_residual(x, expand_weight, expand_scale, expand_shift, expand_act, dw_weight,
                            dw_scale, dw_shift, stride, padding, dilation, dw_act, project_weight,
                            project_scale, project_shift, project_act, residual, check, se=None):
    """se: (se_reduce_weight, se_reduce_bias, se_expand_weight, se_expand_bias, se_act,
    se_gate), or None for the block without squeeze-and-excitation."""
    op = "inverted_residual"
    _rank4(op, check, "x", x)
    _floating(op, check, x)
    expand = (expand_weight, expand_scale, expand_shift)
    check(all(t is None for t in expand) or all(t is not None for t in expand),
          lambda: f"{op}: expected expand_weight, expand_scale and expand_shift all given or all "
                  f"None, got {', '.join('None' if t is None else 'a tensor' for t in expand)}")
    named = [("expand_weight", expand_weight), ("expand_scale", expand_scale),
             ("expand_shift", expand_shift), ("dw_weight", dw_weight), ("dw_scale", dw_scale),
             ("dw_shift", dw_shift), ("project_weight", project_weight),
             ("project_scale", project_scale), ("project_shift", project_shift)]
    _same_device_dtype(op, check, x, [(n, t) for n, t in named if t is not None])
    e = x.shape[1]
    if expand_weight is not None:
        e = _check_pointwise(op, check, "expand_", *expand, x.shape[1], "C", "E")
    _check_act(op, check, "expand_act", expand_act)
    _check_depthwise(op, check, x, dw_weight, dw_scale, dw_shift, stride, padding, dilation,
                     dw_act, prefix="dw_", c_name="E", c=e)
    _check_pointwise(op, check, "project_", project_weight, project_scale, project_shift, e, "E",
                     "Co")
    _check_act(op, check, "project_act", project_act)
    if residual:
        out = inverted_residual_out_shape(x, dw_weight, stride, padding, dilation,
                                          project_weight)
        check(list(out) == list(x.shape),
              lambda: f"{op}: expected an output of x's shape {shape_str(x.shape)} with "
                      f"residual=True, got {shape_str(out)}")
    if se is not None:
        _check_se(op, check, x, e, *se)


# squeeze-and-excitation's gates: sigmoid, and hardsigmoid = relu6(z + 3) / 6 (torchvision's
# and timm's hard sigmoid alike).
SE_GATES = ("sigmoid", "hardsigmoid")
# The op's positional arguments past the block without SE (csrc/ops.cpp), and their defaults.
SE_ARG_NAMES = ("se_reduce_weight", "se_reduce_bias", "se_expand_weight", "se_expand_bias",
                "se_act", "se_alpha", "se_beta", "se_gate")
SE_DEFAULTS = (None, None, None, None, "relu", 0.0, 0.0, "sigmoid")
IR_NUM_ARGS = 23 + len(SE_ARG_NAMES)


def _check_se(op, check, x, e, reduce_weight, reduce_bias, expand_weight, expand_bias, act, gate):
    """The SE stage on the depthwise output's e channels: reduce E -> S, act, expand S -> E,
    gate; its four tensors all given or all None."""
    named = [("se_reduce_weight", reduce_weight), ("se_reduce_bias", reduce_bias),
             ("se_expand_weight", expand_weight), ("se_expand_bias", expand_bias)]
    given = [t is not None for _, t in named]
    check(all(given) or not any(given),
          lambda: f"{op}: expected se_reduce_weight, se_reduce_bias, se_expand_weight and "
                  f"se_expand_bias all given or all None, got "
                  f"{', '.join('a tensor' if g else 'None' for g in given)}")
    _check_act(op, check, "se_act", act)
    check(gate in SE_GATES,
          lambda: f"{op}: expected se_gate in {', '.join(SE_GATES)}, got {gate!r}")
    if not any(given):
        return
    _same_device_dtype(op, check, x, named)
    check(reduce_weight.dim() == 4 and reduce_weight.shape[0] >= 1
          and reduce_weight.shape[1] == e and reduce_weight.shape[2] == 1
          and reduce_weight.shape[3] == 1,
          lambda: f"{op}: expected se_reduce_weight of shape [S, E, 1, 1] with S >= 1 and E = "
                  f"{e}, got {shape_str(reduce_weight.shape)}")
    sq = reduce_weight.shape[0]
    check(reduce_bias.dim() == 1 and reduce_bias.shape[0] == sq,
          lambda: f"{op}: expected se_reduce_bias of shape [{sq}], got "
                  f"{shape_str(reduce_bias.shape)}")
    check(list(expand_weight.shape) == [e, sq, 1, 1],
          lambda: f"{op}: expected se_expand_weight of shape [E, S, 1, 1] = "
                  f"{shape_str([e, sq, 1, 1])}, got {shape_str(expand_weight.shape)}")
    check(expand_bias.dim() == 1 and expand_bias.shape[0] == e,
          lambda: f"{op}: expected se_expand_bias of shape [{e}], got "
                  f"{shape_str(expand_bias.shape)}")


def se_args(args):
    """The SE arguments of the op's positional arguments, defaults for those not given."""
    return tuple(args[23:]) + SE_DEFAULTS[len(args) - 23:]


def check_inverted_residual_args(args, check):
    """check_inverted_residual on the op's positional arguments (their alphas and betas need no
    check); those of SE may be left off."""
    (x, ew, es, esh, eact, _, _, dw, ds, dsh, stride, pad, dil, dact, _, _, pw, ps, psh, pact,
     _, _, residual) = args[:23]
    rw, rb, xw, xb, sact, _, _, gate = se_args(args)
    check_inverted_residual(x, ew, es, esh, eact, dw, ds, dsh, stride, pad, dil, dact, pw, ps,
                            psh, pact, residual, check, se=(rw, rb, xw, xb, sact, gate))


def check_ppm_add(x, weight, residual, check):
    op = "ppm_add"
    _rank4(op, check, "x", x)
    _floating(op, check, x)
    _same_device_dtype(op, check, x, [("weight", weight), ("residual", residual)])
    cin = x.shape[1]
    check(weight.dim() == 4 and weight.shape[1] == cin and weight.shape[2] == 1
          and weight.shape[3] == 1,
          lambda: f"{op}: expected weight of shape [Cout, Cin, 1, 1] with Cin = {cin}, got "
                  f"{shape_str(weight.shape)}")
    expected = [x.shape[0], weight.shape[0], (x.shape[2] + 1) // 2, (x.shape[3] + 1) // 2]
    check(residual.dim() == 4 and list(residual.shape) == expected,
          lambda: f"{op}: expected residual of shape [N, Cout, ceil(H/2), ceil(W/2)] = "
                  f"{shape_str(expected)}, got {shape_str(residual.shape)}")


STAGE_PARAM_NAMES = ("dw_weight", "dw_scale", "dw_shift", "pw_weight", "pw_scale", "pw_shift",
                     "ppm_weight")


def _check_stage_params(where, check, x, cin, p):
    """The seven weights of one DASP stage whose input has `cin` channels, in dasp_stage's order.
    `where` names the stage in errors: "dasp_stage", or "dasp_spatial_path: stage 2". Returns
    the stage's output channels."""
    _same_device_dtype(where, check, x, list(zip(STAGE_PARAM_NAMES, p)))
    dw, pw = p[0], p[3]
    check(dw.dim() == 4 and dw.shape[0] == cin and dw.shape[1] == 1 and dw.shape[2] == dw.shape[3],
          lambda: f"{where}: expected dw_weight of shape [Cin, 1, K, K] with Cin = {cin}, got "
                  f"{shape_str(dw.shape)}")
    k = dw.shape[2]
    check(k in (1, 3, 5, 7),
          lambda: f"{where}: expected an odd kernel size K in 1, 3, 5, 7, got K = {k}")
    for name, t in (("dw_scale", p[1]), ("dw_shift", p[2])):
        check(t.dim() == 1 and t.shape[0] == cin,
              lambda: f"{where}: expected {name} of shape [{cin}], got {shape_str(t.shape)}")
    check(pw.dim() == 4 and pw.shape[1] == cin and pw.shape[2] == 1 and pw.shape[3] == 1,
          lambda: f"{where}: expected pw_weight of shape [Cout, Cin, 1, 1] with Cin = {cin}, "
                  f"got {shape_str(pw.shape)}")
    cout = pw.shape[0]
    for name, t in (("pw_scale", p[4]), ("pw_shift", p[5])):
        check(t.dim() == 1 and t.shape[0] == cout,
              lambda: f"{where}: expected {name} of shape [{cout}], got {shape_str(t.shape)}")
    check(list(p[6].shape) == [cout, cin, 1, 1],
          lambda: f"{where}: expected ppm_weight of shape {shape_str([cout, cin, 1, 1])}, got "
                  f"{shape_str(p[6].shape)}")
    return cout


def check_dasp_stage(x, dw_weight, dw_scale, dw_shift, pw_weight, pw_scale, pw_shift,
                     ppm_weight, check):
    op = "dasp_stage"
    _rank4(op, check, "x", x)
    _floating(op, check, x)
    _check_stage_params(op, check, x, x.shape[1], (dw_weight, dw_scale, dw_shift, pw_weight,
                                                   pw_scale, pw_shift, ppm_weight))


def check_dasp_spatial_path(x, stage_params, check):
    op = "dasp_spatial_path"
    _rank4(op, check, "x", x)
    _floating(op, check, x)
    n = len(stage_params)
    check(n > 0 and n % 7 == 0,
          lambda: f"{op}: expected stage_params to hold 7 tensors per stage (dw_weight, dw_scale, "
                  f"dw_shift, pw_weight, pw_scale, pw_shift, ppm_weight), got {n}")
    cin = x.shape[1]
    for s in range(n // 7):
        cin = _check_stage_params(f"{op}: stage {s + 1}", check, x, cin,
                                  stage_params[7 * s:7 * s + 7])


def dasp_spatial_path_out_shape(x, stage_params):
    h, w = x.shape[2], x.shape[3]
    for _ in range(len(stage_params) // 7):
        h, w = (h + 1) // 2, (w + 1) // 2
    return (x.shape[0], stage_params[-4].shape[0], h, w)


def dasp_stage_out_shape(x, pw_weight):
    return (x.shape[0], pw_weight.shape[0], (x.shape[2] + 1) // 2, (x.shape[3] + 1) // 2)


def output_memory_format(x):
    """Outputs are channels_last exactly when the input's strides suggest it (as in C++)."""
    from torch._prims_common import suggest_memory_format

    return suggest_memory_format(x)
