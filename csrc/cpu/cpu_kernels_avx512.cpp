// The CPU kernels compiled a third time for AVX-512 (F, BW, VL, DQ; x86-64, GCC), chosen at run
// time by cpu_kernels_base.cpp where ATen itself runs its AVX-512 kernels. Same scheme as
// cpu_kernels_avx2.cpp: shared headers first under the default target, then only this file's
// own functions get the wider target. at::vec's 512-bit code lives in at::vec::AVX512.
#include "cpu_kernels.h"

#if DASP_CPU_HAVE_AVX2_BUILD

#include "isa_prelude.h"

#pragma GCC push_options
#pragma GCC diagnostic ignored "-Wpsabi"
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")
// sleef.h declares its 512-bit (and 256-bit) functions only when these are defined, which the
// pragma does not do in C++.
#ifndef __AVX__
#define __AVX__ 1
#define DASP_UNDEF_AVX
#endif
#ifndef __AVX512F__
#define __AVX512F__ 1
#define DASP_UNDEF_AVX512F
#endif
#include <sleef.h>
#ifdef DASP_UNDEF_AVX
#undef __AVX__
#undef DASP_UNDEF_AVX
#endif
#ifdef DASP_UNDEF_AVX512F
#undef __AVX512F__
#undef DASP_UNDEF_AVX512F
#endif
#define CPU_CAPABILITY AVX512
#define CPU_CAPABILITY_AVX512
#define DASP_ISA avx512
#define DASP_ISA_NAME "avx512"
#include "dwconv_bn_relu_kernel.h"
#include "ppm_add_kernel.h"
#include "dasp_stage_kernel.h"
#include "inverted_residual_kernel.h"
#include "kernel_table.h"
#pragma GCC pop_options

#endif  // DASP_CPU_HAVE_AVX2_BUILD
