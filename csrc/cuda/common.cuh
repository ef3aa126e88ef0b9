// Helpers shared by the CUDA kernels of csrc/cuda/*.cu.
//
// Every kernel computes on tensors made contiguous in x.suggest_memory_format(): NCHW, or NHWC
// (channels_last). Offsets are then computed from the sizes alone (int64), never from the strides,
// which is also right for size-1 dimensions whose strides are arbitrary.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <cstdint>
#include <tuple>
#include <type_traits>

#include "../checks.h"

namespace dasp_kernels {
namespace cuda {

// float for float16/bfloat16/float32, double for float64.
template <typename T>
using acc_type = at::opmath_type<T>;

constexpr int kThreads = 256;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Blocks for a grid-stride loop over n items (kernels loop, so capping the grid is safe).
inline unsigned int grid_for(int64_t n, int threads = kThreads) {
  return static_cast<unsigned int>(std::max<int64_t>(1, std::min<int64_t>(ceil_div(n, threads), 1 << 20)));
}

inline bool is_channels_last(const at::Tensor& x) {
  return x.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
}

inline at::ScalarType acc_scalar_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

inline void check_cuda_dtype(const char* op, const at::Tensor& x) {
  check_backend_dtype(op, "cuda", x, {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16});
}

// Calls f(std::integral_constant<int, K>{}) for the runtime kernel size k in 1..7.
template <typename F>
void dispatch_k(const char* op, int64_t k, F&& f) {
  switch (k) {
    case 1: f(std::integral_constant<int, 1>{}); break;
    case 2: f(std::integral_constant<int, 2>{}); break;
    case 3: f(std::integral_constant<int, 3>{}); break;
    case 4: f(std::integral_constant<int, 4>{}); break;
    case 5: f(std::integral_constant<int, 5>{}); break;
    case 6: f(std::integral_constant<int, 6>{}); break;
    case 7: f(std::integral_constant<int, 7>{}); break;
    default: TORCH_CHECK(false, op, ": expected kernel size 1 <= K <= ", kMaxK, ", got K = ", k);
  }
}

// Offset of element (n, c, h, w) of a [N, C, H, W] tensor contiguous in NCHW or NHWC.
template <bool CL>
__device__ __forceinline__ int64_t offset4(int64_t n, int64_t c, int64_t h, int64_t w, int64_t C,
                                           int64_t H, int64_t W) {
  return CL ? ((n * H + h) * W + w) * C + c : ((n * C + c) * H + h) * W + w;
}

// Inverse of offset4: the (n, c, h, w) of the element at linear offset e.
template <bool CL>
__device__ __forceinline__ void unravel4(int64_t e, int64_t C, int64_t H, int64_t W, int64_t& n,
                                         int64_t& c, int64_t& h, int64_t& w) {
  if (CL) {
    c = e % C;
    e /= C;
    w = e % W;
    e /= W;
    h = e % H;
    n = e / H;
  } else {
    w = e % W;
    e /= W;
    h = e % H;
    e /= H;
    c = e % C;
    n = e / C;
  }
}

template <typename T>
__device__ __forceinline__ bool is_nan(T v) {
  return v != v;
}

// torch.relu: NaN stays NaN.
template <typename T>
__device__ __forceinline__ T relu_nan(T v) {
  return v < T(0) ? T(0) : v;
}

// Calls f(kh, kw, ih, iw) for every tap (kh, kw) of the K x K window whose top-left input is
// (ih0, iw0) and that lies inside the H x W plane, row by row: the summation order of the
// depthwise kernels that use it.
template <int K, typename F>
__device__ __forceinline__ void for_each_tap(int64_t ih0, int64_t iw0, int64_t H, int64_t W,
                                             F&& f) {
#pragma unroll
  for (int kh = 0; kh < K; ++kh) {
    const int64_t ih = ih0 + kh;
    if (ih < 0 || ih >= H) continue;
#pragma unroll
    for (int kw = 0; kw < K; ++kw) {
      const int64_t iw = iw0 + kw;
      if (iw < 0 || iw >= W) continue;
      f(kh, kw, ih, iw);
    }
  }
}

// for_each_tap with the taps `dil` apart: tap (kh, kw) reads (ih0 + kh * dil, iw0 + kw * dil).
template <int K, typename F>
__device__ __forceinline__ void for_each_tap_dilated(int64_t ih0, int64_t iw0, int dil, int64_t H,
                                                     int64_t W, F&& f) {
#pragma unroll
  for (int kh = 0; kh < K; ++kh) {
    const int64_t ih = ih0 + (int64_t)kh * dil;
    if (ih < 0 || ih >= H) continue;
#pragma unroll
    for (int kw = 0; kw < K; ++kw) {
      const int64_t iw = iw0 + (int64_t)kw * dil;
      if (iw < 0 || iw >= W) continue;
      f(kh, kw, ih, iw);
    }
  }
}

// Max of the 2x2, stride-2, ceil-mode pooling window of output (oh, ow) in one (n, c) plane whose
// element (h, w) is at base[h * hs + w * ws]; *arg gets the flat h * W + w of the chosen element.
// Same scan and rule as PyTorch's max_pool2d (row by row; `v > max || isnan(v)`), so ties pick the
// first maximum and a NaN wins (the last NaN, as in PyTorch).
template <typename scalar_t>
__device__ __forceinline__ acc_type<scalar_t> pool2x2(const scalar_t* __restrict__ base, int64_t hs,
                                                      int64_t ws, int64_t H, int64_t W, int64_t oh,
                                                      int64_t ow, int64_t* arg) {
  using acc_t = acc_type<scalar_t>;
  const int64_t h0 = 2 * oh, w0 = 2 * ow;
  const int64_t h1 = std::min<int64_t>(h0 + 2, H), w1 = std::min<int64_t>(w0 + 2, W);
  acc_t m = -std::numeric_limits<acc_t>::infinity();
  int64_t best = h0 * W + w0;
  for (int64_t h = h0; h < h1; ++h) {
    for (int64_t w = w0; w < w1; ++w) {
      const acc_t v = static_cast<acc_t>(base[h * hs + w * ws]);
      if (v > m || is_nan(v)) {
        m = v;
        best = h * W + w;
      }
    }
  }
  if (arg != nullptr) *arg = best;
  return m;
}

// Host entry points shared between the .cu files (the first three are the registered kernels).
at::Tensor dwconv_bn_act_cuda(const at::Tensor& x, const at::Tensor& weight,
                              const at::Tensor& scale, const at::Tensor& shift, int64_t stride,
                              at::IntArrayRef padding, int64_t dilation, c10::string_view act,
                              double alpha, double beta);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> dwconv_bn_act_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
    const at::Tensor& scale, const at::Tensor& shift, int64_t stride, at::IntArrayRef padding,
    int64_t dilation, c10::string_view act, double alpha, double beta);
std::tuple<at::Tensor, at::Tensor> ppm_add_backward_cuda(const at::Tensor& grad_out,
                                                         const at::Tensor& x,
                                                         const at::Tensor& weight);

// out[n, co, h, w] = sum_ci w2d[co, ci] * in[n, ci, h, w]; `in` contiguous in NCHW or NHWC (cl),
// the result likewise.
at::Tensor channel_mix(const at::Tensor& w2d, const at::Tensor& in, bool cl);
// [Co, Ci] = sum over n, h, w of a[n, co, h, w] * b[n, ci, h, w]; a, b contiguous as above.
at::Tensor channel_outer(const at::Tensor& a, const at::Tensor& b, bool cl);

}  // namespace cuda
}  // namespace dasp_kernels
