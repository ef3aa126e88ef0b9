// CUDA kernels of dwconv_bn_act: act(depthwise_conv2d(x, w, stride, padding, dilation) * scale +
// shift), padding = [top, bottom, left, right], K 1..9, stride 1 or 2, the activations of
// activation.cuh.
//
// Forward, dilation 1, NCHW: one block per 32x32 output tile of one (n, c) plane; the input tile it
// needs is staged once in shared memory. Forward, dilation 1, NHWC: one thread per strip of outputs
// along W, consecutive threads on consecutive channels so every tap is a coalesced load.
// Forward, dilation > 1: one thread per output (dw_fwd_direct_kernel); the input tile of a dilated
// kernel grows with the dilation, so it is read through the caches instead of shared memory.
// Backward: (1) per-channel reduction kernel that recomputes the pre-activation z, writes
// gz = act'(z) * grad_out * scale and accumulates grad_shift, grad_scale and grad_weight per block;
// (2) a fixed-order sum over those per-block partials (deterministic, no atomics); (3) grad_x as a
// gather over the taps that touch each input element.
#include <torch/library.h>

#include <array>
#include <utility>
#include <vector>

#include "activation.cuh"
#include "common.cuh"

namespace dasp_kernels {
namespace cuda {
namespace {

// The epilogue's arguments: the activation and its alpha, beta in the accumulation type.
template <typename acc_t>
struct ActArgs {
  Act act;
  acc_t alpha, beta;
};

// Where the window of output (0, 0) starts, and the spacing of the taps.
struct Geometry {
  int stride, pad_t, pad_l, dil;
};

// Calls f(std::integral_constant<int, K>{}) for the runtime kernel size k in 1..9 (common.cuh's
// dispatch_k stops at 7: the other ops take no larger K, so they need not instantiate it).
template <typename F>
void dispatch_k9(int64_t k, F&& f) {
  switch (k) {
    case 8: f(std::integral_constant<int, 8>{}); break;
    case 9: f(std::integral_constant<int, 9>{}); break;
    default: dispatch_k("dwconv_bn_act", k, std::forward<F>(f));
  }
}

constexpr int kTileX = 32;  // output tile width = blockDim.x
constexpr int kTileY = 8;   // blockDim.y
constexpr int kRowsPerThread = 4;
constexpr int kTileH = kTileY * kRowsPerThread;

// Dilation 1 only: the staged tile is (kTileH - 1) * S + K rows of (kTileX - 1) * S + K columns.
template <typename scalar_t, int K, int S>
__global__ void __launch_bounds__(kTileX * kTileY)
    dw_fwd_nchw_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ w,
                       const scalar_t* __restrict__ scale, const scalar_t* __restrict__ shift,
                       scalar_t* __restrict__ y, int64_t C, int64_t H, int64_t W, int64_t Ho,
                       int64_t Wo, int pad_t, int pad_l, ActArgs<acc_type<scalar_t>> act,
                       int64_t tiles_w, int64_t tiles_h) {
  using acc_t = acc_type<scalar_t>;
  constexpr int ITW = (kTileX - 1) * S + K;
  constexpr int ITH = (kTileH - 1) * S + K;
  __shared__ acc_t tile[ITH][ITW];

  int64_t b = blockIdx.x;
  const int64_t tw = b % tiles_w;
  b /= tiles_w;
  const int64_t th = b % tiles_h;
  const int64_t plane = b / tiles_h;  // n * C + c
  const int64_t c = plane % C;
  const int64_t oh0 = th * kTileH, ow0 = tw * kTileX;
  const int64_t ih0 = oh0 * S - pad_t, iw0 = ow0 * S - pad_l;
  const scalar_t* xp = x + plane * H * W;
  const int tid = threadIdx.y * kTileX + threadIdx.x;

  for (int i = tid; i < ITH * ITW; i += kTileX * kTileY) {
    const int r = i / ITW, q = i % ITW;
    const int64_t ih = ih0 + r, iw = iw0 + q;
    tile[r][q] = (ih >= 0 && ih < H && iw >= 0 && iw < W) ? static_cast<acc_t>(xp[ih * W + iw])
                                                          : acc_t(0);
  }
  acc_t wk[K * K];
#pragma unroll
  for (int t = 0; t < K * K; ++t) wk[t] = static_cast<acc_t>(w[c * K * K + t]);
  const acc_t sc = static_cast<acc_t>(scale[c]), sh = static_cast<acc_t>(shift[c]);
  __syncthreads();

  const int64_t ow = ow0 + threadIdx.x;
#pragma unroll
  for (int r = 0; r < kRowsPerThread; ++r) {
    const int ly = threadIdx.y + kTileY * r;
    const int64_t oh = oh0 + ly;
    if (oh < Ho && ow < Wo) {
      acc_t s = 0;
#pragma unroll
      for (int kh = 0; kh < K; ++kh) {
#pragma unroll
        for (int kw = 0; kw < K; ++kw) {
          s += tile[ly * S + kh][threadIdx.x * S + kw] * wk[kh * K + kw];
        }
      }
      const acc_t v = act_forward(s * sc + sh, act.act, act.alpha, act.beta);
      y[plane * Ho * Wo + oh * Wo + ow] = static_cast<scalar_t>(v);
    }
  }
}

// NHWC, dilation 1: each thread computes kStrip consecutive outputs along W of one channel,
// loading each input row segment once for all of them. Consecutive threads take consecutive
// channels (coalesced).
constexpr int kStrip = 4;

template <typename scalar_t, int K, int S>
__global__ void __launch_bounds__(kThreads)
    dw_fwd_nhwc_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ wt,
                       const scalar_t* __restrict__ scale, const scalar_t* __restrict__ shift,
                       scalar_t* __restrict__ y, int64_t total, int64_t C, int64_t H, int64_t W,
                       int64_t Ho, int64_t Wo, int64_t strips, int pad_t, int pad_l,
                       ActArgs<acc_type<scalar_t>> act) {
  using acc_t = acc_type<scalar_t>;
  constexpr int IW = (kStrip - 1) * S + K;  // input columns one strip reads
  for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < total;
       e += (int64_t)gridDim.x * blockDim.x) {
    // e = ((n * Ho + oh) * strips + q) * C + c
    const int64_t c = e % C;
    int64_t t = e / C;
    const int64_t q = t % strips;
    t /= strips;
    const int64_t oh = t % Ho, n = t / Ho;
    const int64_t ow0 = q * kStrip;
    const int64_t ih0 = oh * S - pad_t, iw0 = ow0 * S - pad_l;
    acc_t s[kStrip];
#pragma unroll
    for (int o = 0; o < kStrip; ++o) s[o] = 0;
#pragma unroll
    for (int kh = 0; kh < K; ++kh) {
      const int64_t ih = ih0 + kh;
      if (ih < 0 || ih >= H) continue;
      const scalar_t* row = x + (n * H + ih) * W * C + c;
      acc_t v[IW];
#pragma unroll
      for (int j = 0; j < IW; ++j) {
        const int64_t iw = iw0 + j;
        v[j] = (iw >= 0 && iw < W) ? static_cast<acc_t>(row[iw * C]) : acc_t(0);
      }
#pragma unroll
      for (int kw = 0; kw < K; ++kw) {
        const acc_t wv = static_cast<acc_t>(wt[(kh * K + kw) * C + c]);  // weights as [K*K, C]
#pragma unroll
        for (int o = 0; o < kStrip; ++o) s[o] += v[o * S + kw] * wv;
      }
    }
    const acc_t sc = static_cast<acc_t>(scale[c]), sh = static_cast<acc_t>(shift[c]);
    scalar_t* out = y + ((n * Ho + oh) * Wo + ow0) * C + c;
#pragma unroll
    for (int o = 0; o < kStrip; ++o) {
      if (ow0 + o < Wo) {
        out[o * C] = static_cast<scalar_t>(act_forward(s[o] * sc + sh, act.act, act.alpha,
                                                       act.beta));
      }
    }
  }
}

// Dilation > 1, either layout: one thread per output in memory order, so consecutive threads read
// consecutive channels (NHWC) or consecutive columns (NCHW, coalesced for stride 1). K and the
// geometry are runtime values: one instantiation per dtype and layout for this rarer case.
template <typename scalar_t, bool CL>
__global__ void __launch_bounds__(kThreads)
    dw_fwd_direct_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ w,
                         const scalar_t* __restrict__ scale, const scalar_t* __restrict__ shift,
                         scalar_t* __restrict__ y, int64_t total, int64_t C, int64_t H, int64_t W,
                         int64_t Ho, int64_t Wo, int K, Geometry geo,
                         ActArgs<acc_type<scalar_t>> act) {
  using acc_t = acc_type<scalar_t>;
  for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < total;
       e += (int64_t)gridDim.x * blockDim.x) {
    int64_t n, c, oh, ow;
    unravel4<CL>(e, C, Ho, Wo, n, c, oh, ow);
    const int64_t ih0 = oh * geo.stride - geo.pad_t, iw0 = ow * geo.stride - geo.pad_l;
    const scalar_t* wc = w + c * K * K;
    acc_t s = 0;
    for (int kh = 0; kh < K; ++kh) {
      const int64_t ih = ih0 + (int64_t)kh * geo.dil;
      if (ih < 0 || ih >= H) continue;
      for (int kw = 0; kw < K; ++kw) {
        const int64_t iw = iw0 + (int64_t)kw * geo.dil;
        if (iw < 0 || iw >= W) continue;
        s += static_cast<acc_t>(x[offset4<CL>(n, c, ih, iw, C, H, W)]) *
             static_cast<acc_t>(wc[kh * K + kw]);
      }
    }
    const acc_t v = s * static_cast<acc_t>(scale[c]) + static_cast<acc_t>(shift[c]);
    y[e] = static_cast<scalar_t>(act_forward(v, act.act, act.alpha, act.beta));
  }
}

// Backward, pass 1. Block = 32 x 8 threads. NCHW: one block per (channel, chunk), all 256 threads
// walk the chunk's outputs of that channel. NHWC: one block per (32 channels, chunk), threadIdx.x is
// the channel and the 8 rows walk the outputs. Values per channel: [shift, scale, w[0..K*K)].
template <typename scalar_t, int K, bool CL>
__global__ void __launch_bounds__(kThreads)
    dw_bwd_reduce_kernel(const scalar_t* __restrict__ g, const scalar_t* __restrict__ x,
                         const scalar_t* __restrict__ w, const scalar_t* __restrict__ scale,
                         const scalar_t* __restrict__ shift, acc_type<scalar_t>* __restrict__ gz,
                         acc_type<scalar_t>* __restrict__ partial, int64_t C, int64_t H, int64_t W,
                         int64_t Ho, int64_t Wo, int64_t n_out, Geometry geo,
                         ActArgs<acc_type<scalar_t>> act) {
  using acc_t = acc_type<scalar_t>;
  constexpr int NV = K * K + 2;
  __shared__ acc_t red[8][32];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t c = CL ? (int64_t)blockIdx.x * 32 + tx : (int64_t)blockIdx.x;
  const int lanes = CL ? 8 : 256;
  const int64_t start = (int64_t)blockIdx.y * lanes + (CL ? ty : ty * 32 + tx);
  const int64_t step = (int64_t)gridDim.y * lanes;

  acc_t acc[NV];
#pragma unroll
  for (int v = 0; v < NV; ++v) acc[v] = 0;

  if (c < C) {
    acc_t wk[K * K];
#pragma unroll
    for (int t = 0; t < K * K; ++t) wk[t] = static_cast<acc_t>(w[c * K * K + t]);
    const acc_t sc = static_cast<acc_t>(scale[c]), sh = static_cast<acc_t>(shift[c]);
    const int64_t hw_out = Ho * Wo;
    for (int64_t s = start; s < n_out; s += step) {
      const int64_t n = s / hw_out, rem = s % hw_out;
      const int64_t oh = rem / Wo, ow = rem % Wo;
      const int64_t ih0 = oh * geo.stride - geo.pad_t, iw0 = ow * geo.stride - geo.pad_l;
      acc_t z = 0;
      for_each_tap_dilated<K>(ih0, iw0, geo.dil, H, W,
                              [&](int kh, int kw, int64_t ih, int64_t iw) {
        z += static_cast<acc_t>(x[offset4<CL>(n, c, ih, iw, C, H, W)]) * wk[kh * K + kw];
      });
      const int64_t o = offset4<CL>(n, c, oh, ow, C, Ho, Wo);
      // The gradient of the pre-activation z * sc + sh, as autograd computes it.
      const acc_t gy = act_backward(static_cast<acc_t>(g[o]), z * sc + sh, act.act, act.alpha,
                                    act.beta);
      const acc_t gzv = gy * sc;
      gz[o] = gzv;
      acc[0] += gy;
      acc[1] += gy * z;
      for_each_tap_dilated<K>(ih0, iw0, geo.dil, H, W,
                              [&](int kh, int kw, int64_t ih, int64_t iw) {
        acc[2 + kh * K + kw] += gzv * static_cast<acc_t>(x[offset4<CL>(n, c, ih, iw, C, H, W)]);
      });
    }
  }

  // Fixed-shape tree reductions: same result on every run. Fully unrolled so that acc stays in
  // registers (a runtime index would move it to local memory).
#pragma unroll
  for (int v = 0; v < NV; ++v) {
    red[ty][tx] = acc[v];
    __syncthreads();
    for (int h = 4; h > 0; h >>= 1) {
      if (ty < h) red[ty][tx] += red[ty + h][tx];
      __syncthreads();
    }
    if (ty == 0) {
      acc_t r = red[0][tx];
      if (CL) {
        if (c < C) partial[((int64_t)blockIdx.y * C + c) * NV + v] = r;
      } else {
        for (int o = 16; o > 0; o >>= 1) r += __shfl_down_sync(0xffffffffu, r, o);
        if (tx == 0) partial[((int64_t)blockIdx.y * C + c) * NV + v] = r;
      }
    }
    __syncthreads();
  }
}

// Backward, pass 2: sum the per-chunk partials in chunk order.
template <typename scalar_t, int K>
__global__ void dw_bwd_finalize_kernel(const acc_type<scalar_t>* __restrict__ partial,
                                       int64_t chunks, int64_t C, scalar_t* __restrict__ gw,
                                       scalar_t* __restrict__ gscale,
                                       scalar_t* __restrict__ gshift) {
  using acc_t = acc_type<scalar_t>;
  constexpr int NV = K * K + 2;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < C * NV;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t c = i / NV;
    const int v = static_cast<int>(i % NV);
    acc_t s = 0;
    for (int64_t k = 0; k < chunks; ++k) s += partial[(k * C + c) * NV + v];
    if (v == 0) {
      gshift[c] = static_cast<scalar_t>(s);
    } else if (v == 1) {
      gscale[c] = static_cast<scalar_t>(s);
    } else {
      gw[c * K * K + (v - 2)] = static_cast<scalar_t>(s);
    }
  }
}

// Backward, pass 3: grad_x[n, c, ih, iw] = sum over the taps (kh, kw) and outputs (oh, ow) with
// ih = oh * stride - pad_t + kh * dil (and likewise along W) of gz[oh, ow] * w[kh, kw].
template <typename scalar_t, int K, bool CL>
__global__ void __launch_bounds__(kThreads)
    dw_bwd_input_kernel(const acc_type<scalar_t>* __restrict__ gz, const scalar_t* __restrict__ w,
                        scalar_t* __restrict__ gx, int64_t total, int64_t C, int64_t H, int64_t W,
                        int64_t Ho, int64_t Wo, Geometry geo) {
  using acc_t = acc_type<scalar_t>;
  for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < total;
       e += (int64_t)gridDim.x * blockDim.x) {
    int64_t n, c, ih, iw;
    unravel4<CL>(e, C, H, W, n, c, ih, iw);
    const scalar_t* wc = w + c * K * K;
    // stride is 1 or 2: test divisibility and divide with a mask and a shift, not a 64-bit division
    const int sshift = geo.stride - 1, smask = geo.stride - 1;
    acc_t s = 0;
#pragma unroll
    for (int kh = 0; kh < K; ++kh) {
      const int64_t th = ih + geo.pad_t - (int64_t)kh * geo.dil;
      if (th < 0 || (th & smask) != 0) continue;
      const int64_t oh = th >> sshift;
      if (oh >= Ho) continue;
#pragma unroll
      for (int kw = 0; kw < K; ++kw) {
        const int64_t tw = iw + geo.pad_l - (int64_t)kw * geo.dil;
        if (tw < 0 || (tw & smask) != 0) continue;
        const int64_t ow = tw >> sshift;
        if (ow >= Wo) continue;
        s += gz[offset4<CL>(n, c, oh, ow, C, Ho, Wo)] * static_cast<acc_t>(wc[kh * K + kw]);
      }
    }
    gx[e] = static_cast<scalar_t>(s);
  }
}

template <typename scalar_t, int K, int S>
void launch_forward(const at::Tensor& xc, const at::Tensor& w, const at::Tensor& scale,
                    const at::Tensor& shift, at::Tensor& y, const Geometry& geo,
                    ActArgs<acc_type<scalar_t>> act, bool cl) {
  const int64_t N = xc.size(0), C = xc.size(1), H = xc.size(2), W = xc.size(3);
  const int64_t Ho = y.size(2), Wo = y.size(3);
  auto stream = at::cuda::getCurrentCUDAStream();
  if (geo.dil != 1) {
    const int64_t total = y.numel();
    if (cl) {
      dw_fwd_direct_kernel<scalar_t, true><<<grid_for(total), kThreads, 0, stream>>>(
          xc.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), scale.data_ptr<scalar_t>(),
          shift.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), total, C, H, W, Ho, Wo, K, geo, act);
    } else {
      dw_fwd_direct_kernel<scalar_t, false><<<grid_for(total), kThreads, 0, stream>>>(
          xc.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), scale.data_ptr<scalar_t>(),
          shift.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), total, C, H, W, Ho, Wo, K, geo, act);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  } else if (cl) {
    const int64_t strips = ceil_div(Wo, kStrip);
    const int64_t total = N * Ho * strips * C;
    const at::Tensor wt = w.view({C, K * K}).t().contiguous();
    dw_fwd_nhwc_kernel<scalar_t, K, S><<<grid_for(total), kThreads, 0, stream>>>(
        xc.data_ptr<scalar_t>(), wt.data_ptr<scalar_t>(), scale.data_ptr<scalar_t>(),
        shift.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), total, C, H, W, Ho, Wo, strips,
        geo.pad_t, geo.pad_l, act);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  } else {
    const int64_t tiles_w = ceil_div(Wo, kTileX), tiles_h = ceil_div(Ho, kTileH);
    const int64_t blocks = tiles_w * tiles_h * N * C;
    TORCH_CHECK(blocks <= INT32_MAX, "dwconv_bn_act: input too large for the CUDA kernel (",
                blocks, " tiles)");
    dw_fwd_nchw_kernel<scalar_t, K, S>
        <<<static_cast<unsigned int>(blocks), dim3(kTileX, kTileY), 0, stream>>>(
            xc.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), scale.data_ptr<scalar_t>(),
            shift.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), C, H, W, Ho, Wo, geo.pad_t,
            geo.pad_l, act, tiles_w, tiles_h);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

template <typename scalar_t, int K, bool CL>
void launch_backward(const at::Tensor& g, const at::Tensor& xc, const at::Tensor& w,
                     const at::Tensor& scale, const at::Tensor& shift, at::Tensor& gx,
                     at::Tensor& gw, at::Tensor& gscale, at::Tensor& gshift, const Geometry& geo,
                     ActArgs<acc_type<scalar_t>> act) {
  using acc_t = acc_type<scalar_t>;
  constexpr int NV = K * K + 2;
  const int64_t N = xc.size(0), C = xc.size(1), H = xc.size(2), W = xc.size(3);
  const int64_t Ho = g.size(2), Wo = g.size(3);
  const int64_t n_out = N * Ho * Wo;
  auto stream = at::cuda::getCurrentCUDAStream();
  auto acc_opts = xc.options().dtype(acc_scalar_type(xc.scalar_type()));

  at::Tensor gz = at::empty(g.sizes(), acc_opts.memory_format(CL ? at::MemoryFormat::ChannelsLast
                                                                 : at::MemoryFormat::Contiguous));
  const int64_t lanes = CL ? 8 : 256;
  const int64_t grid_x = CL ? ceil_div(C, 32) : C;
  TORCH_CHECK(grid_x <= INT32_MAX, "dwconv_bn_act: too many channels for the CUDA kernel: ", C);
  // Enough chunks to fill the GPU, but each thread still loops over a few dozen outputs.
  int64_t chunks = std::min<int64_t>(ceil_div(n_out, lanes * 32),
                                     std::max<int64_t>(1, 4096 / std::max<int64_t>(grid_x, 1)));
  chunks = std::max<int64_t>(1, std::min<int64_t>(chunks, 65535));
  at::Tensor partial = at::empty({chunks, C, NV}, acc_opts);
  dw_bwd_reduce_kernel<scalar_t, K, CL>
      <<<dim3(static_cast<unsigned int>(grid_x), static_cast<unsigned int>(chunks)),
         dim3(32, 8), 0, stream>>>(g.data_ptr<scalar_t>(), xc.data_ptr<scalar_t>(),
                                   w.data_ptr<scalar_t>(), scale.data_ptr<scalar_t>(),
                                   shift.data_ptr<scalar_t>(), gz.data_ptr<acc_t>(),
                                   partial.data_ptr<acc_t>(), C, H, W, Ho, Wo, n_out, geo, act);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  dw_bwd_finalize_kernel<scalar_t, K><<<grid_for(C * NV), kThreads, 0, stream>>>(
      partial.data_ptr<acc_t>(), chunks, C, gw.data_ptr<scalar_t>(), gscale.data_ptr<scalar_t>(),
      gshift.data_ptr<scalar_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const int64_t total = gx.numel();
  if (total > 0) {
    dw_bwd_input_kernel<scalar_t, K, CL><<<grid_for(total), kThreads, 0, stream>>>(
        gz.data_ptr<acc_t>(), w.data_ptr<scalar_t>(), gx.data_ptr<scalar_t>(), total, C, H, W,
        Ho, Wo, geo);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

// The op's arguments past the tensors, checked. padding = [top, bottom, left, right]; only top and
// left move the windows, bottom and right only set the output size.
struct Conf {
  int64_t stride, dil;
  std::array<int64_t, 4> pad;
  Act act;
  double alpha, beta;

  Geometry geometry() const {
    return {static_cast<int>(stride), static_cast<int>(pad[0]), static_cast<int>(pad[2]),
            static_cast<int>(dil)};
  }
  template <typename acc_t>
  ActArgs<acc_t> act_args() const {
    return {act, static_cast<acc_t>(alpha), static_cast<acc_t>(beta)};
  }
  std::vector<int64_t> out_shape(const at::Tensor& x, int64_t k) const {
    return {x.size(0), x.size(1),
            dwconv_bn_act_out_size(x.size(2), k, stride, pad[0], pad[1], dil),
            dwconv_bn_act_out_size(x.size(3), k, stride, pad[2], pad[3], dil)};
  }
};

// The forward on checked arguments.
at::Tensor forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale,
                   const at::Tensor& shift, const Conf& conf) {
  TORCH_CHECK(conf.dil <= INT32_MAX / kDwMaxK, "dwconv_bn_act: dilation too large for the CUDA "
              "kernel: ", conf.dil);
  c10::cuda::CUDAGuard guard(x.device());
  const auto fmt = x.suggest_memory_format();
  const bool cl = fmt == at::MemoryFormat::ChannelsLast;
  const int64_t k = weight.size(2);
  at::Tensor y = at::empty(conf.out_shape(x, k), x.options().memory_format(fmt));
  if (y.numel() == 0) return y;
  const at::Tensor xc = x.contiguous(fmt);
  const at::Tensor w = weight.contiguous(), sc = scale.contiguous(), sh = shift.contiguous();
  const Geometry geo = conf.geometry();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "dwconv_bn_act_cuda",
                                  [&] {
    const auto act = conf.act_args<acc_type<scalar_t>>();
    dispatch_k9(k, [&](auto kc) {
      constexpr int K = decltype(kc)::value;
      if (conf.stride == 1) {
        launch_forward<scalar_t, K, 1>(xc, w, sc, sh, y, geo, act, cl);
      } else {
        launch_forward<scalar_t, K, 2>(xc, w, sc, sh, y, geo, act, cl);
      }
    });
  });
  return y;
}

// The backward on checked arguments; `op` names the backward op in the grad_out message.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
    const at::Tensor& scale, const at::Tensor& shift, const Conf& conf) {
  const char* op = "_dwconv_bn_act_backward";
  check_like_x(op, x, "grad_out", grad_out);
  const int64_t k = weight.size(2);
  const std::vector<int64_t> out_shape = conf.out_shape(x, k);
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef(out_shape), op, ": expected grad_out of shape ",
              at::IntArrayRef(out_shape), ", got ", grad_out.sizes());
  TORCH_CHECK(conf.dil <= INT32_MAX / kDwMaxK, "dwconv_bn_act: dilation too large for the CUDA "
              "kernel: ", conf.dil);
  c10::cuda::CUDAGuard guard(x.device());
  const auto fmt = x.suggest_memory_format();
  const bool cl = fmt == at::MemoryFormat::ChannelsLast;
  at::Tensor gx = at::empty(x.sizes(), x.options().memory_format(fmt));
  at::Tensor gw = at::zeros(weight.sizes(), weight.options());
  at::Tensor gscale = at::zeros(scale.sizes(), scale.options());
  at::Tensor gshift = at::zeros(shift.sizes(), shift.options());
  if (grad_out.numel() == 0) {
    gx.zero_();
    return {gx, gw, gscale, gshift};
  }
  const at::Tensor xc = x.contiguous(fmt);
  const at::Tensor g = grad_out.contiguous(fmt);
  const at::Tensor w = weight.contiguous(), sc = scale.contiguous(), sh = shift.contiguous();
  const Geometry geo = conf.geometry();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(),
                                  "dwconv_bn_act_backward_cuda", [&] {
    const auto act = conf.act_args<acc_type<scalar_t>>();
    dispatch_k9(k, [&](auto kc) {
      constexpr int K = decltype(kc)::value;
      if (cl) {
        launch_backward<scalar_t, K, true>(g, xc, w, sc, sh, gx, gw, gscale, gshift, geo, act);
      } else {
        launch_backward<scalar_t, K, false>(g, xc, w, sc, sh, gx, gw, gscale, gshift, geo, act);
      }
    });
  });
  return {gx, gw, gscale, gshift};
}

Conf act_conf(int64_t stride, at::IntArrayRef padding, int64_t dilation, Act act, double alpha,
              double beta) {
  return {stride, dilation, {padding[0], padding[1], padding[2], padding[3]}, act, alpha, beta};
}

}  // namespace

at::Tensor dwconv_bn_act_cuda(const at::Tensor& x, const at::Tensor& weight,
                              const at::Tensor& scale, const at::Tensor& shift, int64_t stride,
                              at::IntArrayRef padding, int64_t dilation, c10::string_view act,
                              double alpha, double beta) {
  const Act a = check_dwconv_bn_act(x, weight, scale, shift, stride, padding, dilation, act);
  check_cuda_dtype("dwconv_bn_act", x);
  return forward(x, weight, scale, shift, act_conf(stride, padding, dilation, a, alpha, beta));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> dwconv_bn_act_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
    const at::Tensor& scale, const at::Tensor& shift, int64_t stride, at::IntArrayRef padding,
    int64_t dilation, c10::string_view act, double alpha, double beta) {
  const Act a = check_dwconv_bn_act(x, weight, scale, shift, stride, padding, dilation, act);
  check_cuda_dtype("dwconv_bn_act", x);
  return backward(grad_out, x, weight, scale, shift,
                  act_conf(stride, padding, dilation, a, alpha, beta));
}

}  // namespace cuda
}  // namespace dasp_kernels

TORCH_LIBRARY_IMPL(dasp_kernels, CUDA, m) {
  m.impl("dwconv_bn_act", &dasp_kernels::cuda::dwconv_bn_act_cuda);
  m.impl("_dwconv_bn_act_backward", &dasp_kernels::cuda::dwconv_bn_act_backward_cuda);
}
