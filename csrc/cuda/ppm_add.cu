// CUDA kernels of ppm_add: conv1x1(maxpool2d(x, 2, 2, ceil_mode=True), weight) + residual.
//
// Forward: the fused pool + 1x1-conv GEMM of pool_pw_gemm.cuh (the pooled map never goes to
// memory). Backward: pool to a float32/float64 buffer, two GEMMs (at::matmul) for the 1x1 conv,
// then each input element takes the pooled gradient if it is its window's argmax (windows do not
// overlap, so this is a gather: no atomics).
#include <torch/library.h>

#include "common.cuh"
#include "pool_pw_gemm.cuh"

namespace dasp_kernels {
namespace cuda {
namespace {

template <typename scalar_t, bool CL>
__global__ void __launch_bounds__(kThreads)
    pool_kernel(const scalar_t* __restrict__ x, acc_type<scalar_t>* __restrict__ out, int64_t total,
                int64_t C, int64_t H, int64_t W, int64_t Ho, int64_t Wo) {
  for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < total;
       e += (int64_t)gridDim.x * blockDim.x) {
    int64_t n, c, oh, ow;
    unravel4<CL>(e, C, Ho, Wo, n, c, oh, ow);
    const scalar_t* base = x + offset4<CL>(n, c, 0, 0, C, H, W);
    out[e] = pool2x2(base, CL ? W * C : W, CL ? C : 1, H, W, oh, ow, nullptr);
  }
}

template <typename scalar_t, bool CL>
__global__ void __launch_bounds__(kThreads)
    pool_scatter_kernel(const scalar_t* __restrict__ x,
                        const acc_type<scalar_t>* __restrict__ gpool, scalar_t* __restrict__ gx,
                        int64_t total, int64_t C, int64_t H, int64_t W, int64_t Ho, int64_t Wo) {
  for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < total;
       e += (int64_t)gridDim.x * blockDim.x) {
    int64_t n, c, ih, iw;
    unravel4<CL>(e, C, H, W, n, c, ih, iw);
    const int64_t oh = ih / 2, ow = iw / 2;
    const scalar_t* base = x + offset4<CL>(n, c, 0, 0, C, H, W);
    int64_t arg;
    pool2x2(base, CL ? W * C : W, CL ? C : 1, H, W, oh, ow, &arg);
    gx[e] = arg == ih * W + iw ? static_cast<scalar_t>(gpool[offset4<CL>(n, c, oh, ow, C, Ho, Wo)])
                               : scalar_t(0);
  }
}

void check_ppm_backward_args(const at::Tensor& grad_out, const at::Tensor& x,
                             const at::Tensor& weight) {
  const char* op = "_ppm_add_backward";
  check_rank4_floating("ppm_add", x);
  check_like_x(op, x, "weight", weight);
  check_like_x(op, x, "grad_out", grad_out);
  TORCH_CHECK(weight.dim() == 4 && weight.size(1) == x.size(1) && weight.size(2) == 1 &&
                  weight.size(3) == 1,
              "ppm_add: expected weight of shape [Cout, Cin, 1, 1] with Cin = ", x.size(1),
              ", got ", weight.sizes());
  const std::vector<int64_t> expected = {x.size(0), weight.size(0), (x.size(2) + 1) / 2,
                                         (x.size(3) + 1) / 2};
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef(expected), op,
              ": expected grad_out of shape ", at::IntArrayRef(expected), ", got ",
              grad_out.sizes());
}

}  // namespace

at::Tensor channel_mix(const at::Tensor& w2d, const at::Tensor& in, bool cl) {
  const int64_t N = in.size(0), Ci = in.size(1), H = in.size(2), W = in.size(3);
  const int64_t Co = w2d.size(0);
  if (cl) {
    at::Tensor m = in.permute({0, 2, 3, 1}).reshape({N * H * W, Ci});
    return at::matmul(m, w2d.t()).view({N, H, W, Co}).permute({0, 3, 1, 2});
  }
  return at::matmul(w2d, in.reshape({N, Ci, H * W})).view({N, Co, H, W});
}

at::Tensor channel_outer(const at::Tensor& a, const at::Tensor& b, bool cl) {
  const int64_t N = a.size(0), Co = a.size(1), Ci = b.size(1), L = a.size(2) * a.size(3);
  if (cl) {
    at::Tensor am = a.permute({0, 2, 3, 1}).reshape({N * L, Co});
    at::Tensor bm = b.permute({0, 2, 3, 1}).reshape({N * L, Ci});
    return at::matmul(am.t(), bm);
  }
  return at::matmul(a.reshape({N, Co, L}), b.reshape({N, Ci, L}).transpose(1, 2)).sum(0);
}

at::Tensor ppm_add_cuda(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& residual) {
  check_ppm_add(x, weight, residual);
  check_cuda_dtype("ppm_add", x);
  c10::cuda::CUDAGuard guard(x.device());
  const auto fmt = x.suggest_memory_format();
  const bool cl = fmt == at::MemoryFormat::ChannelsLast;
  at::Tensor out = at::empty(residual.sizes(), x.options().memory_format(fmt));
  if (out.numel() == 0) return out;
  const at::Tensor xc = x.contiguous(fmt);
  const at::Tensor rc = residual.contiguous(fmt);
  const at::Tensor w = weight.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "ppm_add_cuda", [&] {
    StageArgs<scalar_t> args{};
    args.x = xc.data_ptr<scalar_t>();
    args.ppm_w = w.data_ptr<scalar_t>();
    args.residual = rc.data_ptr<scalar_t>();
    args.out = out.data_ptr<scalar_t>();
    args.N = x.size(0);
    args.Cin = x.size(1);
    args.H = x.size(2);
    args.W = x.size(3);
    args.Cout = weight.size(0);
    args.Ho = out.size(2);
    args.Wo = out.size(3);
    launch_pool_pw_gemm<scalar_t, false, 1>(args, cl);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> ppm_add_backward_cuda(const at::Tensor& grad_out,
                                                         const at::Tensor& x,
                                                         const at::Tensor& weight) {
  check_ppm_backward_args(grad_out, x, weight);
  check_cuda_dtype("ppm_add", x);
  c10::cuda::CUDAGuard guard(x.device());
  const auto fmt = x.suggest_memory_format();
  const bool cl = fmt == at::MemoryFormat::ChannelsLast;
  const int64_t N = x.size(0), Cin = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t Cout = weight.size(0), Ho = grad_out.size(2), Wo = grad_out.size(3);
  at::Tensor gx = at::empty(x.sizes(), x.options().memory_format(fmt));
  if (grad_out.numel() == 0 || x.numel() == 0) {
    return {gx.zero_(), at::zeros(weight.sizes(), weight.options())};
  }
  const auto acc_dtype = acc_scalar_type(x.scalar_type());
  const at::Tensor xc = x.contiguous(fmt);
  const at::Tensor g = grad_out.to(acc_dtype).contiguous(fmt);
  const at::Tensor w2d = weight.reshape({Cout, Cin}).to(acc_dtype);
  at::Tensor pooled = at::empty({N, Cin, Ho, Wo}, x.options().dtype(acc_dtype).memory_format(fmt));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "ppm_pool_cuda", [&] {
    using acc_t = acc_type<scalar_t>;
    const int64_t total = pooled.numel();
    auto stream = at::cuda::getCurrentCUDAStream();
    if (cl) {
      pool_kernel<scalar_t, true><<<grid_for(total), kThreads, 0, stream>>>(
          xc.data_ptr<scalar_t>(), pooled.data_ptr<acc_t>(), total, Cin, H, W, Ho, Wo);
    } else {
      pool_kernel<scalar_t, false><<<grid_for(total), kThreads, 0, stream>>>(
          xc.data_ptr<scalar_t>(), pooled.data_ptr<acc_t>(), total, Cin, H, W, Ho, Wo);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  const at::Tensor gw = channel_outer(g, pooled, cl);
  const at::Tensor gpool = channel_mix(w2d.t(), g, cl).contiguous(fmt);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "ppm_scatter_cuda",
                                  [&] {
    using acc_t = acc_type<scalar_t>;
    const int64_t total = gx.numel();
    auto stream = at::cuda::getCurrentCUDAStream();
    if (cl) {
      pool_scatter_kernel<scalar_t, true><<<grid_for(total), kThreads, 0, stream>>>(
          xc.data_ptr<scalar_t>(), gpool.data_ptr<acc_t>(), gx.data_ptr<scalar_t>(), total, Cin,
          H, W, Ho, Wo);
    } else {
      pool_scatter_kernel<scalar_t, false><<<grid_for(total), kThreads, 0, stream>>>(
          xc.data_ptr<scalar_t>(), gpool.data_ptr<acc_t>(), gx.data_ptr<scalar_t>(), total, Cin,
          H, W, Ho, Wo);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {gx, gw.to(weight.scalar_type()).reshape({Cout, Cin, 1, 1}).contiguous()};
}

}  // namespace cuda
}  // namespace dasp_kernels

TORCH_LIBRARY_IMPL(dasp_kernels, CUDA, m) {
  m.impl("ppm_add", &dasp_kernels::cuda::ppm_add_cuda);
  m.impl("_ppm_add_backward", &dasp_kernels::cuda::ppm_add_backward_cuda);
}
