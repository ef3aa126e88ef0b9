"""What every tests/ops/test_<op>.py shares: the backends an op runs on here, and one check of a
case (dasp_kernels.cases, the cases `dasp-kernels check` runs) against the float64 reference,
forward and every input gradient.

Backends: cpu (this process's ISA build; the narrower builds run in a subprocess each, see
narrower_build_check), the Triton kernels (a GPU, or the CPU interpreter under TRITON_INTERPRET=1:
tiny cases only), the CUDA kernels (a GPU) and the same .cu sources on the CPU emulator of
tests/cuda_emu (DASP_CUDA_EMU=1: slow to build). A backend that cannot run is skipped with the
reason.
"""
import os
import subprocess
import sys

import pytest
import torch

import dasp_kernels
from dasp_kernels import _backends, cases

TOL = {torch.float64: 1e-10, torch.float32: 2e-5}  # relative to the largest reference magnitude
EMU = os.environ.get("DASP_CUDA_EMU") == "1"
LAYOUTS = ("contiguous", "channels_last", "sliced")
TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def skip_unless(backend):
    why = _backends.backend_status()[backend]
    return pytest.mark.skipif(why is not None, reason=f"backend {backend!r}: {why}")


BACKENDS = [
    pytest.param("cpu", marks=skip_unless("cpu")),
    pytest.param("triton", marks=skip_unless("triton")),
    pytest.param("cuda", marks=[pytest.mark.needs_cuda, skip_unless("cuda")]),
    pytest.param("emu", marks=[pytest.mark.slow, pytest.mark.skipif(
        not EMU, reason="emulated CUDA kernels: set DASP_CUDA_EMU=1 to build and run them")]),
]


def device_of(backend):
    """Where `backend`'s tensors live: cuda for the CUDA kernels, and for Triton on a GPU."""
    gpu = backend == "cuda" or (backend == "triton" and torch.cuda.is_available())
    return "cuda" if gpu else "cpu"


def backends(*names):
    return [b for b in BACKENDS if b.values[0] in names]


@pytest.fixture(scope="session")
def emu_ops():
    """torch.ops.dasp_emu: the .cu sources built for the CPU emulator (minutes, once). A test
    module uses it by importing it."""
    sys.path.insert(0, os.path.join(TESTS, "cuda_emu"))
    import build as emu_build

    emu_build.build()
    return torch.ops.dasp_emu


class Runner:
    """Runs an op's cases on one backend: through the public function, or the emulator's op."""

    def __init__(self, op, backend, emu=None):
        self.op, self.backend, self.emu = op, backend, emu
        self.device = device_of(backend)
        interpreted = backend in ("triton", "emu") and self.device == "cpu"
        self.cases = cases.cases(op, "tiny" if interpreted else "quick")
        self.dtypes = [torch.float32] if backend == "triton" and interpreted else list(TOL)

    def __call__(self, case, x, params):
        if self.backend != "emu":
            return cases.call(case, self.backend, x, params)
        if case["op"] == "dasp_spatial_path":  # CUDA runs the path as one dasp_stage per stage
            for i in range(0, len(params), 7):
                x = self.emu.dasp_stage(x, *params[i:i + 7])
            return x
        return getattr(self.emu, case["op"])(*cases.op_args(case, x, params))


def make_runner(request, op, backend=None):
    """The Runner of `backend` (default: the one the test is parametrised with, request.param)."""
    b = backend or request.param
    return Runner(op, b, request.getfixturevalue("emu_ops") if b == "emu" else None)


class Target:
    """One backend's registered ops, called directly: `target.dwconv_bn_act(...)` is
    torch.ops.dasp_kernels.dwconv_bn_act (cpu, cuda), torch.ops.dasp_kernels.dwconv_bn_act_triton
    (triton) or torch.ops.dasp_emu.dwconv_bn_act (the CUDA sources on the emulator); `device` is
    where its tensors live."""

    def __init__(self, backend, namespace, suffix, device):
        self.backend, self.namespace, self.suffix = backend, namespace, suffix
        self.device = torch.device(device)

    def __getattr__(self, name):
        return getattr(self.namespace, name + self.suffix)

    def __repr__(self):
        return self.backend


def make_target(request, backend=None):
    """The Target of `backend` (default: the one the test is parametrised with, request.param)."""
    b = backend or request.param
    if b == "emu":
        return Target(b, request.getfixturevalue("emu_ops"), "", "cpu")
    if b == "triton":
        from dasp_kernels import triton  # noqa: F401  (registers the ops)
        return Target(b, torch.ops.dasp_kernels, "_triton", device_of(b))
    return Target(b, torch.ops.dasp_kernels, "", b)


HALF_TOL = {torch.float16: 2e-2, torch.bfloat16: 6e-2}


def close(a, b, tol):
    """|a - b| <= tol + tol * |b| elementwise, b cast to a's dtype, NaN equal."""
    torch.testing.assert_close(a, b.to(a.dtype), rtol=tol, atol=tol, equal_nan=True)


def close_scaled(a, b, tol):
    """close() of both divided by max(1, max |b|): for reductions over many terms."""
    s = b.abs().max().clamp_min(1)
    close(a / s, b / s, tol)


def close_to_ref(got, want, dtype, grad=False, msg=""):
    """Float rounding, scaled to the magnitudes (NaN equal); gradients of the weights are sums
    over the whole image: a longer sum, a larger allowance."""
    finite = want[torch.isfinite(want)]
    scale = max(1.0, finite.abs().max().item()) if finite.numel() else 1.0
    tol = (dict(rtol=1e-9, atol=1e-9 * scale) if dtype == torch.float64
           else dict(rtol=1e-5, atol=(1e-4 if grad else 1e-5) * scale))
    torch.testing.assert_close(got, want, equal_nan=True, msg=lambda m: f"{msg}\n{m}", **tol)


def check_format(out, x):
    """out has the memory format the ops give for input x."""
    from dasp_kernels import _checks

    fmt = _checks.output_memory_format(x)
    assert out.is_contiguous(memory_format=fmt), (out.shape, out.stride(), fmt)


def masked_grad(g, pre, margin, kinks=(0.0,)):
    """g zeroed where the pre-activation is within `margin` of a kink of the activation: there the
    kernel's rounding may legitimately land on the other side than the reference's."""
    keep = torch.ones_like(pre, dtype=torch.bool)
    for p in kinks:
        keep &= (pre - p).abs() > margin
    return g * keep.to(g.dtype)


# Tolerances of check_autograd (relative to the largest reference magnitude).
AUTOGRAD_TOL = {torch.float32: 1e-5, torch.float64: 1e-12, torch.float16: 2e-3,
                torch.bfloat16: 1.6e-2}


def close_rel_max(actual, expected, tol, what=""):
    """Elementwise |a - e| <= tol * (|e| + max|e|): relative, and not fooled by values near 0."""
    assert actual.shape == expected.shape, what
    actual, expected = actual.double(), expected.double()
    scale = expected.abs().max().item() if expected.numel() else 0.0
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol * max(scale, 1e-30),
                               equal_nan=True, msg=lambda m: f"{what}: {m}")


def check_autograd(ours, ref, inputs, dtype, grads=True, what=""):
    """Forward and, with grads, every input gradient of ours(*inputs) against autograd through
    ref in float64 (close_rel_max, AUTOGRAD_TOL). Returns ours' output."""
    mine = [t.detach().clone().requires_grad_() for t in inputs]
    theirs = [t.detach().double().requires_grad_() for t in inputs]
    y = ours(*mine)
    y_ref = ref(*theirs)
    assert y.dtype == dtype
    close_rel_max(y, y_ref, AUTOGRAD_TOL[dtype], f"{what} forward")
    if not grads:
        return y
    g = torch.randn_like(y_ref)
    y.backward(g.to(dtype))
    y_ref.backward(g)
    for i, (a, b) in enumerate(zip(mine, theirs)):
        assert a.grad is not None and a.grad.dtype == dtype, f"{what} grad {i}"
        close_rel_max(a.grad, b.grad, AUTOGRAD_TOL[dtype], f"{what} grad {i}")
    return y


def output_format_is(y, x, layout):
    """y is channels-last exactly when x was made so with more than one channel."""
    cl = layout == "channels_last" and x.shape[1] > 1
    assert y.is_contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)


def rel_err(out, ref):
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    if ref.numel() == 0:
        return 0.0
    return (out - ref).abs().max().item() / max(ref.abs().max().item(), 1e-30)


def check_case(run, case, dtype, layout):
    """The case on `run`'s backend in `dtype` and `layout` against the float64 reference:
    output (shape, dtype, memory format, values) and the gradient of every input."""
    gen = torch.Generator().manual_seed(0)
    x64, p64 = cases.make_inputs(case, gen)
    leaves64 = [t.requires_grad_() for t in (x64, *p64)]
    ref = cases.call(case, "reference", x64, p64)
    x = cases.with_layout(x64.detach().to(run.device, dtype), layout).requires_grad_()
    params = [p.detach().to(run.device, dtype).requires_grad_() for p in p64]
    out = run(case, x, params)
    assert out.shape == ref.shape and out.dtype == dtype
    if layout == "channels_last" and out.numel():
        assert out.is_contiguous(memory_format=torch.channels_last)
    errs = {"out": rel_err(out, ref)}
    if ref.numel():
        g = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
        want = torch.autograd.grad(ref, leaves64, g)
        got = torch.autograd.grad(out, [x, *params], g.to(run.device, dtype))
        errs.update({f"grad {i}": rel_err(a, b) for i, (a, b) in enumerate(zip(got, want))})
    bad = {k: v for k, v in errs.items() if not v <= TOL[dtype]}
    assert not bad, f"{cases.case_id(case)} {dtype} {layout}: {bad}"


def check_all(run, layout):
    for dtype in run.dtypes:
        for case in run.cases:
            check_case(run, case, dtype, layout)


NARROW = """
import sys, torch, dasp_kernels
from dasp_kernels import cases
assert dasp_kernels.cpu_isa() == sys.argv[1], dasp_kernels.cpu_isa()
gen = torch.Generator().manual_seed(0)
for case in cases.cases(sys.argv[2], "quick"):
    for layout in ("contiguous", "channels_last"):
        x, p = cases.make_inputs(case, gen)
        x = cases.with_layout(x.float(), layout).requires_grad_()
        p = [t.float().requires_grad_() for t in p]
        ref = cases.call(case, "reference", x, p)
        out = cases.call(case, "cpu", x, p)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        if ref.numel():
            g = torch.randn_like(ref)
            for a, b in zip(torch.autograd.grad(out, [x, *p], g),
                            torch.autograd.grad(ref, [x, *p], g)):
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
print("narrow ok")
"""


def narrower_build_check(op, isa):
    """The op's quick cases on the CPU build `isa` ("avx2" or "default"), in a subprocess that
    ATEN_CPU_CAPABILITY lowers to it."""
    if _backends.backend_status()["cpu"] is not None:
        pytest.skip("the C++ extension did not load")
    if isa == "avx2" and torch.backends.cpu.get_cpu_capability() != "AVX512":
        pytest.skip("this process already runs the AVX2 build (or cannot)")
    env = {**os.environ, "ATEN_CPU_CAPABILITY": isa}
    root = os.path.dirname(os.path.dirname(os.path.abspath(dasp_kernels.__file__)))
    if os.path.basename(root) not in ("site-packages", "dist-packages"):
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", NARROW, isa, op], env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0 and "narrow ok" in out.stdout, out.stdout + out.stderr
