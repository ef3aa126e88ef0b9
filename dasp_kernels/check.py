"""Verify every kernel of this install on this machine against PyTorch, in one command.

    python -m dasp_kernels.check [--quick] [--bench] [--json FILE]
    dasp-kernels check ...

Runs each op, forward and backward, on every backend and device available, over a fixed matrix of
shapes, strides, paddings, dtypes and memory formats (the paper's shapes and the edge cases), and
compares with the reference ops evaluated in float64. Prints one row per (op, backend, device,
dtype) and exits with status 1 on any failure. What it could not test is listed, with the reason.
"""
import argparse
import json
import os
import platform
import sys
import time

import torch

import dasp_kernels
from dasp_kernels import _backends, timing
from dasp_kernels import cases as op_cases

# Error allowed, relative to the largest reference magnitude, per dtype.
TOLERANCE = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 1e-2, torch.bfloat16: 6e-2}
OPS = ("dwconv_bn_act", "ppm_add", "dasp_stage", "dasp_spatial_path", "inverted_residual")


def cases(quick, interpreter):
    """The fixed matrix (dasp_kernels.cases, the test suite's). `interpreter`: Triton on the CPU
    interpreter, where each program costs ~24 ms, so only small maps."""
    size = "tiny" if interpreter else "quick" if quick else "full"
    return [c for op in OPS for c in op_cases.cases(op, size)]


def _make_inputs(case, gen):
    return op_cases.make_inputs(case, gen)


def _call(case, backend, x, params):
    return op_cases.call(case, backend, x, params)


def _err(out, ref):
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    if ref.numel() == 0:
        return 0.0, 0.0
    abs_err = (out - ref).abs().max().item()
    return abs_err, abs_err / max(ref.abs().max().item(), 1e-30)


def check_case(case, backend, device, dtype, layout, gen, call=_call):
    """Max (abs, rel) error over the forward output and every input gradient."""
    x64, p64 = _make_inputs(case, gen)
    x64 = x64.requires_grad_()
    p64 = [p.requires_grad_() for p in p64]
    ref = _call(case, "reference", x64, p64)
    grad = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
    ref_grads = torch.autograd.grad(ref, [x64, *p64], grad, allow_unused=True) if ref.numel() else None

    x = op_cases.with_layout(x64.detach().to(device, dtype), layout).requires_grad_()
    params = [p.detach().to(device, dtype).requires_grad_() for p in p64]
    out = call(case, backend, x, params)
    if out.shape != ref.shape:
        return float("inf"), float("inf"), f"shape {tuple(out.shape)} != {tuple(ref.shape)}"
    errs = [_err(out, ref)]
    if ref.numel():
        grads = torch.autograd.grad(out, [x, *params], grad.to(device, dtype), allow_unused=True)
        for g, rg in zip(grads, ref_grads):
            if rg is not None:
                errs.append(_err(g if g is not None else torch.zeros_like(rg), rg))
    return max(e[0] for e in errs), max(e[1] for e in errs), None


def targets():
    """(backend, device, dtypes, interpreter) to test, and [(backend, reason)] not tested."""
    status, todo, skipped = _backends.backend_status(), [], []
    gpu = torch.cuda.is_available()
    for b in ("cpu", "cuda", "triton"):
        if status[b] is not None:
            skipped.append((b, status[b]))
            continue
        if b == "cpu":
            todo.append((b, "cpu", [torch.float32, torch.float64], False))
        elif b == "cuda":
            todo.append((b, "cuda", list(TOLERANCE), False))
        elif gpu:
            todo.append((b, "cuda", list(TOLERANCE), False))
        else:
            todo.append((b, "cpu", [torch.float32], True))
            skipped.append(("triton on cuda", "no CUDA device: ran on the CPU interpreter, "
                                              "small shapes and float32 only"))
    if not gpu:
        skipped.append(("cuda device", "torch.cuda.is_available() is False"))
    return todo, skipped


def run(quick=True, bench=False, call=_call, log=print):
    todo, skipped = targets()
    rows = []
    for backend, device, dtypes, interpreter in todo:
        for dtype in dtypes:
            for op in OPS:
                t0 = time.perf_counter()
                mats = [c for c in cases(quick, interpreter) if c["op"] == op]
                # Half precision on big maps only measures rounding: keep them to the small set.
                if dtype in (torch.float16, torch.bfloat16):
                    mats = mats[:6]
                worst_abs = worst_rel = 0.0
                problems, n = [], 0
                gen = torch.Generator().manual_seed(0)
                for case in mats:
                    for layout in ("contiguous", "channels_last", "sliced"):
                        try:
                            a, r, bad = check_case(case, backend, device, dtype, layout, gen, call)
                        except Exception as e:  # a crash is a failure, reported with its case
                            a, r, bad = float("inf"), float("inf"), f"{type(e).__name__}: {e}"
                        n += 1
                        worst_abs, worst_rel = max(worst_abs, a), max(worst_rel, r)
                        if bad or r > TOLERANCE[dtype]:
                            problems.append({"case": {k: v for k, v in case.items()}, "layout": layout,
                                             "rel": r, "error": bad})
                rows.append({"op": op, "backend": backend, "device": device,
                             "dtype": str(dtype).removeprefix("torch."), "cases": n,
                             "max_abs": worst_abs, "max_rel": worst_rel, "tol": TOLERANCE[dtype],
                             "passed": not problems, "failures": problems[:5],
                             "seconds": round(time.perf_counter() - t0, 2)})
                log(_row_text(rows[-1]))
    result = {"rows": rows, "not_tested": [{"what": w, "why": y} for w, y in skipped],
              "passed": all(r["passed"] for r in rows) and bool(rows), "environment": environment()}
    if bench:
        result["bench"] = run_bench(todo, log=log)
    return result


def _row_text(r):
    return (f"{r['op']:<17} {r['backend']:<7} {r['device']:<5} {r['dtype']:<9} {r['cases']:>5} "
            f"{r['max_abs']:>10.2e} {r['max_rel']:>10.2e} {r['tol']:>8.0e}  "
            f"{'pass' if r['passed'] else 'FAIL'}")


HEADER = (f"{'op':<17} {'backend':<7} {'dev':<5} {'dtype':<9} {'cases':>5} {'max abs':>10} "
          f"{'max rel':>10} {'tol':>8}  result")


def _time(fn, device, reps):
    """Median ms of fn() over `reps` calls (dasp_kernels.timing: CUDA events on a GPU)."""
    return timing.measure(fn, device=device, warmup=1, min_reps=reps, max_reps=reps,
                          min_time_s=0.0).median_ms


def run_bench(todo, log=print):
    """Forward time of each op at the paper's stage shapes vs the reference on the same device."""
    out = []
    paper = [c for c in cases(False, False) if c["shape"][2] >= 256]  # the paper's stage inputs
    for backend, device, _, interpreter in todo:
        if interpreter:
            continue
        for case in paper:
            gen = torch.Generator().manual_seed(0)
            x, params = _make_inputs(case, gen)
            x, params = x.to(device, torch.float32), [p.to(device, torch.float32) for p in params]
            if device == "cpu" and case["op"] != "dwconv_bn_act":
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.no_grad():
                ours = _time(lambda: _call(case, backend, x, params), device, 5)
                ref = _time(lambda: _call(case, "reference", x, params), device, 5)
            row = {"op": case["op"], "shape": list(case["shape"]), "backend": backend,
                   "device": device, "ms": ours, "reference_ms": ref, "speedup": ref / ours}
            out.append(row)
            log(f"bench {row['op']:<17} {str(tuple(row['shape'])):<20} {backend:<7} {device:<5} "
                f"{ours:8.3f} ms  reference {ref:8.3f} ms  {row['speedup']:5.2f}x")
    return out


def environment():
    env = {"python": platform.python_version(), "torch": torch.__version__,
           "dasp_kernels": dasp_kernels.__version__, "platform": platform.platform(),
           "cpu_threads": torch.get_num_threads(), "backends": dasp_kernels.backend_status(),
           "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET")}
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    if torch.cuda.is_available():
        env["cuda_runtime"] = torch.version.cuda
        env["gpu"] = torch.cuda.get_device_name()
        try:
            import subprocess

            env["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            env["driver"] = None
    return env


def main(argv=None):
    ap = argparse.ArgumentParser(prog="dasp-kernels check", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small matrix (under a minute on a CPU)")
    ap.add_argument("--bench", action="store_true", help="also time each op against the reference")
    ap.add_argument("--json", metavar="FILE", help="write results and environment as JSON")
    args = ap.parse_args(argv)
    print(HEADER)
    res = run(quick=args.quick, bench=args.bench)
    if not res["rows"]:
        print("no compiled or Triton backend could run here: nothing was checked")
    for item in res["not_tested"]:
        print(f"not tested: {item['what']}: {item['why']}")
    for r in res["rows"]:
        for f in r["failures"]:
            print(f"FAIL {r['op']} {r['backend']} {r['dtype']} {f['layout']} {f['case']}: "
                  f"rel {f['rel']:.2e} {f['error'] or ''}")
    print("all checks passed" if res["passed"] else "SOME CHECKS FAILED")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=2, default=str)
    return 0 if res["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
