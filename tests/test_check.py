import json
import os
import subprocess
import sys

import torch

from dasp_kernels import check


def test_quick_check_passes_on_this_machine(tmp_path):
    out = tmp_path / "check.json"
    proc = subprocess.run([sys.executable, "-m", "dasp_kernels.check", "--quick", "--json", str(out)],
                          capture_output=True, text=True, env={**os.environ}, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "all checks passed" in proc.stdout
    res = json.loads(out.read_text())
    assert res["passed"] and res["environment"]["torch"] == torch.__version__
    tested = {(r["op"], r["backend"], r["dtype"]) for r in res["rows"]}
    for op in check.OPS:
        assert (op, "cpu", "float32") in tested and (op, "cpu", "float64") in tested
    # Without a GPU the CUDA kernels cannot run: that must be said, not passed over.
    if not torch.cuda.is_available():
        assert any(n["what"] == "cuda" for n in res["not_tested"])
        assert "not tested: cuda" in proc.stdout


def _reference_only(monkeypatch):
    monkeypatch.setattr(check, "targets", lambda: ([("reference", "cpu", [torch.float32], False)], []))


def test_a_wrong_kernel_fails_the_check(monkeypatch):
    _reference_only(monkeypatch)

    def off_by_a_little(case, backend, x, params):
        return check._call(case, backend, x, params) * (1 + 1e-3)

    res = check.run(quick=True, call=off_by_a_little, log=lambda *_: None)
    assert not res["passed"]
    assert all(not r["passed"] for r in res["rows"])


def test_a_crashing_kernel_fails_the_check(monkeypatch):
    _reference_only(monkeypatch)

    def crash(case, backend, x, params):
        raise RuntimeError("boom")

    res = check.run(quick=True, call=crash, log=lambda *_: None)
    assert not res["passed"]
    assert "RuntimeError: boom" in res["rows"][0]["failures"][0]["error"]


def test_nothing_to_check_is_not_a_pass(monkeypatch, capsys):
    monkeypatch.setattr(check, "targets", lambda: ([], [("cpu", "extension missing")]))
    assert check.main(["--quick"]) == 1
    out = capsys.readouterr().out
    assert "not tested: cpu: extension missing" in out and "nothing was checked" in out


def test_console_entry_usage():
    from dasp_kernels.__main__ import main

    assert main(["bogus"]) == 2
