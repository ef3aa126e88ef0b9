"""Peak resident memory of one forward pass of a real model, per provider (issue 19).

    python -m benchmarks.peak_memory --workloads tv/mobilenet_v2 --size 1x3x512x1024 \
        [--providers eager fuse onnxruntime] [--threads 2]

Each (workload, provider) runs in a fresh process: build the model (and the ONNX Runtime session
from a file exported beforehand) and note the resident memory (VmRSS, "base"); run one forward
(fuse()'s per-shape kernel choices time both candidates in it); reset the kernel's peak-RSS mark
(`echo 5 > /proc/self/clear_refs`); run a second forward and read its peak (VmHWM).
"peak over base MB" = peak - base: what a steady-state forward holds at its worst, together with
what the first call left cached (our output pool, ORT's arena), the figure the fused
inverted-residual block is meant to lower by about its wide tensors; "of which held before" =
the RSS just before the second forward, minus base. Linux only.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch

PROVIDERS = ("eager", "fuse", "onnxruntime")

CHILD = r"""
import json, os, sys, torch
workload, provider, size, threads, onnx_path = sys.argv[1:6]
torch.set_num_threads(int(threads))
from benchmarks import suite
shape = suite.parse_size(size)
case = suite.make_case(workload, shape)
x = case.inputs[0]

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB -> MB

if provider == "onnxruntime":
    import onnxruntime as ort
    sess = ort.InferenceSession(onnx_path, suite.ort_session_options(int(threads)),
                                providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: x.numpy()}
    run = lambda: sess.run(None, feed)
elif provider == "fuse":
    import dasp_kernels
    model = dasp_kernels.fuse(case.module)
    run = lambda: model(x)
else:
    model = case.module
    run = lambda: model(x)
base = status("VmRSS")
with torch.no_grad():
    run()  # the first call: fuse()'s per-shape kernel choices time both candidates in it
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    before = status("VmRSS")
    run()
print(json.dumps({"base_mb": base, "before_mb": before, "peak_mb": status("VmHWM")}))
"""


def export(workload, size, path):
    from benchmarks import suite

    case = suite.make_case(workload, suite.parse_size(size))
    data, _ = suite.export_onnx(case.module, case.inputs)
    with open(path, "wb") as f:
        f.write(data)


def measure(workload, provider, size, threads, onnx_path):
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run([sys.executable, "-c", CHILD, workload, provider, size, str(threads),
                          onnx_path], capture_output=True, text=True, env=env, timeout=900)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr else "failed"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workloads", nargs="+", default=["tv/mobilenet_v2"])
    ap.add_argument("--size", default="1x3x512x1024")
    ap.add_argument("--providers", nargs="+", default=list(PROVIDERS), choices=PROVIDERS)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    from benchmarks import harness

    env = harness.environment()
    print(f"size {args.size}, threads {args.threads}, torch {env['torch_version']}, "
          f"onnxruntime {env['onnxruntime_version']}, cpu_isa {env['dasp_cpu_isa']}, "
          f"commit {env['git_commit']}")
    print(f"{'workload':<32} {'provider':<12} {'peak over base MB':>17} "
          f"{'of which held before':>20} {'base MB':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for workload in args.workloads:
            onnx_path = os.path.join(tmp, "model.onnx")
            if "onnxruntime" in args.providers:
                export(workload, args.size, onnx_path)
            for provider in args.providers:
                r = measure(workload, provider, args.size, args.threads, onnx_path)
                if "error" in r:
                    print(f"{workload:<32} {provider:<12} failed: {r['error']}")
                    continue
                print(f"{workload:<32} {provider:<12} {r['peak_mb'] - r['base_mb']:>17.1f} "
                      f"{r['before_mb'] - r['base_mb']:>20.1f} {r['base_mb']:>8.1f}")


if __name__ == "__main__":
    main()
