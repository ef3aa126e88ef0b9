"""Build the CUDA kernels of csrc/cuda as CPU code running on the emulator in emu.h.

    python tests/cuda_emu/build.py      # builds, then prints the ops it registered

The result registers the ops of csrc/ops.cpp under the namespace `dasp_emu` for the CPU dispatch
key (torch.ops.dasp_emu.dwconv_bn_act(...) on CPU tensors runs the CUDA kernel source), without
touching the real `dasp_kernels` library. Used by the `emu` backend of tests/ops/op_harness.py (run with DASP_CUDA_EMU=1).
"""
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HERE = os.path.dirname(os.path.abspath(__file__))
CUDA_INCLUDES = ("ATen/cuda/CUDAContext.h", "c10/cuda/CUDAException.h", "c10/cuda/CUDAGuard.h")
# kernel<tmpl args><<<grid, block, smem, stream>>>(  ->  emu::launch(kernel<tmpl args>, grid, block, ...)(
LAUNCH = re.compile(r"(\b\w+_kernel)\s*(<[^;{}()]*?>)?\s*<<<(.*?)>>>\s*\(", re.S)


def translate(src):
    for inc in CUDA_INCLUDES:
        src = src.replace(f"#include <{inc}>", "")
    src = LAUNCH.sub(lambda m: f"emu::launch({m.group(1)}{m.group(2) or ''}, {m.group(3)})(", src)
    src = src.replace("TORCH_LIBRARY_IMPL(dasp_kernels, CUDA, m)", "TORCH_LIBRARY_IMPL(dasp_emu, CPU, m)")
    assert "<<<" not in src, "a kernel launch was not translated"
    return src


def schemas():
    ops = open(os.path.join(ROOT, "csrc", "ops.cpp")).read()
    block = ops[ops.index("TORCH_LIBRARY(dasp_kernels, m)"):]
    return "#include <torch/library.h>\n\n" + block.replace("TORCH_LIBRARY(dasp_kernels, m)",
                                                             "TORCH_LIBRARY(dasp_emu, m)")


def write_sources(out_dir):
    cuda_dir = os.path.join(ROOT, "csrc", "cuda")
    os.makedirs(os.path.join(out_dir, "cuda"), exist_ok=True)
    for header in ("checks.h", "se_aten.h"):  # the host-side headers the .cu files include
        with open(os.path.join(ROOT, "csrc", header)) as f:
            text = f.read()
        with open(os.path.join(out_dir, header), "w") as f:
            f.write(text)
    with open(os.path.join(HERE, "emu.h")) as f:
        emu = f.read()
    with open(os.path.join(out_dir, "cuda", "emu.h"), "w") as f:
        f.write(emu)
    sources = []
    for name in sorted(os.listdir(cuda_dir)):
        with open(os.path.join(cuda_dir, name)) as f:
            src = f.read()
        if name.endswith(".cuh"):
            src = translate(src)
            if name == "common.cuh":
                src = src.replace("#include <ATen/ATen.h>", '#include <ATen/ATen.h>\n#include "emu.h"', 1)
            path = os.path.join(out_dir, "cuda", name)
        elif name.endswith(".cu"):
            src = translate(src)
            path = os.path.join(out_dir, "cuda", name[:-3] + ".cpp")
            sources.append(path)
        else:
            continue
        # Only rewrite changed files, so that the JIT build stays incremental.
        if not os.path.exists(path) or open(path).read() != src:
            with open(path, "w") as f:
                f.write(src)
    path = os.path.join(out_dir, "ops_emu.cpp")
    if not os.path.exists(path) or open(path).read() != schemas():
        with open(path, "w") as f:
            f.write(schemas())
    return [path] + sources


_REGISTERED = False


def register_autograd():
    """Fakes and autograd of torch.ops.dasp_emu.*, from the same table as the real ops'
    (dasp_kernels/ops.py): each backward is the emulated _<op>_backward, so tests that
    differentiate an op (tests/ops) run the emulated backward kernels too."""
    global _REGISTERED
    if _REGISTERED:
        return
    from dasp_kernels import ops

    ops.register("dasp_emu")
    _REGISTERED = True


def build(out_dir=None, verbose=False):
    from torch.utils.cpp_extension import load

    out_dir = out_dir or os.environ.get("DASP_CUDA_EMU_DIR", "/tmp/dasp_cuda_emu")
    os.makedirs(out_dir, exist_ok=True)
    sources = write_sources(os.path.join(out_dir, "src"))
    load(name="dasp_cuda_emu", sources=sources, build_directory=out_dir,
         extra_cflags=["-O1", "-std=c++20", "-g0", "-w"], is_python_module=False, verbose=verbose)
    register_autograd()


if __name__ == "__main__":
    build(verbose="-v" in sys.argv)
    import torch

    print([name for name in dir(torch.ops.dasp_emu) if not name.startswith("__")])
