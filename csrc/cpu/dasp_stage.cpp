// CPU dasp_stage and dasp_spatial_path (one whole DASP stage, Eq. 5, and a chain of them): checks,
// weight packing, bands and threads, scratch. The arithmetic of a row lives in dasp_stage_kernel.h
// (compiled per instruction set, see cpu_kernels.h); the backward in dasp_stage_backward.cpp.
//
// - dasp_spatial_path chains stages row-wise: a stage's output rows go to a ring buffer holding
//   just the rows the next stage's window needs, so the 64 MB stage-1 output never exists.
// - Tasks are (image, band of final output rows), a few per thread and handed out dynamically
//   (parallel_tasks.h); each band recomputes a one-row halo per earlier stage. Each thread's
//   scratch and rings come from its Workspace (workspace.h), reused across calls. Large outputs
//   come from the output pool (output_pool.h), so steady-state calls do not page-fault.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../checks.h"
#include "bf16_via_float.h"
#include "cpu_kernels.h"
#include "output_pool.h"
#include "parallel_tasks.h"
#include "workspace.h"

namespace dasp_kernels {
namespace {

using cpu::StageWeights;

int64_t round_up(int64_t a, int64_t b) { return (a + b - 1) / b * b; }

// One stage's weights in the layout of the build's row kernel (block output channels per packed
// block), and the storage behind the StageWeights view.
template <typename T>
struct PackedStage {
  std::vector<T> dw, dw_t, dw_shift, pw, ppm, bias;
  StageWeights<T> view{};
};

template <typename T>
void pack_depthwise(const at::Tensor& dw_weight, const at::Tensor& dw_scale,
                    const at::Tensor& dw_shift, PackedStage<T>& s) {
  const int64_t cin = s.view.cin, kk = s.view.k * s.view.k;
  const at::Tensor w = dw_weight.contiguous(), sc = dw_scale.contiguous();
  const at::Tensor sh = dw_shift.contiguous();
  const T* wp = w.const_data_ptr<T>();
  const T* scp = sc.const_data_ptr<T>();
  s.dw.assign(kk * cin, T(0));
  s.dw_t.assign(kk * cin, T(0));
  for (int64_t c = 0; c < cin; ++c)
    for (int64_t t = 0; t < kk; ++t) {
      const T v = wp[c * kk + t] * scp[c];
      s.dw[t * cin + c] = v;
      s.dw_t[c * kk + t] = v;
    }
  s.dw_shift.assign(sh.const_data_ptr<T>(), sh.const_data_ptr<T>() + cin);
}

template <typename T>
void pack_pointwise(const at::Tensor& pw_weight, const at::Tensor& pw_scale,
                    const at::Tensor& pw_shift, const at::Tensor& ppm_weight, int64_t block,
                    PackedStage<T>& s) {
  const int64_t cin = s.view.cin, cout = s.view.cout;
  const at::Tensor a = pw_weight.contiguous(), as = pw_scale.contiguous();
  const at::Tensor ab = pw_shift.contiguous(), b = ppm_weight.contiguous();
  const T* ap = a.const_data_ptr<T>();
  const T* asp = as.const_data_ptr<T>();
  const T* abp = ab.const_data_ptr<T>();
  const T* bp = b.const_data_ptr<T>();
  s.pw.assign(s.view.cout_pad * cin, T(0));
  s.ppm.assign(s.view.cout_pad * cin, T(0));
  s.bias.assign(s.view.cout_pad, T(0));
  for (int64_t co = 0; co < cout; ++co) {
    const int64_t blk = co / block, j = co % block;
    for (int64_t ci = 0; ci < cin; ++ci) {
      s.pw[(blk * cin + ci) * block + j] = ap[co * cin + ci] * asp[co];
      s.ppm[(blk * cin + ci) * block + j] = bp[co * cin + ci];
    }
    s.bias[co] = abp[co];
  }
}

// p: the 7 tensors of one stage (dw_weight, dw_scale, dw_shift, pw_weight, pw_scale, pw_shift,
// ppm_weight).
template <typename T>
void pack_stage(const at::Tensor* p, int64_t block, PackedStage<T>& s) {
  StageWeights<T>& v = s.view;
  v.cin = p[0].size(0);
  v.k = p[0].size(2);
  v.pad = v.k / 2;
  v.cout = p[3].size(0);
  v.cout_pad = round_up(v.cout, block);
  pack_depthwise(p[0], p[1], p[2], s);
  pack_pointwise(p[3], p[4], p[5], p[6], block, s);
  v.dw = s.dw.data();
  v.dw_t = s.dw_t.data();
  v.dw_shift = s.dw_shift.data();
  v.pw = s.pw.data();
  v.ppm = s.ppm.data();
  v.bias = s.bias.data();
}

// Ring slots a consumer with half-width p needs: rows 2y - p .. 2y + max(p, 1) (pool needs 2y+1).
int64_t window_rows(int64_t p) { return p + std::max<int64_t>(p, 1) + 1; }

// Output pixels per chunk: D and Q of a chunk (2 x chunk x cin values) within ~24 KiB of L1, in
// whole steps of the kernel (micro-tiles and vectors), at most 480.
int64_t chunk_for(int64_t cin, int64_t elem_size, int64_t step) {
  const int64_t c = (24 * 1024 / (2 * elem_size * cin)) / step * step;
  return std::min<int64_t>(std::max<int64_t>(c, step), 480 / step * step);
}

// What a chain of stages is run on: the input, the packed stages, their kernels and sizes.
template <typename T>
struct Chain {
  const at::Tensor& x;
  at::Tensor& out;
  const std::vector<StageWeights<T>>& stages;
  const std::vector<const cpu::StageKernel<T>*>& kernels;  // per stage (stage_kernel_for)
  std::vector<int64_t> h, w;  // h[s], w[s]: input size of stage s; h[S], w[S]: the output's
  int64_t bands;              // bands of final output rows per image
};

// One stage of a chain as a worker runs it: its scratch, its output ring (if not the last
// stage) and the next output row it has to produce for the current band.
template <typename T>
struct Level {
  cpu::StageScratch<T> scr{};
  T* ring = nullptr;  // output rows [slot][wo][cout], channels contiguous
  int64_t ring_cap = 0;
  int64_t next = 0;
};

template <typename T>
struct LevelSizes {
  int64_t chunk, wd, dl_cap, ring_cap;
};

template <typename T>
LevelSizes<T> level_sizes(const Chain<T>& c, int64_t s) {
  const int64_t S = static_cast<int64_t>(c.stages.size());
  const StageWeights<T>& sw = c.stages[s];
  LevelSizes<T> z;
  const cpu::StageKernel<T>& kernel = *c.kernels[s];
  z.chunk = chunk_for(sw.cin, sizeof(T), kernel.pixel_step);
  z.wd = cpu::kStageHalo + round_up(c.w[s + 1], z.chunk) + 8;
  // The pixel-vector kernel caches de-interleaved input rows. Stages after the first read
  // channels-last rings.
  const int64_t s_c = s == 0 ? c.x.stride(1) : 1, lanes = kernel.channel_lanes;
  const bool split = lanes > 0 && !(s_c == 1 && sw.cin % lanes == 0);
  z.dl_cap = split ? window_rows(sw.pad) : 0;
  z.ring_cap = s + 1 < S ? window_rows(c.stages[s + 1].pad) : 0;
  return z;
}

template <typename T>
size_t level_bytes(const Chain<T>& c, int64_t s, const LevelSizes<T>& z) {
  using W = cpu::Workspace;
  const StageWeights<T>& sw = c.stages[s];
  return 2 * W::bytes_for<T>(z.chunk * sw.cin) + W::bytes_for<T>(z.chunk * sw.cout_pad) +
         W::bytes_for<T>(z.dl_cap * sw.cin * 2 * z.wd) + W::bytes_for<int64_t>(z.dl_cap) +
         W::bytes_for<T>(z.ring_cap * c.w[s + 1] * sw.cout);
}

// A worker's levels, carved out of its thread's workspace.
template <typename T>
std::vector<Level<T>> make_levels(const Chain<T>& c) {
  const int64_t S = static_cast<int64_t>(c.stages.size());
  std::vector<LevelSizes<T>> sizes(S);
  size_t bytes = 0;
  for (int64_t s = 0; s < S; ++s) {
    sizes[s] = level_sizes(c, s);
    bytes += level_bytes(c, s, sizes[s]);
  }
  cpu::Workspace& ws = cpu::thread_workspace();
  ws.reset(bytes);
  std::vector<Level<T>> lv(S);
  for (int64_t s = 0; s < S; ++s) {
    const StageWeights<T>& sw = c.stages[s];
    const LevelSizes<T>& z = sizes[s];
    cpu::StageScratch<T>& scr = lv[s].scr;
    scr.chunk = z.chunk;
    scr.wd = z.wd;
    scr.dl_cap = z.dl_cap;
    scr.d = ws.take<T>(z.chunk * sw.cin);
    scr.q = ws.take<T>(z.chunk * sw.cin);
    scr.o = ws.take<T>(z.chunk * sw.cout_pad);
    scr.dl = ws.take<T>(z.dl_cap * sw.cin * 2 * z.wd);
    scr.tag = ws.take<int64_t>(z.dl_cap);
    // Column padding of the de-interleaved rows must read as zeros.
    std::fill(scr.dl, scr.dl + z.dl_cap * sw.cin * 2 * z.wd, T(0));
    lv[s].ring_cap = z.ring_cap;
    lv[s].ring = ws.take<T>(z.ring_cap * c.w[s + 1] * sw.cout);
  }
  return lv;
}

// Where stage s of image n reads its rows: the input tensor, or the previous stage's ring.
template <typename T>
cpu::StageRows<T> input_rows(const Chain<T>& c, const std::vector<Level<T>>& lv, int64_t s,
                             int64_t n) {
  cpu::StageRows<T> in{};
  in.h = c.h[s];
  in.w = c.w[s];
  if (s == 0) {
    in.base = c.x.template const_data_ptr<T>() + n * c.x.stride(0);
    in.s_row = c.x.stride(2);
    in.s_w = c.x.stride(3);
    in.s_c = c.x.stride(1);
  } else {
    const int64_t prev_cout = c.stages[s - 1].cout;
    in.base = lv[s - 1].ring;
    in.cap = lv[s - 1].ring_cap;
    in.s_row = c.w[s] * prev_cout;
    in.s_w = prev_cout;
    in.s_c = 1;
  }
  return in;
}

// Produces the rows of stage s of image n up to `upto` (inclusive), first the rows of stage
// s - 1 that they read: into the ring of stage s, or (last stage) the output.
template <typename T>
void produce(const Chain<T>& c, std::vector<Level<T>>& lv, int64_t n, int64_t s, int64_t upto) {
  const int64_t S = static_cast<int64_t>(c.stages.size());
  const StageWeights<T>& sw = c.stages[s];
  Level<T>& level = lv[s];
  const cpu::StageRows<T> in = input_rows(c, lv, s, n);
  const int64_t wo = c.w[s + 1];
  for (; level.next <= upto; ++level.next) {
    const int64_t oy = level.next;
    // The rows of stage s - 1 that row oy reads (the pool needs 2 oy + 1 even when K = 1).
    if (s > 0) {
      const int64_t last_in = std::min(2 * oy + std::max<int64_t>(sw.pad, 1), c.h[s] - 1);
      produce(c, lv, n, s - 1, last_in);
    }
    cpu::StageRowJob<T> job{&sw, in, oy, wo, nullptr, 0, 0, &level.scr};
    if (s + 1 < S) {
      job.out = level.ring + (oy % level.ring_cap) * wo * sw.cout;
      job.o_sw = sw.cout;
      job.o_sc = 1;
    } else {
      job.out = c.out.template mutable_data_ptr<T>() + n * c.out.stride(0) + oy * c.out.stride(2);
      job.o_sw = c.out.stride(3);
      job.o_sc = c.out.stride(1);
    }
    c.kernels[s]->row(job);
  }
}

// One task: band `band` of the final output rows of image n.
template <typename T>
void run_band(const Chain<T>& c, std::vector<Level<T>>& lv, int64_t n, int64_t band) {
  const int64_t S = static_cast<int64_t>(c.stages.size()), hf = c.h[S];
  const int64_t r0 = hf * band / c.bands, r1 = hf * (band + 1) / c.bands;
  for (Level<T>& l : lv) std::fill(l.scr.tag, l.scr.tag + l.scr.dl_cap, int64_t(-1));
  // The first row each earlier stage must produce for this band.
  lv[S - 1].next = r0;
  for (int64_t s = S - 2; s >= 0; --s)
    lv[s].next = std::max<int64_t>(0, 2 * lv[s + 1].next - c.stages[s + 1].pad);
  produce(c, lv, n, S - 1, r1 - 1);
}

// Runs the stages on x, writing the last stage's output into `out`.
template <typename T>
void run_chain(const at::Tensor& x, const std::vector<StageWeights<T>>& stages,
               const std::vector<const cpu::StageKernel<T>*>& kernels, at::Tensor& out) {
  const int64_t S = static_cast<int64_t>(stages.size()), N = x.size(0);
  Chain<T> c{x, out, stages, kernels, std::vector<int64_t>(S + 1), std::vector<int64_t>(S + 1), 1};
  c.h[0] = x.size(2);
  c.w[0] = x.size(3);
  for (int64_t s = 0; s < S; ++s) {
    c.h[s + 1] = (c.h[s] + 1) / 2;
    c.w[s + 1] = (c.w[s] + 1) / 2;
  }
  if (N == 0 || c.h[S] == 0 || c.w[S] == 0) return;
  // A few bands per thread, not thinner than 8 rows (each recomputes a halo in every stage).
  c.bands = cpu::pick_bands(N, c.h[S], 8, 4);
  cpu::run_tasks_with(
      N * c.bands, [&] { return make_levels(c); },
      [&](std::vector<Level<T>>& lv, int64_t t) { run_band(c, lv, t / c.bands, t % c.bands); });
}

// The kernel of a stage with cin input channels: the build's own, except for inputs with fewer
// channels than its vector holds (the 3-channel image), which go by pixel vectors and get
// Kernels::stage_pixels (see cpu_kernels_base.cpp for why).
template <typename T>
const cpu::StageKernel<T>* stage_kernel_for(const cpu::Kernels<T>& k, int64_t cin) {
  return cin < k.stage.channel_lanes ? &k.stage_pixels : &k.stage;
}

// Packs the stages (7 tensors each, from params) for their kernels and runs them.
void run_stages(const at::Tensor& x, const at::Tensor* params, int64_t num_stages,
                at::Tensor& out) {
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dasp_stage_cpu", [&] {
    const cpu::Kernels<scalar_t>& k = cpu::kernels<scalar_t>();
    std::vector<PackedStage<scalar_t>> packed(num_stages);
    std::vector<StageWeights<scalar_t>> views;
    std::vector<const cpu::StageKernel<scalar_t>*> kernels;
    for (int64_t s = 0; s < num_stages; ++s) {
      kernels.push_back(stage_kernel_for(k, params[7 * s].size(0)));
      pack_stage(params + 7 * s, kernels[s]->block, packed[s]);
      views.push_back(packed[s].view);
    }
    run_chain<scalar_t>(x, views, kernels, out);
  });
}

at::Tensor empty_output(const at::Tensor& x, int64_t cout, int64_t ho, int64_t wo) {
  return cpu::pooled_empty({x.size(0), cout, ho, wo}, x.options(), x.suggest_memory_format());
}

at::Tensor dasp_stage_cpu(const at::Tensor& x, const at::Tensor& dw_weight,
                          const at::Tensor& dw_scale, const at::Tensor& dw_shift,
                          const at::Tensor& pw_weight, const at::Tensor& pw_scale,
                          const at::Tensor& pw_shift, const at::Tensor& ppm_weight) {
  check_dasp_stage(x, dw_weight, dw_scale, dw_shift, pw_weight, pw_scale, pw_shift, ppm_weight);
  check_backend_dtype("dasp_stage", "cpu", x, DASP_CPU_DTYPES);
  if (cpu::is_bf16(x))
    return cpu::narrow_bf16(dasp_stage_cpu(cpu::widen(x), cpu::widen(dw_weight),
                                           cpu::widen(dw_scale), cpu::widen(dw_shift),
                                           cpu::widen(pw_weight), cpu::widen(pw_scale),
                                           cpu::widen(pw_shift), cpu::widen(ppm_weight)));
  at::Tensor out = empty_output(x, pw_weight.size(0), (x.size(2) + 1) / 2, (x.size(3) + 1) / 2);
  const at::Tensor params[7] = {dw_weight, dw_scale, dw_shift, pw_weight,
                                pw_scale,  pw_shift, ppm_weight};
  run_stages(x, params, 1, out);
  return out;
}

at::Tensor dasp_spatial_path_cpu(const at::Tensor& x, at::TensorList params) {
  check_dasp_spatial_path(x, params);
  check_backend_dtype("dasp_spatial_path", "cpu", x, DASP_CPU_DTYPES);
  if (cpu::is_bf16(x))
    return cpu::narrow_bf16(dasp_spatial_path_cpu(cpu::widen(x), cpu::widen(params)));
  const int64_t S = static_cast<int64_t>(params.size()) / 7;
  int64_t h = x.size(2), w = x.size(3);
  for (int64_t s = 0; s < S; ++s) {
    h = (h + 1) / 2;
    w = (w + 1) / 2;
  }
  at::Tensor out = empty_output(x, params[7 * (S - 1) + 3].size(0), h, w);
  run_stages(x, params.data(), S, out);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(dasp_kernels, CPU, m) {
  m.impl("dasp_stage", &dasp_stage_cpu);
  m.impl("dasp_spatial_path", &dasp_spatial_path_cpu);
}

}  // namespace dasp_kernels
