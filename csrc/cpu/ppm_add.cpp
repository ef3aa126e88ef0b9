// CPU ppm_add and its backward: checks, layout, threading. The arithmetic lives in
// ppm_add_kernel.h (compiled per instruction set, see cpu_kernels.h).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "../checks.h"
#include "bf16_via_float.h"
#include "cpu_kernels.h"
#include "output_pool.h"
#include "parallel_tasks.h"

namespace dasp_kernels {
namespace {

struct Geometry {
  cpu::PpmShape p;
  bool nhwc;
  at::MemoryFormat fmt;
};

Geometry geometry(const at::Tensor& x, const at::Tensor& weight) {
  Geometry g;
  g.fmt = x.suggest_memory_format();
  g.nhwc = g.fmt == at::MemoryFormat::ChannelsLast;
  auto& p = g.p;
  p.N = x.size(0);
  p.Cin = x.size(1);
  p.H = x.size(2);
  p.W = x.size(3);
  p.Cout = weight.size(0);
  p.Ho = (p.H + 1) / 2;
  p.Wo = (p.W + 1) / 2;
  // Tasks (image, band of pooled rows): about 8 per thread, bands of 2 pooled rows or more.
  p.bands = cpu::pick_bands(p.N, p.Ho, 2, 8);
  p.stream = false;  // set per output by the caller
  return g;
}

void check_ppm_weight(const char* op, const at::Tensor& x, const at::Tensor& weight) {
  check_like_x(op, x, "weight", weight);
  const int64_t cin = x.size(1);
  TORCH_CHECK(weight.dim() == 4 && weight.size(1) == cin && weight.size(2) == 1 &&
                  weight.size(3) == 1,
              op, ": expected weight of shape [Cout, Cin, 1, 1] with Cin = ", cin, ", got ",
              weight.sizes());
}

at::Tensor ppm_add_cpu(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& residual) {
  check_ppm_add(x, weight, residual);
  check_backend_dtype("ppm_add", "cpu", x, DASP_CPU_DTYPES);
  if (cpu::is_bf16(x))
    return cpu::narrow_bf16(ppm_add_cpu(cpu::widen(x), cpu::widen(weight), cpu::widen(residual)));
  Geometry g = geometry(x, weight);
  g.p.stream = cpu::stream_output(residual.numel() * x.element_size());
  const auto& p = g.p;
  at::Tensor out = cpu::pooled_empty({p.N, p.Cout, p.Ho, p.Wo}, x.options(), g.fmt);
  if (out.numel() == 0) return out;
  if (p.Cin == 0) return out.copy_(residual);
  const at::Tensor xc = x.contiguous(g.fmt);
  const at::Tensor rc = residual.contiguous(g.fmt);
  const at::Tensor w = weight.reshape({p.Cout, p.Cin}).contiguous();
  const at::Tensor wt = w.t().contiguous();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "ppm_add_cpu", [&] {
    const auto& k = cpu::kernels<scalar_t>();
    cpu::PpmArgs<scalar_t> a{};
    a.x = xc.const_data_ptr<scalar_t>();
    a.w = w.const_data_ptr<scalar_t>();
    a.wt = wt.const_data_ptr<scalar_t>();
    a.residual = rc.const_data_ptr<scalar_t>();
    a.out = out.mutable_data_ptr<scalar_t>();
    const auto fn = g.nhwc ? k.ppm_fwd_nhwc : k.ppm_fwd_nchw;
    cpu::run_tasks(p.N * p.bands, [&](int64_t t0, int64_t t1) { fn(p, a, t0, t1); });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> ppm_add_backward_cpu(const at::Tensor& grad_out,
                                                        const at::Tensor& x,
                                                        const at::Tensor& weight) {
  const char* op = "ppm_add";
  check_rank4_floating(op, x);
  check_ppm_weight(op, x, weight);
  check_backend_dtype(op, "cpu", x, DASP_CPU_DTYPES);
  if (cpu::is_bf16(x)) {
    check_like_x("_ppm_add_backward", x, "grad_out", grad_out);
    return cpu::narrow_bf16(
        ppm_add_backward_cpu(cpu::widen(grad_out), cpu::widen(x), cpu::widen(weight)));
  }
  Geometry g = geometry(x, weight);
  g.p.stream = cpu::stream_output(x.numel() * x.element_size());
  const auto& p = g.p;
  const std::vector<int64_t> out_shape = {p.N, p.Cout, p.Ho, p.Wo};
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef(out_shape),
              "_ppm_add_backward: expected grad_out of shape ", at::IntArrayRef(out_shape),
              ", got ", grad_out.sizes());
  check_like_x("_ppm_add_backward", x, "grad_out", grad_out);

  at::Tensor gx = cpu::pooled_empty(x.sizes(), x.options(), g.fmt);
  at::Tensor gw = at::zeros({p.Cout, p.Cin, 1, 1}, weight.options());
  if (x.numel() == 0) return {gx, gw};
  if (p.Cout == 0) return {gx.zero_(), gw};
  const at::Tensor xc = x.contiguous(g.fmt);
  const at::Tensor go = grad_out.contiguous(g.fmt);
  const at::Tensor w = weight.reshape({p.Cout, p.Cin}).contiguous();
  const at::Tensor wt = w.t().contiguous();
  const int64_t tasks = p.N * p.bands, CC = p.Cout * p.Cin;
  at::Tensor gw_part = at::empty({tasks, CC}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "ppm_add_backward_cpu", [&] {
    const auto& k = cpu::kernels<scalar_t>();
    cpu::PpmArgs<scalar_t> a{};
    a.x = xc.const_data_ptr<scalar_t>();
    a.w = w.const_data_ptr<scalar_t>();
    a.wt = wt.const_data_ptr<scalar_t>();
    a.gout = go.const_data_ptr<scalar_t>();
    a.gx = gx.mutable_data_ptr<scalar_t>();
    a.gw_part = gw_part.mutable_data_ptr<scalar_t>();
    const auto fn = g.nhwc ? k.ppm_bwd_nhwc : k.ppm_bwd_nchw;
    cpu::run_tasks(tasks, [&](int64_t t0, int64_t t1) { fn(p, a, t0, t1); });
    // Per-task partial sums, added in task order: the result does not depend on threads.
    scalar_t* gwp = gw.mutable_data_ptr<scalar_t>();
    const scalar_t* part = a.gw_part;
    for (int64_t t = 0; t < tasks; ++t)
      for (int64_t i = 0; i < CC; ++i) gwp[i] += part[t * CC + i];
  });
  return {gx, gw};
}

}  // namespace
}  // namespace dasp_kernels

TORCH_LIBRARY_IMPL(dasp_kernels, CPU, m) {
  m.impl("ppm_add", &dasp_kernels::ppm_add_cpu);
  m.impl("_ppm_add_backward", &dasp_kernels::ppm_add_backward_cpu);
}
