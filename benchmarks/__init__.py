"""Benchmarks of dasp_kernels and the models (docs/benchmarks.md)."""
import logging


class _NoCudaRuntimeNote(logging.Filter):
    """torch.compile's CPU code generation imports torch.utils.cpp_extension, which logs "No CUDA
    runtime is found, using CUDA_HOME=..." on every machine with a CUDA toolkit but no GPU, once
    per process. Nothing here builds CUDA code, so that one message is dropped; the logger's
    other messages pass."""

    def filter(self, record):
        return not record.getMessage().startswith("No CUDA runtime is found")


logging.getLogger("torch.utils.cpp_extension").addFilter(_NoCudaRuntimeNote())
