"""The CPU backend as a whole: which per-ISA build runs (dasp_kernels.cpu_isa() follows ATen),
the narrower builds in a subprocess, the output pool that every CPU op allocates from, and the
benchmarks' FMA peak loop. Each op's own tests: tests/ops/test_<op>.py."""
import os
import platform
import subprocess
import sys

import pytest
import torch

import dasp_kernels
from dasp_kernels import cases, reference
from conftest import needs_cpu_ext

pytestmark = needs_cpu_ext
ops = torch.ops.dasp_kernels


def dw(x, w, sc, sh, stride, padding, relu):
    """dwconv_bn_act's CPU op in the DASP stage's form: symmetric padding, ReLU or none."""
    return ops.dwconv_bn_act(x, w, sc, sh, stride, [padding] * 4, 1, "relu" if relu else "none",
                             0.0, 0.0)


def dw_backward(go, x, w, sc, sh, stride, padding, relu):
    return ops._dwconv_bn_act_backward(go, x, w, sc, sh, stride, [padding] * 4, 1,
                                       "relu" if relu else "none", 0.0, 0.0)


# ---------------------------------------------------------------------------------------------
# The narrower builds of the kernels (AVX2, and the portable one chosen on CPUs without AVX2)
# must agree as well; on a machine whose ATen runs AVX-512 they only run in a fresh process
# started with ATEN_CPU_CAPABILITY lowered, which dasp_kernels follows.

NARROW_CHECK = r"""
import sys
import torch, dasp_kernels
from dasp_kernels import cases, reference
assert dasp_kernels.cpu_isa() == sys.argv[1], (dasp_kernels.cpu_isa(), sys.argv[1])
ops = torch.ops.dasp_kernels
dw = lambda x, w, sc, sh, s, p, relu: ops.dwconv_bn_act(x, w, sc, sh, s, [p] * 4, 1, "relu", 0.0, 0.0)
dw_backward = lambda g, x, w, sc, sh, s, p, relu: ops._dwconv_bn_act_backward(
    g, x, w, sc, sh, s, [p] * 4, 1, "relu", 0.0, 0.0)
torch.manual_seed(0)
gen = torch.Generator().manual_seed(0)


def case_inputs(case, dtype, fmt):
    x, params = cases.make_inputs(case, gen)
    return [x.to(dtype).contiguous(memory_format=fmt), *[t.to(dtype) for t in params]]


for dtype in (torch.float32, torch.float64):
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-9)
    for cl in (False, True):
        fmt = torch.channels_last if cl else torch.contiguous_format
        for (n, c, h, w), k, s, p in [((2, 3, 19, 17), 7, 2, 3), ((1, 12, 9, 10), 3, 1, 1),
                                      ((1, 5, 6, 11), 4, 2, 0), ((1, 4, 1, 9), 5, 1, 2),
                                      ((1, 2, 9, WIDE), 7, 2, 3), ((1, 2, 7, WIDE), 3, 2, 1),
                                      ((1, 3, 9, WIDE), 7, 2, 3), ((1, 3, 4, WIDE), 3, 1, 1)]:
            x, wt, sc, sh = case_inputs(cases.dw_case(n, c, h, w, k), dtype, fmt)
            y = dw(x, wt, sc, sh, s, p, True)
            torch.testing.assert_close(y, reference.dwconv_bn_relu(x, wt, sc, sh, s, p, True), **tol)
            go = torch.randn_like(y)
            leaves = [t.clone().requires_grad_() for t in (x, wt, sc, sh)]
            want = torch.autograd.grad(reference.dwconv_bn_relu(*leaves, s, p, True), leaves, go)
            for a, b in zip(dw_backward(go, x, wt, sc, sh, s, p, True), want):
                torch.testing.assert_close(a, b, **tol)
        for n, cin, cout, h, w in [(2, 3, 5, 11, 9), (1, 20, 17, 18, 35)]:
            x, wt, res = case_inputs(cases.ppm_case(n, cin, cout, h, w), dtype, fmt)
            x[0, 0, 0, :2] = float("nan")
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


# ---------------------------------------------------------------------------------------------
# Outputs (and grad_x) of 1 MiB and more come from a pool of storages nothing refers to any more.

def _pooled_cases():
    gen = torch.Generator().manual_seed(0)
    # 640 KiB in; ppm_add out 1x64x64x80 = 1.25 MiB
    x, (w, r) = cases.make_inputs(cases.ppm_case(1, 8, 64, 128, 160), gen)
    # 1.2 MiB: dwconv stride 1 output and grad_x
    xd, (wd, sc, sh) = cases.make_inputs(cases.dw_case(1, 4, 256, 300, 3), gen)
    x, w, r, xd, wd, sc, sh = (t.float() for t in (x, w, r, xd, wd, sc, sh))
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
