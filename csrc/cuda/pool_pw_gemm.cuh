// The fused forward kernel behind ppm_add and dasp_stage: a tiled GEMM over channels whose
// right-hand operands are produced on the fly in shared memory, never in global memory.
//
//   ppm_add:    out[n, co, p] = sum_ci ppm_w[co, ci] * pool(x)[n, ci, p] + residual[n, co, p]
//   dasp_stage: out[n, co, p] = sum_ci ppm_w[co, ci] * pool(x)[n, ci, p]
//                             + relu(pw_scale[co] * sum_ci pw_w[co, ci] * dw(x)[n, ci, p] + pw_shift[co])
//   with dw(x) = relu(depthwise_conv(x, dw_w, stride 2, padding K / 2) * dw_scale + dw_shift)
//   and pool = 2x2 stride-2 ceil-mode max pooling. Both maps are ceil(H/2) x ceil(W/2).
//
// One block of 256 threads computes a 64 (output channels) x 64 (output positions, flattened over
// n, oh, ow) tile, looping over input channels 16 at a time: per step it stages 16 x 64 weights and
// computes the 16 x 64 pooled (and depthwise) values into shared memory, then every thread updates
// a 4 x 4 register tile. Positions and channels of a thread's tile are 16 apart so that shared
// reads are broadcast / conflict-free and the final stores are coalesced (along positions in NCHW,
// along channels in NHWC).
#pragma once
#include "common.cuh"

namespace dasp_kernels {
namespace cuda {

constexpr int kGemmBM = 64;  // output channels per block
constexpr int kGemmBN = 64;  // output positions per block
constexpr int kGemmBK = 16;  // input channels per step

template <typename scalar_t>
struct StageArgs {
  const scalar_t* x;         // [N, Cin, H, W], contiguous in NCHW or NHWC
  const scalar_t* ppm_w;     // [Cout, Cin]
  const scalar_t* residual;  // [N, Cout, Ho, Wo] like x (ppm_add only)
  const scalar_t* dw_w;      // [Cin, K * K] (dasp_stage only, as the next four)
  const scalar_t* dw_scale;  // [Cin]
  const scalar_t* dw_shift;  // [Cin]
  const scalar_t* pw_w;      // [Cout, Cin]
  const scalar_t* pw_scale;  // [Cout]
  const scalar_t* pw_shift;  // [Cout]
  scalar_t* out;             // [N, Cout, Ho, Wo] like x
  int64_t N, Cin, H, W, Cout, Ho, Wo;
};

// PW = false: ppm_add. PW = true: dasp_stage with a KxK depthwise branch (K odd).
template <typename scalar_t, bool CL, bool PW, int K>
__global__ void __launch_bounds__(kThreads) pool_pw_gemm_kernel(const StageArgs<scalar_t> a) {
  using acc_t = acc_type<scalar_t>;
  constexpr int BM = kGemmBM, BN = kGemmBN, BK = kGemmBK;
  constexpr int PAD = K / 2;
  __shared__ acc_t Aq[BK][BM];            // ppm weights, Aq[k][m] = ppm_w[co0 + m, ci0 + k]
  __shared__ acc_t Bq[BK][BN];            // pooled x
  __shared__ acc_t Ad[PW ? BK : 1][BM];   // pointwise weights
  __shared__ acc_t Bd[PW ? BK : 1][BN];   // depthwise branch

  const int tid = threadIdx.x;
  const int64_t Cin = a.Cin, H = a.H, W = a.W, Cout = a.Cout, Ho = a.Ho, Wo = a.Wo;
  const int64_t hw_out = Ho * Wo;
  const int64_t P = a.N * hw_out;
  const int64_t p0 = (int64_t)blockIdx.x * BN;
  const int64_t co0 = (int64_t)blockIdx.y * BM;

  // Producer mapping, entry e = tid + 256 * r of the 16 x 64 B tile: NCHW walks positions fastest
  // (pb = tid % 64, kb = tid / 64 + 4 r), NHWC channels fastest (kb = tid % 16, pb = tid / 16 + 16 r).
  // The positions never change over the channel loop, so decompose them once.
  int kb_of[4], pb_of[4];
  int64_t n_of[4], oh_of[4], ow_of[4];
  bool ok_of[4];
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    kb_of[r] = CL ? tid % BK : tid / BN + 4 * r;
    pb_of[r] = CL ? tid / BK + 16 * r : tid % BN;
    const int64_t p = p0 + pb_of[r];
    ok_of[r] = p < P;
    const int64_t pp = ok_of[r] ? p : 0;
    n_of[r] = pp / hw_out;
    const int64_t rem = pp % hw_out;
    oh_of[r] = rem / Wo;
    ow_of[r] = rem % Wo;
  }

  // Consumer mapping: this thread's outputs are channels co0 + ml + 16 i, positions p0 + pl + 16 j.
  const int pl = CL ? tid / 16 : tid % 16;
  const int ml = CL ? tid % 16 : tid / 16;

  acc_t accq[4][4], accd[4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      accq[i][j] = 0;
      accd[i][j] = 0;
    }
  }

  const int64_t plane_stride = CL ? 1 : H * W;  // between channels
  const int64_t hs = CL ? W * Cin : W, ws = CL ? Cin : 1;

  for (int64_t ci0 = 0; ci0 < Cin; ci0 += BK) {
    // Weights: consecutive threads read consecutive input channels of one output channel.
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int k = tid % BK, m = tid / BK + 16 * r;
      const int64_t co = co0 + m, ci = ci0 + k;
      const bool in = co < Cout && ci < Cin;
      Aq[k][m] = in ? static_cast<acc_t>(a.ppm_w[co * Cin + ci]) : acc_t(0);
      if constexpr (PW) Ad[k][m] = in ? static_cast<acc_t>(a.pw_w[co * Cin + ci]) : acc_t(0);
    }
    // Pooled and depthwise values of this step's channels at this block's positions.
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int kb = kb_of[r], pb = pb_of[r];
      const int64_t ci = ci0 + kb;
      acc_t q = 0, d = 0;
      if (ok_of[r] && ci < Cin) {
        const int64_t n = n_of[r], oh = oh_of[r], ow = ow_of[r];
        const scalar_t* base = a.x + (CL ? n * H * W * Cin : n * Cin * H * W) + ci * plane_stride;
        q = pool2x2(base, hs, ws, H, W, oh, ow, nullptr);
        if constexpr (PW) {
          const int64_t ih0 = 2 * oh - PAD, iw0 = 2 * ow - PAD;
          const scalar_t* wc = a.dw_w + ci * K * K;
          acc_t s = 0;
          for_each_tap<K>(ih0, iw0, H, W, [&](int kh, int kw, int64_t ih, int64_t iw) {
            s += static_cast<acc_t>(base[ih * hs + iw * ws]) * static_cast<acc_t>(wc[kh * K + kw]);
          });
          d = relu_nan(s * static_cast<acc_t>(a.dw_scale[ci]) +
                       static_cast<acc_t>(a.dw_shift[ci]));
        }
      }
      Bq[kb][pb] = q;
      if constexpr (PW) Bd[kb][pb] = d;
    }
    __syncthreads();

#pragma unroll
    for (int k = 0; k < BK; ++k) {
      acc_t av[4], bv[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) av[i] = Aq[k][ml + 16 * i];
#pragma unroll
      for (int j = 0; j < 4; ++j) bv[j] = Bq[k][pl + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int j = 0; j < 4; ++j) accq[i][j] += av[i] * bv[j];
      }
      if constexpr (PW) {
#pragma unroll
        for (int i = 0; i < 4; ++i) av[i] = Ad[k][ml + 16 * i];
#pragma unroll
        for (int j = 0; j < 4; ++j) bv[j] = Bd[k][pl + 16 * j];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
#pragma unroll
          for (int j = 0; j < 4; ++j) accd[i][j] += av[i] * bv[j];
        }
      }
    }
    __syncthreads();
  }

#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const int64_t p = p0 + pl + 16 * j;
    if (p >= P) continue;
    const int64_t n = p / hw_out, hw = p % hw_out;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int64_t co = co0 + ml + 16 * i;
      if (co >= Cout) continue;
      const int64_t o = CL ? p * Cout + co : (n * Cout + co) * hw_out + hw;
      acc_t v = accq[i][j];
      if constexpr (PW) {
        v += relu_nan(accd[i][j] * static_cast<acc_t>(a.pw_scale[co]) +
                      static_cast<acc_t>(a.pw_shift[co]));
      } else {
        v += static_cast<acc_t>(a.residual[o]);
      }
      a.out[o] = static_cast<scalar_t>(v);
    }
  }
}

template <typename scalar_t, bool PW, int K>
void launch_pool_pw_gemm(const StageArgs<scalar_t>& args, bool cl) {
  const int64_t P = args.N * args.Ho * args.Wo;
  const int64_t gx = ceil_div(P, kGemmBN), gy = ceil_div(args.Cout, kGemmBM);
  TORCH_CHECK(gx <= INT32_MAX && gy <= 65535, "input too large for the CUDA kernel (", P,
              " output positions, ", args.Cout, " output channels)");
  const dim3 grid(static_cast<unsigned int>(gx), static_cast<unsigned int>(gy));
  auto stream = at::cuda::getCurrentCUDAStream();
  if (cl) {
    pool_pw_gemm_kernel<scalar_t, true, PW, K><<<grid, kThreads, 0, stream>>>(args);
  } else {
    pool_pw_gemm_kernel<scalar_t, false, PW, K><<<grid, kThreads, 0, stream>>>(args);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace cuda
}  // namespace dasp_kernels
