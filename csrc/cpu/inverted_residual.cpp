// CPU inverted_residual (MobileNetV2's block in one pass): checks, layout, weight packing, bands
// and threads, scratch. The arithmetic lives in inverted_residual_kernel.h (compiled per
// instruction set, see cpu_kernels.h).
//
// The kernel computes channels-last: an NCHW input is copied to channels-last first and the
// result copied back to NCHW (the output keeps the input's memory format, as the other ops'
// outputs do). Those two copies cost a pass over x and over the output each; an NCHW kernel
// could avoid them, this first version does not have one.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <vector>

#include "../checks.h"
#include "../se_aten.h"
#include "bf16_via_float.h"
#include "cpu_kernels.h"
#include "output_pool.h"
#include "parallel_tasks.h"
#include "workspace.h"

namespace dasp_kernels {
namespace {

// Tasks per thread that pick_bands aims at (parallel_tasks.h). Few: each band expands again the
// rows its first output row shares with the band before (the halo), a 1x1 conv over whole rows.
constexpr int64_t kTasksPerThread = 2;
// A chunk's depthwise result (chunk x E values) is kept about this small, so that it is still in
// L1 when the projection reads it back, and at most kMaxChunk pixels.
constexpr int64_t kChunkBytes = int64_t(24) << 10;
constexpr int64_t kMaxChunk = 64;

int64_t round_up(int64_t a, int64_t b) { return (a + b - 1) / b * b; }

// The weights of one call in the kernel's layout, and the storage behind IrArgs' pointers.
template <typename T>
struct Packed {
  std::vector<T> we, be, wd, sd, bd, wp, bp;
};

// w [cols][k] (a 1x1 conv's weight), each row times scale[col], as blocks of `block` columns over
// cols_pad: block b holds columns [b * block, b * block + nb) as [k][nb], nb = block except for a
// narrower last block; columns past `cols` are zeros.
template <typename T>
std::vector<T> pack_columns(const at::Tensor& w, const at::Tensor& scale, int64_t cols_pad,
                            int64_t block) {
  const at::Tensor wc = w.reshape({w.size(0), w.size(1)}).contiguous(), sc = scale.contiguous();
  const int64_t cols = wc.size(0), k = wc.size(1);
  const T* wp = wc.const_data_ptr<T>();
  const T* sp = sc.const_data_ptr<T>();
  std::vector<T> out(cols_pad * k, T(0));
  for (int64_t co = 0; co < cols; ++co) {
    const int64_t b0 = co / block * block, nb = std::min(block, cols_pad - b0);
    for (int64_t ci = 0; ci < k; ++ci) out[b0 * k + ci * nb + (co - b0)] = wp[co * k + ci] * sp[co];
  }
  return out;
}

// v [n], zero padded to n_pad.
template <typename T>
std::vector<T> padded(const at::Tensor& v, int64_t n_pad) {
  const at::Tensor c = v.contiguous();
  std::vector<T> out(n_pad, T(0));
  std::copy(c.const_data_ptr<T>(), c.const_data_ptr<T>() + c.numel(), out.begin());
  return out;
}

// What the op's arguments say beyond the tensors. pad: [top, bottom, left, right].
struct IrConf {
  int64_t stride, dilation;
  std::vector<int64_t> pad;
  IrActs acts;
  double alpha[3], beta[3];  // expansion, depthwise, projection
  bool residual;
};

// Squeeze-and-excitation's tensors and configuration (conf.on: the block has it).
struct IrSe {
  SeConf conf;
  std::optional<at::Tensor> reduce_weight, reduce_bias, expand_weight, expand_bias;
  double alpha, beta;
};

cpu::IrShape geometry(const at::Tensor& x, const at::Tensor& dw_weight,
                      const at::Tensor& project_weight, bool expand, const IrConf& cf) {
  cpu::IrShape s{};
  s.N = x.size(0);
  s.C = x.size(1);
  s.H = x.size(2);
  s.W = x.size(3);
  s.E = dw_weight.size(0);
  s.Co = project_weight.size(0);
  s.K = dw_weight.size(2);
  s.S = cf.stride;
  s.D = cf.dilation;
  s.pad_t = cf.pad[0];
  s.pad_l = cf.pad[2];
  s.Ho = dwconv_bn_act_out_size(s.H, s.K, s.S, cf.pad[0], cf.pad[1], s.D);
  s.Wo = dwconv_bn_act_out_size(s.W, s.K, s.S, cf.pad[2], cf.pad[3], s.D);
  s.act_e = static_cast<int>(cf.acts.expand);
  s.act_d = static_cast<int>(cf.acts.dw);
  s.act_p = static_cast<int>(cf.acts.project);
  s.alpha_e = cf.alpha[0];
  s.beta_e = cf.beta[0];
  s.alpha_d = cf.alpha[1];
  s.beta_d = cf.beta[1];
  s.alpha_p = cf.alpha[2];
  s.beta_p = cf.beta[2];
  s.expand = expand;
  s.residual = cf.residual;
  const int64_t span = s.D * (s.K - 1);
  s.ring_cap = span + 1;
  // The halo a band expands again is span + 1 - S rows: bands of at least 4 times that.
  const int64_t halo = std::max<int64_t>(1, span + 1 - s.S);
  s.bands = cpu::pick_bands(s.N, s.Ho, 4 * halo, kTasksPerThread);
  // The depthwise sweep reads up to 2 (kIrMaxPx - 1) + K - 1 units past a block's first output.
  s.ring_w = std::max(s.pad_l + s.W, (s.Wo - 1) * s.S + s.D * (2 * (cpu::kIrMaxPx - 1) + s.K - 1) + 1);
  return s;
}

template <typename T>
void size_for_kernel(cpu::IrShape& s, const cpu::Kernels<T>& k) {
  s.e_pad = round_up(s.E, k.ir_lanes);
  s.co_pad = round_up(s.Co, k.ir_lanes);
  const int64_t step = k.ir_step;
  const int64_t fit = kChunkBytes / (static_cast<int64_t>(sizeof(T)) * s.e_pad) / step * step;
  s.chunk = std::clamp<int64_t>(fit, step, std::max(step, kMaxChunk / step * step));
  s.chunk = std::min(s.chunk, round_up(s.Wo, step));
}

template <typename T>
Packed<T> pack(const cpu::IrShape& s, int64_t block,
               const std::optional<at::Tensor>& expand_weight,
               const std::optional<at::Tensor>& expand_scale,
               const std::optional<at::Tensor>& expand_shift, const at::Tensor& dw_weight,
               const at::Tensor& dw_scale, const at::Tensor& dw_shift,
               const at::Tensor& project_weight, const at::Tensor& project_scale,
               const at::Tensor& project_shift) {
  Packed<T> p;
  if (s.expand) {
    p.we = pack_columns<T>(*expand_weight, *expand_scale, s.e_pad, block);
    p.be = padded<T>(*expand_shift, s.e_pad);
  }
  const int64_t kk = s.K * s.K;
  const at::Tensor dw = dw_weight.contiguous();
  const T* dwp = dw.const_data_ptr<T>();
  p.wd.assign(kk * s.e_pad, T(0));
  for (int64_t e = 0; e < s.E; ++e)
    for (int64_t t = 0; t < kk; ++t) p.wd[t * s.e_pad + e] = dwp[e * kk + t];
  p.sd = padded<T>(dw_scale, s.e_pad);
  p.bd = padded<T>(dw_shift, s.e_pad);
  p.wp = pack_columns<T>(project_weight, project_scale, s.co_pad, block);
  p.bp = padded<T>(project_shift, s.co_pad);
  return p;
}

// A worker's ring, tags and chunk buffer from its thread's workspace. The ring's zero columns
// (and, without expansion, its pad channels, which the copy of x leaves alone) are cleared here;
// the kernel never writes them.
template <typename T>
cpu::IrScratch<T> make_scratch(const cpu::IrShape& s) {
  using W = cpu::Workspace;
  const int64_t row = s.ring_w * s.e_pad, ring = s.ring_cap * row;
  cpu::Workspace& ws = cpu::thread_workspace();
  ws.reset(W::bytes_for<T>(ring) + W::bytes_for<int64_t>(s.ring_cap) +
           W::bytes_for<T>(s.chunk * s.e_pad));
  cpu::IrScratch<T> scr{ws.take<T>(ring), ws.take<int64_t>(s.ring_cap),
                        ws.take<T>(s.chunk * s.e_pad)};
  if (!s.expand) {
    std::fill(scr.ring, scr.ring + ring, T(0));
    return scr;
  }
  for (int64_t r = 0; r < s.ring_cap; ++r) {
    T* base = scr.ring + r * row;
    std::fill(base, base + s.pad_l * s.e_pad, T(0));
    std::fill(base + (s.pad_l + s.W) * s.e_pad, base + row, T(0));
  }
  return scr;
}

// mean[n][e] of the depthwise output from its row sums [N][Ho][e_pad], the rows added in order
// (the same sum for any band split and build).
template <typename T>
at::Tensor mean_of_rows(const cpu::IrShape& s, const at::Tensor& row_sum) {
  at::Tensor mean = at::empty({s.N, s.E}, row_sum.options());
  const T* rs = row_sum.const_data_ptr<T>();
  T* m = mean.mutable_data_ptr<T>();
  const T inv = T(1) / static_cast<T>(s.Ho * s.Wo);
  for (int64_t n = 0; n < s.N; ++n)
    for (int64_t e = 0; e < s.E; ++e) {
      T acc = 0;
      for (int64_t oy = 0; oy < s.Ho; ++oy) acc += rs[(n * s.Ho + oy) * s.e_pad + e];
      m[n * s.E + e] = acc * inv;
    }
  return mean;
}

// The block with SE, "keep the depthwise output" (see inverted_residual_kernel.h for why): pass
// 1 expands and convolves as the one-pass kernel does, but stores the depthwise output d and
// each row's channel sums instead of projecting; then the gate per image and channel (ATen, two
// tiny FCs), folded into each image's projection weights; pass 2 projects d with them.
template <typename T>
void run_se(cpu::IrShape s, const cpu::Kernels<T>& k, cpu::IrArgs<T> a, const IrSe& se,
            const at::Tensor& project_weight, const at::Tensor& project_scale,
            const at::TensorOptions& opt) {
  const at::Tensor d = cpu::pooled_empty({s.N, s.Ho, s.Wo, s.e_pad}, opt,
                                         at::MemoryFormat::Contiguous);
  const at::Tensor row_sum = at::empty({s.N, s.Ho, s.e_pad}, opt);
  a.dw_out = d.mutable_data_ptr<T>();
  a.row_sum = row_sum.mutable_data_ptr<T>();
  s.se_pass = 1;
  cpu::run_tasks_with(
      s.N * s.bands, [&] { return make_scratch<T>(s); },
      [&](const cpu::IrScratch<T>& scr, int64_t t) { k.ir_fwd(s, a, scr, t); });
  const at::Tensor gate = se_gate(mean_of_rows<T>(s, row_sum), *se.reduce_weight,
                                  *se.reduce_bias, *se.expand_weight, *se.expand_bias, se.conf,
                                  se.alpha, se.beta);
  const at::Tensor w = gated_projection(project_weight, gate);
  std::vector<T> wp;
  wp.reserve(s.N * s.co_pad * s.E);
  for (int64_t n = 0; n < s.N; ++n) {
    const std::vector<T> wn = pack_columns<T>(w[n], project_scale, s.co_pad, k.ir_block);
    wp.insert(wp.end(), wn.begin(), wn.end());
  }
  a.wp = wp.data();
  a.wp_image = s.co_pad * s.E;
  s.se_pass = 2;
  const cpu::IrScratch<T> none{};
  cpu::run_tasks(s.N * s.bands, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) k.ir_fwd(s, a, none, t);
  });
}

// The forward, its inputs checked by the caller.
at::Tensor forward(const at::Tensor& x, const std::optional<at::Tensor>& expand_weight,
                   const std::optional<at::Tensor>& expand_scale,
                   const std::optional<at::Tensor>& expand_shift, const at::Tensor& dw_weight,
                   const at::Tensor& dw_scale, const at::Tensor& dw_shift,
                   const at::Tensor& project_weight, const at::Tensor& project_scale,
                   const at::Tensor& project_shift, const IrConf& cf, const IrSe& se) {
  check_backend_dtype("inverted_residual", "cpu", x, DASP_CPU_DTYPES);
  if (cpu::is_bf16(x)) {  // no bf16 kernel yet (bf16_via_float.h)
    const IrSe se32{se.conf, cpu::widen(se.reduce_weight), cpu::widen(se.reduce_bias),
                    cpu::widen(se.expand_weight), cpu::widen(se.expand_bias), se.alpha, se.beta};
    return cpu::narrow_bf16(forward(
        cpu::widen(x), cpu::widen(expand_weight), cpu::widen(expand_scale),
        cpu::widen(expand_shift), cpu::widen(dw_weight), cpu::widen(dw_scale),
        cpu::widen(dw_shift), cpu::widen(project_weight), cpu::widen(project_scale),
        cpu::widen(project_shift), cf, se32));
  }
  const at::MemoryFormat fmt = x.suggest_memory_format();
  cpu::IrShape s = geometry(x, dw_weight, project_weight, given(expand_weight), cf);
  const std::vector<int64_t> sizes = {s.N, s.Co, s.Ho, s.Wo};
  at::Tensor out = cpu::pooled_empty(sizes, x.options(), at::MemoryFormat::ChannelsLast);
  if (out.numel() == 0) return fmt == at::MemoryFormat::ChannelsLast ? out : out.contiguous();
  const at::Tensor xc = x.contiguous(at::MemoryFormat::ChannelsLast);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "inverted_residual_cpu", [&] {
    const auto& k = cpu::kernels<scalar_t>();
    size_for_kernel(s, k);
    const Packed<scalar_t> p =
        pack<scalar_t>(s, k.ir_block, expand_weight, expand_scale, expand_shift, dw_weight,
                       dw_scale, dw_shift, project_weight, project_scale, project_shift);
    const cpu::IrArgs<scalar_t> a{xc.const_data_ptr<scalar_t>(), p.we.data(), p.be.data(),
                                  p.wd.data(), p.sd.data(), p.bd.data(), p.wp.data(),
                                  p.bp.data(), out.mutable_data_ptr<scalar_t>()};
    if (se.conf.on)
      return run_se<scalar_t>(s, k, a, se, project_weight, project_scale, x.options());
    cpu::run_tasks_with(
        s.N * s.bands, [&] { return make_scratch<scalar_t>(s); },
        [&](const cpu::IrScratch<scalar_t>& scr, int64_t t) { k.ir_fwd(s, a, scr, t); });
  });
  if (fmt == at::MemoryFormat::ChannelsLast) return out;
  at::Tensor res = cpu::pooled_empty(sizes, x.options(), at::MemoryFormat::Contiguous);
  res.copy_(out);
  return res;
}

at::Tensor inverted_residual_cpu(
    const at::Tensor& x, const std::optional<at::Tensor>& expand_weight,
    const std::optional<at::Tensor>& expand_scale, const std::optional<at::Tensor>& expand_shift,
    c10::string_view expand_act, double expand_alpha, double expand_beta,
    const at::Tensor& dw_weight, const at::Tensor& dw_scale, const at::Tensor& dw_shift,
    int64_t stride, at::IntArrayRef padding, int64_t dilation, c10::string_view dw_act,
    double dw_alpha, double dw_beta, const at::Tensor& project_weight,
    const at::Tensor& project_scale, const at::Tensor& project_shift,
    c10::string_view project_act, double project_alpha, double project_beta, bool residual,
    const std::optional<at::Tensor>& se_reduce_weight,
    const std::optional<at::Tensor>& se_reduce_bias,
    const std::optional<at::Tensor>& se_expand_weight,
    const std::optional<at::Tensor>& se_expand_bias, c10::string_view se_act, double se_alpha,
    double se_beta, c10::string_view se_gate) {
  const IrActs acts = check_inverted_residual(
      x, expand_weight, expand_scale, expand_shift, expand_act, dw_weight, dw_scale, dw_shift,
      stride, padding, dilation, dw_act, project_weight, project_scale, project_shift,
      project_act, residual);
  const IrSe se{check_inverted_residual_se(x, dw_weight.size(0), se_reduce_weight,
                                           se_reduce_bias, se_expand_weight, se_expand_bias,
                                           se_act, se_gate),
                se_reduce_weight, se_reduce_bias, se_expand_weight, se_expand_bias, se_alpha,
                se_beta};
  const IrConf cf{stride,
                  dilation,
                  padding.vec(),
                  acts,
                  {expand_alpha, dw_alpha, project_alpha},
                  {expand_beta, dw_beta, project_beta},
                  residual};
  return forward(x, expand_weight, expand_scale, expand_shift, dw_weight, dw_scale, dw_shift,
                 project_weight, project_scale, project_shift, cf, se);
}

}  // namespace
}  // namespace dasp_kernels

TORCH_LIBRARY_IMPL(dasp_kernels, CPU, m) {
  m.impl("inverted_residual", &dasp_kernels::inverted_residual_cpu);
}
