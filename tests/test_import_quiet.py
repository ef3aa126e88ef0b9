"""Importing the packages, and the benchmarks' torch.compile, print nothing on a machine without
a GPU: torch's "No CUDA runtime is found" note (from torch.utils.cpp_extension) included."""
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run(code):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p])
    r = subprocess.run([sys.executable, "-W", "default", "-c", code], capture_output=True,
                       text=True, env=env, cwd=str(REPO), timeout=600)
    assert r.returncode == 0, r.stderr
    return r


def test_import_prints_nothing():
    r = run("import dasp_kernels, dasp, dasp.models, dasp_kernels.check, sys; "
            "print(sorted(m for m in sys.modules if m.endswith('cpp_extension')))")
    assert r.stderr == ""
    assert r.stdout.strip() == "[]"  # torch.utils.cpp_extension is imported only to build


def test_benchmarks_compile_quietly():
    """The benchmarks time torch.compile, whose CPU code generation imports cpp_extension."""
    r = run("import benchmarks, torch, sys; f = torch.compile(lambda x: x * 2 + 1); "
            "print(f(torch.ones(3)).tolist(), 'torch.utils.cpp_extension' in sys.modules)")
    assert r.stdout.split() == ["[3.0,", "3.0,", "3.0]", "True"]
    assert "No CUDA runtime" not in r.stderr, r.stderr
