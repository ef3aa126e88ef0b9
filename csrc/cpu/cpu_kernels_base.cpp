// The portable build of the CPU kernels (the compiler's default target), and the run-time choice
// between it and the AVX2 and AVX-512 builds (cpu_kernels_avx2.cpp, cpu_kernels_avx512.cpp).
#include <ATen/Version.h>

#include <string>

#define DASP_ISA base
#define DASP_ISA_NAME "default"
#include "dwconv_bn_relu_kernel.h"
#include "ppm_add_kernel.h"
#include "dasp_stage_kernel.h"
#include "inverted_residual_kernel.h"
#include "kernel_table.h"

namespace dasp_kernels::cpu {

namespace {
enum class Isa { base, avx2, avx512 };

Isa pick_isa() {
#if DASP_CPU_HAVE_AVX2_BUILD
  // ATen's own choice, and the CPU flags each build was compiled for.
  const std::string cap = at::get_cpu_capability();
  __builtin_cpu_init();
  if (cap == "AVX512" && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
    return Isa::avx512;
  if ((cap == "AVX2" || cap == "AVX512") && __builtin_cpu_supports("avx2") &&
      __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
    return Isa::avx2;
#endif
  return Isa::base;
}

template <typename T>
Kernels<T> table_of(Isa isa) {
  switch (isa) {
#if DASP_CPU_HAVE_AVX2_BUILD
    case Isa::avx512: return avx512::kernels<T>();
    case Isa::avx2: return avx2::kernels<T>();
#endif
    default: return base::kernels<T>();
  }
}
}  // namespace

// A build may leave an entry null where the portable build's is the one to run (the stage's and
// inverted_residual's float64 loops, see dasp_stage_kernel.h).
//
// The AVX-512 process runs the AVX2 build's stage kernel on inputs with fewer channels than an
// AVX-512 vector holds (the 3-channel image of stage 1): measured slower in the AVX-512 build
// there, CPU time of one dasp_stage call on 1x3x1024x1024, 2 threads, channels_last: 10.4 ms vs
// 8.8-9.1 ms with AVX2 (NCHW: 9.4-9.9 vs 9.3-9.9), while the 64-channel stages gain
// (1x64x512x512 channels_last: 16.6-17.4 ms vs 19.0-19.8; NCHW, 1 thread: 20.8-21.3 vs
// 22.1-22.6). benchmarks/results/issue17_cpu_isa/latest.md: commands and numbers.
template <typename T>
const Kernels<T>& kernels() {
  static const Kernels<T> k = [] {
    const Isa isa = pick_isa();
    Kernels<T> t = table_of<T>(isa);
    if (isa == Isa::avx512) t.stage_pixels = table_of<T>(Isa::avx2).stage;
    if (t.stage.row == nullptr) t.stage = base::kernels<T>().stage;
    if (t.stage_pixels.row == nullptr) t.stage_pixels = base::kernels<T>().stage;
    if (t.ir_fwd == nullptr) {
      const Kernels<T> b = base::kernels<T>();
      t.ir_fwd = b.ir_fwd;
      t.ir_block = b.ir_block;
      t.ir_lanes = b.ir_lanes;
      t.ir_step = b.ir_step;
    }
    return t;
  }();
  return k;
}

template const Kernels<float>& kernels<float>();
template const Kernels<double>& kernels<double>();

}  // namespace dasp_kernels::cpu
