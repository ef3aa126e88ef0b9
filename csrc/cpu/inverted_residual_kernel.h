// inverted_residual: MobileNetV2's block in one pass over the image,
//   y = act_e(x @ expand_weight * expand_scale + expand_shift)     (y = x without expansion)
//   z = act_d(depthwise(y) * dw_scale + dw_shift)                  (zero padding applied to y)
//   out = act_p(z @ project_weight * project_scale + project_shift) (+ x)
// Included once per instruction set after dwconv_bn_relu_kernel.h and dasp_stage_kernel.h, whose
// pieces it runs (the depthwise sweep and store of dwconv_nhwc_fwd.h, the stage's 1x1 mac_tile),
// inside namespace dasp_kernels::cpu::DASP_ISA (see cpu_kernels.h); hence no include guard.
//
// Why it is fast: the wide expanded tensor y never goes to memory. A task (image, band of output
// rows) keeps a ring of the D * (K - 1) + 1 rows of y that an output row reads, each expanded
// once per band (a register-blocked 1x1 GEMM over the input row, channels-last). An output row
// then goes in chunks of pixels: the depthwise result of a chunk goes to a small buffer (L1/L2),
// and the projection's micro-kernel reads it back, adds the shift, activation and residual in
// registers and stores the output. The ring rows carry zero columns left and right, so no tap
// of the depthwise needs a bounds check; zero rows above and below are skipped (null rows).
//
// fwd_vec: float32 in every build (at::vec). fwd_scalar: plain loops over the same ring, any
// dtype; float64 runs the portable build's copy (kernel_table.h), as the stage's rows do.
//
// Squeeze-and-excitation (IrShape::se_pass) needs the mean of the whole depthwise output d before
// any pixel is projected. Design "keep d": pass 1 is the loop below with d stored (the chunk
// buffer is the row of IrArgs::dw_out) and summed per row while in L1; the host folds the gate
// into each image's projection weights; pass 2 (project_vec) projects d from memory. The
// alternative, "recompute", runs expansion + depthwise twice (once for the sums) and keeps no d.
// Keep d costs a write and a read of d (E floats per output pixel); recompute costs the expansion
// GEMM and the depthwise again, which on MobileNetV3's SE blocks take more time than that traffic
// (measured, docs/architecture.md: mobilenet_v3_large's 8 SE blocks at 1x3x512x1024, 2 threads,
// keep d 39.7 ms, the recompute estimate 56.7 ms, the one pass without SE 32.4 ms).

namespace dasp_kernels::cpu::DASP_ISA {
namespace ir {

using stage::kV;
using stage::Vec;
using Act = dw::ActV<float>;

#if defined(__GNUC__)
#define DASP_IR_FLATTEN __attribute__((flatten))
#else
#define DASP_IR_FLATTEN
#endif

// Micro-tile: kMR pixels x (NV = 1 or 2) vectors of output channels, the stage's sizes.
constexpr int kMR = stage::kMR;
constexpr int64_t kNR = stage::kNR;

// Activations computed inside the micro-kernel's epilogue (cheap, no calls). The others (silu,
// gelu, gelu_tanh call sleef) go in a second pass over the stored tile: a call inside the
// micro-kernel would make every accumulator live across it, on the stack.
inline bool inline_act(int id) {
  return id == kActNone || id == kActRelu || id == kActHardtanh || id == kActHardswish ||
         id == kActLeaky;
}

// Where a micro-tile's results go: c = act(acc) (+ res), pixel strides ldc and ldr, `cols` of its
// columns (a partial last vector is stored masked; full vectors past it are not stored).
struct TileOut {
  float* c;
  int64_t ldc;
  const float* res;
  int64_t ldr;
  int64_t cols;
};

template <int ID, int M, int NV>
C10_ALWAYS_INLINE void tile_epilogue(Vec (&acc)[M][NV], const Act& act, const TileOut& o) {
  DASP_UNROLL
  for (int j = 0; j < NV; ++j) {
    const int64_t col = j * kV, m = util::imin(kV, o.cols - col);
    if (m <= 0) break;
    DASP_UNROLL
    for (int i = 0; i < M; ++i) {
      Vec y = act.template apply<ID>(acc[i][j]);
      if (o.res) y = y + Vec::loadu(o.res + i * o.ldr + col, m);
      y.store(o.c + i * o.ldc + col, m);
    }
  }
}

// One micro-tile: M pixels of a (pixel stride lda, k channels each) times one packed block b
// ([k][NV * kV]), plus bias, then the epilogue.
template <int ID, int M, int NV>
void micro(int64_t k, const float* a, int64_t lda, const float* b, const float* bias,
           const Act& act, const TileOut& o) {
  Vec acc[M][NV];
  DASP_UNROLL
  for (int j = 0; j < NV; ++j) {
    const Vec bj = Vec::loadu(bias + j * kV);
    DASP_UNROLL
    for (int i = 0; i < M; ++i) acc[i][j] = bj;
  }
  stage::mac_tile<M, false, NV>(k, a, lda, b, acc);
  tile_epilogue<ID, M, NV>(acc, act, o);
}

template <int ID, int NV>
void micro_any(int m, int64_t k, const float* a, int64_t lda, const float* b, const float* bias,
               const Act& act, const TileOut& o) {
  util::static_for<kMR>([&](auto i_) {
    constexpr int M = decltype(i_)::value + 1;
    if (M == m) micro<ID, M, NV>(k, a, lda, b, bias, act, o);
  });
}

// A 1x1 convolution as the kernel runs it: k input channels, weights packed in blocks of kNR
// columns over cols_pad (a multiple of kV; the last block kV wide where cols_pad is not whole
// blocks), bias [cols_pad], `cols` output columns stored.
struct Gemm {
  int64_t k;
  const float* b;
  const float* bias;
  int64_t cols_pad, cols;
  const Act* act;
};

// c[i] = act(a[i] @ B + bias) (+ res[i]) for n pixels, activation ID inline. Blocks outer: a
// block's weights (k x kNR) stay in L1 while the pixels sweep past.
template <int ID>
void gemm_rows(const Gemm& g, int64_t n, const float* a, int64_t lda, float* c, int64_t ldc,
               const float* res, int64_t ldr) {
  for (int64_t c0 = 0; c0 < g.cols_pad; c0 += kNR) {
    const float* b = g.b + c0 * g.k;  // the blocks before hold c0 columns of k weights
    const bool wide = c0 + kNR <= g.cols_pad;
    for (int64_t i = 0; i < n; i += kMR) {
      const int m = static_cast<int>(util::imin(kMR, n - i));
      const TileOut o{c + i * ldc + c0, ldc, res ? res + i * ldr + c0 : nullptr, ldr,
                      g.cols - c0};
      if (wide)
        micro_any<ID, 2>(m, g.k, a + i * lda, lda, b, g.bias + c0, *g.act, o);
      else
        micro_any<ID, 1>(m, g.k, a + i * lda, lda, b, g.bias + c0, *g.act, o);
    }
  }
}

// The second pass of a call-heavy activation: c[i] = act(c[i]) (+ res[i]), n pixels.
inline void act_pass(const Act& act, int64_t n, int64_t cols, float* c, int64_t ldc,
                     const float* res, int64_t ldr) {
  for (int64_t i = 0; i < n; ++i)
    for (int64_t col = 0; col < cols; col += kV) {
      const int64_t m = util::imin(kV, cols - col);
      Vec y = act(Vec::loadu(c + i * ldc + col, m));
      if (res) y = y + Vec::loadu(res + i * ldr + col, m);
      y.store(c + i * ldc + col, m);
    }
}

// c = act(a @ B + bias) (+ res): the activation's switch taken once per call.
inline void gemm(const Gemm& g, int64_t n, const float* a, int64_t lda, float* c, int64_t ldc,
                 const float* res, int64_t ldr) {
  switch (g.act->id) {
    case kActNone: return gemm_rows<kActNone>(g, n, a, lda, c, ldc, res, ldr);
    case kActRelu: return gemm_rows<kActRelu>(g, n, a, lda, c, ldc, res, ldr);
    case kActHardtanh: return gemm_rows<kActHardtanh>(g, n, a, lda, c, ldc, res, ldr);
    case kActHardswish: return gemm_rows<kActHardswish>(g, n, a, lda, c, ldc, res, ldr);
    case kActLeaky: return gemm_rows<kActLeaky>(g, n, a, lda, c, ldc, res, ldr);
    default:
      gemm_rows<kActNone>(g, n, a, lda, c, ldc, nullptr, 0);
      act_pass(*g.act, n, g.cols, c, ldc, res, ldr);
  }
}

// What one task's rows share: the shapes, weights, activations, its buffers.
struct Task {
  const IrShape& s;
  const IrArgs<float>& a;
  const IrScratch<float>& scr;
  Gemm expand, project;
  DwShape dsh;          // the depthwise as dwconv_bn_act's NHWC kernel sees it (C = e_pad)
  DwArgs<float> dargs;  // its scale and shift
  Act act_d;
  int64_t n;  // the image
};

// Ring row of input row iy (0 <= iy < H) of y: expanded (or copied) into its slot on first use.
inline const float* ring_row(const Task& t, int64_t iy) {
  const IrShape& s = t.s;
  const int64_t slot = iy % s.ring_cap, E = s.e_pad;
  float* row = t.scr.ring + slot * s.ring_w * E;
  if (t.scr.tag[slot] == iy) return row;
  const float* xr = t.a.x + (t.n * s.H + iy) * s.W * s.C;
  float* dst = row + s.pad_l * E;
  if (s.expand) {
    gemm(t.expand, s.W, xr, s.C, dst, E, nullptr, 0);
  } else {
    // The pad channels [C, e_pad) stay the zeros the host wrote.
    for (int64_t i = 0; i < s.W; ++i) util::copy_n(xr + i * s.C, s.C, dst + i * E);
  }
  t.scr.tag[slot] = iy;
  return row;
}

// One block of the depthwise: npx outputs (ostep apart, the first at chunk offset r0, whose
// sweep unit 0 is ring column col0) for the channel vectors at c, into the chunk buffer. A
// function of its own, as dwconv's nhwc_block, flattened so that what it calls is inlined into
// it: the sweep's static_for kept out of line (as GCC did until kernel_util.h forced it inline)
// leaves the accumulators in memory, a load and a store around every FMA. Forcing it inline made
// mobilenet_v2's blocks 7-17% faster (one thread, 1x3x512x1024 shapes).
template <int K, int SP, int PX, int CV, bool PART>
DASP_IR_FLATTEN void dw_block(const Task& t, const dw::NhwcRow<float>& r, const float* const* rows, int64_t col0,
              int64_t r0, int npx, int64_t c, int64_t cl) {
  constexpr int NJ = (PX - 1) * SP + K;
  const int64_t E = t.s.e_pad;
  Vec acc[PX][CV];
  for (int px = 0; px < PX; ++px)
    for (int v = 0; v < CV; ++v) acc[px][v] = Vec(0.f);
  for (int ky = 0; ky < K; ++ky)
    if (rows[ky])
      dw::nhwc_sweep<float, K, SP, PX, CV, PART, false>(rows[ky] + col0 * E + c, t.s.D * E,
                                                         t.a.wd + ky * K * E + c, E, cl, 0, NJ,
                                                         acc);
  dw::nhwc_store<float, PX, CV, PART>(r, acc, r0, npx, c, cl);
}

// Depthwise of output pixels [o0, o0 + n) of one row into d [n][e_pad]: dwconv_bn_act's NHWC
// sweep (blocks of PX pixels, K weights of a tap row in registers) over the ring rows, whose
// column j holds input pixel j - pad_l, so output o reads columns o * S + D * kx. NhwcSweep:
// blocks take outputs ostep apart with units D columns apart (dw::NhwcSweep explains SP).
template <int K, int SP>
void dw_chunk(const Task& t, const float* const* rows, int64_t o0, int64_t n, float* d) {
  using Tile = dw::NhwcTile<K>;
  constexpr int PX = Tile::PX;
  static_assert(PX <= kIrMaxPx, "the ring's right zero columns are sized for kIrMaxPx");
  const IrShape& s = t.s;
  const int64_t E = s.e_pad, m = dw::NhwcSweep(t.dsh).ostep;
  const dw::NhwcRow<float> r{nullptr, d, t.dargs, t.dsh, t.act_d, 0, 0, K, s.D * E, m, nullptr};
  for (int64_t b0 = 0; b0 < n; b0 += PX * m)
    for (int64_t r0 = b0; r0 < util::imin(b0 + m, n); ++r0) {
      const int npx = static_cast<int>(util::imin(PX, (n - 1 - r0) / m + 1));
      const int64_t col0 = (o0 + r0) * s.S;
      dw::channel_chunks_of<float, Tile::CV>(E, [&](int64_t c, auto cv_tag, auto part_tag,
                                                    int64_t cl) {
        constexpr int CV = decltype(cv_tag)::value;
        constexpr bool PART = decltype(part_tag)::value;
        dw_block<K, SP, PX, CV, PART>(t, r, rows, col0, r0, npx, c, cl);
      });
    }
}

// Depthwise of a chunk tap by tap, for the strides and dilations no sweep fits (S = 2 with an
// odd D > 1): same sums in the same order.
inline void dw_chunk_taps(const Task& t, const float* const* rows, int64_t o0, int64_t n,
                          float* d) {
  const IrShape& s = t.s;
  const int64_t E = s.e_pad, K = s.K;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t c = 0; c < E; c += kV) {
      Vec acc(0.f);
      for (int64_t ky = 0; ky < K; ++ky) {
        if (!rows[ky]) continue;
        for (int64_t kx = 0; kx < K; ++kx)
          acc = at::vec::fmadd(Vec::loadu(rows[ky] + ((o0 + i) * s.S + s.D * kx) * E + c),
                               Vec::loadu(t.a.wd + (ky * K + kx) * E + c), acc);
      }
      const Vec z = at::vec::fmadd(acc, Vec::loadu(t.a.sd + c), Vec::loadu(t.a.bd + c));
      t.act_d(z).store(d + i * E + c);
    }
}

using DwChunkFn = void (*)(const Task&, const float* const*, int64_t, int64_t, float*);

inline DwChunkFn pick_dw_chunk(const DwShape& p) {
  const dw::NhwcSweep sw(p);
  DwChunkFn fn = &dw_chunk_taps;
  if (!sw.ok) return fn;
  util::static_for<9>([&](auto k_) {
    constexpr int K = decltype(k_)::value + 1;
    if (p.K == K) fn = sw.sp == 1 ? &dw_chunk<K, 1> : &dw_chunk<K, 2>;
  });
  return fn;
}

inline DwShape dw_view(const IrShape& s) {
  DwShape p{};
  p.N = s.N;
  p.C = s.e_pad;
  p.H = s.H;
  p.W = s.W;
  p.Ho = s.Ho;
  p.Wo = s.Wo;
  p.K = s.K;
  p.S = s.S;
  p.pad_t = s.pad_t;
  p.pad_l = s.pad_l;
  p.D = s.D;
  p.act = s.act_d;
  p.alpha = s.alpha_d;
  p.beta = s.beta_d;
  p.bands = s.bands;
  p.stream = false;
  return p;
}

// sum[c] += d[i][c] over n pixels (SE pass 1), pixel by pixel so that the order of the sums is
// the same in every build and for every band split.
inline void add_pixels(const float* d, int64_t n, int64_t E, float* sum) {
  for (int64_t i = 0; i < n; ++i)
    for (int64_t c = 0; c < E; c += kV)
      (Vec::loadu(sum + c) + Vec::loadu(d + i * E + c)).store(sum + c);
}

// SE pass 2 (IrShape::se_pass): output rows [oyA, oyB) of image n from the kept depthwise output,
// in chunks of pixels as pass 0 projects them (a chunk of dw_out is read once from memory and then
// from L1 by every block of output channels).
inline void project_vec(const IrShape& s, const IrArgs<float>& a, int64_t task) {
  const Act act_p(s.act_p, s.alpha_p, s.beta_p);
  const int64_t n = task / s.bands, band = task % s.bands;
  const Gemm g{s.E, a.wp + n * a.wp_image, a.bp, s.co_pad, s.Co, &act_p};
  for (int64_t oy = band * s.Ho / s.bands; oy < (band + 1) * s.Ho / s.bands; ++oy) {
    const float* d = a.dw_out + (n * s.Ho + oy) * s.Wo * s.e_pad;
    float* out = a.out + (n * s.Ho + oy) * s.Wo * s.Co;
    const float* res = s.residual ? a.x + (n * s.H + oy) * s.W * s.C : nullptr;
    for (int64_t o0 = 0; o0 < s.Wo; o0 += s.chunk)
      gemm(g, util::imin(s.chunk, s.Wo - o0), d + o0 * s.e_pad, s.e_pad, out + o0 * s.Co, s.Co,
           res ? res + o0 * s.C : nullptr, s.C);
  }
}

// Output rows [oyA, oyB) of image n: per row, the ring rows it reads, then chunks of pixels.
inline void fwd_vec(const IrShape& s, const IrArgs<float>& a, const IrScratch<float>& scr,
                    int64_t task) {
  if (s.se_pass == 2) return project_vec(s, a, task);
  const Act act_e(s.act_e, s.alpha_e, s.beta_e), act_p(s.act_p, s.alpha_p, s.beta_p);
  Task t{s, a, scr, {s.C, a.we, a.be, s.e_pad, s.e_pad, &act_e},
         {s.E, a.wp, a.bp, s.co_pad, s.Co, &act_p}, dw_view(s), DwArgs<float>{},
         Act(s.act_d, s.alpha_d, s.beta_d), task / s.bands};
  t.dargs.scale = a.sd;
  t.dargs.shift = a.bd;
  const DwChunkFn dw_fn = pick_dw_chunk(t.dsh);
  const int64_t band = task % s.bands;
  const int64_t oyA = band * s.Ho / s.bands, oyB = (band + 1) * s.Ho / s.bands;
  util::fill(scr.tag, s.ring_cap, int64_t(-1));
  for (int64_t oy = oyA; oy < oyB; ++oy) {
    const float* rows[9];
    for (int64_t ky = 0; ky < s.K; ++ky) {
      const int64_t iy = oy * s.S - s.pad_t + s.D * ky;
      rows[ky] = iy >= 0 && iy < s.H ? ring_row(t, iy) : nullptr;
    }
    if (s.se_pass == 1) {  // keep the depthwise output (in place of the chunk buffer), sum it
      float* d = a.dw_out + (t.n * s.Ho + oy) * s.Wo * s.e_pad;
      float* sum = a.row_sum + (t.n * s.Ho + oy) * s.e_pad;
      util::fill(sum, s.e_pad, 0.f);
      for (int64_t o0 = 0; o0 < s.Wo; o0 += s.chunk) {
        const int64_t n = util::imin(s.chunk, s.Wo - o0);
        dw_fn(t, rows, o0, n, d + o0 * s.e_pad);
        add_pixels(d + o0 * s.e_pad, n, s.e_pad, sum);
      }
      continue;
    }
    float* out = a.out + (t.n * s.Ho + oy) * s.Wo * s.Co;
    const float* res = s.residual ? a.x + (t.n * s.H + oy) * s.W * s.C : nullptr;
    for (int64_t o0 = 0; o0 < s.Wo; o0 += s.chunk) {
      const int64_t n = util::imin(s.chunk, s.Wo - o0);
      dw_fn(t, rows, o0, n, scr.d);
      gemm(t.project, n, scr.d, s.e_pad, out + o0 * s.Co, s.Co, res ? res + o0 * s.C : nullptr,
           s.C);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Scalar: the same ring, plain loops. Weights packed with blocks one column wide (ir_block = 1):
// we [E][C], wp [Co][E]; e_pad = E, co_pad = Co.

// act(z) for one value, through the vector activations (one formula for both paths).
template <typename T>
inline T act1(const dw::ActV<T>& act, T z) {
  alignas(64) T lanes[at::vec::Vectorized<T>::size()];
  act(at::vec::Vectorized<T>(z)).store(lanes);
  return lanes[0];
}

template <typename T>
const T* ring_row_scalar(const IrShape& s, const IrArgs<T>& a, const IrScratch<T>& scr, int64_t n,
                         int64_t iy, const dw::ActV<T>& act_e) {
  const int64_t slot = iy % s.ring_cap, E = s.e_pad, C = s.C;
  T* row = scr.ring + slot * s.ring_w * E;
  if (scr.tag[slot] == iy) return row;
  const T* xr = a.x + (n * s.H + iy) * s.W * C;
  for (int64_t i = 0; i < s.W; ++i) {
    T* dst = row + (s.pad_l + i) * E;
    for (int64_t e = 0; e < E; ++e) {
      if (!s.expand) {
        dst[e] = xr[i * C + e];
        continue;
      }
      T z = a.be[e];
      for (int64_t c = 0; c < C; ++c) z += xr[i * C + c] * a.we[e * C + c];
      dst[e] = act1(act_e, z);
    }
  }
  scr.tag[slot] = iy;
  return row;
}

// One output pixel's depthwise, every channel, into d.
template <typename T>
void dw_pixel_scalar(const IrShape& s, const IrArgs<T>& a, const T* const* rows, int64_t ox, T* d,
                     const dw::ActV<T>& act_d) {
  const int64_t E = s.e_pad, K = s.K;
  for (int64_t e = 0; e < E; ++e) {
    T acc = 0;
    for (int64_t ky = 0; ky < K; ++ky)
      for (int64_t kx = 0; kx < K; ++kx)
        if (rows[ky]) acc += rows[ky][(ox * s.S + s.D * kx) * E + e] * a.wd[(ky * K + kx) * E + e];
    d[e] = act1(act_d, acc * a.sd[e] + a.bd[e]);
  }
}

// One output pixel's projection of d with weights wp [Co][E].
template <typename T>
void project_pixel_scalar(const IrShape& s, const IrArgs<T>& a, const T* wp, const T* d,
                          const dw::ActV<T>& act_p, T* out, const T* res) {
  for (int64_t co = 0; co < s.Co; ++co) {
    T z = a.bp[co];
    for (int64_t e = 0; e < s.E; ++e) z += d[e] * wp[co * s.E + e];
    out[co] = act1(act_p, z) + (res ? res[co] : T(0));
  }
}

// SE pass 2 (IrShape::se_pass): the projection of the kept depthwise output.
template <typename T>
void project_scalar(const IrShape& s, const IrArgs<T>& a, int64_t task) {
  const dw::ActV<T> act_p(s.act_p, s.alpha_p, s.beta_p);
  const int64_t n = task / s.bands, band = task % s.bands;
  for (int64_t oy = band * s.Ho / s.bands; oy < (band + 1) * s.Ho / s.bands; ++oy)
    for (int64_t ox = 0; ox < s.Wo; ++ox) {
      const int64_t px = (n * s.Ho + oy) * s.Wo + ox;
      const T* res = s.residual ? a.x + ((n * s.H + oy) * s.W + ox) * s.C : nullptr;
      project_pixel_scalar(s, a, a.wp + n * a.wp_image, a.dw_out + px * s.e_pad, act_p,
                           a.out + px * s.Co, res);
    }
}

template <typename T>
void fwd_scalar(const IrShape& s, const IrArgs<T>& a, const IrScratch<T>& scr, int64_t task) {
  if (s.se_pass == 2) return project_scalar(s, a, task);
  const dw::ActV<T> act_e(s.act_e, s.alpha_e, s.beta_e), act_d(s.act_d, s.alpha_d, s.beta_d);
  const dw::ActV<T> act_p(s.act_p, s.alpha_p, s.beta_p);
  const int64_t n = task / s.bands, band = task % s.bands;
  const int64_t oyA = band * s.Ho / s.bands, oyB = (band + 1) * s.Ho / s.bands;
  util::fill(scr.tag, s.ring_cap, int64_t(-1));
  for (int64_t oy = oyA; oy < oyB; ++oy) {
    const T* rows[9];
    for (int64_t ky = 0; ky < s.K; ++ky) {
      const int64_t iy = oy * s.S - s.pad_t + s.D * ky;
      rows[ky] = iy >= 0 && iy < s.H ? ring_row_scalar(s, a, scr, n, iy, act_e) : nullptr;
    }
    T* out = a.out + (n * s.Ho + oy) * s.Wo * s.Co;
    const T* res = s.residual ? a.x + (n * s.H + oy) * s.W * s.C : nullptr;
    T* sum = s.se_pass == 1 ? a.row_sum + (n * s.Ho + oy) * s.e_pad : nullptr;
    if (sum) util::fill(sum, s.e_pad, T(0));
    for (int64_t ox = 0; ox < s.Wo; ++ox) {
      if (sum) {  // SE pass 1: keep the depthwise output and sum it
        T* d = a.dw_out + ((n * s.Ho + oy) * s.Wo + ox) * s.e_pad;
        dw_pixel_scalar(s, a, rows, ox, d, act_d);
        for (int64_t e = 0; e < s.e_pad; ++e) sum[e] += d[e];
        continue;
      }
      dw_pixel_scalar(s, a, rows, ox, scr.d, act_d);
      project_pixel_scalar(s, a, a.wp, scr.d, act_p, out + ox * s.Co,
                           res ? res + ox * s.C : nullptr);
    }
  }
}

}  // namespace ir
}  // namespace dasp_kernels::cpu::DASP_ISA
