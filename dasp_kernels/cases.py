"""Test cases of the ops, built once for the test suite (tests/ops/) and `dasp-kernels check`.

A case is a dict: the op's name, the input shape and the op's non-tensor arguments.
`make_inputs(case, gen)` builds its float64 tensors (x and the list of the others);
`call(case, backend, x, params)` runs it through the public function with `backend`;
`op_args(case, x, params)` are the positional arguments of torch.ops.dasp_kernels.<op>.
`cases(op, size)` lists an op's cases: "tiny" (the Triton interpreter and the CUDA emulator: few,
small programs), "quick" (every argument form on small maps) or "full" (quick plus the paper's
and MobileNets' sizes and every edge geometry).
"""
import torch

from dasp_kernels import functional

F64 = torch.float64

# The activations of dwconv_bn_act with the (alpha, beta) each is tested with: ReLU6, the
# LeakyReLU slope of nn.LeakyReLU(); the rest ignore them.
ACT_ARGS = {"none": (0.0, 0.0), "relu": (0.0, 0.0), "hardtanh": (0.0, 6.0),
            "hardswish": (0.0, 0.0), "silu": (0.0, 0.0), "gelu": (0.0, 0.0),
            "gelu_tanh": (0.0, 0.0), "leaky_relu": (0.01, 0.0)}


def dw_case(n, c, h, w, k, stride=1, padding=None, dilation=1, act="relu"):
    """A dwconv_bn_act case; padding as functional.dwconv_bn_act takes it (default: "same" size,
    dilation * (K // 2) on each side)."""
    if padding is None:
        padding = dilation * (k // 2)
    alpha, beta = ACT_ARGS[act]
    return {"op": "dwconv_bn_act", "shape": (n, c, h, w), "k": k, "stride": stride,
            "padding": padding, "dilation": dilation, "act": act, "alpha": alpha, "beta": beta}


def dwconv_bn_act_cases(size="quick"):
    """size: "tiny" (the Triton interpreter and the CUDA emulator: few, small programs), "quick"
    (every activation, kernel size, stride, dilation and padding form on small maps), "full"
    (quick plus MobileNet-sized planes and every edge geometry)."""
    tiny = [dw_case(2, 3, 9, 11, 3, 2, 1), dw_case(1, 5, 7, 6, 5, 1, "same", 2, "silu"),
            dw_case(1, 4, 8, 9, 9, 2, (4, 3, 4, 3), 1, "hardswish"),
            dw_case(2, 3, 6, 5, 1, 1, 0, 1, "hardtanh"), dw_case(0, 3, 5, 5, 3)]
    if size == "tiny":
        return tiny
    acts = [dw_case(2, 6, 11, 9, 3, s, 1, 1, a) for a in ACT_ARGS for s in (1, 2)]
    geometry = [dw_case(1, 5, 10, 13, k, s, p, d)
                for k in range(1, 10) for s in (1, 2) for d in (1, 2)
                for p in ("same", d * (k // 2), 0) if 10 + 2 * d * (k // 2) > d * (k - 1)
                and (p == "same" or 10 + 2 * p > d * (k - 1))]
    shapes = [dw_case(2, 17, 1, 1, 3, 1, 1, 1, "gelu"), dw_case(1, 3, 2, 3, 5, 2, 2),
              dw_case(3, 19, 15, 4, 7, 1, 3, 1, "gelu_tanh"),
              dw_case(1, 35, 7, 7, 3, 1, 1, 3, "leaky_relu"),
              dw_case(1, 40, 14, 14, 5, 2, "same", 1, "hardswish")]
    quick = tiny + acts + geometry + shapes
    if size == "quick":
        return quick
    mobilenet = [dw_case(1, 96, 56, 56, 3, 2, 1, 1, "hardtanh"), dw_case(1, 144, 28, 28, 3),
                 dw_case(1, 960, 7, 7, 3, 1, 1, 1, "hardswish"), dw_case(1, 240, 28, 28, 5),
                 dw_case(1, 672, 14, 14, 5, 2, "same", 1, "silu"),
                 dw_case(1, 960, 16, 32, 5, 1, 4, 2, "hardswish")]
    edge = [dw_case(3, 7, h, w, k, s, p) for (h, w) in [(1, 1), (2, 3), (15, 4)]
            for k in range(1, 10) for s in (1, 2) for p in range(k)
            if h + 2 * p >= k and w + 2 * p >= k]
    paper = [dw_case(1, 3, 1024, 1024, 7, 2, 3), dw_case(1, 64, 512, 512, 3, 2, 1),
             dw_case(1, 64, 256, 256, 3, 2, 1)]  # the DASP stages' inputs (Table I)
    return quick + mobilenet + edge + paper


def ppm_case(n, cin, cout, h, w):
    return {"op": "ppm_add", "shape": (n, cin, h, w), "cout": cout}


def stage_case(n, cin, cout, h, w, k):
    return {"op": "dasp_stage", "shape": (n, cin, h, w), "cout": cout, "k": k}


def path_case(n, h, w, stages):
    """stages: [(cout, k), ...] chained from 3 input channels."""
    return {"op": "dasp_spatial_path", "shape": (n, 3, h, w), "stages": stages}


def ppm_add_cases(size="quick"):
    tiny = [ppm_case(2, 3, 8, 9, 11), ppm_case(1, 16, 4, 1, 5), ppm_case(2, 5, 1, 6, 6),
            ppm_case(0, 3, 2, 4, 4)]
    if size == "tiny":
        return tiny
    quick = tiny + [ppm_case(2, 64, 128, 33, 31), ppm_case(1, 3, 64, 40, 41),
                    ppm_case(1, 1, 1, 1, 1), ppm_case(3, 7, 5, 2, 9)]
    if size == "quick":
        return quick
    return quick + [ppm_case(1, 3, 64, 1024, 1024), ppm_case(1, 64, 64, 512, 512),
                    ppm_case(1, 64, 128, 256, 256)]


def dasp_stage_cases(size="quick"):
    tiny = [stage_case(2, 3, 8, 9, 11, 7), stage_case(1, 16, 8, 6, 5, 3),
            stage_case(1, 4, 4, 1, 1, 1)]
    if size == "tiny":
        return tiny
    quick = tiny + [stage_case(2, 64, 128, 33, 31, 3), stage_case(1, 3, 64, 64, 65, 7),
                    stage_case(2, 8, 24, 13, 1, 5), stage_case(0, 3, 4, 5, 5, 3)]
    if size == "quick":
        return quick
    return quick + [stage_case(1, 3, 64, 1024, 1024, 7), stage_case(1, 64, 64, 512, 512, 3),
                    stage_case(1, 64, 128, 256, 256, 3)]


def dasp_spatial_path_cases(size="quick"):
    tiny = [path_case(2, 13, 10, [(8, 7), (8, 3)])]
    if size == "tiny":
        return tiny
    quick = tiny + [path_case(1, 67, 61, [(64, 7), (64, 3), (128, 3)]),
                    path_case(1, 5, 3, [(4, 1)])]
    if size == "quick":
        return quick
    return quick + [path_case(1, 1024, 1024, [(64, 7), (64, 3), (128, 3)])]


def ir_case(n, c, e, co, h, w, k=3, stride=1, padding=None, dilation=1,
            acts=("hardtanh", "hardtanh", "none"), residual=None, se=None):
    """An inverted_residual case: C -> E (no expansion when e is None: E = C) -> Co, depthwise K;
    acts = (expand, depthwise, project) with ACT_ARGS' alpha and beta; residual by default when
    the output has x's shape; se = (S, se_act, se_gate) for squeeze-and-excitation E -> S -> E."""
    if padding is None:
        padding = dilation * (k // 2)
    if residual is None:
        residual = stride == 1 and c == co and padding == dilation * (k // 2) and k % 2 == 1
    return {"op": "inverted_residual", "shape": (n, c, h, w), "e": e, "cout": co, "k": k,
            "stride": stride, "padding": padding, "dilation": dilation, "acts": tuple(acts),
            "residual": residual, "se": se}


def se_case(*args, se=(4, "relu", "hardsigmoid"), **kw):
    """ir_case with squeeze-and-excitation (MobileNetV3's by default: relu, hardsigmoid)."""
    return ir_case(*args, se=se, **kw)


def inverted_residual_cases(size="quick"):
    """MobileNetV2's block (ReLU6, linear projection, residual), V3's (hardswish, relu), the block
    without expansion, and the depthwise geometries the models use."""
    tiny = [ir_case(2, 4, 12, 4, 7, 9), ir_case(1, 3, 8, 5, 6, 5, 3, 2),
            ir_case(1, 6, None, 5, 5, 7, 5, 1, "same", 1, ("none", "relu", "none"))]
    if size == "tiny":
        return tiny
    acts = [ir_case(1, 5, 10, 5, 6, 7, 3, 1, None, 1, (a, a, b))
            for a, b in [("relu", "none"), ("hardswish", "relu"), ("silu", "leaky_relu"),
                         ("gelu", "gelu_tanh"), ("none", "hardtanh")]]
    geometry = [ir_case(2, 8, 24, 8, 9, 11, 5, 2, "same"),
                ir_case(1, 8, 24, 8, 9, 11, 3, 1, 2, 2),
                ir_case(1, 16, 96, 24, 13, 12, 3, 2),
                ir_case(1, 7, 21, 7, 5, 5, 7, 1, 3, 1, ("relu", "relu", "none")),
                ir_case(1, 24, 72, 40, 10, 10, 5, 2, (2, 1, 2, 1), 1,
                        ("relu", "hardswish", "none")),
                ir_case(2, 17, None, 17, 4, 3, 3, 1, 1, 1, ("none", "silu", "none")),
                ir_case(1, 9, 20, 9, 1, 1), ir_case(0, 4, 12, 4, 5, 5)]
    # Squeeze-and-excitation: MobileNetV3's (relu, hardsigmoid), EfficientNet's (silu, sigmoid,
    # also without expansion), one S = 1, the other activations, a single pixel, an empty batch.
    se = [se_case(2, 8, 24, 8, 9, 11, 5, 2, "same", se=(6, "silu", "sigmoid")),
          se_case(1, 16, 40, 16, 7, 6, 5, 1, None, 1, ("hardswish", "hardswish", "none")),
          se_case(2, 6, None, 5, 6, 7, 3, 1, None, 1, ("none", "silu", "none"),
                  se=(2, "silu", "sigmoid")),
          se_case(1, 5, 10, 5, 6, 7, 3, 1, None, 1, ("relu", "relu", "none"),
                  se=(1, "hardtanh", "hardsigmoid")),
          se_case(1, 5, 10, 5, 6, 7, 3, 1, None, 1, ("gelu", "leaky_relu", "relu"),
                  se=(3, "leaky_relu", "sigmoid")),
          se_case(1, 9, 20, 9, 1, 1), se_case(0, 4, 12, 4, 5, 5)]
    quick = tiny + acts + geometry + se
    if size == "quick":
        return quick
    mobilenet = [ir_case(1, 24, 144, 24, 32, 64), ir_case(1, 32, 192, 64, 16, 32, 3, 2),
                 ir_case(1, 160, 960, 160, 8, 16), ir_case(1, 40, 240, 40, 16, 16, 5, 1, 2, 1,
                                                           ("hardswish",) * 2 + ("none",)),
                 ir_case(1, 160, 960, 160, 8, 16, 5, 1, 4, 2, ("hardswish",) * 2 + ("none",)),
                 se_case(1, 40, 120, 40, 32, 64, 5, 1, None, 1, ("relu", "relu", "none"),
                         se=(32, "relu", "hardsigmoid")),
                 se_case(1, 112, 672, 160, 16, 32, 5, 2, None, 1,
                         ("hardswish", "hardswish", "none"), se=(168, "relu", "hardsigmoid"))]
    return quick + mobilenet


CASES = {"dwconv_bn_act": dwconv_bn_act_cases, "ppm_add": ppm_add_cases,
         "dasp_stage": dasp_stage_cases, "dasp_spatial_path": dasp_spatial_path_cases,
         "inverted_residual": inverted_residual_cases}


def cases(op, size="quick"):
    return CASES[op](size)


def _stage_params(c, co, k, gen):
    return [torch.randn(c, 1, k, k, generator=gen, dtype=F64) / k,
            torch.rand(c, generator=gen, dtype=F64) + 0.5,
            torch.randn(c, generator=gen, dtype=F64) * 0.1,
            torch.randn(co, c, 1, 1, generator=gen, dtype=F64) / c ** 0.5,
            torch.rand(co, generator=gen, dtype=F64) + 0.5,
            torch.randn(co, generator=gen, dtype=F64) * 0.1,
            torch.randn(co, c, 1, 1, generator=gen, dtype=F64) / c ** 0.5]


def _bn(c, gen):
    return [torch.rand(c, generator=gen, dtype=F64) + 0.5,
            torch.randn(c, generator=gen, dtype=F64) * 0.5]


def _ir_params(c, e, co, k, gen, se=None):
    """[expand_weight, expand_scale, expand_shift] (none when e is None), [dw_weight, dw_scale,
    dw_shift], [project_weight, project_scale, project_shift], then with se = (S, ...)
    [se_reduce_weight, se_reduce_bias, se_expand_weight, se_expand_bias]."""
    expand = []
    if e is not None:
        expand = [torch.randn(e, c, 1, 1, generator=gen, dtype=F64) / c ** 0.5, *_bn(e, gen)]
        c = e
    squeeze = []
    if se is not None:
        sq = se[0]
        squeeze = [torch.randn(sq, c, 1, 1, generator=gen, dtype=F64) / c ** 0.5,
                   torch.randn(sq, generator=gen, dtype=F64) * 0.5,
                   torch.randn(c, sq, 1, 1, generator=gen, dtype=F64) / sq ** 0.5,
                   torch.randn(c, generator=gen, dtype=F64) * 0.5]
    return [*expand, torch.randn(c, 1, k, k, generator=gen, dtype=F64) / k, *_bn(c, gen),
            torch.randn(co, c, 1, 1, generator=gen, dtype=F64) / c ** 0.5, *_bn(co, gen),
            *squeeze]


def ir_kwargs(case, params):
    """functional.inverted_residual's keyword arguments of a case, given its tensors."""
    kw = {}
    if case["e"] is not None:
        kw = dict(zip(("expand_weight", "expand_scale", "expand_shift"), params[:3]))
        params = params[3:]
    for stage, act in zip(("expand", "dw", "project"), case["acts"]):
        kw[stage + "_act"] = act
        kw[stage + "_alpha"], kw[stage + "_beta"] = ACT_ARGS[act]
    if case.get("se") is not None:
        _, act, gate = case["se"]
        kw.update(zip(("se_reduce_weight", "se_reduce_bias", "se_expand_weight",
                       "se_expand_bias"), params[-4:]))
        kw.update(se_act=act, se_alpha=ACT_ARGS[act][0], se_beta=ACT_ARGS[act][1], se_gate=gate)
        params = params[:-4]
    return {**kw, "stride": case["stride"], "padding": case["padding"],
            "dilation": case["dilation"], "residual": case["residual"]}, params


def make_inputs(case, gen):
    """Float64 (x, [the op's other tensors]) of a case, on the CPU."""
    n, c, h, w = case["shape"]
    x = torch.randn(n, c, h, w, generator=gen, dtype=F64)
    op = case["op"]
    if op == "dwconv_bn_act":
        k = case["k"]
        return x, [torch.randn(c, 1, k, k, generator=gen, dtype=F64) / k,
                   torch.rand(c, generator=gen, dtype=F64) + 0.5,
                   torch.randn(c, generator=gen, dtype=F64) * 0.5]
    if op == "ppm_add":
        co = case["cout"]
        return x, [torch.randn(co, c, 1, 1, generator=gen, dtype=F64) / c ** 0.5,
                   torch.randn(n, co, (h + 1) // 2, (w + 1) // 2, generator=gen, dtype=F64)]
    if op == "dasp_stage":
        return x, _stage_params(c, case["cout"], case["k"], gen)
    if op == "inverted_residual":
        return x, _ir_params(c, case["e"], case["cout"], case["k"], gen, case.get("se"))
    params = []
    for co, k in case["stages"]:
        params += _stage_params(c, co, k, gen)
        c = co
    return x, params


def call(case, backend, x, params):
    """The case through its public function (dasp_kernels.functional) with `backend`."""
    op = case["op"]
    if op == "dwconv_bn_act":
        return functional.dwconv_bn_act(
            x, *params, stride=case["stride"], padding=case["padding"],
            dilation=case["dilation"], act=case["act"], alpha=case["alpha"], beta=case["beta"],
            backend=backend)
    if op == "dasp_spatial_path":
        return functional.dasp_spatial_path(x, params, backend=backend)
    if op == "inverted_residual":
        kw, params = ir_kwargs(case, params)
        return functional.inverted_residual(x, *params, **kw, backend=backend)
    return getattr(functional, op)(x, *params, backend=backend)


def op_args(case, x, params):
    """The positional arguments of torch.ops.dasp_kernels.<case's op> (and of the emulator's)."""
    if case["op"] == "dwconv_bn_act":
        pad = functional._padding4(case["padding"], x, case["k"], case["stride"],
                                   case["dilation"])
        return (x, *params, case["stride"], pad, case["dilation"], case["act"], case["alpha"],
                case["beta"])
    if case["op"] == "dasp_spatial_path":
        return (x, list(params))
    if case["op"] == "inverted_residual":
        kw, params = ir_kwargs(case, params)
        return functional.inverted_residual_op_args(x, *params, **kw)
    return (x, *params)


def with_layout(x, layout):
    """x as "contiguous", "channels_last" or "sliced" (a non-contiguous view: every other column
    of a wider tensor)."""
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "sliced":
        return torch.repeat_interleave(x, 2, dim=3)[..., ::2]
    return x.contiguous()


def case_id(case):
    shape = "x".join(map(str, case["shape"]))
    if case["op"] == "dwconv_bn_act":
        return (f"{shape}-k{case['k']}s{case['stride']}d{case['dilation']}"
                f"p{case['padding']}-{case['act']}").replace(" ", "")
    extra = {k: v for k, v in case.items() if k not in ("op", "shape")}
    return f"{case['op']}-{shape}-{extra}".replace(" ", "")
