// The portable build of the CPU kernels (the compiler's default target), and the run-time choice
// between it and the AVX2 build (cpu_kernels_avx2.cpp).
#include <ATen/Version.h>

#include <string>

#define DASP_ISA base
#define DASP_ISA_NAME "default"
#include "dwconv_bn_relu_kernel.h"
#include "ppm_add_kernel.h"
#include "kernel_table.h"

namespace dasp_kernels::cpu {

namespace {
bool use_avx2() {
#if DASP_CPU_HAVE_AVX2_BUILD
  static const bool ok = [] {
    // ATen's own choice (cpuinfo, lowered by ATEN_CPU_CAPABILITY=default), and the CPU flags the
    // AVX2 build was compiled for.
    const std::string cap = at::get_cpu_capability();
    const bool aten = cap == "AVX2" || cap == "AVX512";
    __builtin_cpu_init();
    return aten && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           __builtin_cpu_supports("f16c");
  }();
  return ok;
#else
  return false;
#endif
}
}  // namespace

template <typename T>
const Kernels<T>& kernels() {
#if DASP_CPU_HAVE_AVX2_BUILD
  static const Kernels<T> k = use_avx2() ? avx2::kernels<T>() : base::kernels<T>();
#else
  static const Kernels<T> k = base::kernels<T>();
#endif
  return k;
}

template const Kernels<float>& kernels<float>();
template const Kernels<double>& kernels<double>();

}  // namespace dasp_kernels::cpu
