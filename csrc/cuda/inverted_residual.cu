// CUDA kernel of inverted_residual: MobileNetV2's block in one pass,
//   out = act_p(pw_scale * (pw_w @ act_d(dw_scale * dw(act_e(ex_scale * (ex_w @ x) + ex_shift))
//                                        + dw_shift)) + pw_shift) (+ x),
// the depthwise conv zero-padding the expanded tensor.
//
// One block of 256 threads owns a tile of kIrCo output channels x kIrP output positions
// (flattened over n, oh, ow). It loops over the expanded channels kIrE at a time: the threads
// first compute the depthwise outputs of the step (kIrE x kIrP) into shared memory, each
// recomputing the expanded values its taps read (K * K expansions per depthwise output: the
// price of keeping no tile of the expanded tensor, as the Triton kernel does), then each thread
// adds the step's kIrE terms of its kIrCo * kIrP / 256 outputs. Neither the expanded tensor nor
// the depthwise output reaches global memory. Every sum runs in float32 (float64 for float64).
// Backward: the block is recomputed in PyTorch (dasp_kernels/ops.py).
//
// With squeeze-and-excitation the block is a composition, not one kernel (the gate needs the
// mean of the whole depthwise output before any projection): the expansion in ATen (1x1 conv,
// scale/shift, activation), the depthwise by dwconv_bn_act's kernel, the gate in ATen (mean, two
// tiny FCs), folded into each image's projection weights (se_aten.h), the projection a batched
// matmul in ATen, then shift, activation and residual in ATen. The expanded and depthwise
// tensors go to memory there.
#include <torch/library.h>

#include "../se_aten.h"
#include "activation.cuh"
#include "common.cuh"

namespace dasp_kernels {
namespace cuda {
namespace {

constexpr int kIrCo = 64;  // output channels per block
constexpr int kIrP = 32;   // output positions per block
constexpr int kIrE = 16;   // expanded channels per step
constexpr int kIrOut = kIrCo * kIrP / kThreads;  // outputs per thread

template <typename acc_t>
struct StageAct {
  Act act;
  acc_t alpha, beta;
  __device__ acc_t operator()(acc_t z) const { return act_forward(z, act, alpha, beta); }
};

template <typename scalar_t>
struct IrArgs {
  using acc_t = acc_type<scalar_t>;
  const scalar_t* x;  // [N, C, H, W], contiguous in NCHW or NHWC
  const scalar_t *ex_w, *ex_scale, *ex_shift;  // [E, C], [E], [E]; ex_w null: no expansion
  const scalar_t *dw_w, *dw_scale, *dw_shift;  // [E, K * K], [E], [E]
  const scalar_t *pw_w, *pw_scale, *pw_shift;  // [Co, E], [Co], [Co]
  scalar_t* out;                                // [N, Co, Ho, Wo] like x
  int64_t N, C, E, Co, H, W, Ho, Wo;
  int K, stride, pad_t, pad_l, dil;
  bool residual;
  StageAct<acc_t> ex_act, dw_act, pw_act;
};

// The expanded tensor at channel e of input pixel (n, ih, iw), inside the plane.
template <typename scalar_t, bool CL>
__device__ acc_type<scalar_t> expanded(const IrArgs<scalar_t>& a, int64_t n, int64_t e,
                                       int64_t ih, int64_t iw) {
  using acc_t = acc_type<scalar_t>;
  if (a.ex_w == nullptr) return static_cast<acc_t>(a.x[offset4<CL>(n, e, ih, iw, a.C, a.H, a.W)]);
  acc_t s = 0;
  for (int64_t c = 0; c < a.C; ++c)
    s += static_cast<acc_t>(a.ex_w[e * a.C + c]) *
         static_cast<acc_t>(a.x[offset4<CL>(n, c, ih, iw, a.C, a.H, a.W)]);
  return a.ex_act(s * static_cast<acc_t>(a.ex_scale[e]) + static_cast<acc_t>(a.ex_shift[e]));
}

// The depthwise output (after scale, shift and activation) at channel e of output (n, oh, ow).
template <typename scalar_t, bool CL>
__device__ acc_type<scalar_t> depthwise(const IrArgs<scalar_t>& a, int64_t n, int64_t e,
                                        int64_t oh, int64_t ow) {
  using acc_t = acc_type<scalar_t>;
  acc_t s = 0;
  for (int kh = 0; kh < a.K; ++kh) {
    const int64_t ih = oh * a.stride - a.pad_t + kh * a.dil;
    if (ih < 0 || ih >= a.H) continue;  // the expanded tensor's zero padding
    for (int kw = 0; kw < a.K; ++kw) {
      const int64_t iw = ow * a.stride - a.pad_l + kw * a.dil;
      if (iw < 0 || iw >= a.W) continue;
      s += static_cast<acc_t>(a.dw_w[e * a.K * a.K + kh * a.K + kw]) *
           expanded<scalar_t, CL>(a, n, e, ih, iw);
    }
  }
  return a.dw_act(s * static_cast<acc_t>(a.dw_scale[e]) + static_cast<acc_t>(a.dw_shift[e]));
}

template <typename scalar_t, bool CL>
__global__ void __launch_bounds__(kThreads) inverted_residual_kernel(const IrArgs<scalar_t> a) {
  using acc_t = acc_type<scalar_t>;
  __shared__ acc_t D[kIrE][kIrP];  // the step's depthwise outputs
  const int tid = threadIdx.x;
  const int64_t hw = a.Ho * a.Wo, P = a.N * hw;
  const int64_t p0 = static_cast<int64_t>(blockIdx.x) * kIrP;
  const int64_t co0 = static_cast<int64_t>(blockIdx.y) * kIrCo;
  // This thread's outputs: position pl, channels co0 + ml + (kThreads / kIrP) * i.
  const int pl = tid % kIrP, ml = tid / kIrP;
  acc_t acc[kIrOut];
#pragma unroll
  for (int i = 0; i < kIrOut; ++i) acc[i] = 0;
  for (int64_t e0 = 0; e0 < a.E; e0 += kIrE) {
    for (int j = tid; j < kIrE * kIrP; j += kThreads) {
      const int el = j / kIrP, q = j % kIrP;
      const int64_t p = p0 + q, e = e0 + el;
      acc_t d = 0;
      if (p < P && e < a.E) {
        const int64_t n = p / hw, rem = p % hw;
        d = depthwise<scalar_t, CL>(a, n, e, rem / a.Wo, rem % a.Wo);
      }
      D[el][q] = d;
    }
    __syncthreads();
#pragma unroll
    for (int i = 0; i < kIrOut; ++i) {
      const int64_t co = co0 + ml + (kThreads / kIrP) * i;
      if (co >= a.Co) continue;
      for (int el = 0; el < kIrE && e0 + el < a.E; ++el)
        acc[i] += static_cast<acc_t>(a.pw_w[co * a.E + e0 + el]) * D[el][pl];
    }
    __syncthreads();
  }
  const int64_t p = p0 + pl;
  if (p >= P) return;
  const int64_t n = p / hw, rem = p % hw, oh = rem / a.Wo, ow = rem % a.Wo;
#pragma unroll
  for (int i = 0; i < kIrOut; ++i) {
    const int64_t co = co0 + ml + (kThreads / kIrP) * i;
    if (co >= a.Co) continue;
    acc_t y = a.pw_act(acc[i] * static_cast<acc_t>(a.pw_scale[co]) +
                       static_cast<acc_t>(a.pw_shift[co]));
    const int64_t o = offset4<CL>(n, co, oh, ow, a.Co, a.Ho, a.Wo);
    if (a.residual) y += static_cast<acc_t>(a.x[o]);  // the output has x's shape and layout
    a.out[o] = static_cast<scalar_t>(y);
  }
}

template <typename acc_t>
StageAct<acc_t> stage_act(Act act, double alpha, double beta) {
  return {act, static_cast<acc_t>(alpha), static_cast<acc_t>(beta)};
}

}  // namespace

at::Tensor dwconv_bn_act_cuda(const at::Tensor& x, const at::Tensor& weight,
                              const at::Tensor& scale, const at::Tensor& shift, int64_t stride,
                              at::IntArrayRef padding, int64_t dilation, c10::string_view act,
                              double alpha, double beta);

namespace {

at::Tensor bn_act(const at::Tensor& z, const at::Tensor& scale, const at::Tensor& shift, Act act,
                  double alpha, double beta) {
  return aten_act(z * scale.reshape({1, -1, 1, 1}) + shift.reshape({1, -1, 1, 1}), act, alpha,
                  beta);
}

// The block with SE as the composition the file's head describes; inputs checked.
at::Tensor inverted_residual_se(
    const at::Tensor& x, const std::optional<at::Tensor>& expand_weight,
    const std::optional<at::Tensor>& expand_scale, const std::optional<at::Tensor>& expand_shift,
    const IrActs& acts, const double* alpha, const double* beta, const at::Tensor& dw_weight,
    const at::Tensor& dw_scale, const at::Tensor& dw_shift, int64_t stride,
    at::IntArrayRef padding, int64_t dilation, c10::string_view dw_act,
    const at::Tensor& project_weight, const at::Tensor& project_scale,
    const at::Tensor& project_shift, bool residual, const SeConf& se, const at::Tensor* se_t,
    double se_alpha, double se_beta) {
  const auto fmt = x.suggest_memory_format();
  at::Tensor y = x;
  if (given(expand_weight))
    y = bn_act(at::conv2d(x, *expand_weight), *expand_scale, *expand_shift, acts.expand,
               alpha[0], beta[0]);
  const at::Tensor d = dwconv_bn_act_cuda(y, dw_weight, dw_scale, dw_shift, stride, padding,
                                          dilation, dw_act, alpha[1], beta[1]);
  const int64_t n = d.size(0), e = d.size(1), ho = d.size(2), wo = d.size(3);
  const at::Tensor gate = se_gate(d.mean({2, 3}), se_t[0], se_t[1], se_t[2], se_t[3], se,
                                  se_alpha, se_beta);
  const at::Tensor z = at::bmm(gated_projection(project_weight, gate), d.reshape({n, e, ho * wo}));
  at::Tensor out = bn_act(z.reshape({n, project_weight.size(0), ho, wo}), project_scale, project_shift, acts.project,
                          alpha[2], beta[2]);
  if (residual) out = out + x;
  return out.contiguous(fmt);
}

}  // namespace

at::Tensor inverted_residual_cuda(
    const at::Tensor& x, const std::optional<at::Tensor>& expand_weight,
    const std::optional<at::Tensor>& expand_scale, const std::optional<at::Tensor>& expand_shift,
    c10::string_view expand_act, double expand_alpha, double expand_beta,
    const at::Tensor& dw_weight, const at::Tensor& dw_scale, const at::Tensor& dw_shift,
    int64_t stride, at::IntArrayRef padding, int64_t dilation, c10::string_view dw_act,
    double dw_alpha, double dw_beta, const at::Tensor& project_weight,
    const at::Tensor& project_scale, const at::Tensor& project_shift, c10::string_view project_act,
    double project_alpha, double project_beta, bool residual,
    const std::optional<at::Tensor>& se_reduce_weight,
    const std::optional<at::Tensor>& se_reduce_bias,
    const std::optional<at::Tensor>& se_expand_weight,
    const std::optional<at::Tensor>& se_expand_bias, c10::string_view se_act, double se_alpha,
    double se_beta, c10::string_view se_gate) {
  const IrActs acts = check_inverted_residual(
      x, expand_weight, expand_scale, expand_shift, expand_act, dw_weight, dw_scale, dw_shift,
      stride, padding, dilation, dw_act, project_weight, project_scale, project_shift,
      project_act, residual);
  const SeConf se = check_inverted_residual_se(x, dw_weight.size(0), se_reduce_weight,
                                               se_reduce_bias, se_expand_weight, se_expand_bias,
                                               se_act, se_gate);
  check_cuda_dtype("inverted_residual", x);
  c10::cuda::CUDAGuard guard(x.device());
  if (se.on) {
    const double alpha[3] = {expand_alpha, dw_alpha, project_alpha};
    const double beta[3] = {expand_beta, dw_beta, project_beta};
    const at::Tensor se_t[4] = {*se_reduce_weight, *se_reduce_bias, *se_expand_weight,
                                *se_expand_bias};
    return inverted_residual_se(x, expand_weight, expand_scale, expand_shift, acts, alpha, beta,
                                dw_weight, dw_scale, dw_shift, stride, padding, dilation, dw_act,
                                project_weight, project_scale, project_shift, residual, se, se_t,
                                se_alpha, se_beta);
  }
  const auto fmt = x.suggest_memory_format();
  const int64_t k = dw_weight.size(2), e = dw_weight.size(0), co = project_weight.size(0);
  const int64_t ho = dwconv_bn_act_out_size(x.size(2), k, stride, padding[0], padding[1], dilation);
  const int64_t wo = dwconv_bn_act_out_size(x.size(3), k, stride, padding[2], padding[3], dilation);
  at::Tensor out = at::empty({x.size(0), co, ho, wo}, x.options().memory_format(fmt));
  if (out.numel() == 0) return out;
  const bool expand = given(expand_weight);
  const at::Tensor xc = x.contiguous(fmt);
  auto flat = [](const at::Tensor& t) { return t.contiguous(); };
  const at::Tensor exw = expand ? flat(*expand_weight) : at::Tensor(),
                   exsc = expand ? flat(*expand_scale) : at::Tensor(),
                   exsh = expand ? flat(*expand_shift) : at::Tensor();
  const at::Tensor dww = flat(dw_weight), dwsc = flat(dw_scale), dwsh = flat(dw_shift),
                   pww = flat(project_weight), pwsc = flat(project_scale),
                   pwsh = flat(project_shift);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(),
                                  "inverted_residual_cuda", [&] {
    using acc_t = acc_type<scalar_t>;
    IrArgs<scalar_t> a{};
    a.x = xc.data_ptr<scalar_t>();
    a.ex_w = expand ? exw.data_ptr<scalar_t>() : nullptr;
    a.ex_scale = expand ? exsc.data_ptr<scalar_t>() : nullptr;
    a.ex_shift = expand ? exsh.data_ptr<scalar_t>() : nullptr;
    a.dw_w = dww.data_ptr<scalar_t>();
    a.dw_scale = dwsc.data_ptr<scalar_t>();
    a.dw_shift = dwsh.data_ptr<scalar_t>();
    a.pw_w = pww.data_ptr<scalar_t>();
    a.pw_scale = pwsc.data_ptr<scalar_t>();
    a.pw_shift = pwsh.data_ptr<scalar_t>();
    a.out = out.data_ptr<scalar_t>();
    a.N = x.size(0), a.C = x.size(1), a.E = e, a.Co = co, a.H = x.size(2), a.W = x.size(3);
    a.Ho = ho, a.Wo = wo;
    a.K = static_cast<int>(k), a.stride = static_cast<int>(stride);
    a.pad_t = static_cast<int>(padding[0]), a.pad_l = static_cast<int>(padding[2]);
    a.dil = static_cast<int>(dilation);
    a.residual = residual;
    a.ex_act = stage_act<acc_t>(acts.expand, expand_alpha, expand_beta);
    a.dw_act = stage_act<acc_t>(acts.dw, dw_alpha, dw_beta);
    a.pw_act = stage_act<acc_t>(acts.project, project_alpha, project_beta);
    const dim3 grid(static_cast<unsigned>(ceil_div(out.size(0) * ho * wo, kIrP)),
                    static_cast<unsigned>(ceil_div(co, kIrCo)));
    auto stream = at::cuda::getCurrentCUDAStream();
    if (fmt == at::MemoryFormat::ChannelsLast)
      inverted_residual_kernel<scalar_t, true><<<grid, kThreads, 0, stream>>>(a);
    else
      inverted_residual_kernel<scalar_t, false><<<grid, kThreads, 0, stream>>>(a);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace cuda
}  // namespace dasp_kernels

TORCH_LIBRARY_IMPL(dasp_kernels, CUDA, m) {
  m.impl("inverted_residual", &dasp_kernels::cuda::inverted_residual_cuda);
}
