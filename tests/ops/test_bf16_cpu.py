"""bfloat16 on the CPU backend, every op: forward and backward against the float64 reference,
opcheck with bf16 samples, float16 refused in the same words everywhere, every ISA build.

Tolerances, from bf16's unit roundoff u = 2^-8 (8 significant bits, round to nearest even):
- against the float64 reference on the same bf16 inputs (what the kernel answers for): the
  kernels accumulate in float32 and round the result to bf16 once, so |out - ref| <= u |ref| plus
  float32's accumulation error (ATOL32 of the largest |ref|; ATOL32_GRAD for the gradients, sums
  over a whole image);
- dwconv_bn_act against the float64 reference on the float32 inputs (what autocast's user sees):
  the rounding of x, weight (u each on every product), scale and shift adds at most
  L (3u |scale| conv(|x|, |w|) + u |shift|), L = 1.5 bounding every activation's slope.
"""
import os
import subprocess
import sys

import pytest
import torch

import dasp_kernels
from dasp_kernels import cases, reference
from op_harness import skip_unless

BF16 = torch.bfloat16
U = 2.0 ** -8
ATOL32, ATOL32_GRAD = 3e-5, 2e-4
OPS = ("dwconv_bn_act", "ppm_add", "dasp_stage", "dasp_spatial_path", "inverted_residual")
pytestmark = skip_unless("cpu")


def _inputs(case, layout, seed=0):
    """(x, params) in float64, rounded to bf16 values (so bf16 holds them exactly)."""
    x, p = cases.make_inputs(case, torch.Generator().manual_seed(seed))
    x = cases.with_layout(x.to(BF16).double(), layout)
    return x, [t.to(BF16).double() for t in p]


def _within(got, want, rtol, atol, what):
    err = (got.double() - want).abs()
    bound = rtol * want.abs() + atol
    bad = err > bound
    assert not bad.any(), (f"{what}: {int(bad.sum())} of {bad.numel()} beyond the bound, worst "
                           f"excess {(err - bound).max().item():.3g}")


def _scale(t):
    return max(1.0, t.abs().max().item()) if t.numel() else 1.0


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("op", OPS)
def test_bf16_forward_backward_match_float64(op, layout):
    for case in cases.cases(op, "quick"):
        x64, p64 = _inputs(case, layout)
        leaves64 = [t.requires_grad_() for t in (x64, *p64)]
        ref = cases.call(case, "reference", x64, p64)
        x = x64.detach().to(BF16).requires_grad_()
        params = [t.detach().to(BF16).requires_grad_() for t in p64]
        out = cases.call(case, "cpu", x, params)
        what = f"{cases.case_id(case)} {layout}"
        assert out.dtype == BF16 and out.shape == ref.shape, what
        if layout == "channels_last" and out.numel() and out.shape[1] > 1:
            assert out.is_contiguous(memory_format=torch.channels_last), what
        _within(out, ref.detach(), U, ATOL32 * _scale(ref), what)
        if not ref.numel():
            continue
        g = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1)).to(BF16)
        want = torch.autograd.grad(ref, leaves64, g.double())
        got = torch.autograd.grad(out, [x, *params], g)
        for i, (a, b) in enumerate(zip(got, want)):
            assert a.dtype == BF16, f"{what} grad {i}"
            _within(a, b, U, ATOL32_GRAD * _scale(b), f"{what} grad {i}")


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_dwconv_bf16_against_float32_inputs(layout):
    """What autocast's user gets: the inputs' own rounding to bf16 within the bound derived in the
    module docstring."""
    for case in cases.cases("dwconv_bn_act", "quick"):
        x, (w, sc, sh) = cases.make_inputs(case, torch.Generator().manual_seed(2))
        x = cases.with_layout(x, layout)
        conf = cases.op_args(case, x, [w, sc, sh])[4:]
        ref = reference.dwconv_bn_act(x, w, sc, sh, *conf)
        out = torch.ops.dasp_kernels.dwconv_bn_act(x.to(BF16), w.to(BF16), sc.to(BF16),
                                                   sh.to(BF16), *conf)
        mag = reference.dwconv_bn_act(x.abs(), w.abs(), sc.abs(), torch.zeros_like(sh),
                                      *conf[:3], "none", 0.0, 0.0)
        bound = 1.5 * (3 * U * mag + U * sh.abs().view(1, -1, 1, 1)) + U * ref.abs()
        _within(out, ref, 0.0, bound + ATOL32 * _scale(ref), cases.case_id(case))


def _first_case(op):
    return cases.cases(op, "quick")[0]


@pytest.mark.parametrize("op", OPS)
def test_opcheck_bf16(op):
    x, p = _inputs(_first_case(op), "channels_last")
    x = x.to(BF16).requires_grad_()
    p = [t.to(BF16).requires_grad_() for t in p]
    args = cases.op_args(_first_case(op), x, p)
    torch.library.opcheck(getattr(torch.ops.dasp_kernels, op), args)


@pytest.mark.parametrize("op", OPS)
def test_float16_refused_in_the_same_words(op):
    x, p = _inputs(_first_case(op), "contiguous")
    x, p = x.half(), [t.half() for t in p]
    want = f"{op}: backend 'cpu' supports float32, float64, bfloat16, got float16"
    with pytest.raises(ValueError, match=want):
        cases.call(_first_case(op), "cpu", x, p)
    with pytest.raises(RuntimeError, match=want):
        getattr(torch.ops.dasp_kernels, op)(*cases.op_args(_first_case(op), x, p))


NARROW_BF16 = """
import sys, torch, dasp_kernels
from dasp_kernels import cases
assert dasp_kernels.cpu_isa() == sys.argv[1], dasp_kernels.cpu_isa()
for op in sys.argv[2:]:
    for case in cases.cases(op, "quick"):
        for layout in ("contiguous", "channels_last"):
            x, p = cases.make_inputs(case, torch.Generator().manual_seed(0))
            x = x.to(torch.bfloat16)
            if layout == "channels_last":
                x = x.contiguous(memory_format=torch.channels_last)
            p = [t.to(torch.bfloat16) for t in p]
            ref = cases.call(case, "reference", x.double(), [t.double() for t in p])
            out = cases.call(case, "cpu", x, p)
            assert out.dtype == torch.bfloat16
            scale = max(1.0, ref.abs().max().item()) if ref.numel() else 1.0
            err = (out.double() - ref).abs() - (2 ** -8 * ref.abs() + 3e-5 * scale)
            assert not (err > 0).any(), (op, cases.case_id(case), layout, err.max().item())
print("narrow bf16 ok")
"""


@pytest.mark.parametrize("isa", ["avx2", "default"])
def test_bf16_on_narrower_isa_builds(isa):
    if isa == "avx2" and torch.backends.cpu.get_cpu_capability() != "AVX512":
        pytest.skip("this process already runs the AVX2 build (or cannot)")
    env = {**os.environ, "ATEN_CPU_CAPABILITY": isa}
    root = os.path.dirname(os.path.dirname(os.path.abspath(dasp_kernels.__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", NARROW_BF16, isa, *OPS], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and "narrow bf16 ok" in out.stdout, out.stdout + out.stderr


# Channels-last shapes of the bf16 kernel (dw_fwd_nhwc_bf16): whole and partial vectors, channel
# groups (200 channels), every K, both strides, dilation, asymmetric padding, every activation.
BF16_KERNEL_CASES = [(c, k, s, d, act) for c, k, s, d, act in [
    (5, 3, 1, 1, "relu"), (17, 3, 2, 1, "hardtanh"), (32, 5, 1, 1, "silu"),
    (40, 7, 2, 1, "hardswish"), (200, 3, 1, 1, "gelu"), (24, 1, 1, 1, "none"),
    (33, 9, 1, 1, "leaky_relu"), (16, 2, 2, 1, "gelu_tanh"), (48, 3, 1, 2, "relu"),
    (20, 4, 2, 2, "none"), (64, 6, 1, 1, "relu"), (8, 8, 2, 1, "hardtanh")]]


@pytest.mark.parametrize("c,k,s,d,act", BF16_KERNEL_CASES)
def test_bf16_kernel_is_float32_rounded_once(c, k, s, d, act):
    """The bf16 kernel accumulates as the float32 one does (same taps, same order): its output is
    the float32 op's on the widened inputs, rounded to nearest even, bit for bit; and within the
    bound of the module docstring of the float64 reference."""
    g = torch.Generator().manual_seed(c * 100 + k)
    x = torch.randn(2, c, 23, 30, generator=g).to(BF16).contiguous(memory_format=torch.channels_last)
    w = (torch.randn(c, 1, k, k, generator=g) / k).to(BF16)
    sc, sh = (torch.rand(c, generator=g) + 0.5).to(BF16), torch.randn(c, generator=g).to(BF16)
    span = d * (k - 1)
    conf = (s, [span // 2, span - span // 2, span, 0], d, act, 0.1 if act == "leaky_relu" else 0.0,
            6.0 if act == "hardtanh" else 0.0)
    y = torch.ops.dasp_kernels.dwconv_bn_act(x, w, sc, sh, *conf)
    y32 = torch.ops.dasp_kernels.dwconv_bn_act(x.float(), w.float(), sc.float(), sh.float(), *conf)
    assert y.dtype == BF16 and y.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(y, y32.to(BF16))
    ref = reference.dwconv_bn_act(x.double(), w.double(), sc.double(), sh.double(), *conf)
    _within(y, ref, U, ATOL32 * _scale(ref), f"C{c} K{k} s{s} d{d} {act}")


def test_bf16_kernel_nan_inf_and_rounding_ties():
    """NaN stays NaN, infinities stay, and exact ties round to even."""
    c = 16
    x = torch.zeros(1, c, 4, 4, dtype=BF16).contiguous(memory_format=torch.channels_last)
    x[0, 0, 1, 1] = float("nan")
    x[0, 1, 1, 1] = float("inf")
    # 1 + 2^-8 is halfway between bf16's 1 and 1 + 2^-7: it rounds to 1 (even); 1 + 3 * 2^-8 is
    # halfway between 1 + 2^-7 and 1 + 2^-6: it rounds up to the even 1 + 2^-6.
    x[0, 2, 1, 1] = 1.0
    x[0, 3, 1, 1] = 1.0
    w = torch.ones(c, 1, 1, 1, dtype=BF16)
    sc = torch.ones(c, dtype=BF16)
    sh = torch.zeros(c, dtype=BF16)
    sh[2], sh[3] = 2.0 ** -8, 3 * 2.0 ** -8  # exact in bf16 (powers of two times small ints)
    y = torch.ops.dasp_kernels.dwconv_bn_act(x, w, sc, sh, 1, [0, 0, 0, 0], 1, "none", 0.0, 0.0)
    y32 = torch.ops.dasp_kernels.dwconv_bn_act(x.float(), w.float(), sc.float(), sh.float(), 1,
                                               [0, 0, 0, 0], 1, "none", 0.0, 0.0)
    assert torch.isnan(y[0, 0, 1, 1]) and y[0, 1, 1, 1].item() == float("inf")
    assert y[0, 2, 1, 1].item() == 1.0 and y[0, 3, 1, 1].item() == 1.0 + 2.0 ** -6
    torch.testing.assert_close(y, y32.to(BF16), rtol=0, atol=0, equal_nan=True)
