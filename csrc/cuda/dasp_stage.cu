// CUDA kernels of dasp_stage: one whole DASP stage, Eq. (5),
//   out = ppm_w @ maxpool(x) + relu(pw_scale * (pw_w @ relu(dw(x) * dw_scale + dw_shift)) + pw_shift).
//
// Forward: one pass over output tiles (pool_pw_gemm.cuh). For each 16-channel step of a tile the
// depthwise and pooled values are computed straight into shared memory and consumed there, so no
// intermediate map is written to global memory.
// Backward: composed on the device. Everything runs in float32 (float64 for float64 input): the
// depthwise map is recomputed with the dwconv_bn_act kernel, the pointwise parts are at::matmul
// and elementwise ops, and the ppm and depthwise gradients come from the backward kernels of
// ppm_add and dwconv_bn_act.
#include <torch/library.h>

#include <array>

#include "common.cuh"
#include "pool_pw_gemm.cuh"

namespace dasp_kernels {
namespace cuda {
namespace {

std::vector<int64_t> stage_out_shape(const at::Tensor& x, const at::Tensor& pw_weight) {
  return {x.size(0), pw_weight.size(0), (x.size(2) + 1) / 2, (x.size(3) + 1) / 2};
}

}  // namespace

at::Tensor dasp_stage_cuda(const at::Tensor& x, const at::Tensor& dw_weight,
                           const at::Tensor& dw_scale, const at::Tensor& dw_shift,
                           const at::Tensor& pw_weight, const at::Tensor& pw_scale,
                           const at::Tensor& pw_shift, const at::Tensor& ppm_weight) {
  check_dasp_stage(x, dw_weight, dw_scale, dw_shift, pw_weight, pw_scale, pw_shift, ppm_weight);
  check_cuda_dtype("dasp_stage", x);
  c10::cuda::CUDAGuard guard(x.device());
  const auto fmt = x.suggest_memory_format();
  const bool cl = fmt == at::MemoryFormat::ChannelsLast;
  at::Tensor out = at::empty(stage_out_shape(x, pw_weight), x.options().memory_format(fmt));
  if (out.numel() == 0) return out;
  const at::Tensor xc = x.contiguous(fmt);
  const at::Tensor dww = dw_weight.contiguous(), dwsc = dw_scale.contiguous(),
                   dwsh = dw_shift.contiguous(), pww = pw_weight.contiguous(),
                   pwsc = pw_scale.contiguous(), pwsh = pw_shift.contiguous(),
                   ppmw = ppm_weight.contiguous();
  const int64_t k = dw_weight.size(2);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "dasp_stage_cuda",
                                  [&] {
    StageArgs<scalar_t> args{};
    args.x = xc.data_ptr<scalar_t>();
    args.ppm_w = ppmw.data_ptr<scalar_t>();
    args.residual = nullptr;
    args.dw_w = dww.data_ptr<scalar_t>();
    args.dw_scale = dwsc.data_ptr<scalar_t>();
    args.dw_shift = dwsh.data_ptr<scalar_t>();
    args.pw_w = pww.data_ptr<scalar_t>();
    args.pw_scale = pwsc.data_ptr<scalar_t>();
    args.pw_shift = pwsh.data_ptr<scalar_t>();
    args.out = out.data_ptr<scalar_t>();
    args.N = x.size(0);
    args.Cin = x.size(1);
    args.H = x.size(2);
    args.W = x.size(3);
    args.Cout = pw_weight.size(0);
    args.Ho = out.size(2);
    args.Wo = out.size(3);
    switch (k) {
      case 1: launch_pool_pw_gemm<scalar_t, true, 1>(args, cl); break;
      case 3: launch_pool_pw_gemm<scalar_t, true, 3>(args, cl); break;
      case 5: launch_pool_pw_gemm<scalar_t, true, 5>(args, cl); break;
      case 7: launch_pool_pw_gemm<scalar_t, true, 7>(args, cl); break;
      default:
        TORCH_CHECK(false, "dasp_stage: expected an odd kernel size K in 1, 3, 5, 7, got K = ", k);
    }
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
           at::Tensor>
dasp_stage_backward_cuda(const at::Tensor& grad_out, const at::Tensor& x,
                         const at::Tensor& dw_weight, const at::Tensor& dw_scale,
                         const at::Tensor& dw_shift, const at::Tensor& pw_weight,
                         const at::Tensor& pw_scale, const at::Tensor& pw_shift,
                         const at::Tensor& ppm_weight) {
  check_dasp_stage(x, dw_weight, dw_scale, dw_shift, pw_weight, pw_scale, pw_shift, ppm_weight);
  check_cuda_dtype("dasp_stage", x);
  check_like_x("_dasp_stage_backward", x, "grad_out", grad_out);
  const auto expected = stage_out_shape(x, pw_weight);
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef(expected),
              "_dasp_stage_backward: expected grad_out of shape ", at::IntArrayRef(expected),
              ", got ", grad_out.sizes());
  c10::cuda::CUDAGuard guard(x.device());
  const auto fmt = x.suggest_memory_format();
  const bool cl = fmt == at::MemoryFormat::ChannelsLast;
  const auto dtype = x.scalar_type();
  const auto acc = acc_scalar_type(dtype);
  const int64_t cin = x.size(1), cout = pw_weight.size(0), k = dw_weight.size(2);
  auto down = [&](const at::Tensor& t) { return t.to(dtype).contiguous(); };
  if (grad_out.numel() == 0) {
    auto zeros = [](const at::Tensor& t) { return at::zeros(t.sizes(), t.options()); };
    return {at::zeros(x.sizes(), x.options().memory_format(fmt)), zeros(dw_weight),
            zeros(dw_scale), zeros(dw_shift), zeros(pw_weight), zeros(pw_scale), zeros(pw_shift),
            zeros(ppm_weight)};
  }

  // Work in float32/float64 from here on; the casts are no-ops for float32/float64 input.
  const at::Tensor xf = x.to(acc).contiguous(fmt);
  const at::Tensor g = grad_out.to(acc).contiguous(fmt);
  const at::Tensor dww = dw_weight.to(acc), dwsc = dw_scale.to(acc), dwsh = dw_shift.to(acc);
  const at::Tensor pw2d = pw_weight.reshape({cout, cin}).to(acc);
  const at::Tensor pwsc = pw_scale.to(acc).view({1, cout, 1, 1});
  const at::Tensor pwsh = pw_shift.to(acc).view({1, cout, 1, 1});

  // PPM branch: out = ppm(x) + r, so grad r = g.
  at::Tensor gx_ppm, g_ppm_w;
  std::tie(gx_ppm, g_ppm_w) = ppm_add_backward_cuda(g, xf, ppm_weight.to(acc));

  // Pointwise branch, recomputed: y1 = dw(x), z = pw_w @ y1, r = relu(z * pw_scale + pw_shift).
  const std::array<int64_t, 4> pad = {k / 2, k / 2, k / 2, k / 2};
  const at::Tensor y1 = dwconv_bn_act_cuda(xf, dww, dwsc, dwsh, 2, pad, 1, "relu", 0.0, 0.0);
  const at::Tensor z = channel_mix(pw2d, y1, cl);
  const at::Tensor g_pre = g * (z * pwsc + pwsh > 0);
  const at::Tensor g_pw_shift = g_pre.sum({0, 2, 3});
  const at::Tensor g_pw_scale = (g_pre * z).sum({0, 2, 3});
  const at::Tensor gz = (g_pre * pwsc).contiguous(fmt);
  const at::Tensor g_pw_w = channel_outer(gz, y1, cl);
  const at::Tensor gy1 = channel_mix(pw2d.t(), gz, cl).contiguous(fmt);

  at::Tensor gx_dw, g_dw_w, g_dw_scale, g_dw_shift;
  std::tie(gx_dw, g_dw_w, g_dw_scale, g_dw_shift) =
      dwconv_bn_act_backward_cuda(gy1, xf, dww, dwsc, dwsh, 2, pad, 1, "relu", 0.0, 0.0);

  const at::Tensor gx = (gx_ppm + gx_dw).to(dtype).contiguous(fmt);
  return {gx,
          down(g_dw_w),
          down(g_dw_scale),
          down(g_dw_shift),
          down(g_pw_w).view({cout, cin, 1, 1}),
          down(g_pw_scale),
          down(g_pw_shift),
          down(g_ppm_w)};
}

}  // namespace cuda
}  // namespace dasp_kernels

TORCH_LIBRARY_IMPL(dasp_kernels, CUDA, m) {
  m.impl("dasp_stage", &dasp_kernels::cuda::dasp_stage_cuda);
  m.impl("_dasp_stage_backward", &dasp_kernels::cuda::dasp_stage_backward_cuda);
}
