// The CPU kernels compiled a second time for AVX2 + FMA (x86-64, GCC), chosen at run time by
// cpu_kernels_base.cpp. Only this file's own functions get the AVX2 target: every header that
// other translation units also include is included first, under the default target, so no
// shared inline function (whose single copy the linker keeps) can end up holding AVX2 code.
// at::vec's AVX2 code lives in its own namespace (at::vec::AVX2), as in ATen's own kernels.
#include "cpu_kernels.h"

#if DASP_CPU_HAVE_AVX2_BUILD

#include "isa_prelude.h"

#pragma GCC push_options
// at::vec's bfloat16 helpers hold lambdas on __m256 that GCC warns about; unused here.
#pragma GCC diagnostic ignored "-Wpsabi"
#pragma GCC target("avx2,fma,f16c")
// sleef.h declares its 256-bit functions (declarations only) when __AVX__ is defined, which the
// pragma does not do in C++.
#ifndef __AVX__
#define __AVX__ 1
#define DASP_UNDEF_AVX
#endif
#include <sleef.h>
#ifdef DASP_UNDEF_AVX
#undef __AVX__
#undef DASP_UNDEF_AVX
#endif
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#define DASP_ISA avx2
#define DASP_ISA_NAME "avx2"
#include "dwconv_bn_relu_kernel.h"
#include "ppm_add_kernel.h"
#include "dasp_stage_kernel.h"
#include "inverted_residual_kernel.h"
#include "kernel_table.h"
#pragma GCC pop_options

#endif  // DASP_CPU_HAVE_AVX2_BUILD
