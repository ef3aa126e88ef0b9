"""The C++ CPU kernels (csrc/cpu/) against dasp_kernels.reference: values, gradients, layouts,
registration (opcheck) and input errors."""
import os
import platform
import re
import subprocess
import sys

import pytest
import torch

import dasp_kernels
from dasp_kernels import _checks, reference
from conftest import needs_cpu_ext

pytestmark = needs_cpu_ext
ops = torch.ops.dasp_kernels

CL = torch.channels_last


def tols(ref, dtype, grad=False):
    """rtol/atol for comparing against the reference: float rounding, scaled to the magnitudes."""
    scale = max(1.0, ref.abs().max().item()) if ref.numel() else 1.0
    if dtype == torch.float64:
        return dict(rtol=1e-9, atol=1e-9 * scale)
    # Gradients of the weights are sums over the whole image: allow for their longer sums.
    return dict(rtol=1e-5, atol=(1e-4 if grad else 1e-5) * scale)


def close(got, ref, dtype=torch.float32, grad=False, msg=""):
    torch.testing.assert_close(got, ref, equal_nan=True, msg=lambda m: f"{msg}\n{m}",
                               **tols(ref, dtype, grad))


def make_layout(x, layout):
    """contiguous, channels_last, or a strided slice of a larger tensor (non-contiguous)."""
    if layout == "contiguous":
        return x.contiguous()
    if layout == "channels_last":
        return x.contiguous(memory_format=CL)
    n, c, h, w = x.shape
    big = torch.zeros(n, c + 2, h + 3, 2 * w + 1, dtype=x.dtype)
    view = big[:, 1:c + 1, 2:h + 2, 1::2]
    view.copy_(x)
    if min(c, h, w) > 1:
        assert not view.is_contiguous() and not view.is_contiguous(memory_format=CL)
    return view


LAYOUTS = ("contiguous", "channels_last", "sliced")


def expect_format(x, out):
    fmt = _checks.output_memory_format(x)
    assert out.is_contiguous(memory_format=fmt), (fmt, out.stride())


# ---------------------------------------------------------------------------------------------
# dwconv_bn_act's CPU kernel in the DASP stage's form (symmetric padding, ReLU or none): its
# bands, planes, streamed outputs, masks. Every activation, dilation and padding form, opcheck,
# gradcheck and the errors: tests/ops/test_dwconv_bn_act.py.

def dw(x, w, sc, sh, stride, padding, relu):
    return ops.dwconv_bn_act(x, w, sc, sh, stride, [padding] * 4, 1, "relu" if relu else "none",
                             0.0, 0.0)


def dw_backward(go, x, w, sc, sh, stride, padding, relu):
    return ops._dwconv_bn_act_backward(go, x, w, sc, sh, stride, [padding] * 4, 1,
                                       "relu" if relu else "none", 0.0, 0.0)


DW_SHAPES = [  # (N, C, H, W): odd sizes, H = 1, W = 1, C = 1, 3, 64, 128, batch > 1
    (2, 3, 11, 9),
    (1, 1, 1, 8),
    (1, 5, 7, 1),
    (1, 64, 9, 10),
    (2, 128, 5, 6),
]


def dw_params(c, k, dtype, scale_sign=1.0):
    w = torch.randn(c, 1, k, k, dtype=dtype)
    sc = (torch.rand(c, dtype=dtype) + 0.5) * scale_sign
    sh = torch.randn(c, dtype=dtype) * 0.5
    return w, sc, sh


def dw_reference_grads(go, x, w, sc, sh, s, p, relu):
    leaves = [t.detach().clone().requires_grad_() for t in (x, w, sc, sh)]
    out = reference.dwconv_bn_relu(*leaves, s, p, relu)
    return torch.autograd.grad(out, leaves, go)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("k", range(1, 8))
def test_dwconv_matrix(k, stride):
    """Every padding 0..K-1 over odd / degenerate shapes and three layouts, forward and backward
    (float32), against the reference and autograd through it."""
    for n, c, h, w in DW_SHAPES:
        for pad in range(k):
            if h + 2 * pad < k or w + 2 * pad < k:
                continue
            x0 = torch.randn(n, c, h, w)
            wt, sc, sh = dw_params(c, k, torch.float32)
            relu = (pad + k) % 2 == 0  # both activations over the matrix
            for layout in LAYOUTS:
                x = make_layout(x0, layout)
                tag = f"N,C,H,W={n, c, h, w} K={k} s={stride} p={pad} relu={relu} {layout}"
                y = dw(x, wt, sc, sh, stride, pad, relu)
                ref = reference.dwconv_bn_relu(x0, wt, sc, sh, stride, pad, relu)
                close(y, ref, msg=tag)
                expect_format(x, y)
                go = torch.randn_like(ref)
                got = dw_backward(go, x, wt, sc, sh, stride, pad, relu)
                want = dw_reference_grads(go, x0, wt, sc, sh, stride, pad, relu)
                for name, a, b in zip(("x", "weight", "scale", "shift"), got, want):
                    close(a, b, grad=True, msg=f"grad_{name} {tag}")
                expect_format(x, got[0])
                assert got[1].is_contiguous() and got[1].shape == wt.shape


def check_dw_float64(cases, pads, layout):
    """Forward and all four gradients in float64 against the reference, for each
    ((n, c, h, w), K, stride) of `cases` and each padding of pads(K)."""
    for (n, c, h, w), k, s in cases:
        for pad in pads(k):
            x0 = torch.randn(n, c, h, w, dtype=torch.float64)
            wt, sc, sh = dw_params(c, k, torch.float64)
            x = make_layout(x0, layout)
            y = dw(x, wt, sc, sh, s, pad, True)
            close(y, reference.dwconv_bn_relu(x0, wt, sc, sh, s, pad, True), torch.float64)
            go = torch.randn_like(y)
            got = dw_backward(go, x, wt, sc, sh, s, pad, True)
            want = dw_reference_grads(go, x0, wt, sc, sh, s, pad, True)
            for a, b in zip(got, want):
                close(a, b, torch.float64)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_dwconv_float64_backward_exact(layout):
    check_dw_float64([((2, 3, 13, 12), 7, 2), ((1, 16, 10, 11), 3, 1), ((1, 9, 8, 9), 4, 2),
                      ((1, 3, 7, 6), 6, 1)], lambda k: (0, k // 2, k - 1), layout)


@pytest.mark.parametrize("threads", [3, 4])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_dwconv_bands(layout, threads):
    """Images tall enough to be cut into several row bands per plane (one task each): the
    backward's halo rows and the per-band weight-gradient sums must add up exactly once."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        check_dw_float64([((1, 3, 150, 37), 7, 2), ((1, 2, 133, 20), 5, 1), ((2, 8, 70, 9), 3, 1),
                          ((1, 3, 97, 21), 4, 2)], lambda k: (0, k - 1), layout)
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("k,stride", [(7, 2), (3, 1), (4, 2), (5, 2), (1, 1)])
def test_dwconv_few_channels_last_runs_by_planes(k, stride):
    """Channels-last inputs with fewer than 4 channels go forward plane by plane (the NCHW kernel
    reading strided pixels; 3 float channels split from each pixel row in one pass and interleaved
    back, fwd_rgb): wide rows that use the full vector blocks, rows narrower than one vector, same
    bits as NCHW."""
    for n, c, h, w in [(2, 3, 19, 301), (1, 3, 6, 5), (1, 3, 11, 40), (1, 1, 9, 130),
                       (1, 2, 8, 75)]:
        x0 = torch.randn(n, c, h, w)
        wt, sc, sh = dw_params(c, k, torch.float32)
        x = x0.contiguous(memory_format=torch.channels_last)
        y = dw(x, wt, sc, sh, stride, k // 2, True)
        expect_format(x, y)
        close(y, reference.dwconv_bn_relu(x0, wt, sc, sh, stride, k // 2, True))
        assert torch.equal(y, dw(x0, wt, sc, sh, stride, k // 2, True))


def test_dwconv_rgb_channels_last_large_output_streamed():
    """A channels-last RGB output of 16 MiB and more goes out in non-temporal vector stores."""
    x0 = torch.randn(1, 3, 1201, 1203)
    wt, sc, sh = dw_params(3, 3, torch.float32)
    y = dw(x0.contiguous(memory_format=torch.channels_last), wt, sc, sh, 1, 1, True)
    assert y.numel() * 4 >= 16 * 2**20 and y.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(y, dw(x0, wt, sc, sh, 1, 1, True))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_dwconv_large_outputs_streamed(layout):
    """Outputs of 16 MiB and more are written with non-temporal stores: aligned and odd rows."""
    for (h, w), s in (((513, 511), 1), ((1024, 1030), 2)):
        x0 = torch.randn(1, 16, h, w)
        wt, sc, sh = dw_params(16, 3, torch.float32)
        x = make_layout(x0, layout)
        y = dw(x, wt, sc, sh, s, 1, True)
        close(y, reference.dwconv_bn_relu(x0, wt, sc, sh, s, 1, True))
        go = torch.randn_like(y)
        got = dw_backward(go, x, wt, sc, sh, s, 1, True)
        want = dw_reference_grads(go, x0, wt, sc, sh, s, 1, True)
        close(got[0], want[0], grad=True)


def test_dwconv_relu_mask_and_nan():
    """The ReLU backward is torch.relu's (zero where relu(y) <= 0): y == 0 passes no gradient, a
    NaN y passes it; NaN and inf in x propagate as in the reference, also from columns that no
    output reads."""
    c, k = 4, 3
    x = torch.randn(1, c, 9, 10)
    x[0, 0, 4, 4] = float("nan")
    x[0, 1, 2, 9] = float("inf")  # last column: read only by the stride-1 outputs
    wt, sc, sh = dw_params(c, k, torch.float32)
    sh[2] = 0.0
    wt[2] = 0.0  # channel 2: y == 0 exactly everywhere
    for s in (1, 2):
        for pad in (0, 1):
            y = dw(x, wt, sc, sh, s, pad, True)
            close(y, reference.dwconv_bn_relu(x, wt, sc, sh, s, pad, True))
            go = torch.randn_like(y)
            got = dw_backward(go, x, wt, sc, sh, s, pad, True)
            want = dw_reference_grads(go, x, wt, sc, sh, s, pad, True)
            for a, b in zip(got, want):
                close(a, b, grad=True)
            assert got[1][2].abs().sum() == 0 and got[3][2] == 0


def test_dwconv_grad_out_any_strides():
    x = torch.randn(2, 3, 8, 9).contiguous(memory_format=CL)
    wt, sc, sh = dw_params(3, 3, torch.float32)
    y = dw(x, wt, sc, sh, 2, 1, False)
    for go in (torch.ones(1).expand(y.shape), torch.randn(y.shape[::-1]).permute(3, 2, 1, 0)):
        got = dw_backward(go, x, wt, sc, sh, 2, 1, False)
        want = dw_reference_grads(go, x, wt, sc, sh, 2, 1, False)
        for a, b in zip(got, want):
            close(a, b, grad=True)


def test_dwconv_empty_batch():
    wt, sc, sh = dw_params(3, 3, torch.float32)
    for layout in ("contiguous", "channels_last"):
        x = make_layout(torch.randn(0, 3, 7, 8), layout)
        y = dw(x, wt, sc, sh, 2, 1, True)
        assert y.shape == (0, 3, 4, 4)
        gx, gw, gs, gh = dw_backward(torch.zeros(y.shape), x, wt, sc, sh, 2, 1,
                                                      True)
        assert gx.shape == x.shape and gw.shape == wt.shape
        assert gw.abs().sum() == 0 and gs.abs().sum() == 0 and gh.abs().sum() == 0


# ---------------------------------------------------------------------------------------------
# The narrower builds of the kernels (AVX2, and the portable one chosen on CPUs without AVX2)
# must agree as well; on a machine whose ATen runs AVX-512 they only run in a fresh process
# started with ATEN_CPU_CAPABILITY lowered, which dasp_kernels follows.

NARROW_CHECK = r"""
import sys
import torch, dasp_kernels
from dasp_kernels import reference
assert dasp_kernels.cpu_isa() == sys.argv[1], (dasp_kernels.cpu_isa(), sys.argv[1])
ops = torch.ops.dasp_kernels
dw = lambda x, w, sc, sh, s, p, relu: ops.dwconv_bn_act(x, w, sc, sh, s, [p] * 4, 1, "relu", 0.0, 0.0)
dw_backward = lambda g, x, w, sc, sh, s, p, relu: ops._dwconv_bn_act_backward(
    g, x, w, sc, sh, s, [p] * 4, 1, "relu", 0.0, 0.0)
torch.manual_seed(0)
for dtype in (torch.float32, torch.float64):
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-9)
    for cl in (False, True):
        fmt = torch.channels_last if cl else torch.contiguous_format
        for (n, c, h, w), k, s, p in [((2, 3, 19, 17), 7, 2, 3), ((1, 12, 9, 10), 3, 1, 1),
                                      ((1, 5, 6, 11), 4, 2, 0), ((1, 4, 1, 9), 5, 1, 2),
                                      ((1, 2, 9, WIDE), 7, 2, 3), ((1, 2, 7, WIDE), 3, 2, 1),
                                      ((1, 3, 9, WIDE), 7, 2, 3), ((1, 3, 4, WIDE), 3, 1, 1)]:
            x = torch.randn(n, c, h, w, dtype=dtype).contiguous(memory_format=fmt)
            wt = torch.randn(c, 1, k, k, dtype=dtype)
            sc, sh = torch.rand(c, dtype=dtype) + 0.5, torch.randn(c, dtype=dtype)
            y = dw(x, wt, sc, sh, s, p, True)
            torch.testing.assert_close(y, reference.dwconv_bn_relu(x, wt, sc, sh, s, p, True), **tol)
            go = torch.randn_like(y)
            leaves = [t.clone().requires_grad_() for t in (x, wt, sc, sh)]
            want = torch.autograd.grad(reference.dwconv_bn_relu(*leaves, s, p, True), leaves, go)
            for a, b in zip(dw_backward(go, x, wt, sc, sh, s, p, True), want):
                torch.testing.assert_close(a, b, **tol)
        for n, cin, cout, h, w in [(2, 3, 5, 11, 9), (1, 20, 17, 18, 35)]:
            x = torch.randn(n, cin, h, w, dtype=dtype).contiguous(memory_format=fmt)
            x[0, 0, 0, :2] = float("nan")
            wt = torch.randn(cout, cin, 1, 1, dtype=dtype)
            res = torch.randn(n, cout, (h + 1) // 2, (w + 1) // 2, dtype=dtype)
            y = ops.ppm_add(x, wt, res)
            torch.testing.assert_close(y, reference.ppm_add(x, wt, res), equal_nan=True, **tol)
            go = torch.randn_like(y)
            xx, ww = x.clone().requires_grad_(), wt.clone().requires_grad_()
            want = torch.autograd.grad(reference.ppm_add(xx, ww, res), (xx, ww), go)
            for a, b in zip(ops._ppm_add_backward(go, x, wt), want):
                torch.testing.assert_close(a, b, equal_nan=True, **tol)
print("narrow ok")
"""

# Stride-2 rows wide enough for every build's full register block of output vectors (AVX-512:
# 8 x 16), then one more vector and a partial one: Wo = 128 + 16 + 5.
WIDE = 2 * (128 + 16 + 5) - 1


@pytest.mark.parametrize("isa", ["avx2", "default"])
def test_narrower_builds_agree(isa):
    here = torch.backends.cpu.get_cpu_capability()
    if isa == "avx2" and here != "AVX512":
        pytest.skip(f"ATen runs {here}: the AVX2 build is this process's own (or unusable)")
    env = {**os.environ, "ATEN_CPU_CAPABILITY": isa}
    # Import the same dasp_kernels (and built extension) as this process: a checkout's goes first
    # on the path; an installed one the same interpreter finds by itself (site-packages must not
    # go before the standard library: a `typing` backport there breaks numpy).
    pkg_root = os.path.dirname(os.path.dirname(os.path.abspath(dasp_kernels.__file__)))
    if os.path.basename(pkg_root) not in ("site-packages", "dist-packages"):
        env["PYTHONPATH"] = pkg_root + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", NARROW_CHECK.replace("WIDE", str(WIDE)), isa],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "narrow ok" in out.stdout, out.stdout + out.stderr


@needs_cpu_ext
def test_cpu_isa_follows_aten():
    want = {"AVX512": "avx512", "AVX2": "avx2"}.get(torch.backends.cpu.get_cpu_capability(),
                                                     "default")
    if sys.platform == "linux" and platform.machine() == "x86_64":  # GCC builds all three
        assert dasp_kernels.cpu_isa() == want
    else:
        assert dasp_kernels.cpu_isa() in {want, "default"}


@needs_cpu_ext
@pytest.mark.parametrize("k", [3, 5, 7])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_dwconv_wide_stride2_rows(k, layout):
    # The stride-2 tap loop's full blocks, single vectors and masked row ends, forward and backward.
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(2, 3, 11, WIDE).contiguous(memory_format=fmt)
    w, sc, sh = torch.randn(3, 1, k, k), torch.rand(3) + 0.5, torch.randn(3)
    y = dasp_kernels.dwconv_bn_relu(x, w, sc, sh, stride=2, padding=k // 2, backend="cpu")
    want = reference.dwconv_bn_relu(x, w, sc, sh, 2, k // 2, True)
    torch.testing.assert_close(y, want, rtol=1e-4, atol=1e-4)
    go = torch.randn_like(y)
    leaves = [t.clone().requires_grad_() for t in (x, w, sc, sh)]
    ref_grads = torch.autograd.grad(reference.dwconv_bn_relu(*leaves, 2, k // 2, True), leaves, go)
    got = dw_backward(go, x, w, sc, sh, 2, k // 2, True)
    for name, a, b in zip(("x", "weight", "scale", "shift"), got, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-3, msg=lambda m, n=name: f"grad {n}: {m}")


# ---------------------------------------------------------------------------------------------
# Outputs (and grad_x) of 1 MiB and more come from a pool of storages nothing refers to any more.

def _pooled_cases():
    x = torch.randn(1, 8, 128, 160)  # 640 KiB in; ppm_add out 1x64x64x80 = 1.25 MiB
    w = torch.randn(64, 8, 1, 1)
    r = torch.randn(1, 64, 64, 80)
    xd = torch.randn(1, 4, 256, 300)  # 1.2 MiB: dwconv stride 1 output and grad_x
    wd, sc, sh = torch.randn(4, 1, 3, 3), torch.rand(4) + 0.5, torch.randn(4)
    ops = torch.ops.dasp_kernels
    return {
        "ppm_add": (lambda s: ops.ppm_add(x * s, w, r),
                    lambda s: reference.ppm_add(x * s, w, r)),
        "dwconv_bn_act": (lambda s: dw(xd * s, wd, sc, sh, 1, 1, True),
                           lambda s: reference.dwconv_bn_relu(xd * s, wd, sc, sh, 1, 1, True)),
        "_dwconv_bn_act_backward": (
            lambda s: dw_backward(xd * s, xd, wd, sc, sh, 1, 1, False)[0],
            lambda s: torch.nn.functional.conv_transpose2d(xd * s * sc.view(1, -1, 1, 1), wd,
                                                           padding=1, groups=4)),
    }


@needs_cpu_ext
@pytest.mark.parametrize("name", ["ppm_add", "dwconv_bn_act", "_dwconv_bn_act_backward"])
def test_large_outputs_reused_only_when_nothing_holds_them(name):
    run, want = _pooled_cases()[name]
    a = run(1.0)
    b = run(2.0)
    assert a.data_ptr() != b.data_ptr()
    torch.testing.assert_close(a, want(1.0), rtol=1e-4, atol=1e-4)  # b did not overwrite a
    ptr = a.data_ptr()
    view = a.view(-1)[:7]
    del a
    c = run(3.0)
    assert c.data_ptr() != ptr  # the view still holds a's storage
    torch.testing.assert_close(view, want(1.0).view(-1)[:7], rtol=1e-4, atol=1e-4)
    freed = {ptr, b.data_ptr(), c.data_ptr()}
    del view, b, c
    d = run(4.0)
    e = run(5.0)
    # Once nothing refers to them, the storages are handed out again.
    assert {d.data_ptr(), e.data_ptr()} <= freed
    torch.testing.assert_close(d, want(4.0), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(e, want(5.0), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# The benchmarks' compute ceiling (benchmarks/suite.py, stream/fma): the FMA loop of the build
# this process runs, once per intra-op thread.

@needs_cpu_ext
def test_fma_peak_counts_the_flops_it_does():
    from dasp_kernels import _loader
    lanes = {"avx512": 16, "avx2": 8}.get(dasp_kernels.cpu_isa())
    old = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            per_iter = _loader._C._fma_peak(1)
            assert per_iter % (12 * 2 * threads) == 0  # 12 chains, 2 FLOPs per lane, per thread
            if lanes:
                assert per_iter == threads * 12 * lanes * 2
            assert _loader._C._fma_peak(1000) == 1000 * per_iter
            assert _loader._C._fma_peak(0) == 0
    finally:
        torch.set_num_threads(old)
    with pytest.raises(ValueError, match=r"_fma_peak: expected iters >= 0, got -1"):
        _loader._C._fma_peak(-1)
