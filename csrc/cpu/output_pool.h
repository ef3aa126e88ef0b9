// Large CPU outputs from a small pool of storages that nothing references any more, so that
// steady-state calls do not pay the page faults of fresh memory (see output_pool.cpp).
#pragma once
#include <ATen/ATen.h>

namespace dasp_kernels::cpu {

// at::empty(sizes, opts.memory_format(fmt)), from the pool when it is 1 MiB to 512 MiB.
at::Tensor pooled_empty(at::IntArrayRef sizes, const at::TensorOptions& opts, at::MemoryFormat fmt);

}  // namespace dasp_kernels::cpu
