// The table of one instruction set's kernels (see cpu_kernels.h). Included by exactly one
// translation unit per instruction set, after dwconv_bn_relu_kernel.h, ppm_add_kernel.h,
// dasp_stage_kernel.h and inverted_residual_kernel.h.
#ifndef DASP_ISA
#error "define DASP_ISA before including kernel_table.h"
#endif

namespace dasp_kernels::cpu::DASP_ISA {
namespace dw {

// K (1..9) and S are template arguments of the NCHW kernels so that the tap loops unroll.

#define DASP_DW_SWITCH(FN, T, p, a, t0, t1)                                      \
  switch ((p).K * 2 + (p).S - 1) {                                               \
    case 2: return FN<T, 1, 1>(p, a, t0, t1);                                    \
    case 3: return FN<T, 1, 2>(p, a, t0, t1);                                    \
    case 4: return FN<T, 2, 1>(p, a, t0, t1);                                    \
    case 5: return FN<T, 2, 2>(p, a, t0, t1);                                    \
    case 6: return FN<T, 3, 1>(p, a, t0, t1);                                    \
    case 7: return FN<T, 3, 2>(p, a, t0, t1);                                    \
    case 8: return FN<T, 4, 1>(p, a, t0, t1);                                    \
    case 9: return FN<T, 4, 2>(p, a, t0, t1);                                    \
    case 10: return FN<T, 5, 1>(p, a, t0, t1);                                   \
    case 11: return FN<T, 5, 2>(p, a, t0, t1);                                   \
    case 12: return FN<T, 6, 1>(p, a, t0, t1);                                   \
    case 13: return FN<T, 6, 2>(p, a, t0, t1);                                   \
    case 14: return FN<T, 7, 1>(p, a, t0, t1);                                   \
    case 15: return FN<T, 7, 2>(p, a, t0, t1);                                   \
    case 16: return FN<T, 8, 1>(p, a, t0, t1);                                   \
    case 17: return FN<T, 8, 2>(p, a, t0, t1);                                   \
    case 18: return FN<T, 9, 1>(p, a, t0, t1);                                   \
    case 19: return FN<T, 9, 2>(p, a, t0, t1);                                   \
    default: return;                                                             \
  }

template <typename T>
void fwd_nchw_any(const DwShape& p, const DwArgs<T>& a, int64_t t0, int64_t t1) {
  DASP_DW_SWITCH(fwd_nchw, T, p, a, t0, t1)
}

template <typename T>
void fwd_nhwc_planes_any(const DwShape& p, const DwArgs<T>& a, int64_t t0, int64_t t1) {
  DASP_DW_SWITCH(fwd_nhwc_planes, T, p, a, t0, t1)
}

template <typename T>
void bwd_nchw_any(const DwShape& p, const DwArgs<T>& a, int64_t t0, int64_t t1) {
  DASP_DW_SWITCH(bwd_nchw, T, p, a, t0, t1)
}
#undef DASP_DW_SWITCH

template <typename T>
void bwd_nhwc_any(const DwShape& p, const DwArgs<T>& a, int64_t t0, int64_t t1) {
  switch (p.K) {
    case 1: return bwd_nhwc<T, 1>(p, a, t0, t1);
    case 2: return bwd_nhwc<T, 2>(p, a, t0, t1);
    case 3: return bwd_nhwc<T, 3>(p, a, t0, t1);
    case 4: return bwd_nhwc<T, 4>(p, a, t0, t1);
    case 5: return bwd_nhwc<T, 5>(p, a, t0, t1);
    case 6: return bwd_nhwc<T, 6>(p, a, t0, t1);
    case 7: return bwd_nhwc<T, 7>(p, a, t0, t1);
    case 8: return bwd_nhwc<T, 8>(p, a, t0, t1);
    case 9: return bwd_nhwc<T, 9>(p, a, t0, t1);
    default: return;
  }
}

}  // namespace dw

template <typename T>
Kernels<T> kernels() {
  Kernels<T> k;
  k.isa = DASP_ISA_NAME;
  k.vec_size = at::vec::Vectorized<T>::size();
  k.dw_fwd_nchw = &dw::fwd_nchw_any<T>;
  k.dw_fwd_nhwc = &dw::fwd_nhwc<T>;
  k.dw_fwd_nhwc_planes = &dw::fwd_nhwc_planes_any<T>;
  k.dw_fwd_nchw_blocked = &dw::fwd_nchw_blocked<T>;
  if constexpr (std::is_same_v<T, float>) {
    k.dw_fwd_nhwc_bf16 = &dw::fwd_nhwc_bf16;
    k.dw_bf16_ok = &dw::nhwc_bf16_ok;
  } else {
    k.dw_fwd_nhwc_bf16 = nullptr;
    k.dw_bf16_ok = nullptr;
  }
  k.dw_rgb_one_pass = util::kHaveEvery3 && std::is_same_v<T, float>;
  k.dw_bwd_nchw = &dw::bwd_nchw_any<T>;
  k.dw_bwd_nhwc = &dw::bwd_nhwc_any<T>;
  k.ppm_fwd_nchw = &ppm::fwd_nchw<T>;
  k.ppm_fwd_nhwc = &ppm::fwd_nhwc<T>;
  k.ppm_bwd_nchw = &ppm::bwd_nchw<T>;
  k.ppm_bwd_nhwc = &ppm::bwd_nhwc<T>;
  k.stage = stage::kernel<T>();
  k.stage_pixels = k.stage;
  if constexpr (std::is_same_v<T, float>) {
    k.ir_fwd = &ir::fwd_vec;
    k.ir_block = ir::kNR;
    k.ir_lanes = ir::kV;
    k.ir_step = ir::kMR;
  } else {
    // float64 stays with the portable build's loops (null here in the wide builds): compiled for
    // AVX2 they would be contracted into FMAs and give other bits in each build.
    if constexpr (stage::kWideX86Build)
      k.ir_fwd = nullptr;
    else
      k.ir_fwd = &ir::fwd_scalar<T>;
    k.ir_block = 1;
    k.ir_lanes = 1;
    k.ir_step = 1;
  }
  k.fma_loop = &util::fma_loop<T>;
  k.fma_per_iter = util::kFmaChains;
  return k;
}

template Kernels<float> kernels<float>();
template Kernels<double> kernels<double>();

}  // namespace dasp_kernels::cpu::DASP_ISA
