"""dwconv_bn_act's activations in Triton: act(z) for the forward epilogue, grad * act'(z) for the
backward, selected by a constexpr code (the index in _checks.ACTIVATIONS).

Formulas in the operation order of ATen's kernels, so float64 agrees with the reference to rounding;
the piecewise derivatives select as ATen's *_backward kernels do (relu passes nothing at 0,
hardtanh nothing at its edges). At a NaN pre-activation relu and leaky_relu pass the gradient as
autograd does; there hardtanh passes nothing and hardswish gives NaN, as ATen's vectorized kernels
do (their scalar tails differ, so ATen's own answer depends on the element's position).
tanh is written with exp (no tanh on the interpreter): its absolute error stays at rounding level,
which is what gelu_tanh's 0.5 * z * (1 + tanh) needs.
"""
import math

import numpy as np
import triton
import triton.language as tl

from dasp_kernels import _checks

ACT_CODES = {name: i for i, name in enumerate(_checks.ACTIVATIONS)}
assert tuple(ACT_CODES) == ("none", "relu", "hardtanh", "hardswish", "silu", "gelu", "gelu_tanh",
                            "leaky_relu")
# Globals a @triton.jit function reads must be constexpr.
RELU = tl.constexpr(ACT_CODES["relu"])
HARDTANH = tl.constexpr(ACT_CODES["hardtanh"])
HARDSWISH = tl.constexpr(ACT_CODES["hardswish"])
SILU = tl.constexpr(ACT_CODES["silu"])
GELU = tl.constexpr(ACT_CODES["gelu"])
GELU_TANH = tl.constexpr(ACT_CODES["gelu_tanh"])
LEAKY_RELU = tl.constexpr(ACT_CODES["leaky_relu"])

SQRT_HALF = tl.constexpr(0.7071067811865476)  # 1 / sqrt(2)
INV_SQRT_2PI = tl.constexpr(0.3989422804014327)  # 1 / sqrt(2 pi)
GELU_TANH_BETA = tl.constexpr(0.7978845608028654)  # sqrt(2 / pi)
GELU_TANH_KAPPA = tl.constexpr(0.044715)


def split_scalar(v):
    """v as float32 (hi, lo) with hi + lo = v to ~2**-48: Triton passes Python floats as float32,
    and float64 kernels need alpha and beta (e.g. leaky_relu's 0.1) to double precision."""
    with np.errstate(over="ignore"):
        hi = float(np.float32(v))
    if not math.isfinite(hi):
        return hi, 0.0
    return hi, float(np.float32(v - hi))


@triton.jit
def act_scalar(hi, lo, ACC: tl.constexpr):
    return tl.cast(hi, ACC) + tl.cast(lo, ACC)


@triton.jit
def _const(v: tl.constexpr, like):
    """v in like's dtype: a bare float literal is float32, too coarse for float64 kernels."""
    return tl.full([], v, like.dtype)


@triton.jit
def _tanh(v):
    return 2.0 / (1.0 + tl.exp(-2.0 * v)) - 1.0


@triton.jit
def act_forward(z, ACT: tl.constexpr, alpha, beta):
    if ACT == RELU:
        z = tl.where(z < 0, 0.0, z)  # keeps NaN, as torch.relu does
    elif ACT == HARDTANH:
        z = tl.where(z < alpha, alpha, tl.where(z > beta, beta, z))
    elif ACT == HARDSWISH:
        r = z + 3.0
        r = tl.where(r < 0, 0.0, tl.where(r > 6.0, 6.0, r))
        z = z * r / 6.0
    elif ACT == SILU:
        z = z / (1.0 + tl.exp(-z))
    elif ACT == GELU:
        z = z * 0.5 * (1.0 + tl.math.erf(z * _const(SQRT_HALF, z)))
    elif ACT == GELU_TANH:
        beta_ = _const(GELU_TANH_BETA, z)
        z = 0.5 * z * (1.0 + _tanh(beta_ * (z + _const(GELU_TANH_KAPPA, z) * z * z * z)))
    elif ACT == LEAKY_RELU:
        z = tl.where(z > 0, z, z * alpha)
    return z


@triton.jit
def act_backward(g, z, ACT: tl.constexpr, alpha, beta):
    """g * act'(z)."""
    if ACT == RELU:
        g = tl.where(z <= 0, 0.0, g)
    elif ACT == HARDTANH:
        g = tl.where((z > alpha) & (z < beta), g, 0.0)
    elif ACT == HARDSWISH:
        g = tl.where(z <= -3.0, 0.0, tl.where(z >= 3.0, g, g * (z / 3.0 + 0.5)))
    elif ACT == SILU:
        s = 1.0 / (1.0 + tl.exp(-z))
        g = g * s * (1.0 + z * (1.0 - s))
    elif ACT == GELU:
        cdf = 0.5 * (1.0 + tl.math.erf(z * _const(SQRT_HALF, z)))
        pdf = tl.exp(-0.5 * z * z) * _const(INV_SQRT_2PI, z)
        g = g * (cdf + z * pdf)
    elif ACT == GELU_TANH:
        z2 = z * z
        beta_ = _const(GELU_TANH_BETA, z)
        kappa = _const(GELU_TANH_KAPPA, z)
        t = _tanh(beta_ * (z + kappa * z2 * z))
        dright = (1.0 - t * t) * beta_ * (1.0 + 3.0 * kappa * z2)
        g = g * (0.5 * (1.0 + t) + 0.5 * z * dright)
    elif ACT == LEAKY_RELU:
        g = tl.where(z > 0, g, g * alpha)
    return g
