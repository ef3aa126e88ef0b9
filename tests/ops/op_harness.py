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
    pytest.param("cuda", marks=skip_unless("cuda")),
    pytest.param("emu", marks=[pytest.mark.slow, pytest.mark.skipif(
        not EMU, reason="emulated CUDA kernels: set DASP_CUDA_EMU=1 to build and run them")]),
]


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
        self.device = "cuda" if backend == "cuda" or (
            backend == "triton" and torch.cuda.is_available()) else "cpu"
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
