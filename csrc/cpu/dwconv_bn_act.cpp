// CPU dwconv_bn_act and its backward: checks, layout, threading. The arithmetic lives in
// dwconv_bn_relu_kernel.h (the depthwise kernels, named after the op they were written for;
// compiled per instruction set, see cpu_kernels.h).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <tuple>
#include <vector>

#include "../checks.h"
#include "bf16_via_float.h"
#include "cpu_kernels.h"
#include "output_pool.h"
#include "parallel_tasks.h"

namespace dasp_kernels {
namespace {

// Tasks per thread that pick_bands aims at (parallel_tasks.h).
constexpr int64_t kTasksPerThread = 8;

// Channels-last inputs with fewer channels than this go forward plane by plane (see
// fwd_nhwc_planes): a channel vector would hold fewer lanes than any ISA's float vector.
constexpr int64_t kPlaneChannels = 4;
// Output rows per band of that forward: each task runs its band for every channel in turn, and
// bands this thin keep the band's pixel rows in L2 for the next channel. Where the build splits
// RGB rows in one pass (Kernels::dw_rgb_one_pass), bands are as for NCHW instead: fewer halo rows.
constexpr int64_t kPlaneBandRows = 16;

// NCHW forward by channel blocks (fwd_nchw_blocked): a block's input and output tile is kept under
// this many bytes (bands of rows where the planes are larger), so that it stays in L2.
constexpr int64_t kTileBytes = int64_t(256) << 10;

static_assert(static_cast<int>(Act::none) == cpu::kActNone &&
              static_cast<int>(Act::relu) == cpu::kActRelu &&
              static_cast<int>(Act::hardtanh) == cpu::kActHardtanh &&
              static_cast<int>(Act::hardswish) == cpu::kActHardswish &&
              static_cast<int>(Act::silu) == cpu::kActSilu &&
              static_cast<int>(Act::gelu) == cpu::kActGelu &&
              static_cast<int>(Act::gelu_tanh) == cpu::kActGeluTanh &&
              static_cast<int>(Act::leaky_relu) == cpu::kActLeaky,
              "cpu::DwActId must follow the order of Act");

// One call's configuration beyond the tensors. pad: [top, bottom, left, right].
struct DwConf {
  int64_t stride;
  std::array<int64_t, 4> pad;
  int64_t dilation;
  Act act;
  double alpha, beta;
};

struct Geometry {
  cpu::DwShape p;
  bool nhwc;
  bool planes;  // weights [C][K*K] and one plane at a time, as for NCHW
  at::MemoryFormat fmt;
};

Geometry geometry(const at::Tensor& x, const at::Tensor& weight, const DwConf& cf, bool forward) {
  Geometry g;
  g.fmt = x.suggest_memory_format();
  g.nhwc = g.fmt == at::MemoryFormat::ChannelsLast;
  g.planes = !g.nhwc || (forward && x.size(1) < kPlaneChannels);
  auto& p = g.p;
  p.N = x.size(0);
  p.C = x.size(1);
  p.H = x.size(2);
  p.W = x.size(3);
  p.K = weight.size(2);
  p.S = cf.stride;
  p.pad_t = cf.pad[0];
  p.pad_l = cf.pad[2];
  p.D = cf.dilation;
  p.Ho = dwconv_bn_act_out_size(p.H, p.K, p.S, cf.pad[0], cf.pad[1], p.D);
  p.Wo = dwconv_bn_act_out_size(p.W, p.K, p.S, cf.pad[2], cf.pad[3], p.D);
  p.act = static_cast<int>(cf.act);
  p.alpha = cf.alpha;
  p.beta = cf.beta;
  // Tasks (see num_tasks): (plane, band) for NCHW, (n, band) for channels-last.
  if (!g.nhwc)
    p.bands = cpu::pick_bands(p.N * p.C, p.Ho, 16, kTasksPerThread);
  else if (g.planes)
    p.bands = std::max<int64_t>(1, p.Ho / kPlaneBandRows);
  else  // The forward's bands recompute nothing (only their edge input rows are read twice):
        // any thickness. With 4 rows at least, 7x7 and 14x14 outputs gave 1 and 3 tasks to 2
        // threads.
    p.bands = cpu::pick_bands(p.N, p.Ho, forward ? 1 : 4, kTasksPerThread);
  p.stream = false;  // set per output by the caller
  p.cblock = 0;      // set by use_blocks
  p.cgroup = 0;      // set by use_groups
  return g;
}

// Whether the NCHW forward goes by channel blocks of two vectors (fwd_nchw_blocked), and then
// its bands. By planes, a row of Wo pixels fills Wo / vec lanes of the vectors; by blocks, the
// transposes in and out cost about one pass over the input and output.
void use_blocks(Geometry& g, int64_t vec, int64_t elem_bytes) {
  auto& p = g.p;
  if (g.nhwc) return;
  if (p.Wo > 4 * vec) return;
  p.cblock = 2 * vec;
  const int64_t units = p.N * ((p.C + p.cblock - 1) / p.cblock);
  const int64_t tile = (p.H * p.W + p.Ho * p.Wo) * p.cblock * elem_bytes;
  p.bands = std::clamp<int64_t>(std::max(cpu::pick_bands(units, p.Ho, 4, kTasksPerThread),
                                         (tile + kTileBytes - 1) / kTileBytes),
                                1, p.Ho);
}

// Channels per group of the NHWC forward (fwd_nhwc): 512 bytes of each pixel (128 floats). Over
// whole pixel rows of hundreds of channels, a pixel block's input left L1 before the next block
// and output row read it again; groups of 32 to 512 channels were measured (1x{144..960}x{7..56}
// inputs, K 3 and 5), 64 and 128 floats fastest, up to 1.4x faster than all channels at once.
constexpr int64_t kGroupBytes = 512;
void use_groups(Geometry& g, int64_t vec, int64_t elem_bytes) {
  auto& p = g.p;
  if (!g.nhwc || g.planes) return;
  const int64_t group = std::max<int64_t>(2 * vec, kGroupBytes / elem_bytes);
  p.cgroup = group >= p.C ? 0 : group;
}

int64_t num_tasks(const Geometry& g) {
  const auto& p = g.p;
  const int64_t units = g.nhwc ? p.N : p.cblock ? p.N * ((p.C + p.cblock - 1) / p.cblock) : p.N * p.C;
  return units * p.bands;
}

// dst[i][c] = src[c][i] for C channels of KK taps, by blocks of channels whose taps stay in L1.
// A plain loop: Tensor::t().contiguous() (ATen's generic strided copy) took ~11 us at 960x3x3
// and ~19 us at 960x5x5, a fifth of a 960x7x7 channels-last forward.
template <typename T>
void transpose_weight(const T* src, T* dst, int64_t C, int64_t KK) {
  constexpr int64_t kBlock = 16;
  for (int64_t c0 = 0; c0 < C; c0 += kBlock) {
    const int64_t c1 = std::min(C, c0 + kBlock);
    for (int64_t i = 0; i < KK; ++i)
      for (int64_t c = c0; c < c1; ++c) dst[i * C + c] = src[c * KK + i];
  }
}

// Weights as the kernels read them: [C][K*K] by planes, [K*K][C] for NHWC.
at::Tensor kernel_weight(const at::Tensor& weight, const Geometry& g) {
  const int64_t C = g.p.C, KK = g.p.K * g.p.K;
  const at::Tensor w = weight.reshape({C, KK}).contiguous();
  if (g.planes) return w;
  at::Tensor t = at::empty({KK, C}, w.options());
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "dwconv_bn_act_weight", [&] {
    transpose_weight(w.const_data_ptr<scalar_t>(), t.mutable_data_ptr<scalar_t>(), C, KK);
  });
  return t;
}

// The kernel arguments both directions share (contiguous inputs in the kernels' layouts).
template <typename T>
cpu::DwArgs<T> input_args(const at::Tensor& xc, const at::Tensor& w, const at::Tensor& sc,
                          const at::Tensor& sh) {
  cpu::DwArgs<T> a{};
  a.x = xc.const_data_ptr<T>();
  a.w = w.const_data_ptr<T>();
  a.scale = sc.const_data_ptr<T>();
  a.shift = sh.const_data_ptr<T>();
  return a;
}

// bf16 channels-last through the bf16 kernel (Kernels<float>::dw_fwd_nhwc_bf16: bf16 x and y,
// float32 weights, scale and shift, float32 accumulators): half the memory traffic of float32.
// Undefined where that kernel does not take the geometry (NCHW, few channels, the shapes the
// float32 forward gives its tap-by-tap kernel): the caller then computes in float32 and rounds.
at::Tensor forward_bf16(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale,
                        const at::Tensor& shift, const DwConf& cf) {
  Geometry g = geometry(x, weight, cf, /*forward=*/true);
  const auto& k = cpu::kernels<float>();
  if (!g.nhwc || g.planes || k.dw_bf16_ok == nullptr || !k.dw_bf16_ok(g.p)) return {};
  // Groups of as many channels as float32's: the accumulators and weights are float32 alike.
  use_groups(g, k.vec_size, sizeof(float));
  g.p.stream = false;  // the rounding store has no non-temporal form
  const auto& p = g.p;
  at::Tensor y = cpu::pooled_empty({p.N, p.C, p.Ho, p.Wo}, x.options(), g.fmt);
  if (y.numel() == 0) return y;
  const at::Tensor xc = x.contiguous(g.fmt);
  const at::Tensor w = kernel_weight(cpu::widen(weight), g);
  const at::Tensor sc = cpu::widen(scale).contiguous(), sh = cpu::widen(shift).contiguous();
  cpu::DwArgs<float, uint16_t> a{};
  a.x = reinterpret_cast<const uint16_t*>(xc.const_data_ptr<at::BFloat16>());
  a.w = w.const_data_ptr<float>();
  a.scale = sc.const_data_ptr<float>();
  a.shift = sh.const_data_ptr<float>();
  a.y = reinterpret_cast<uint16_t*>(y.mutable_data_ptr<at::BFloat16>());
  cpu::run_tasks(num_tasks(g), [&](int64_t t0, int64_t t1) { k.dw_fwd_nhwc_bf16(p, a, t0, t1); });
  return y;
}

// The forward, its inputs checked by the caller.
at::Tensor forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale,
                   const at::Tensor& shift, const DwConf& cf) {
  check_backend_dtype("dwconv_bn_act", "cpu", x, DASP_CPU_DTYPES);
  if (cpu::is_bf16(x)) {
    at::Tensor y = forward_bf16(x, weight, scale, shift, cf);
    if (y.defined()) return y;
    return cpu::narrow_bf16(
        forward(cpu::widen(x), cpu::widen(weight), cpu::widen(scale), cpu::widen(shift), cf));
  }
  Geometry g = geometry(x, weight, cf, /*forward=*/true);
  g.p.stream = cpu::stream_output(g.p.N * g.p.C * g.p.Ho * g.p.Wo * x.element_size());
  const auto& p = g.p;
  at::Tensor y = cpu::pooled_empty({p.N, p.C, p.Ho, p.Wo}, x.options(), g.fmt);
  if (y.numel() == 0) return y;
  const at::Tensor xc = x.contiguous(g.fmt);
  const at::Tensor w = kernel_weight(weight, g);
  const at::Tensor sc = scale.contiguous(), sh = shift.contiguous();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dwconv_bn_act_cpu", [&] {
    const auto& k = cpu::kernels<scalar_t>();
    if (g.planes && g.nhwc && p.C == 3 && k.dw_rgb_one_pass)
      g.p.bands = cpu::pick_bands(p.N, p.Ho, kPlaneBandRows, kTasksPerThread);
    use_blocks(g, k.vec_size, sizeof(scalar_t));
    use_groups(g, k.vec_size, sizeof(scalar_t));
    cpu::DwArgs<scalar_t> a = input_args<scalar_t>(xc, w, sc, sh);
    a.y = y.mutable_data_ptr<scalar_t>();
    const auto fn = !g.nhwc ? (p.cblock ? k.dw_fwd_nchw_blocked : k.dw_fwd_nchw)
                            : g.planes ? k.dw_fwd_nhwc_planes : k.dw_fwd_nhwc;
    cpu::run_tasks(num_tasks(g), [&](int64_t t0, int64_t t1) { fn(p, a, t0, t1); });
  });
  return y;
}

using Grads = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// The backward, its inputs checked by the caller but for grad_out.
Grads backward(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
               const at::Tensor& scale, const at::Tensor& shift, const DwConf& cf) {
  const char* op = "_dwconv_bn_act_backward";
  check_backend_dtype("dwconv_bn_act", "cpu", x, DASP_CPU_DTYPES);
  if (cpu::is_bf16(x)) {
    check_like_x(op, x, "grad_out", grad_out);
    return cpu::narrow_bf16(backward(cpu::widen(grad_out), cpu::widen(x), cpu::widen(weight),
                                     cpu::widen(scale), cpu::widen(shift), cf));
  }
  Geometry g = geometry(x, weight, cf, /*forward=*/false);
  g.p.stream = cpu::stream_output(x.numel() * x.element_size());
  const auto& p = g.p;
  const std::vector<int64_t> out_shape = {p.N, p.C, p.Ho, p.Wo};
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef(out_shape), op,
              ": expected grad_out of shape ", at::IntArrayRef(out_shape), ", got ",
              grad_out.sizes());
  check_like_x(op, x, "grad_out", grad_out);

  at::Tensor gx = cpu::pooled_empty(x.sizes(), x.options(), g.fmt);
  at::Tensor gw = at::zeros({p.C, 1, p.K, p.K}, weight.options());
  at::Tensor gscale = at::zeros({p.C}, scale.options());
  at::Tensor gshift = at::zeros({p.C}, shift.options());
  if (x.numel() == 0) return {gx, gw, gscale, gshift};

  const at::Tensor xc = x.contiguous(g.fmt);
  const at::Tensor go = grad_out.contiguous(g.fmt);
  const at::Tensor w = kernel_weight(weight, g);
  const at::Tensor sc = scale.contiguous(), sh = shift.contiguous();
  const int64_t tasks = num_tasks(g), KK = p.K * p.K;
  // Per-task partial sums, reduced below in task order: the result does not depend on threads.
  const int64_t per_task = g.nhwc ? p.C : 1;
  at::Tensor gw_part = at::empty({tasks, KK * per_task}, x.options());
  at::Tensor gsc_part = at::empty({tasks, per_task}, x.options());
  at::Tensor gsh_part = at::empty({tasks, per_task}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dwconv_bn_act_backward_cpu", [&] {
    const auto& k = cpu::kernels<scalar_t>();
    cpu::DwArgs<scalar_t> a = input_args<scalar_t>(xc, w, sc, sh);
    a.gout = go.const_data_ptr<scalar_t>();
    a.gx = gx.mutable_data_ptr<scalar_t>();
    a.gw_part = gw_part.mutable_data_ptr<scalar_t>();
    a.gscale_part = gsc_part.mutable_data_ptr<scalar_t>();
    a.gshift_part = gsh_part.mutable_data_ptr<scalar_t>();
    const auto fn = g.nhwc ? k.dw_bwd_nhwc : k.dw_bwd_nchw;
    cpu::run_tasks(tasks, [&](int64_t t0, int64_t t1) { fn(p, a, t0, t1); });

    scalar_t* gwp = gw.mutable_data_ptr<scalar_t>();
    scalar_t* gsp = gscale.mutable_data_ptr<scalar_t>();
    scalar_t* ghp = gshift.mutable_data_ptr<scalar_t>();
    const scalar_t* pw = a.gw_part;
    const scalar_t* ps = a.gscale_part;
    const scalar_t* ph = a.gshift_part;
    for (int64_t t = 0; t < tasks; ++t) {
      if (g.nhwc) {
        for (int64_t i = 0; i < KK; ++i)
          for (int64_t c = 0; c < p.C; ++c) gwp[c * KK + i] += pw[(t * KK + i) * p.C + c];
        for (int64_t c = 0; c < p.C; ++c) {
          gsp[c] += ps[t * p.C + c];
          ghp[c] += ph[t * p.C + c];
        }
      } else {
        const int64_t c = (t / p.bands) % p.C;
        for (int64_t i = 0; i < KK; ++i) gwp[c * KK + i] += pw[t * KK + i];
        gsp[c] += ps[t];
        ghp[c] += ph[t];
      }
    }
  });
  return {gx, gw, gscale, gshift};
}

DwConf act_conf(int64_t stride, at::IntArrayRef padding, int64_t dilation, Act act, double alpha,
                double beta) {
  return {stride, {padding[0], padding[1], padding[2], padding[3]}, dilation, act, alpha, beta};
}

at::Tensor dwconv_bn_act_cpu(const at::Tensor& x, const at::Tensor& weight,
                             const at::Tensor& scale, const at::Tensor& shift, int64_t stride,
                             at::IntArrayRef padding, int64_t dilation, c10::string_view act,
                             double alpha, double beta) {
  const Act a = check_dwconv_bn_act(x, weight, scale, shift, stride, padding, dilation, act);
  return forward(x, weight, scale, shift,
                 act_conf(stride, padding, dilation, a, alpha, beta));
}

Grads dwconv_bn_act_backward_cpu(const at::Tensor& grad_out, const at::Tensor& x,
                                 const at::Tensor& weight, const at::Tensor& scale,
                                 const at::Tensor& shift, int64_t stride, at::IntArrayRef padding,
                                 int64_t dilation, c10::string_view act, double alpha,
                                 double beta) {
  const Act a = check_dwconv_bn_act(x, weight, scale, shift, stride, padding, dilation, act);
  return backward(grad_out, x, weight, scale, shift,
                  act_conf(stride, padding, dilation, a, alpha, beta));
}

}  // namespace
}  // namespace dasp_kernels

TORCH_LIBRARY_IMPL(dasp_kernels, CPU, m) {
  m.impl("dwconv_bn_act", &dasp_kernels::dwconv_bn_act_cpu);
  m.impl("_dwconv_bn_act_backward", &dasp_kernels::dwconv_bn_act_backward_cpu);
}
