"""What the dwconv_bn_act tests (test_dwconv_bn_act.py) share: the relu form on a Target, the
references' gradients, the activations' test arguments and kinks, the CPU kernels' checks, the
gradcheck geometries and the direct-call errors."""
import pytest
import torch

from dasp_kernels import _backends, reference
from inputs import dw_inputs
from op_harness import HALF_TOL, Target, check_format, close_to_ref, masked_grad

def dw_relu(tgt, x, w, sc, sh, stride, padding, relu):
    """The relu form: symmetric padding, ReLU or none."""
    return tgt.dwconv_bn_act(x, w, sc, sh, stride, [padding] * 4, 1, "relu" if relu else "none",
                             0.0, 0.0)


def dw_relu_backward(tgt, g, x, w, sc, sh, stride, padding, relu):
    return tgt._dwconv_bn_act_backward(g, x, w, sc, sh, stride, [padding] * 4, 1,
                                       "relu" if relu else "none", 0.0, 0.0)


def relu_form_reference_grads(x, w, sc, sh, s, p, relu, g, dtype=torch.float64):
    """Autograd through the reference, in `dtype` on the same device."""
    ins = [t.detach().to(dtype).requires_grad_() for t in (x, w, sc, sh)]
    y = reference.dwconv_bn_relu(*ins, s, p, relu)
    return torch.autograd.grad(y, ins, g.to(dtype))


def skip_half_on_cpu(tgt, dtype):
    if tgt.backend == "cpu" and dtype == torch.float16:
        pytest.skip("the CPU kernels take float32, float64 and bfloat16")


ALL_LAYOUTS = ("contiguous", "channels_last", "sliced", "channels_last_sliced")
RELU_FORM_SHAPES = [(2, 3, 9, 11), (1, 5, 7, 7), (3, 4, 16, 13), (1, 2, 37, 70), (2, 33, 8, 7)]
RELU_FORM_CASES = [(k, s, p) for k in range(1, 8) for s in (1, 2)
                   for p in sorted({0, k // 2, k - 1})]


# alpha, beta per activation: hardtanh's min and max, leaky_relu's slope; the others ignore them.
ACT_ARGS = {"hardtanh": (-0.5, 0.75), "leaky_relu": (0.1, 0.0)}
# Points where an activation's derivative jumps: a gradient there depends on rounding.
ACT_KINKS = {"relu": (0.0,), "leaky_relu": (0.0,), "hardtanh": ACT_ARGS["hardtanh"],
             "hardswish": (-3.0, 3.0)}
ACT_SHAPES = [(2, 3, 19, 21), (1, 5, 17, 18), (2, 33, 18, 17), (1, 2, 23, 40), (3, 4, 20, 19)]
# Every odd K, both strides, dilation 1, 2, 3; some even K.
ACT_CASES = [(k, s, d) for k in (1, 3, 5, 7, 9) for s in (1, 2) for d in (1, 2, 3)
             if not (k == 1 and d > 1)] + [(2, 2, 1), (4, 1, 2), (8, 2, 1), (6, 1, 3)]


def act_padding(i, k, d):
    """Four different sides where K allows: [top, bottom, left, right], each 0..d*(K-1)."""
    span = d * (k - 1)
    return [(i * 5 + j * 3) % (span + 1) for j in range(4)]


def act_reference(x, w, sc, sh, conf, g):
    """Output and (x, w, scale, shift) gradients of autograd through the reference, in float64."""
    ins = [t.detach().double().requires_grad_() for t in (x, w, sc, sh)]
    y = reference.dwconv_bn_act(*ins, *conf)
    return y.detach(), torch.autograd.grad(y, ins, g.double())


def act_masked_grad(g, x, w, sc, sh, conf, margin):
    """g zeroed where the pre-activation is within `margin` of a kink of conf's activation."""
    stride, padding, dilation, act = conf[:4]
    pre = reference.dwconv_bn_act(x.double(), w.double(), sc.double(), sh.double(), stride,
                                  padding, dilation, "none")
    return masked_grad(g, pre, margin, ACT_KINKS.get(act, ()))


ops = torch.ops.dasp_kernels
cpu_only = pytest.mark.skipif(_backends.backend_status()["cpu"] is not None,
                              reason=f"backend 'cpu': {_backends.backend_status()['cpu']}")
CPU = Target("cpu", ops, "", "cpu")
CPU_SHAPES = [(2, 3, 11, 9), (1, 1, 1, 8), (1, 5, 7, 1), (1, 64, 9, 10), (2, 128, 5, 6)]


def check_relu_form(x, params, stride, pad, relu, dtype=torch.float32, tag=""):
    """Forward and all four gradients of the relu form on the CPU kernels against the reference
    in the same dtype, and the formats of output and grad_x."""
    w, sc, sh = params
    y = dw_relu(CPU, x, w, sc, sh, stride, pad, relu)
    close_to_ref(y, reference.dwconv_bn_relu(x, w, sc, sh, stride, pad, relu), dtype, msg=tag)
    check_format(y, x)
    go = torch.randn_like(y)
    got = dw_relu_backward(CPU, go, x, w, sc, sh, stride, pad, relu)
    want = relu_form_reference_grads(x, w, sc, sh, stride, pad, relu, go, dtype)
    for name, a, b in zip(("x", "weight", "scale", "shift"), got, want):
        close_to_ref(a, b, dtype, grad=dtype == torch.float32, msg=f"grad_{name} {tag}")
    check_format(got[0], x)
    assert got[1].is_contiguous() and got[1].shape == w.shape
    return y, got


def check_relu_form_float64(geometries, pads, layout):
    """check_relu_form in float64 with ReLU, for each ((n, c, h, w), K, stride) and each padding
    of pads(K)."""
    for shape, k, s in geometries:
        for pad in pads(k):
            x, params = dw_inputs(shape, k, layout, torch.float64)
            check_relu_form(x, params, s, pad, True, torch.float64)


# Stride-2 rows wide enough for every build's full register block of output vectors (AVX-512:
# 8 x 16), then one more vector and a partial one: Wo = 128 + 16 + 5.
WIDE = 2 * (128 + 16 + 5) - 1


# (shape, K, stride, padding, dilation, act, layouts, fast_mode): the relu form's K 1, 3, 4; every
# padding shape; the smooth activations. The Triton interpreter runs the small ones, fast mode.
BOTH = ("contiguous", "channels_last")
GRADCHECK_GEOMETRIES = [
    ((2, 3, 6, 5), 3, 2, [1] * 4, 1, "relu", BOTH, False),
    ((2, 3, 6, 5), 4, 1, [3] * 4, 1, "relu", BOTH, False),
    ((2, 3, 6, 5), 1, 2, [0] * 4, 1, "relu", BOTH, False),
    ((2, 3, 7, 6), 3, 2, act_padding(3, 3, 2), 2, "gelu_tanh", BOTH, False),
    ((2, 3, 7, 6), 5, 1, act_padding(3, 5, 1), 1, "silu", BOTH, False),
    ((2, 3, 7, 6), 1, 2, act_padding(3, 1, 1), 1, "gelu", BOTH, False),
    ((1, 2, 5, 4), 3, 2, [1] * 4, 1, "relu", ("contiguous",), True),
    ((1, 1, 4, 5), 2, 1, [1] * 4, 1, "none", ("contiguous",), True),
    ((1, 2, 6, 5), 3, 2, [1, 0, 2, 1], 2, "gelu_tanh", ("contiguous",), True),
    ((1, 2, 6, 5), 3, 1, [0, 1, 1, 0], 1, "silu", ("contiguous",), True),
]
TRITON_GRADCHECKS = [i for i, g in enumerate(GRADCHECK_GEOMETRIES) if g[-1]]


def direct_errors(x, w, sc, sh, dev):
    """(call, message) pairs: each call on the registered ops raises RuntimeError(message)."""
    relu = (1, [1] * 4, 1, "relu", 0.0, 0.0)
    return [
        (lambda t: t.dwconv_bn_act(x, w[..., :2], sc, sh, 1, [0] * 4, 1, "relu", 0.0, 0.0),
         "dwconv_bn_act: expected weight of shape [C, 1, K, K] with C = 3, got [3, 1, 3, 2]"),
        (lambda t: t.dwconv_bn_act(x, w.repeat(2, 1, 1, 1)[:4], sc, sh, *relu),
         "dwconv_bn_act: expected weight of shape [C, 1, K, K] with C = 3, got [4, 1, 3, 3]"),
        (lambda t: t.dwconv_bn_act(x, w, sc, sh, 3, [0] * 4, 1, "relu", 0.0, 0.0),
         "dwconv_bn_act: expected stride 1 or 2, got 3"),
        (lambda t: t.dwconv_bn_act(x, w, sc, sh, 1, [3] * 4, 1, "relu", 0.0, 0.0),
         "dwconv_bn_act: expected padding [top, bottom, left, right], each 0 <= p <= dilation * "
         "(K - 1) = 2, got [3, 3, 3, 3]"),
        (lambda t: t.dwconv_bn_act(x, w, sc, sh, 1, [0, 3, 0, 0], 1, "relu", 0.0, 0.0),
         "each 0 <= p <= dilation * (K - 1) = 2, got [0, 3, 0, 0]"),
        (lambda t: t.dwconv_bn_act(x, w, sc, sh, 1, [1, 5, 0, 0], 2, "relu", 0.0, 0.0),
         "each 0 <= p <= dilation * (K - 1) = 4, got [1, 5, 0, 0]"),
        (lambda t: t.dwconv_bn_act(x, w, sc, sh, 1, [0] * 4, 0, "relu", 0.0, 0.0),
         "dwconv_bn_act: expected dilation >= 1, got 0"),
        (lambda t: t.dwconv_bn_act(x, w, sc.double(), sh, *relu),
         "dwconv_bn_act: expected scale to have the dtype of x (float32), got float64"),
        (lambda t: t.dwconv_bn_act(x.int(), w.int(), sc.int(), sh.int(), *relu),
         "dwconv_bn_act: expected x of dtype float32, float64, float16 or bfloat16, got int32"),
        (lambda t: t.dwconv_bn_act(x, w, sc, sh, 1, [1] * 4, 1, "elu", 0.0, 0.0),
         "dwconv_bn_act: expected act in none, relu, hardtanh, hardswish, silu, gelu, gelu_tanh, "
         "leaky_relu, got 'elu'"),
        (lambda t: t.dwconv_bn_act(x, torch.randn(3, 1, 10, 10, device=dev), sc, sh, 1, [0] * 4, 1,
                                   "relu", 0.0, 0.0),
         "dwconv_bn_act: expected kernel size 1 <= K <= 9, got K = 10"),
        (lambda t: t._dwconv_bn_act_backward(torch.randn(2, 3, 9, 7, device=dev), x, w, sc, sh,
                                             *relu),
         "_dwconv_bn_act_backward: expected grad_out of shape [2, 3, 9, 8], got [2, 3, 9, 7]"),
    ] + ([(lambda t: t.dwconv_bn_act(x, w.cpu(), sc, sh, *relu),
           "dwconv_bn_act: expected weight on the device of x (cuda:0), got cpu")]
         if dev.type == "cuda" else [])
