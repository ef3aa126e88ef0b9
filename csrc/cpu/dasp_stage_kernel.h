// One output row of a DASP stage (Eq. 5):
//   out = relu(pw_scale * (pw_weight @ relu(dw_scale * dwconv(x) + dw_shift)) + pw_shift)
//         + ppm_weight @ maxpool2x2(x)
// Included once per instruction set, inside namespace dasp_kernels::cpu::DASP_ISA (see
// cpu_kernels.h); hence no include guard. The host side (dasp_stage.cpp) packs the weights, plans
// the bands and threads, owns the buffers and chains the stages of a path.
//
// Why it is fast: a row is produced in chunks of pixels. For a chunk, the depthwise result D and
// the pooled input Q go to small per-thread buffers (L1), then one register-blocked micro-kernel
// (kMR pixels x kNR channels) runs both 1x1 convolutions into the same accumulators:
// acc = pw_shift; acc += (pw_scale * pw_weight) @ D; acc = relu(acc); acc += ppm_weight @ Q.
// No intermediate of the stage touches memory. Depthwise layouts: channel-contiguous inputs with
// whole channel vectors use channel vectors (the taps of neighbouring pixels share input columns,
// and the 2x2 pool reuses the tap loads; stage_depthwise.h); others (e.g. the 3-channel NCHW image)
// use pixel vectors over rows split once into even and odd columns, so that the stride-2 taps
// become plain loads.
//
// row_scalar: plain loops, any dtype; the portable build's kernel, and the float64 one of every
// build (kernel_table.h). row_vec: float32 in builds whose at::vec is a machine register.
#include "stage_depthwise.h"

namespace dasp_kernels::cpu::DASP_ISA {
namespace stage {

// Scalar max as std::max(a, b) computes it (std:: templates stay out of ISA code).
template <typename T>
inline T smax(T a, T b) { return a < b ? b : a; }

// The scalar kernel's packing: kScalarNR output channels per block, chunks of kScalarStep pixels.
constexpr int64_t kScalarNR = 16;
constexpr int64_t kScalarStep = 24;

template <typename T>
void store_tile(const T* o, int64_t ldo, int64_t npx, int64_t cout, T* out, int64_t o_sw,
                int64_t o_sc) {
  if (o_sc == 1) {
    for (int64_t i = 0; i < npx; ++i) util::copy_n(o + i * ldo, cout, out + i * o_sw);
  } else {
    for (int64_t co = 0; co < cout; ++co)
      for (int64_t i = 0; i < npx; ++i) out[co * o_sc + i * o_sw] = o[i * ldo + co];
  }
}

// Scalar: depthwise + BN + ReLU into d[i * cin + c] and the 2x2 pool into q, pixels [ox0, ox0 + n).
template <typename T>
void dw_pool_scalar(const StageRowJob<T>& job, const T* const* rows, const T* pr0, const T* pr1,
                    int64_t ox0, int64_t n) {
  const StageWeights<T>& sw = *job.sw;
  const StageRows<T>& in = job.in;
  const int64_t cin = sw.cin, k = sw.k, p = sw.pad;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t ox = ox0 + i;
    T* di = job.scr->d + i * cin;
    util::fill(di, cin, T(0));
    for (int64_t ky = 0; ky < k; ++ky) {
      if (!rows[ky]) continue;
      for (int64_t kx = 0; kx < k; ++kx) {
        const int64_t ix = 2 * ox - p + kx;
        if (ix < 0 || ix >= in.w) continue;
        const T* src = rows[ky] + ix * in.s_w;
        const T* wt = sw.dw + (ky * k + kx) * cin;
        for (int64_t c = 0; c < cin; ++c) di[c] += wt[c] * src[c * in.s_c];
      }
    }
    for (int64_t c = 0; c < cin; ++c) di[c] = smax(di[c] + sw.dw_shift[c], T(0));
    const int64_t x0 = 2 * ox, x1 = util::imin(2 * ox + 1, in.w - 1);
    T* qi = job.scr->q + i * cin;
    for (int64_t c = 0; c < cin; ++c) {
      const int64_t oc = c * in.s_c;
      qi[c] = smax(smax(pr0[x0 * in.s_w + oc], pr0[x1 * in.s_w + oc]),
                   smax(pr1[x0 * in.s_w + oc], pr1[x1 * in.s_w + oc]));
    }
  }
}

// Scalar: both 1x1 convolutions of the chunk's n pixels, written to the output row.
template <typename T>
void pointwise_scalar(const StageRowJob<T>& job, int64_t ox0, int64_t n) {
  const StageWeights<T>& sw = *job.sw;
  const int64_t cin = sw.cin, cout = sw.cout, NR = kScalarNR;
  for (int64_t i = 0; i < n; ++i) {
    const T* di = job.scr->d + i * cin;
    const T* qi = job.scr->q + i * cin;
    T* o = job.out + (ox0 + i) * job.o_sw;
    for (int64_t blk = 0; blk * NR < cout; ++blk) {
      const int64_t nc = util::imin(NR, cout - blk * NR);
      T a[kScalarNR];
      for (int64_t j = 0; j < NR; ++j) a[j] = sw.bias[blk * NR + j];
      const T* bp = sw.pw + blk * cin * NR;
      for (int64_t ci = 0; ci < cin; ++ci)
        for (int64_t j = 0; j < NR; ++j) a[j] += di[ci] * bp[ci * NR + j];
      for (int64_t j = 0; j < NR; ++j) a[j] = smax(a[j], T(0));
      const T* bq = sw.ppm + blk * cin * NR;
      for (int64_t ci = 0; ci < cin; ++ci)
        for (int64_t j = 0; j < NR; ++j) a[j] += qi[ci] * bq[ci * NR + j];
      for (int64_t j = 0; j < nc; ++j) o[(blk * NR + j) * job.o_sc] = a[j];
    }
  }
}

template <typename T>
void row_scalar(const StageRowJob<T>& job) {
  const StageRows<T>& in = job.in;
  const int64_t oy = job.oy, chunk = job.scr->chunk;
  const T* rows[kStageMaxK];
  for (int64_t ky = 0; ky < job.sw->k; ++ky) rows[ky] = in.row(2 * oy - job.sw->pad + ky);
  const T* pr0 = in.row(2 * oy);
  const T* pr1 = in.row(util::imin(2 * oy + 1, in.h - 1));
  for (int64_t ox0 = 0; ox0 < job.wo; ox0 += chunk) {
    const int64_t n = util::imin(chunk, job.wo - ox0);
    dw_pool_scalar(job, rows, pr0, pr1, ox0, n);
    pointwise_scalar(job, ox0, n);
  }
}

// ---------------------------------------------------------------------------------------------
// Vector kernel (float32). kNR = two vectors of output channels; kMR pixels per micro-tile:
// 6 x 2 accumulators + 2 weights + 1 broadcast fit AVX2's 16 registers; AVX-512 has 32.
constexpr int64_t kNR = 2 * kV;
constexpr int kMR = kV == 16 ? 8 : 6;
constexpr int64_t gcd(int64_t a, int64_t b) { return b == 0 ? a : gcd(b, a % b); }
// Chunks of whole micro-tiles and whole pixel vectors: lcm(kMR, kV) (24 on AVX2, 48 on AVX-512).
constexpr int64_t kVecStep = kMR * kV / gcd(kMR, kV);

// acc[i][j] += sum over ci of A(i, ci) * b[ci * NV * kV + j * kV ...], M pixels, NV vectors of
// output channels (the stage's blocks are NV = 2 wide; inverted_residual_kernel.h also runs a
// one-vector block where a channel count is not whole blocks).
// PLANAR: A(i, ci) = a[ci * lda + i]; else a[i * lda + ci].
template <int M, bool PLANAR, int NV = 2>
inline void mac_tile(int64_t cin, const float* a, int64_t lda, const float* b,
                     Vec (&acc)[M][NV]) {
  for (int64_t ci = 0; ci < cin; ++ci) {
    Vec w[NV];
    DASP_UNROLL
    for (int j = 0; j < NV; ++j) w[j] = Vec::loadu(b + (ci * NV + j) * kV);
    DASP_UNROLL
    for (int i = 0; i < M; ++i) {
      const Vec x(PLANAR ? a[ci * lda + i] : a[i * lda + ci]);
      DASP_UNROLL
      for (int j = 0; j < NV; ++j) acc[i][j] = at::vec::fmadd(x, w[j], acc[i][j]);
    }
  }
}

// Both 1x1 convolutions for M pixels x kNR output channels, in one set of accumulators.
template <int M, bool PLANAR>
inline void micro(int64_t cin, const float* a1, const float* a2, int64_t lda, const float* b1,
                  const float* b2, const float* bias, float* c, int64_t ldc) {
  Vec acc[M][2];
  const Vec bias0 = Vec::loadu(bias), bias1 = Vec::loadu(bias + kV), zero(0.f);
  DASP_UNROLL
  for (int i = 0; i < M; ++i) {
    acc[i][0] = bias0;
    acc[i][1] = bias1;
  }
  mac_tile<M, PLANAR>(cin, a1, lda, b1, acc);
  DASP_UNROLL
  for (int i = 0; i < M; ++i) {
    acc[i][0] = util::vmax(acc[i][0], zero);
    acc[i][1] = util::vmax(acc[i][1], zero);
  }
  mac_tile<M, PLANAR>(cin, a2, lda, b2, acc);
  DASP_UNROLL
  for (int i = 0; i < M; ++i) {
    acc[i][0].store(c + i * ldc);
    acc[i][1].store(c + i * ldc + kV);
  }
}

template <bool PLANAR>
void micro_any(int m, int64_t cin, const float* a1, const float* a2, int64_t lda, const float* b1,
               const float* b2, const float* bias, float* c, int64_t ldc) {
  if constexpr (kMR >= 8) {
    if (m == 8) return micro<8, PLANAR>(cin, a1, a2, lda, b1, b2, bias, c, ldc);
    if (m == 7) return micro<7, PLANAR>(cin, a1, a2, lda, b1, b2, bias, c, ldc);
  }
  switch (m) {
    case 6: micro<6, PLANAR>(cin, a1, a2, lda, b1, b2, bias, c, ldc); break;
    case 5: micro<5, PLANAR>(cin, a1, a2, lda, b1, b2, bias, c, ldc); break;
    case 4: micro<4, PLANAR>(cin, a1, a2, lda, b1, b2, bias, c, ldc); break;
    case 3: micro<3, PLANAR>(cin, a1, a2, lda, b1, b2, bias, c, ldc); break;
    case 2: micro<2, PLANAR>(cin, a1, a2, lda, b1, b2, bias, c, ldc); break;
    default: micro<1, PLANAR>(cin, a1, a2, lda, b1, b2, bias, c, ldc); break;
  }
}

// n pixels of a chunk: both convolutions, written to c (pixel stride ldc, channels contiguous,
// cout_pad of them). PLANAR: d and q are [cin][lda]; else [pixel][lda].
template <bool PLANAR>
void gemm_chunk(const StageWeights<float>& sw, int64_t n, const float* d, const float* q,
                int64_t lda, float* c, int64_t ldc) {
  const int64_t cin = sw.cin;
  for (int64_t blk = 0; blk < sw.cout_pad / kNR; ++blk) {
    const float* b1 = sw.pw + blk * cin * kNR;
    const float* b2 = sw.ppm + blk * cin * kNR;
    const float* bias = sw.bias + blk * kNR;
    for (int64_t i = 0; i < n; i += kMR) {
      const int m = static_cast<int>(util::imin(kMR, n - i));
      const int64_t off = PLANAR ? i : i * lda;
      micro_any<PLANAR>(m, cin, d + off, q + off, lda, b1, b2, bias, c + i * ldc + blk * kNR,
                        ldc);
    }
  }
}

// The chunk's output tile [pixel][ldo] into the output row (pixel stride o_sw, channel o_sc).
inline void store_tile_vec(const float* o, int64_t ldo, int64_t npx, int64_t cout, float* out,
                           int64_t o_sw, int64_t o_sc) {
  if (o_sw == 1 && o_sc != 1) {
    // Channels-first output, 8 x 8 transposes. Channels outer: the planes of a channels-first
    // output lie a power of two apart and would all fall into the same cache sets if every
    // channel were written for each 8 pixels.
    const int64_t npx8 = npx / 8 * 8, cout8 = kHaveTranspose8 ? cout / 8 * 8 : 0;
    for (int64_t co = 0; co < cout8; co += 8) {
      for (int64_t i = 0; i < npx8; i += 8)
        transpose8(o + i * ldo + co, ldo, out + co * o_sc + i, o_sc);
      for (int64_t j = 0; j < 8; ++j)
        for (int64_t i = npx8; i < npx; ++i) out[(co + j) * o_sc + i] = o[i * ldo + co + j];
    }
    for (int64_t co = cout8; co < cout; ++co)
      for (int64_t i = 0; i < npx; ++i) out[co * o_sc + i] = o[i * ldo + co];
    return;
  }
  store_tile<float>(o, ldo, npx, cout, out, o_sw, o_sc);
}

// Where a chunk's 1x1 results go: in place when the output is channel-contiguous with whole
// blocks, else into the tile and then store_tile_vec.
struct ChunkDst {
  bool direct;
  float* tile;
  int64_t ldt;
};

inline ChunkDst chunk_dst(const StageRowJob<float>& job) {
  const bool direct = job.o_sc == 1 && job.sw->cout % kNR == 0;
  return {direct, direct ? nullptr : job.scr->o, direct ? job.o_sw : job.sw->cout_pad};
}

template <bool PLANAR>
void finish_chunk(const StageRowJob<float>& job, const ChunkDst& dst, int64_t ox0, int64_t n,
                  int64_t lda) {
  const StageWeights<float>& sw = *job.sw;
  float* out = job.out + ox0 * job.o_sw;
  gemm_chunk<PLANAR>(sw, n, job.scr->d, job.scr->q, lda, dst.direct ? out : dst.tile, dst.ldt);
  if (!dst.direct) store_tile_vec(dst.tile, dst.ldt, n, sw.cout, out, job.o_sw, job.o_sc);
}

// Channel vectors: input channels contiguous, a whole number of vectors of them.
inline void row_channel_vectors(const StageRowJob<float>& job) {
  const StageWeights<float>& sw = *job.sw;
  const StageRows<float>& in = job.in;
  const int64_t oy = job.oy, chunk = job.scr->chunk;
  const float* rows[kStageMaxK];
  for (int64_t ky = 0; ky < sw.k; ++ky) rows[ky] = in.row(2 * oy - sw.pad + ky);
  const float* pr0 = in.row(2 * oy);
  const float* pr1 = in.row(util::imin(2 * oy + 1, in.h - 1));
  const DwCvFn dw = pick_dw_cv(sw.k);
  const ChunkDst dst = chunk_dst(job);
  for (int64_t ox0 = 0; ox0 < job.wo; ox0 += chunk) {
    const int64_t n = util::imin(chunk, job.wo - ox0);
    dw(rows, pr0, pr1, in.w, in.s_w, sw.cin, sw.dw, sw.dw_shift, ox0, n, job.scr->d, job.scr->q);
    finish_chunk<false>(job, dst, ox0, n, sw.cin);
  }
}

// The de-interleaved copy of input row iy: [cin][even, odd][wd], made on first use (a ring of
// dl_cap rows keyed by row index).
inline float* split_row(const StageRowJob<float>& job, int64_t iy) {
  StageScratch<float>& scr = *job.scr;
  const StageRows<float>& in = job.in;
  const int64_t cin = job.sw->cin, wd = scr.wd, slot = iy % scr.dl_cap;
  float* s = scr.dl + slot * cin * 2 * wd;
  if (scr.tag[slot] != iy) {
    const float* r = in.row(iy);
    for (int64_t c = 0; c < cin; ++c)
      deinterleave(r + c * in.s_c, in.w, in.s_w, s + (2 * c) * wd + kStageHalo,
                   s + (2 * c + 1) * wd + kStageHalo);
    scr.tag[slot] = iy;
  }
  return s;
}

// Pixel vectors, one channel c of a chunk: depthwise into d[c * chunk + i], pool into q alike.
// split[ky]: de-interleaved tap rows (null: zero padding); ps0, ps1: the pool's two rows.
inline void pixel_channel(const StageRowJob<float>& job, float* const* split, const float* ps0,
                          const float* ps1, int64_t c, int64_t ox0, int64_t n) {
  const StageWeights<float>& sw = *job.sw;
  const int64_t wd = job.scr->wd, chunk = job.scr->chunk, nv = (n + kV - 1) / kV;
  const int64_t even = (2 * c) * wd + kStageHalo, odd = (2 * c + 1) * wd + kStageHalo;
  const float* ev[kStageMaxK];
  const float* od[kStageMaxK];
  for (int64_t ky = 0; ky < sw.k; ++ky) {
    ev[ky] = split[ky] ? split[ky] + even : nullptr;
    od[ky] = split[ky] ? split[ky] + odd : nullptr;
  }
  pick_dw_pv(sw.k)(ev, od, sw.dw_t + c * sw.k * sw.k, sw.dw_shift[c], ox0, nv,
                   job.scr->d + c * chunk);
  const float *e0 = ps0 + even + ox0, *o0 = ps0 + odd + ox0;
  const float *e1 = ps1 + even + ox0, *o1 = ps1 + odd + ox0;
  float* qc = job.scr->q + c * chunk;
  for (int64_t v = 0; v < nv * kV; v += kV) {
    const Vec top = util::vmax(Vec::loadu(e0 + v), Vec::loadu(o0 + v));
    const Vec bottom = util::vmax(Vec::loadu(e1 + v), Vec::loadu(o1 + v));
    util::vmax(top, bottom).store(qc + v);
  }
  // An odd width leaves the last window one column wide: the odd column there is padding.
  if (job.in.w % 2 == 1 && ox0 + n == job.wo) qc[n - 1] = smax(e0[n - 1], e1[n - 1]);
}

// Pixel vectors: each input row de-interleaved once (split_row), then per channel.
inline void row_pixel_vectors(const StageRowJob<float>& job) {
  const StageWeights<float>& sw = *job.sw;
  const StageRows<float>& in = job.in;
  const int64_t oy = job.oy, chunk = job.scr->chunk;
  float* split[kStageMaxK];
  for (int64_t ky = 0; ky < sw.k; ++ky) {
    const int64_t iy = 2 * oy - sw.pad + ky;
    split[ky] = (iy >= 0 && iy < in.h) ? split_row(job, iy) : nullptr;
  }
  const float* ps0 = split_row(job, 2 * oy);
  const float* ps1 = split_row(job, util::imin(2 * oy + 1, in.h - 1));
  const ChunkDst dst = chunk_dst(job);
  for (int64_t ox0 = 0; ox0 < job.wo; ox0 += chunk) {
    const int64_t n = util::imin(chunk, job.wo - ox0);
    for (int64_t c = 0; c < sw.cin; ++c) pixel_channel(job, split, ps0, ps1, c, ox0, n);
    finish_chunk<true>(job, dst, ox0, n, chunk);
  }
}

inline void row_vec(const StageRowJob<float>& job) {
  if (job.in.s_c == 1 && job.sw->cin % kV == 0)
    row_channel_vectors(job);
  else
    row_pixel_vectors(job);
}

// This build's stage kernel (kernel_table.h). float64 rows stay with the portable build's scalar
// loops (row null here): compiled for AVX2 the same loops would be contracted into FMAs and give
// other bits than they always have.
#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
constexpr bool kWideX86Build = true;
#else
constexpr bool kWideX86Build = false;
#endif

template <typename T>
StageKernel<T> kernel() {
  if constexpr (std::is_same_v<T, float> && util::kNativeVec)
    return {&row_vec, kNR, kVecStep, kV};
  else if constexpr (!std::is_same_v<T, float> && kWideX86Build)
    return {nullptr, kScalarNR, kScalarStep, 0};
  else
    return {&row_scalar<T>, kScalarNR, kScalarStep, 0};
}

}  // namespace stage
}  // namespace dasp_kernels::cpu::DASP_ISA
