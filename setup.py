"""Build dasp_kernels._C: C++ CPU kernels always, CUDA kernels whenever a toolkit is found.

DASP_KERNELS_CUDA=1 forces the CUDA sources on (fails if no toolkit), =0 forces them off.
DASP_SETUP_SKIP_EXT=1 leaves the extension out: .ci/setup.sh installs the package editable that
way once, then builds the extension with `setup.py build_ext --inplace`, which reuses build/ and
recompiles only what changed (pip's editable install compiles every source in a fresh folder).
The toolkit root is found from nvcc itself (`nvcc --dryrun` reports its real bin folder), because
nvcc is often a symlink or wrapper script on PATH and torch would otherwise guess the wrong root
and fail to link libcudart.
"""
import glob
import os
import re
import shutil
import subprocess

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _real_cuda_home():
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        for cand in ("/usr/local/cuda",):
            if os.path.exists(os.path.join(cand, "bin", "nvcc")):
                return os.path.realpath(cand)
        return None
    try:
        out = subprocess.run([nvcc, "--dryrun", "-v", "-c", "x.cu"], capture_output=True,
                             text=True, timeout=60)
        m = re.search(r"^#\$ _HERE_=(.+)$", out.stdout + out.stderr, re.M)
        if m:
            return os.path.realpath(os.path.join(m.group(1).strip(), ".."))
    except (OSError, subprocess.SubprocessError):
        pass
    return os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))


def _missing_header_dirs(cuda_home):
    """A minimal toolkit may lack the cuSPARSE/cuBLAS headers that torch's CUDA headers include;
    the nvidia-* wheels torch depends on ship them. Searched after the toolkit (-idirafter), so
    they only fill gaps and never shadow the toolkit's own headers."""
    if os.path.exists(os.path.join(cuda_home, "include", "cusparse.h")):
        return []
    import importlib.util

    spec = importlib.util.find_spec("nvidia")
    roots = list(spec.submodule_search_locations or []) if spec else []
    found = [os.path.dirname(h) for r in roots
             for h in glob.glob(os.path.join(r, "**", "include", "cusparse.h"), recursive=True)]
    return sorted(set(found))[:1]


def _want_cuda(cuda_home):
    flag = os.environ.get("DASP_KERNELS_CUDA", "auto").lower()
    if flag in ("0", "off", "false", "no"):
        return False
    if flag in ("1", "on", "true", "yes"):
        if cuda_home is None:
            raise RuntimeError("DASP_KERNELS_CUDA=1 but no CUDA toolkit (nvcc) was found")
        return True
    return cuda_home is not None


def extensions():
    cuda_home = _real_cuda_home()
    use_cuda = _want_cuda(cuda_home)
    if use_cuda:
        # cpp_extension reads CUDA_HOME at import time, so set it before importing it.
        os.environ["CUDA_HOME"] = cuda_home
        # No GPU to query at build time: pick a small set of real archs plus PTX for newer ones.
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    # No -std flag: torch's BuildExtension adds the standard its headers need (C++20 since 2.10;
    # its headers use std::strong_ordering), and a -std=c++17 here would override it.
    extra = {"cxx": ["-O3", "-fopenmp"]}
    macros = []  # py_limited_api=True makes torch define Py_LIMITED_API itself
    if use_cuda:
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        extra["nvcc"] = ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]
        for d in _missing_header_dirs(cuda_home):
            extra["cxx"] += ["-idirafter", d]
            extra["nvcc"] += ["-Xcompiler", f"-idirafter,{d}"]
        macros.append(("DASP_WITH_CUDA", None))
        ext = CUDAExtension
    else:
        ext = CppExtension
    # setuptools rebuilds only when a file of `depends` is newer than the built library (ninja then
    # recompiles just the changed sources): the headers, and a record of this configuration, so
    # that switching the CUDA sources on or off rebuilds too.
    headers = sorted(glob.glob("csrc/**/*.h", recursive=True) + glob.glob("csrc/**/*.cuh",
                                                                          recursive=True))
    import torch

    config = _record_config(repr((sources, extra, macros, use_cuda, torch.__version__)))
    return [ext("dasp_kernels._C", sources, extra_compile_args=extra, define_macros=macros,
                extra_link_args=["-fopenmp"], py_limited_api=True,
                depends=headers + [config])], use_cuda


def _record_config(text):
    """build/dasp_ext_config.txt holds `text`; rewritten (so newer) only when it changes."""
    path = os.path.join("build", "dasp_ext_config.txt")
    os.makedirs("build", exist_ok=True)
    try:
        with open(path) as f:
            if f.read() == text:
                return path
    except OSError:
        pass
    with open(path, "w") as f:
        f.write(text)
    return path


def _build_ext_class():
    from torch.utils.cpp_extension import BuildExtension

    class BuildExt(BuildExtension.with_options(use_ninja=True)):
        """torch's BuildExtension: ninja recompiles only the sources that changed. Two additions
        for `build_ext --inplace`: when the library in the source tree is newer than every
        source, header and the build configuration (the extension's `depends`), nothing runs (with
        ninja, torch forces the link and the copy every time); and the library is replaced, not
        overwritten, so that a process that has the old one loaded keeps a valid mapping."""

        def run(self):
            if self.inplace and self.extensions and not any(map(self._stale, self.extensions)):
                for ext in self.extensions:
                    print(f"skipping '{ext.name}' extension (up-to-date)")
                return
            super().run()

        def _stale(self, ext):
            target = os.path.join(ROOT, self.get_ext_filename(ext.name))
            if not os.path.exists(target):
                return True
            built = os.path.getmtime(target)
            return any(os.path.getmtime(f) > built for f in list(ext.sources) + list(ext.depends))

        def copy_file(self, infile, outfile, *args, **kwargs):
            if not str(outfile).endswith(".so"):
                return super().copy_file(infile, outfile, *args, **kwargs)
            tmp = f"{outfile}.tmp{os.getpid()}"
            shutil.copyfile(infile, tmp)
            shutil.copymode(infile, tmp)
            os.replace(tmp, outfile)
            print(f"copying {infile} -> {outfile}")
            return outfile, 1

    return BuildExt


def main():
    if os.environ.get("DASP_SETUP_SKIP_EXT") == "1":
        exts, cmdclass = [], {}
        print("dasp_kernels: extension left out (DASP_SETUP_SKIP_EXT=1)")
    else:
        exts, use_cuda = extensions()  # first: it sets CUDA_HOME, which cpp_extension reads
        cmdclass = {"build_ext": _build_ext_class()}
        print(f"dasp_kernels: building with CUDA sources: {use_cuda}")
    setup(
        name="dasp",
        version="0.1.0",
        description="Fused kernels for the Depthwise Attention Spatial Path of BiSeNet, and the models",
        packages=find_packages(include=["dasp", "dasp.*", "dasp_kernels", "dasp_kernels.*"]),
        python_requires=">=3.10",
        # The extension is compiled against the torch it is built with; these are the releases
        # whose torch.library API (triton_op, register_fake, register_autograd) it uses.
        install_requires=["torch>=2.6,<2.16", "numpy"],
        extras_require={
            "train": ["cityscapesscripts", "tqdm", "pillow"],
            "test": ["pytest", "onnx", "onnxruntime", "onnxscript", "cityscapesscripts", "tqdm",
                     "pillow", "matplotlib", "torchvision", "timm", "openvino"],
            "bench": ["onnx", "onnxruntime", "onnxscript", "matplotlib", "torchvision", "timm",
                      "openvino"],
        },
        ext_modules=exts,
        cmdclass=cmdclass,
        entry_points={"console_scripts": [
            "dasp=dasp.cli:main",
            "dasp-kernels=dasp_kernels.__main__:main",
        ]},
        options={"bdist_wheel": {"py_limited_api": "cp39"}},
    )


if __name__ == "__main__":
    main()
