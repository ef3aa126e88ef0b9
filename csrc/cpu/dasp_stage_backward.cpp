// CPU backward of dasp_stage. Recomputes the depthwise branch with the library's dwconv_bn_act
// kernel, runs the two 1x1 convolutions as matrix products, takes the pointwise BN + ReLU
// backward in one pass, and leaves the depthwise and PPM backward to the _dwconv_bn_act_backward
// and _ppm_add_backward kernels.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <tuple>
#include <vector>

#include "../checks.h"
#include "bf16_via_float.h"

namespace dasp_kernels {
namespace {

using Grads8 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                          at::Tensor, at::Tensor>;

// Over z (n, c, i) = z[n * sn + c * sc + i * si] and g alike: with a = z * scale[c] + shift[c],
// g2 = g * (a > 0); returns sum(g2) and sum(g2 * z) per channel, and writes g2 * scale over z.
// Partial sums per fixed chunk, added in chunk order: the result does not depend on threads.
template <typename T>
void pw_bn_relu_backward(T* z, const T* g, int64_t n_img, int64_t c_n, int64_t hw, bool cl,
                         const T* scale, const T* shift, T* g_shift, T* g_scale) {
  constexpr int64_t kRows = 1024;
  // Units: channels-last -> blocks of kRows pixels (all channels); planar -> one (n, c) plane.
  const int64_t units = cl ? (n_img * hw + kRows - 1) / kRows : n_img * c_n;
  std::vector<T> part(units * 2 * (cl ? c_n : 1), T(0));
  at::parallel_for(0, units, 1, [&](int64_t u0, int64_t u1) {
    for (int64_t u = u0; u < u1; ++u) {
      if (cl) {
        T* ps = part.data() + u * 2 * c_n;
        T* pz = ps + c_n;
        const int64_t r1 = std::min((u + 1) * kRows, n_img * hw);
        for (int64_t r = u * kRows; r < r1; ++r) {
          T* zr = z + r * c_n;
          const T* gr = g + r * c_n;
          for (int64_t c = 0; c < c_n; ++c) {
            const T zv = zr[c];
            const T g2 = zv * scale[c] + shift[c] > T(0) ? gr[c] : T(0);
            ps[c] += g2;
            pz[c] += g2 * zv;
            zr[c] = g2 * scale[c];
          }
        }
      } else {
        const int64_t c = u % c_n;
        T* zp = z + u * hw;
        const T* gp = g + u * hw;
        T sum = 0, sum_z = 0;
        for (int64_t i = 0; i < hw; ++i) {
          const T zv = zp[i];
          const T g2 = zv * scale[c] + shift[c] > T(0) ? gp[i] : T(0);
          sum += g2;
          sum_z += g2 * zv;
          zp[i] = g2 * scale[c];
        }
        part[2 * u] = sum;
        part[2 * u + 1] = sum_z;
      }
    }
  });
  std::fill(g_shift, g_shift + c_n, T(0));
  std::fill(g_scale, g_scale + c_n, T(0));
  for (int64_t u = 0; u < units; ++u) {
    if (cl) {
      for (int64_t c = 0; c < c_n; ++c) {
        g_shift[c] += part[u * 2 * c_n + c];
        g_scale[c] += part[u * 2 * c_n + c_n + c];
      }
    } else {
      g_shift[u % c_n] += part[2 * u];
      g_scale[u % c_n] += part[2 * u + 1];
    }
  }
}

c10::OperatorHandle library_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "");
}

Grads8 dasp_stage_backward_cpu(const at::Tensor& grad_out, const at::Tensor& x,
                               const at::Tensor& dw_weight, const at::Tensor& dw_scale,
                               const at::Tensor& dw_shift, const at::Tensor& pw_weight,
                               const at::Tensor& pw_scale, const at::Tensor& pw_shift,
                               const at::Tensor& ppm_weight) {
  check_dasp_stage(x, dw_weight, dw_scale, dw_shift, pw_weight, pw_scale, pw_shift, ppm_weight);
  const char* op = "_dasp_stage_backward";
  check_backend_dtype(op, "cpu", x, DASP_CPU_DTYPES);
  check_like_x(op, x, "grad_out", grad_out);
  if (cpu::is_bf16(x))
    return cpu::narrow_bf16(dasp_stage_backward_cpu(
        cpu::widen(grad_out), cpu::widen(x), cpu::widen(dw_weight), cpu::widen(dw_scale),
        cpu::widen(dw_shift), cpu::widen(pw_weight), cpu::widen(pw_scale), cpu::widen(pw_shift),
        cpu::widen(ppm_weight)));
  const int64_t n = x.size(0), cin = x.size(1), cout = pw_weight.size(0), k = dw_weight.size(2);
  const int64_t ho = (x.size(2) + 1) / 2, wo = (x.size(3) + 1) / 2, hw = ho * wo, p = k / 2;
  std::vector<int64_t> expected = {n, cout, ho, wo};
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef(expected), op, ": expected grad_out of shape ",
              at::IntArrayRef(expected), ", got ", grad_out.sizes());
  const auto fmt = x.suggest_memory_format();
  const bool cl = fmt == at::MemoryFormat::ChannelsLast;
  auto zeros_like = [](const at::Tensor& t) { return at::zeros(t.sizes(), t.options()); };
  at::Tensor g_pw_scale = zeros_like(pw_scale), g_pw_shift = zeros_like(pw_shift);
  if (x.numel() == 0 || cout == 0) {
    return {at::zeros(x.sizes(), x.options().memory_format(fmt)), zeros_like(dw_weight),
            zeros_like(dw_scale), zeros_like(dw_shift), zeros_like(pw_weight), g_pw_scale,
            g_pw_shift, zeros_like(ppm_weight)};
  }
  // The library ops below are called as kernels, not as differentiable ops.
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  static auto dw_fwd = library_op("dasp_kernels::dwconv_bn_act")
                           .typed<at::Tensor(const at::Tensor&, const at::Tensor&,
                                             const at::Tensor&, const at::Tensor&, int64_t,
                                             at::IntArrayRef, int64_t, c10::string_view, double,
                                             double)>();
  static auto dw_bwd = library_op("dasp_kernels::_dwconv_bn_act_backward")
                           .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
                               const at::Tensor&, const at::Tensor&, const at::Tensor&,
                               const at::Tensor&, const at::Tensor&, int64_t, at::IntArrayRef,
                               int64_t, c10::string_view, double, double)>();
  const std::array<int64_t, 4> pad = {p, p, p, p};  // the stage's depthwise: K / 2 on each side
  static auto ppm_bwd = library_op("dasp_kernels::_ppm_add_backward")
                            .typed<std::tuple<at::Tensor, at::Tensor>(
                                const at::Tensor&, const at::Tensor&, const at::Tensor&)>();

  const at::Tensor y1 = dw_fwd.call(x, dw_weight, dw_scale, dw_shift, 2, pad, 1, "relu", 0.0, 0.0);
  const at::Tensor w2 = pw_weight.reshape({cout, cin});
  // 1x1 convolution as a matrix product: rows of pixels (channels last) or per-image planes.
  at::Tensor y_mat, z, g;
  if (cl) {
    y_mat = y1.permute({0, 2, 3, 1}).reshape({n * hw, cin});
    z = at::mm(y_mat, w2.t());
    g = grad_out.permute({0, 2, 3, 1}).reshape({n * hw, cout}).contiguous();
  } else {
    y_mat = y1.reshape({n, cin, hw});
    z = at::matmul(w2, y_mat).contiguous();
    g = grad_out.reshape({n, cout, hw}).contiguous();
  }
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dasp_stage_backward", [&] {
    const at::Tensor s = pw_scale.contiguous(), b = pw_shift.contiguous();
    pw_bn_relu_backward<scalar_t>(z.data_ptr<scalar_t>(), g.const_data_ptr<scalar_t>(), n, cout,
                                  hw, cl, s.const_data_ptr<scalar_t>(),
                                  b.const_data_ptr<scalar_t>(), g_pw_shift.data_ptr<scalar_t>(),
                                  g_pw_scale.data_ptr<scalar_t>());
  });
  const at::Tensor& gz = z;  // now grad of the 1x1 convolution's output
  at::Tensor g_pw_w, g_y1;
  if (cl) {
    g_pw_w = at::mm(gz.t(), y_mat);
    g_y1 = at::mm(gz, w2).view({n, ho, wo, cin}).permute({0, 3, 1, 2});
  } else {
    g_pw_w = at::matmul(gz, y_mat.transpose(1, 2)).sum(0);
    g_y1 = at::matmul(w2.t(), gz).view({n, cin, ho, wo});
  }
  auto [g_x, g_dw_w, g_dw_scale, g_dw_shift] =
      dw_bwd.call(g_y1, x, dw_weight, dw_scale, dw_shift, 2, pad, 1, "relu", 0.0, 0.0);
  auto [g_x_ppm, g_ppm_w] = ppm_bwd.call(grad_out, x, ppm_weight);
  g_x = g_x.contiguous(fmt);
  g_x.add_(g_x_ppm);
  return {g_x, g_dw_w.contiguous(), g_dw_scale, g_dw_shift,
          g_pw_w.reshape({cout, cin, 1, 1}).contiguous(), g_pw_scale, g_pw_shift,
          g_ppm_w.contiguous()};
}

}  // namespace

TORCH_LIBRARY_IMPL(dasp_kernels, CPU, m) {
  m.impl("_dasp_stage_backward", &dasp_stage_backward_cpu);
}

}  // namespace dasp_kernels
