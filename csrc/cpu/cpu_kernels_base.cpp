// The portable build of the CPU kernels (the compiler's default target), and the run-time choice
// between it and the AVX2 and AVX-512 builds (cpu_kernels_avx2.cpp, cpu_kernels_avx512.cpp).
#include <ATen/Version.h>

#include <string>

#define DASP_ISA base
#define DASP_ISA_NAME "default"
#include "dwconv_bn_relu_kernel.h"
#include "ppm_add_kernel.h"
#include "dasp_stage_kernel.h"
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

// A build may leave an entry null where the portable build's is the one to run (the stage's
// float64 rows, see dasp_stage_kernel.h).
template <typename T>
const Kernels<T>& kernels() {
  static const Kernels<T> k = [] {
    Kernels<T> t = table_of<T>(pick_isa());
    if (t.stage.row == nullptr) t.stage = base::kernels<T>().stage;
    return t;
  }();
  return k;
}

template const Kernels<float>& kernels<float>();
template const Kernels<double>& kernels<double>();

}  // namespace dasp_kernels::cpu
