// Raw-pointer CPU kernels shared by the ops in csrc/cpu/*.cpp. The same kernel source
// (dwconv_bn_relu_kernel.h, ppm_add_kernel.h, dasp_stage_kernel.h) is compiled with the build's
// flags (namespace base) and, on x86-64 with GCC, twice more: with AVX2+FMA (namespace avx2,
// cpu_kernels_avx2.cpp) and with AVX-512 (namespace avx512, cpu_kernels_avx512.cpp). kernels<T>()
// picks the table at run time, so the extension still loads and runs on CPUs without AVX2, and no
// -march flag is needed in setup.py.
#pragma once
#include <cstdint>

#if defined(__GNUC__) && !defined(__clang__) && (defined(__x86_64__) || defined(_M_X64))
#define DASP_CPU_HAVE_AVX2_BUILD 1
#else
#define DASP_CPU_HAVE_AVX2_BUILD 0
#endif

namespace dasp_kernels::cpu {

// Depthwise conv geometry. NCHW kernels run tasks (plane n * C + c, band); NHWC kernels run tasks
// (n, band). A band is a fixed range of output rows, so the per-task partial sums of the backward
// (and hence the gradients) do not depend on the number of threads.
// The activation ids of DwShape::act: the order of dasp_kernels::Act (csrc/checks.h), which the
// host side static_asserts. A plain int here, so that the kernels do not include ATen's headers.
enum DwActId : int {
  kActNone, kActRelu, kActHardtanh, kActHardswish, kActSilu, kActGelu, kActGeluTanh, kActLeaky
};

// pad_t, pad_l: zero rows above and columns left of x; the bottom and right padding follow from
// Ho and Wo (the kernels read zeros past the input's last row and column). D: the dilation.
// act, alpha, beta: the activation after the scale and shift (alpha, beta: hardtanh's min and
// max, leaky_relu's slope alpha).
struct DwShape {
  int64_t N, C, H, W, Ho, Wo, K, S, pad_t, pad_l, D;
  int act;
  double alpha, beta;
  int64_t bands;
  bool stream;  // write the output with non-temporal stores (large outputs, see stream_output)
  // NCHW forward by blocks of this many channels through a channels-last tile
  // (fwd_nchw_blocked; tasks (n, block, band)); 0: plane by plane (fwd_nchw).
  int64_t cblock;
  // NHWC forward: channels per group, a multiple of two vectors (fwd_nhwc); 0: all channels.
  int64_t cgroup;
};

// X: the storage type of x and y where it differs from the compute type T (bf16 as uint16_t, with
// T float: the bf16 forward, Kernels<float>::dw_fwd_nhwc_bf16).
template <typename T, typename X = T>
struct DwArgs {
  const X* x;      // NCHW or NHWC, contiguous
  const T* w;      // NCHW: [C][K*K]; NHWC: [K*K][C]
  const T* scale;  // [C]
  const T* shift;  // [C]
  X* y;            // forward output, layout of x
  const T* gout;   // backward: grad of y, layout of x
  T* gx;           // backward: grad of x, layout of x
  // Backward partial sums, one block per task. NCHW: [task][K*K], [task], [task].
  // NHWC: [task][K*K][C], [task][C], [task][C].
  T* gw_part;
  T* gscale_part;
  T* gshift_part;
};

// Pool-then-1x1 geometry. Tasks are (n, band of pooled rows).
struct PpmShape {
  int64_t N, Cin, Cout, H, W, Ho, Wo;
  int64_t bands;
  bool stream;
};

// Outputs at least this large are written with non-temporal stores where the build has them
// (AVX2): they would not stay in cache for the next op anyway, and streaming them skips reading
// every output line from memory before writing it.
constexpr int64_t kStreamBytes = int64_t(16) << 20;
inline bool stream_output(int64_t bytes) { return bytes >= kStreamBytes; }

template <typename T>
struct PpmArgs {
  const T* x;         // NCHW or NHWC, contiguous
  const T* w;         // [Cout][Cin]
  const T* wt;        // [Cin][Cout]
  const T* residual;  // layout of x
  T* out;             // layout of x
  const T* gout;      // backward
  T* gx;              // backward, layout of x
  T* gw_part;         // backward: [task][Cout][Cin]
};

// ---------------------------------------------------------------------------------------------
// One DASP stage (dasp_stage_kernel.h): the row kernel's view of its weights, input and scratch.
// The host side (dasp_stage.cpp) packs the weights, owns every buffer and walks the rows.

constexpr int64_t kStageMaxK = 7;  // largest depthwise kernel size of a stage
constexpr int64_t kStageHalo = 4;  // zero columns left of a de-interleaved row (K = 7 reaches 2)

// One stage's weights, folded and packed once per call (they are tiny) in the layout of the
// build's row kernel: blocks of StageKernel::block output channels.
template <typename T>
struct StageWeights {
  int64_t cin, cout, k, pad;  // pad = k / 2
  int64_t cout_pad;           // cout rounded up to whole blocks
  const T* dw;                // [k*k][cin], dw_scale folded in (channel-vector depthwise)
  const T* dw_t;              // [cin][k*k], the same per channel (pixel-vector depthwise)
  const T* dw_shift;          // [cin]
  const T* pw;                // [cout_pad / block][cin][block], pw_scale folded in
  const T* ppm;               // [cout_pad / block][cin][block]
  const T* bias;              // [cout_pad]: pw_shift, zero padded
};

// Where a stage reads its input rows from: a user tensor (any strides) or a ring of rows that the
// previous stage of a path writes (channels contiguous).
template <typename T>
struct StageRows {
  const T* base;
  int64_t s_row;  // elements between rows (tensor) or between ring slots
  int64_t cap;    // ring slots; 0 for a tensor
  int64_t h, w, s_w, s_c;
  const T* row(int64_t iy) const {
    if (iy < 0 || iy >= h) return nullptr;
    return base + (cap ? iy % cap : iy) * s_row;
  }
};

// One thread's scratch for one stage (pointers into its Workspace, see workspace.h).
template <typename T>
struct StageScratch {
  int64_t chunk;  // output pixels per chunk
  T* d;           // depthwise result of a chunk
  T* q;           // pooled input of a chunk
  T* o;           // [chunk][cout_pad] output tile when the output is not channel-contiguous
  // De-interleaved input rows (pixel-vector depthwise): slot -> [cin][even, odd][wd], the slot's
  // row index in tag[slot]; dl_cap = 0 where the kernel reads the rows as they are.
  T* dl;
  int64_t* tag;
  int64_t dl_cap, wd;
};

// One output row oy of a stage: pixels [0, wo) written from `out` on, pixel stride o_sw and
// channel stride o_sc.
template <typename T>
struct StageRowJob {
  const StageWeights<T>* sw;
  StageRows<T> in;
  int64_t oy, wo;
  T* out;
  int64_t o_sw, o_sc;
  StageScratch<T>* scr;
};

template <typename T>
struct StageKernel {
  void (*row)(const StageRowJob<T>&);  // null: this build leaves the stage to the portable one
  int64_t block;       // output channels per packed weight block (the micro-tile's width)
  int64_t pixel_step;  // a chunk of pixels is a multiple of this: whole micro-tiles and vectors
  // Channel-contiguous inputs with a multiple of this many channels go by channel vectors, others
  // by pixel vectors over de-interleaved rows. 0: the scalar kernel, which needs neither.
  int64_t channel_lanes;
};

// ---------------------------------------------------------------------------------------------
// inverted_residual (inverted_residual_kernel.h): expand 1x1, depthwise, project 1x1 in one pass.
// The host side (inverted_residual.cpp) packs the weights and owns every buffer.

// The largest pixel block of the depthwise sweep (dw::NhwcTile::PX): the host sizes the ring rows'
// zero columns so that a block's last sweep unit stays inside them.
constexpr int64_t kIrMaxPx = 8;

// Geometry: x [N][H][W][C] channels-last, E the expanded (depthwise) channels, Co the output's.
// e_pad, co_pad: E and Co rounded up to whole vectors (Kernels::ir_lanes); the packed weights
// hold blocks of Kernels::ir_block columns, the last one narrower where the count is not whole
// blocks. Tasks are (n, band of output rows).
struct IrShape {
  int64_t N, C, H, W, E, Co, Ho, Wo, K, S, D, pad_t, pad_l;
  int64_t e_pad, co_pad;
  int act_e, act_d, act_p;  // DwActId of each stage, with its alpha / beta below
  double alpha_e, beta_e, alpha_d, beta_d, alpha_p, beta_p;
  bool expand;    // false: no expansion, E = C and the depthwise reads x itself
  bool residual;  // out += x (then Ho = H, Wo = W, Co = C)
  // Squeeze-and-excitation runs the block in two passes over the same bands (the gate needs the
  // mean of the whole depthwise output): 0: no SE, one pass; 1: expansion and depthwise into
  // IrArgs::dw_out, each row's channel sums into row_sum, no projection; 2: the projection of
  // dw_out with each image's weights (the gate folded in), shift, activation, residual.
  int se_pass;
  int64_t bands;
  int64_t chunk;     // output pixels per depthwise + projection chunk
  int64_t ring_w;    // columns per ring row: pad_l zeros, the W pixels, zeros to the right
  int64_t ring_cap;  // ring rows: D * (K - 1) + 1, the rows one output row reads
};

template <typename T>
struct IrArgs {
  const T* x;       // [N][H][W][C]
  const T* we;      // expansion: blocks [e_pad / block][C][block], expand_scale folded in
  const T* be;      // [e_pad]: expand_shift, zero padded
  const T* wd;      // depthwise [K*K][e_pad]
  const T* sd;      // [e_pad]: dw_scale, zero padded
  const T* bd;      // [e_pad]: dw_shift, zero padded
  const T* wp;      // projection: blocks [co_pad / block][E][block], project_scale folded in
  const T* bp;      // [co_pad]: project_shift, zero padded
  T* out;           // [N][Ho][Wo][Co]
  T* dw_out;        // SE passes: the depthwise output [N][Ho][Wo][e_pad]
  T* row_sum;       // SE pass 1: sum over each row's pixels [N][Ho][e_pad]
  int64_t wp_image; // SE pass 2: image n's projection weights are wp + n * wp_image
};

// One worker's buffers (the host's thread workspace). ring: ring_cap rows of [ring_w][e_pad],
// whose pad columns and pad channels must read as zeros (the host zeroes them); tag[slot]: the
// input row a slot holds (-1: none); d: [chunk][e_pad], a chunk's depthwise result.
template <typename T>
struct IrScratch {
  T* ring;
  int64_t* tag;
  T* d;
};

template <typename T>
using IrFn = void (*)(const IrShape&, const IrArgs<T>&, const IrScratch<T>&, int64_t task);

template <typename T>
using DwFn = void (*)(const DwShape&, const DwArgs<T>&, int64_t, int64_t);
template <typename T>
using PpmFn = void (*)(const PpmShape&, const PpmArgs<T>&, int64_t, int64_t);

template <typename T>
struct Kernels {
  const char* isa;
  int vec_size;  // elements per at::vec::Vectorized<T> in that build
  DwFn<T> dw_fwd_nchw, dw_fwd_nhwc, dw_bwd_nchw, dw_bwd_nhwc;
  DwFn<T> dw_fwd_nhwc_planes;  // channels-last input with few channels, by planes (NHWC tasks)
  DwFn<T> dw_fwd_nchw_blocked;  // NCHW input by channel blocks (DwShape::cblock)
  // Channels-last forward on bf16 x and y (uint16_t bits; T's weights, scale and shift), for the
  // shapes dw_bf16_ok accepts; set in Kernels<float> only.
  void (*dw_fwd_nhwc_bf16)(const DwShape&, const DwArgs<T, uint16_t>&, int64_t, int64_t);
  bool (*dw_bf16_ok)(const DwShape&);
  bool dw_rgb_one_pass;        // ... which splits 3-channel pixel rows in one pass (fwd_rgb)
  PpmFn<T> ppm_fwd_nchw, ppm_fwd_nhwc, ppm_bwd_nchw, ppm_bwd_nhwc;
  StageKernel<T> stage;
  // The stage kernel for inputs with fewer channels than stage.channel_lanes (which go by pixel
  // vectors): stage itself, except in the AVX-512 process (see cpu_kernels_base.cpp).
  StageKernel<T> stage_pixels;
  // inverted_residual: one task (n, band). ir_block: the packed weights' block width; ir_lanes:
  // what E and Co are padded to; ir_step: a chunk is best a multiple of this many pixels (the
  // micro-tile's). Null where the portable build's entry must run (float64 in the wide builds,
  // as the stage's rows).
  IrFn<T> ir_fwd;
  int64_t ir_block, ir_lanes, ir_step;
  // Benchmarks only: fma_loop(iters) does iters * fma_per_iter vector FMAs in registers.
  T (*fma_loop)(int64_t iters);
  int fma_per_iter;
};

namespace base {
template <typename T>
Kernels<T> kernels();
}
#if DASP_CPU_HAVE_AVX2_BUILD
namespace avx2 {
template <typename T>
Kernels<T> kernels();
}
namespace avx512 {
template <typename T>
Kernels<T> kernels();
}
#endif

// The table for this CPU, following ATen's own choice (cpuinfo, lowered by ATEN_CPU_CAPABILITY):
// AVX-512 where ATen runs AVX512 and the CPU has F/BW/VL/DQ, else AVX2 where ATen runs AVX2 or
// better and the CPU has AVX2 and FMA, else the portable build.
template <typename T>
const Kernels<T>& kernels();

}  // namespace dasp_kernels::cpu
