// One whole DASP stage (Eq. 5) on the CPU, and the spatial path of several stages built from it:
//   out = relu(pw_scale * (pw_weight @ relu(dw_scale * dwconv(x) + dw_shift)) + pw_shift)
//         + ppm_weight @ maxpool2x2(x)
//
// Design (why it is fast):
// - Output rows are produced one at a time, in chunks of pixels. For a chunk, the depthwise result
//   D and the pooled input Q are computed into small per-thread buffers (L1), then one
//   register-blocked micro-kernel (6 pixels x 16 channels) runs both 1x1 convolutions into the
//   same accumulators: acc = pw_shift; acc += (pw_scale * pw_weight) @ D; acc = relu(acc);
//   acc += ppm_weight @ Q. No intermediate of the stage touches memory.
// - Depthwise layouts: channels-last inputs with a multiple of 8 channels use channel vectors
//   (the taps of neighbouring pixels share input columns; the 2x2 pool reuses the tap loads);
//   others (e.g. the 3-channel NCHW image) use pixel vectors over rows split once into even and
//   odd columns, so that the stride-2 taps become plain loads.
// - dasp_spatial_path chains stages row-wise: a stage's output rows go to a ring buffer holding
//   just the rows the next stage's window needs, so the 64 MB stage-1 output never exists.
// - Threads take bands of output rows (a few per thread, handed out dynamically; each band
//   recomputes a one-row halo per earlier stage) and a thread-local workspace reused across
//   calls. Large outputs come from a pool of storages no one else holds (see output_pool.cpp), so
//   steady-state calls do not page-fault.
// - AVX2/FMA kernels are compiled with function target attributes and chosen at run time; the
//   generic kernels (any dtype, any CPU) are plain loops. DASP_KERNELS_CPU_ISA=generic forces them.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define DASP_X86 1
#define DASP_AVX2 __attribute__((target("avx2,fma")))
#endif

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <mutex>
#include <vector>

#include "../checks.h"
#include "output_pool.h"

namespace dasp_kernels {
namespace {

constexpr int64_t kNR = 16;  // output channels per micro-tile: two AVX2 vectors
constexpr int64_t kMR = 6;   // pixels per micro-tile: 6 x 2 accumulators + 2 weights + 1 broadcast
constexpr int64_t kHalo = 4; // zero columns left of a de-interleaved row (reach of K = 7 is 2)

int64_t round_up(int64_t a, int64_t b) { return (a + b - 1) / b * b; }

// ---------------------------------------------------------------------------------------------
// Weights of one stage, folded and packed once per call (they are tiny).
template <typename T>
struct StageWeights {
  int64_t cin = 0, cout = 0, k = 0, p = 0, cout_pad = 0;
  std::vector<T> dw;        // [K*K][cin], dw_scale folded in (channel-vector path)
  std::vector<T> dw_t;      // [cin][K*K], the same, per channel (pixel-vector path)
  std::vector<T> dw_shift;  // [cin]
  std::vector<T> pw, ppm;   // [cout_pad / kNR][cin][kNR]; pw_scale folded into pw
  std::vector<T> bias;      // [cout_pad] = pw_shift, zero padded
};

template <typename T>
StageWeights<T> prepare(const at::Tensor& dw_weight, const at::Tensor& dw_scale,
                        const at::Tensor& dw_shift, const at::Tensor& pw_weight,
                        const at::Tensor& pw_scale, const at::Tensor& pw_shift,
                        const at::Tensor& ppm_weight) {
  StageWeights<T> s;
  s.cin = dw_weight.size(0);
  s.k = dw_weight.size(2);
  s.p = s.k / 2;
  s.cout = pw_weight.size(0);
  s.cout_pad = round_up(s.cout, kNR);
  const int64_t kk = s.k * s.k, cin = s.cin, cout = s.cout;
  auto dww = dw_weight.contiguous();
  auto dws = dw_scale.contiguous(), dwb = dw_shift.contiguous();
  auto pww = pw_weight.contiguous(), pws = pw_scale.contiguous(), pwb = pw_shift.contiguous();
  auto ppw = ppm_weight.contiguous();
  const T* w = dww.data_ptr<T>();
  const T* sc = dws.data_ptr<T>();
  s.dw.assign(kk * cin, T(0));
  s.dw_t.assign(kk * cin, T(0));
  for (int64_t c = 0; c < cin; ++c)
    for (int64_t t = 0; t < kk; ++t) {
      const T v = w[c * kk + t] * sc[c];
      s.dw[t * cin + c] = v;
      s.dw_t[c * kk + t] = v;
    }
  s.dw_shift.assign(dwb.data_ptr<T>(), dwb.data_ptr<T>() + cin);
  s.pw.assign(s.cout_pad * cin, T(0));
  s.ppm.assign(s.cout_pad * cin, T(0));
  s.bias.assign(s.cout_pad, T(0));
  const T* a = pww.data_ptr<T>();
  const T* as = pws.data_ptr<T>();
  const T* ab = pwb.data_ptr<T>();
  const T* b = ppw.data_ptr<T>();
  for (int64_t co = 0; co < cout; ++co) {
    const int64_t blk = co / kNR, j = co % kNR;
    for (int64_t ci = 0; ci < cin; ++ci) {
      s.pw[(blk * cin + ci) * kNR + j] = a[co * cin + ci] * as[co];
      s.ppm[(blk * cin + ci) * kNR + j] = b[co * cin + ci];
    }
    s.bias[co] = ab[co];
  }
  return s;
}

// ---------------------------------------------------------------------------------------------
// Where a stage reads its input rows from: a user tensor (any strides) or a ring buffer of rows.
template <typename T>
struct Rows {
  const T* base = nullptr;
  int64_t s_row = 0;  // stride between rows (tensor) or between ring slots
  int64_t cap = 0;    // ring slots; 0 for a tensor
  int64_t h = 0, w = 0, s_w = 0, s_c = 0;
  const T* row(int64_t iy) const {
    if (iy < 0 || iy >= h) return nullptr;
    return base + (cap ? iy % cap : iy) * s_row;
  }
};

// Per-thread scratch for one stage (pointers into the thread's workspace).
template <typename T>
struct StageScratch {
  int64_t chunk = 0;  // output pixels per chunk
  T* d = nullptr;     // depthwise result of a chunk
  T* q = nullptr;     // pooled input of a chunk
  T* o = nullptr;     // [chunk][cout_pad] output tile when the output is not channel-contiguous
  // De-interleaved input rows for the pixel-vector path: slot -> [cin][2][wd] (even, odd).
  T* dl = nullptr;
  int64_t* dl_tag = nullptr;
  int64_t dl_cap = 0, wd = 0;
};

template <typename T>
struct RowJob {
  const StageWeights<T>* sw;
  Rows<T> in;
  int64_t oy, wo;
  T* out;  // pixel 0 of output row oy
  int64_t o_sw, o_sc;
  StageScratch<T>* scr;
};

// Ring slots a consumer with half-width p needs: rows 2y - p .. 2y + max(p, 1) (pool needs 2y+1).
int64_t window_rows(int64_t p) { return p + std::max<int64_t>(p, 1) + 1; }

// Which layout the depthwise step uses for an input: channel vectors when channels are contiguous
// and a multiple of 8, else pixel vectors over de-interleaved (even / odd column) rows.
bool use_channel_vectors(int64_t s_c, int64_t cin) { return s_c == 1 && cin % 8 == 0; }

// ---------------------------------------------------------------------------------------------
// Generic kernels: plain loops, any dtype, any CPU.
template <typename T>
void store_tile(const T* o, int64_t ldo, int64_t npx, int64_t cout, T* out, int64_t o_sw,
                int64_t o_sc) {
  if (o_sc == 1) {
    for (int64_t i = 0; i < npx; ++i) std::memcpy(out + i * o_sw, o + i * ldo, cout * sizeof(T));
  } else {
    for (int64_t co = 0; co < cout; ++co)
      for (int64_t i = 0; i < npx; ++i) out[co * o_sc + i * o_sw] = o[i * ldo + co];
  }
}

template <typename T>
void row_generic(const RowJob<T>& job) {
  const StageWeights<T>& sw = *job.sw;
  const Rows<T>& in = job.in;
  StageScratch<T>& scr = *job.scr;
  const int64_t cin = sw.cin, cout = sw.cout, k = sw.k, p = sw.p, chunk = scr.chunk;
  const T* rows[kMaxK];
  for (int64_t ky = 0; ky < k; ++ky) rows[ky] = in.row(2 * job.oy - p + ky);
  const T* pr0 = in.row(2 * job.oy);
  const T* pr1 = in.row(std::min(2 * job.oy + 1, in.h - 1));
  for (int64_t ox0 = 0; ox0 < job.wo; ox0 += chunk) {
    const int64_t n = std::min(chunk, job.wo - ox0);
    T* d = scr.d;
    T* q = scr.q;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t ox = ox0 + i;
      T* di = d + i * cin;
      std::fill(di, di + cin, T(0));
      for (int64_t ky = 0; ky < k; ++ky) {
        if (!rows[ky]) continue;
        for (int64_t kx = 0; kx < k; ++kx) {
          const int64_t ix = 2 * ox - p + kx;
          if (ix < 0 || ix >= in.w) continue;
          const T* src = rows[ky] + ix * in.s_w;
          const T* wt = sw.dw.data() + (ky * k + kx) * cin;
          for (int64_t c = 0; c < cin; ++c) di[c] += wt[c] * src[c * in.s_c];
        }
      }
      for (int64_t c = 0; c < cin; ++c) di[c] = std::max(di[c] + sw.dw_shift[c], T(0));
      const int64_t x0 = 2 * ox, x1 = std::min(2 * ox + 1, in.w - 1);
      T* qi = q + i * cin;
      for (int64_t c = 0; c < cin; ++c) {
        const int64_t oc = c * in.s_c;
        qi[c] = std::max(std::max(pr0[x0 * in.s_w + oc], pr0[x1 * in.s_w + oc]),
                         std::max(pr1[x0 * in.s_w + oc], pr1[x1 * in.s_w + oc]));
      }
    }
    for (int64_t i = 0; i < n; ++i) {
      const T* di = d + i * cin;
      const T* qi = q + i * cin;
      T* o = job.out + (ox0 + i) * job.o_sw;
      for (int64_t blk = 0; blk * kNR < cout; ++blk) {
        const int64_t nc = std::min(kNR, cout - blk * kNR);
        T a[kNR];
        for (int64_t j = 0; j < kNR; ++j) a[j] = sw.bias[blk * kNR + j];
        const T* bp = sw.pw.data() + blk * cin * kNR;
        for (int64_t ci = 0; ci < cin; ++ci)
          for (int64_t j = 0; j < kNR; ++j) a[j] += di[ci] * bp[ci * kNR + j];
        for (int64_t j = 0; j < kNR; ++j) a[j] = std::max(a[j], T(0));
        const T* bq = sw.ppm.data() + blk * cin * kNR;
        for (int64_t ci = 0; ci < cin; ++ci)
          for (int64_t j = 0; j < kNR; ++j) a[j] += qi[ci] * bq[ci * kNR + j];
        for (int64_t j = 0; j < nc; ++j) o[(blk * kNR + j) * job.o_sc] = a[j];
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// AVX2 + FMA kernels (float32).
#ifdef DASP_X86

// Both 1x1 convolutions for M pixels x 16 output channels, in one set of accumulators.
// PLANAR: A(i, ci) = a[ci * lda + i]; else a[i * lda + ci].
template <int M, bool PLANAR>
DASP_AVX2 inline void micro(int64_t cin, const float* a1, const float* a2, int64_t lda,
                            const float* b1, const float* b2, const float* bias, float* c,
                            int64_t ldc) {
  __m256 x0[M], x1[M];
  const __m256 bi0 = _mm256_loadu_ps(bias), bi1 = _mm256_loadu_ps(bias + 8);
#pragma GCC unroll 8
  for (int i = 0; i < M; ++i) {
    x0[i] = bi0;
    x1[i] = bi1;
  }
  for (int64_t ci = 0; ci < cin; ++ci) {
    const __m256 w0 = _mm256_loadu_ps(b1 + ci * kNR), w1 = _mm256_loadu_ps(b1 + ci * kNR + 8);
#pragma GCC unroll 8
    for (int i = 0; i < M; ++i) {
      const __m256 a = _mm256_broadcast_ss(PLANAR ? a1 + ci * lda + i : a1 + i * lda + ci);
      x0[i] = _mm256_fmadd_ps(a, w0, x0[i]);
      x1[i] = _mm256_fmadd_ps(a, w1, x1[i]);
    }
  }
  const __m256 zero = _mm256_setzero_ps();
#pragma GCC unroll 8
  for (int i = 0; i < M; ++i) {
    x0[i] = _mm256_max_ps(x0[i], zero);
    x1[i] = _mm256_max_ps(x1[i], zero);
  }
  for (int64_t ci = 0; ci < cin; ++ci) {
    const __m256 w0 = _mm256_loadu_ps(b2 + ci * kNR), w1 = _mm256_loadu_ps(b2 + ci * kNR + 8);
#pragma GCC unroll 8
    for (int i = 0; i < M; ++i) {
      const __m256 a = _mm256_broadcast_ss(PLANAR ? a2 + ci * lda + i : a2 + i * lda + ci);
      x0[i] = _mm256_fmadd_ps(a, w0, x0[i]);
      x1[i] = _mm256_fmadd_ps(a, w1, x1[i]);
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < M; ++i) {
    _mm256_storeu_ps(c + i * ldc, x0[i]);
    _mm256_storeu_ps(c + i * ldc + 8, x1[i]);
  }
}

template <bool PLANAR>
DASP_AVX2 void micro_any(int m, int64_t cin, const float* a1, const float* a2, int64_t lda,
                         const float* b1, const float* b2, const float* bias, float* c,
                         int64_t ldc) {
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
// cout_pad of them).
template <bool PLANAR>
DASP_AVX2 void gemm_chunk(const StageWeights<float>& sw, int64_t n, const float* d,
                          const float* q, int64_t lda, float* c, int64_t ldc) {
  const int64_t cin = sw.cin;
  for (int64_t blk = 0; blk < sw.cout_pad / kNR; ++blk) {
    const float* b1 = sw.pw.data() + blk * cin * kNR;
    const float* b2 = sw.ppm.data() + blk * cin * kNR;
    const float* bias = sw.bias.data() + blk * kNR;
    for (int64_t i = 0; i < n; i += kMR) {
      const int m = static_cast<int>(std::min(kMR, n - i));
      const int64_t off = PLANAR ? i : i * lda;
      micro_any<PLANAR>(m, cin, d + off, q + off, lda, b1, b2, bias, c + i * ldc + blk * kNR,
                        ldc);
    }
  }
}

// Depthwise (channel vectors, input channels contiguous): output pixels [ox0, ox0 + n) into
// d[i * cin + c]. Pixels whose taps leave the row are done with bounds checks.
template <int K, bool CHECK, int NP>
DASP_AVX2 inline void dw_cv_px(const float* const* rows, int64_t w_in, int64_t s_w, int64_t cin,
                               const float* wdw, const float* shift, int64_t ox, float* d) {
  constexpr int P = K / 2;
  const __m256 zero = _mm256_setzero_ps();
  for (int64_t cv = 0; cv < cin; cv += 8) {
    __m256 acc[NP];
#pragma GCC unroll 8
    for (int j = 0; j < NP; ++j) acc[j] = zero;
#pragma GCC unroll 8
    for (int ky = 0; ky < K; ++ky) {
      const float* r = rows[ky];
      if (!r) continue;
      r += cv;
#pragma GCC unroll 8
      for (int kx = 0; kx < K; ++kx) {
        const __m256 wv = _mm256_loadu_ps(wdw + (ky * K + kx) * cin + cv);
#pragma GCC unroll 8
        for (int j = 0; j < NP; ++j) {
          const int64_t ix = 2 * (ox + j) - P + kx;
          if (CHECK && (ix < 0 || ix >= w_in)) continue;
          acc[j] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(r + ix * s_w), acc[j]);
        }
      }
    }
    const __m256 sh = _mm256_loadu_ps(shift + cv);
#pragma GCC unroll 8
    for (int j = 0; j < NP; ++j)
      _mm256_storeu_ps(d + j * cin + cv, _mm256_max_ps(_mm256_add_ps(acc[j], sh), zero));
  }
}

// NP consecutive interior output pixels (every tap inside the row), channel vectors. The NP
// pixels share input columns (stride 2), so each of the 2 NP + K - 2 columns of a row is loaded
// once. The 2x2 pool reads columns and rows the taps already load, so it is taken on the way.
template <int K, int NP>
DASP_AVX2 inline void dw_pool_cv_group(const float* const* rows, int64_t s_w, int64_t cin,
                                       const float* wdw, const float* shift, int64_t ox, float* d,
                                       float* q) {
  constexpr int P = K / 2, NC = 2 * NP + K - 2;
  static_assert(P >= 1, "the pool needs the taps of rows and columns 2y, 2y + 1");
  const __m256 zero = _mm256_setzero_ps();
  const __m256 lowest = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  for (int64_t cv = 0; cv < cin; cv += 8) {
    __m256 acc[NP], pm[NP];
#pragma GCC unroll 8
    for (int j = 0; j < NP; ++j) {
      acc[j] = zero;
      pm[j] = lowest;
    }
#pragma GCC unroll 8
    for (int ky = 0; ky < K; ++ky) {
      if (!rows[ky]) continue;  // zero padding rows (and a missing row 2y + 1 for the pool)
      const float* r = rows[ky] + (2 * ox - P) * s_w + cv;
      __m256 w[K];
#pragma GCC unroll 8
      for (int kx = 0; kx < K; ++kx) w[kx] = _mm256_loadu_ps(wdw + (ky * K + kx) * cin + cv);
#pragma GCC unroll 32
      for (int c = 0; c < NC; ++c) {
        const __m256 v = _mm256_loadu_ps(r);
        r += s_w;
#pragma GCC unroll 8
        for (int j = 0; j < NP; ++j) {
          const int kx = c - 2 * j;
          if (kx >= 0 && kx < K) acc[j] = _mm256_fmadd_ps(w[kx], v, acc[j]);
          if ((ky == P || ky == P + 1) && (kx == P || kx == P + 1)) pm[j] = _mm256_max_ps(pm[j], v);
        }
      }
    }
    const __m256 sh = _mm256_loadu_ps(shift + cv);
#pragma GCC unroll 8
    for (int j = 0; j < NP; ++j) {
      _mm256_storeu_ps(d + j * cin + cv, _mm256_max_ps(_mm256_add_ps(acc[j], sh), zero));
      _mm256_storeu_ps(q + j * cin + cv, pm[j]);
    }
  }
}

// 2x2 ceil-mode max pool, channel vectors: q[i * cin + c].
DASP_AVX2 void pool_cv(const float* r0, const float* r1, int64_t w_in, int64_t s_w, int64_t cin,
                       int64_t ox0, int64_t n, float* q);

// Depthwise result d and pooled input q of output pixels [ox0, ox0 + n), channel vectors.
template <int K>
DASP_AVX2 void dw_cv(const float* const* rows, const float* pr0, const float* pr1, int64_t w_in,
                     int64_t s_w, int64_t cin, const float* wdw, const float* shift, int64_t ox0,
                     int64_t n, float* d, float* q) {
  constexpr int64_t P = K / 2;
  constexpr int NP = 4;
  const int64_t end = ox0 + n;
  // Interior: 0 <= 2 ox - P and 2 ox + P <= w_in - 1.
  const int64_t lo = std::min(end, std::max<int64_t>(ox0, (P + 1) / 2));
  const int64_t hi = std::min<int64_t>(end, std::max<int64_t>(lo, (w_in - 1 - P) / 2 + 1));
  if (P == 0) {  // K = 1: no shared taps; the pool reads its own rows and columns
    for (int64_t ox = ox0; ox < end; ++ox)
      dw_cv_px<K, false, 1>(rows, w_in, s_w, cin, wdw, shift, ox, d + (ox - ox0) * cin);
    pool_cv(pr0, pr1, w_in, s_w, cin, ox0, n, q);
    return;
  }
  for (int64_t ox = ox0; ox < lo; ++ox)
    dw_cv_px<K, true, 1>(rows, w_in, s_w, cin, wdw, shift, ox, d + (ox - ox0) * cin);
  pool_cv(pr0, pr1, w_in, s_w, cin, ox0, lo - ox0, q);
  int64_t ox = lo;
  if constexpr (P > 0) {
    for (; ox + NP <= hi; ox += NP)
      dw_pool_cv_group<K, NP>(rows, s_w, cin, wdw, shift, ox, d + (ox - ox0) * cin,
                              q + (ox - ox0) * cin);
    for (; ox < hi; ++ox)
      dw_pool_cv_group<K, 1>(rows, s_w, cin, wdw, shift, ox, d + (ox - ox0) * cin,
                             q + (ox - ox0) * cin);
  }
  for (int64_t x = ox; x < end; ++x)
    dw_cv_px<K, true, 1>(rows, w_in, s_w, cin, wdw, shift, x, d + (x - ox0) * cin);
  pool_cv(pr0, pr1, w_in, s_w, cin, ox, end - ox, q + (ox - ox0) * cin);
}

// 2x2 ceil-mode max pool, channel vectors: q[i * cin + c].
DASP_AVX2 void pool_cv(const float* r0, const float* r1, int64_t w_in, int64_t s_w, int64_t cin,
                       int64_t ox0, int64_t n, float* q) {
  for (int64_t i = 0; i < n; ++i) {
    const int64_t x0 = 2 * (ox0 + i), x1 = std::min(x0 + 1, w_in - 1);
    const float *a = r0 + x0 * s_w, *b = r0 + x1 * s_w, *c = r1 + x0 * s_w, *e = r1 + x1 * s_w;
    float* qi = q + i * cin;
    for (int64_t cv = 0; cv < cin; cv += 8) {
      const __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_loadu_ps(a + cv), _mm256_loadu_ps(b + cv)),
                                     _mm256_max_ps(_mm256_loadu_ps(c + cv), _mm256_loadu_ps(e + cv)));
      _mm256_storeu_ps(qi + cv, m);
    }
  }
}

// Splits one channel of an input row into even and odd columns, zero-padded around.
DASP_AVX2 void deinterleave(const float* src, int64_t w_in, int64_t s_w, float* ev, float* od) {
  const int64_t ne = (w_in + 1) / 2, no = w_in / 2;
  int64_t i = 0;
  if (s_w == 1) {
    for (; i + 8 <= no; i += 8) {
      const __m256 a = _mm256_loadu_ps(src + 2 * i), b = _mm256_loadu_ps(src + 2 * i + 8);
      // [a0 a2 b0 b2 a4 a6 b4 b6] -> [a0 a2 a4 a6 b0 b2 b4 b6]
      const __m256 e = _mm256_shuffle_ps(a, b, 0x88), o = _mm256_shuffle_ps(a, b, 0xDD);
      _mm256_storeu_ps(ev + i, _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(e), 0xD8)));
      _mm256_storeu_ps(od + i, _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(o), 0xD8)));
    }
  }
  for (int64_t j = i; j < ne; ++j) ev[j] = src[2 * j * s_w];
  for (int64_t j = i; j < no; ++j) od[j] = src[(2 * j + 1) * s_w];
}

// Depthwise (pixel vectors) for one channel: d[i] for i in [0, nv * 8), pixels ox0 + i.
// ev[ky] / od[ky] point at column 0 of the de-interleaved rows, or are null (zero padding rows).
template <int K>
DASP_AVX2 void dw_pv(const float* const* ev, const float* const* od, const float* w, float shift,
                     int64_t ox0, int64_t nv, float* d) {
  constexpr int P = K / 2;
  const __m256 zero = _mm256_setzero_ps(), sh = _mm256_set1_ps(shift);
  int64_t v = 0;
  for (; v + 4 <= nv; v += 4) {
    __m256 acc[4] = {zero, zero, zero, zero};
#pragma GCC unroll 8
    for (int ky = 0; ky < K; ++ky) {
      if (!ev[ky]) continue;
#pragma GCC unroll 8
      for (int kx = 0; kx < K; ++kx) {
        const int off = kx - P;
        const float* s = ((off & 1) ? od[ky] + ((off - 1) >> 1) : ev[ky] + (off >> 1)) + ox0 + v * 8;
        const __m256 wv = _mm256_set1_ps(w[ky * K + kx]);
#pragma GCC unroll 4
        for (int j = 0; j < 4; ++j) acc[j] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(s + 8 * j), acc[j]);
      }
    }
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j)
      _mm256_storeu_ps(d + (v + j) * 8, _mm256_max_ps(_mm256_add_ps(acc[j], sh), zero));
  }
  for (; v < nv; ++v) {
    __m256 acc = zero;
    for (int ky = 0; ky < K; ++ky) {
      if (!ev[ky]) continue;
      for (int kx = 0; kx < K; ++kx) {
        const int off = kx - P;
        const float* s = ((off & 1) ? od[ky] + ((off - 1) >> 1) : ev[ky] + (off >> 1)) + ox0 + v * 8;
        acc = _mm256_fmadd_ps(_mm256_set1_ps(w[ky * K + kx]), _mm256_loadu_ps(s), acc);
      }
    }
    _mm256_storeu_ps(d + v * 8, _mm256_max_ps(_mm256_add_ps(acc, sh), zero));
  }
}

using DwPvFn = void (*)(const float* const*, const float* const*, const float*, float, int64_t,
                        int64_t, float*);
using DwCvFn = void (*)(const float* const*, const float*, const float*, int64_t, int64_t,
                        int64_t, const float*, const float*, int64_t, int64_t, float*, float*);

DwPvFn pick_dw_pv(int64_t k) {
  switch (k) {
    case 1: return dw_pv<1>;
    case 3: return dw_pv<3>;
    case 5: return dw_pv<5>;
    default: return dw_pv<7>;
  }
}

DwCvFn pick_dw_cv(int64_t k) {
  switch (k) {
    case 1: return dw_cv<1>;
    case 3: return dw_cv<3>;
    case 5: return dw_cv<5>;
    default: return dw_cv<7>;
  }
}

DASP_AVX2 void store_tile_avx2(const float* o, int64_t ldo, int64_t npx, int64_t cout, float* out,
                               int64_t o_sw, int64_t o_sc) {
  if (o_sw == 1 && o_sc != 1) {
    // Transposed store (channels-first output): 8 pixels x 8 channels at a time.
    // Channels outer: the planes of a channels-first output lie a power of two apart and would
    // all fall into the same cache sets if every channel were written for each 8 pixels.
    const int64_t npx8 = npx / 8 * 8, cout8 = cout / 8 * 8;
    for (int64_t co = 0; co < cout8; co += 8) {
      for (int64_t i = 0; i < npx8; i += 8) {
        __m256 r[8];
        for (int j = 0; j < 8; ++j) r[j] = _mm256_loadu_ps(o + (i + j) * ldo + co);
        const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
        const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
        const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
        const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
        const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
        const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
        const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
        const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
        const __m256 c[8] = {_mm256_permute2f128_ps(u0, u4, 0x20), _mm256_permute2f128_ps(u1, u5, 0x20),
                             _mm256_permute2f128_ps(u2, u6, 0x20), _mm256_permute2f128_ps(u3, u7, 0x20),
                             _mm256_permute2f128_ps(u0, u4, 0x31), _mm256_permute2f128_ps(u1, u5, 0x31),
                             _mm256_permute2f128_ps(u2, u6, 0x31), _mm256_permute2f128_ps(u3, u7, 0x31)};
        for (int j = 0; j < 8; ++j) _mm256_storeu_ps(out + (co + j) * o_sc + i, c[j]);
      }
      for (int64_t j = 0; j < 8; ++j)
        for (int64_t i = npx8; i < npx; ++i) out[(co + j) * o_sc + i] = o[i * ldo + co + j];
    }
    for (int64_t co = cout8; co < cout; ++co)
      for (int64_t i = 0; i < npx; ++i) out[co * o_sc + i] = o[i * ldo + co];
    return;
  }
  store_tile<float>(o, ldo, npx, cout, out, o_sw, o_sc);
}

DASP_AVX2 void row_avx2(const RowJob<float>& job) {
  const StageWeights<float>& sw = *job.sw;
  const Rows<float>& in = job.in;
  StageScratch<float>& scr = *job.scr;
  const int64_t cin = sw.cin, k = sw.k, p = sw.p, chunk = scr.chunk, oy = job.oy;
  // Channel-contiguous outputs with whole 16-channel blocks are written in place.
  const bool direct = job.o_sc == 1 && sw.cout % kNR == 0;
  float* tile = direct ? nullptr : scr.o;
  const int64_t ldt = direct ? job.o_sw : sw.cout_pad;
  if (use_channel_vectors(in.s_c, cin)) {
    const float* rows[kMaxK];
    for (int64_t ky = 0; ky < k; ++ky) rows[ky] = in.row(2 * oy - p + ky);
    const float* pr0 = in.row(2 * oy);
    const float* pr1 = in.row(std::min(2 * oy + 1, in.h - 1));
    const DwCvFn dw = pick_dw_cv(k);
    for (int64_t ox0 = 0; ox0 < job.wo; ox0 += chunk) {
      const int64_t n = std::min(chunk, job.wo - ox0);
      dw(rows, pr0, pr1, in.w, in.s_w, cin, sw.dw.data(), sw.dw_shift.data(), ox0, n, scr.d,
         scr.q);
      float* dst = direct ? job.out + ox0 * job.o_sw : tile;
      gemm_chunk<false>(sw, n, scr.d, scr.q, cin, dst, ldt);
      if (!direct) store_tile_avx2(tile, ldt, n, sw.cout, job.out + ox0 * job.o_sw, job.o_sw, job.o_sc);
    }
    return;
  }
  // Pixel vectors: de-interleave each input row once (cached in a ring keyed by row index).
  const int64_t wd = scr.wd;
  auto slot_of = [&](int64_t iy) -> float* {
    float* s = scr.dl + (iy % scr.dl_cap) * cin * 2 * wd;
    if (scr.dl_tag[iy % scr.dl_cap] != iy) {
      const float* r = in.row(iy);
      for (int64_t c = 0; c < cin; ++c)
        deinterleave(r + c * in.s_c, in.w, in.s_w, s + (2 * c) * wd + kHalo,
                     s + (2 * c + 1) * wd + kHalo);
      scr.dl_tag[iy % scr.dl_cap] = iy;
    }
    return s;
  };
  float* slots[kMaxK];
  for (int64_t ky = 0; ky < k; ++ky) {
    const int64_t iy = 2 * oy - p + ky;
    slots[ky] = (iy >= 0 && iy < in.h) ? slot_of(iy) : nullptr;
  }
  float* ps0 = slot_of(2 * oy);
  float* ps1 = slot_of(std::min(2 * oy + 1, in.h - 1));
  const DwPvFn dw = pick_dw_pv(k);
  const bool odd_w = in.w % 2 == 1;
  for (int64_t ox0 = 0; ox0 < job.wo; ox0 += chunk) {
    const int64_t n = std::min(chunk, job.wo - ox0);
    const int64_t nv = (n + 7) / 8;
    for (int64_t c = 0; c < cin; ++c) {
      const float* ev[kMaxK];
      const float* od[kMaxK];
      for (int64_t ky = 0; ky < k; ++ky) {
        ev[ky] = slots[ky] ? slots[ky] + (2 * c) * wd + kHalo : nullptr;
        od[ky] = slots[ky] ? slots[ky] + (2 * c + 1) * wd + kHalo : nullptr;
      }
      dw(ev, od, sw.dw_t.data() + c * k * k, sw.dw_shift[c], ox0, nv, scr.d + c * chunk);
      const float* e0 = ps0 + (2 * c) * wd + kHalo + ox0;
      const float* o0 = ps0 + (2 * c + 1) * wd + kHalo + ox0;
      const float* e1 = ps1 + (2 * c) * wd + kHalo + ox0;
      const float* o1 = ps1 + (2 * c + 1) * wd + kHalo + ox0;
      float* qc = scr.q + c * chunk;
      for (int64_t v = 0; v < nv * 8; v += 8) {
        const __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_loadu_ps(e0 + v), _mm256_loadu_ps(o0 + v)),
                                       _mm256_max_ps(_mm256_loadu_ps(e1 + v), _mm256_loadu_ps(o1 + v)));
        _mm256_storeu_ps(qc + v, m);
      }
      // An odd width leaves the last window one column wide: the odd column there is padding.
      if (odd_w && ox0 + n == job.wo) qc[n - 1] = std::max(e0[n - 1], e1[n - 1]);
    }
    float* dst = direct ? job.out + ox0 * job.o_sw : tile;
    gemm_chunk<true>(sw, n, scr.d, scr.q, chunk, dst, ldt);
    if (!direct) store_tile_avx2(tile, ldt, n, sw.cout, job.out + ox0 * job.o_sw, job.o_sw, job.o_sc);
  }
}

bool cpu_has_avx2() {
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
}
#else
bool cpu_has_avx2() { return false; }
#endif

bool want_avx2() {
  const char* isa = std::getenv("DASP_KERNELS_CPU_ISA");
  if (isa && std::strcmp(isa, "generic") == 0) return false;
  return cpu_has_avx2();
}

template <typename T>
using RowFn = void (*)(const RowJob<T>&);

template <typename T>
RowFn<T> pick_row_fn() {
#ifdef DASP_X86
  if constexpr (std::is_same_v<T, float>) {
    if (want_avx2()) return row_avx2;
  }
#endif
  return row_generic<T>;
}

// ---------------------------------------------------------------------------------------------
// Per-thread workspace, kept across calls so that steady-state calls touch no fresh pages.
struct Workspace {
  std::vector<char> buf;
  size_t used = 0;
  void reset(size_t bytes) {
    if (buf.size() < bytes) buf.resize(bytes);
    used = 0;
  }
  template <typename T>
  T* take(size_t n) {
    T* p = reinterpret_cast<T*>(buf.data() + used);
    used += round_up(static_cast<int64_t>(n * sizeof(T)), 64);
    return p;
  }
};

Workspace& thread_workspace() {
  thread_local Workspace ws;
  return ws;
}

// One stage of a chain: its weights, sizes, scratch and (if not the last) its output ring.
template <typename T>
struct Level {
  const StageWeights<T>* sw;
  int64_t h, w, ho, wo;  // input and output sizes
  StageScratch<T> scr;
  T* ring = nullptr;  // output rows [slot][wo][cout], channels contiguous
  int64_t ring_cap = 0;
  int64_t next = 0;  // next output row to produce
};

template <typename T>
int64_t chunk_for(const StageWeights<T>& sw) {
  // Keep D and Q of a chunk (2 x chunk x cin values) within ~24 KiB of L1, in whole micro-tiles
  // (and whole 8-pixel vectors).
  const int64_t c = (24 * 1024 / (2 * static_cast<int64_t>(sizeof(T)) * sw.cin)) / 24 * 24;
  return std::min<int64_t>(std::max<int64_t>(c, 24), 480);
}

template <typename T>
size_t scratch_bytes(const StageWeights<T>& sw, int64_t wo, int64_t cin_rows_cap, bool ring,
                     int64_t ring_cap) {
  const int64_t chunk = chunk_for(sw);
  const int64_t wd = kHalo + round_up(wo, chunk) + 8;
  size_t b = 0;
  auto add = [&](int64_t n, size_t sz) { b += round_up(n * static_cast<int64_t>(sz), 64); };
  add(chunk * sw.cin, sizeof(T));
  add(chunk * sw.cin, sizeof(T));
  add(chunk * sw.cout_pad, sizeof(T));
  add(cin_rows_cap * sw.cin * 2 * wd, sizeof(T));
  add(cin_rows_cap, sizeof(int64_t));
  if (ring) add(ring_cap * wo * sw.cout, sizeof(T));
  return b;
}

// Runs stages[0..S) on x, writing the last stage's output into `out`. Each work item is one image
// and a band of final output rows; within it, rows flow through the rings of the earlier stages.
template <typename T>
void run_chain(const at::Tensor& x, const std::vector<StageWeights<T>>& stages, at::Tensor& out) {
  const int64_t S = static_cast<int64_t>(stages.size());
  const int64_t N = x.size(0);
  std::vector<int64_t> hs(S + 1), ws(S + 1);
  hs[0] = x.size(2);
  ws[0] = x.size(3);
  for (int64_t s = 0; s < S; ++s) {
    hs[s + 1] = (hs[s] + 1) / 2;
    ws[s + 1] = (ws[s] + 1) / 2;
  }
  const int64_t hf = hs[S];
  if (N == 0 || hf == 0 || ws[S] == 0) return;
  const RowFn<T> row_fn = pick_row_fn<T>();
  const bool generic = row_fn == row_generic<T>;
  // Bands of output rows, handed out one at a time: a few per thread, so that a thread slowed
  // down by other work on the machine does not hold up the others, but not thinner than 8 rows
  // (each band recomputes a one-row halo in every earlier stage).
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t per_image = threads == 1 ? 1 : (4 * threads + N - 1) / N;
  const int64_t bands = std::clamp<int64_t>(per_image, 1, std::max<int64_t>(1, hf / 8));
  const int64_t items = N * bands;
  std::atomic<int64_t> next_item{0};
  const T* xd = x.data_ptr<T>();
  T* od = out.data_ptr<T>();
  at::parallel_for(0, std::min(threads, items), 1, [&](int64_t, int64_t) {
    std::vector<Level<T>> lv(S);
    size_t bytes = 0;
    for (int64_t s = 0; s < S; ++s) {
      lv[s].sw = &stages[s];
      lv[s].h = hs[s];
      lv[s].w = ws[s];
      lv[s].ho = hs[s + 1];
      lv[s].wo = ws[s + 1];
      lv[s].ring_cap = s + 1 < S ? window_rows(stages[s + 1].p) : 0;
      // The pixel-vector path caches de-interleaved input rows (only where it runs). Stages
      // after the first read channels-last rings.
      const bool pixel_vectors = !use_channel_vectors(s == 0 ? x.stride(1) : 1, stages[s].cin);
      const int64_t dl_cap = generic || !pixel_vectors ? 0 : window_rows(stages[s].p);
      lv[s].scr.dl_cap = dl_cap;
      bytes += scratch_bytes(stages[s], lv[s].wo, dl_cap, s + 1 < S, lv[s].ring_cap);
    }
    Workspace& wsp = thread_workspace();
    wsp.reset(bytes);
    for (int64_t s = 0; s < S; ++s) {
      const StageWeights<T>& sw = stages[s];
      StageScratch<T>& scr = lv[s].scr;
      scr.chunk = chunk_for(sw);
      scr.d = wsp.take<T>(scr.chunk * sw.cin);
      scr.q = wsp.take<T>(scr.chunk * sw.cin);
      scr.o = wsp.take<T>(scr.chunk * sw.cout_pad);
      scr.wd = kHalo + round_up(lv[s].wo, scr.chunk) + 8;
      scr.dl = wsp.take<T>(scr.dl_cap * sw.cin * 2 * scr.wd);
      scr.dl_tag = wsp.take<int64_t>(scr.dl_cap);
      // Column padding of the de-interleaved rows must read as zeros.
      std::fill(scr.dl, scr.dl + scr.dl_cap * sw.cin * 2 * scr.wd, T(0));
      if (s + 1 < S) lv[s].ring = wsp.take<T>(lv[s].ring_cap * lv[s].wo * sw.cout);
    }
    for (int64_t item = next_item++; item < items; item = next_item++) {
      const int64_t n = item / bands, band = item % bands;
      const int64_t r0 = hf * band / bands, r1 = hf * (band + 1) / bands;
      for (int64_t s = 0; s < S; ++s) std::fill(lv[s].scr.dl_tag, lv[s].scr.dl_tag + lv[s].scr.dl_cap, -1);
      // First row each earlier stage must produce for this band.
      lv[S - 1].next = r0;
      for (int64_t s = S - 2; s >= 0; --s)
        lv[s].next = std::max<int64_t>(0, 2 * lv[s + 1].next - stages[s + 1].p);
      auto input_of = [&](int64_t s) {
        Rows<T> in;
        in.h = lv[s].h;
        in.w = lv[s].w;
        if (s == 0) {
          in.base = xd + n * x.stride(0);
          in.s_row = x.stride(2);
          in.s_w = x.stride(3);
          in.s_c = x.stride(1);
        } else {
          in.base = lv[s - 1].ring;
          in.cap = lv[s - 1].ring_cap;
          in.s_row = lv[s - 1].wo * stages[s - 1].cout;
          in.s_w = stages[s - 1].cout;
          in.s_c = 1;
        }
        return in;
      };
      std::vector<Rows<T>> ins(S);
      for (int64_t s = 0; s < S; ++s) ins[s] = input_of(s);
      // Produce rows of stage s up to `upto` (inclusive), pulling rows of stage s - 1 first.
      auto produce = [&](auto&& self, int64_t s, int64_t upto) -> void {
        Level<T>& L = lv[s];
        for (; L.next <= upto; ++L.next) {
          const int64_t oy = L.next;
          if (s > 0) self(self, s - 1, std::min(2 * oy + std::max<int64_t>(stages[s].p, 1), L.h - 1));
          RowJob<T> job{&stages[s], ins[s], oy, L.wo, nullptr, 0, 0, &L.scr};
          if (s + 1 < S) {
            job.out = L.ring + (oy % L.ring_cap) * L.wo * stages[s].cout;
            job.o_sw = stages[s].cout;
            job.o_sc = 1;
          } else {
            job.out = od + n * out.stride(0) + oy * out.stride(2);
            job.o_sw = out.stride(3);
            job.o_sc = out.stride(1);
          }
          row_fn(job);
        }
      };
      produce(produce, S - 1, r1 - 1);
    }
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
  check_backend_dtype("dasp_stage", "cpu", x, {at::kFloat, at::kDouble});
  at::Tensor out = empty_output(x, pw_weight.size(0), (x.size(2) + 1) / 2, (x.size(3) + 1) / 2);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dasp_stage", [&] {
    std::vector<StageWeights<scalar_t>> st;
    st.push_back(prepare<scalar_t>(dw_weight, dw_scale, dw_shift, pw_weight, pw_scale, pw_shift,
                                   ppm_weight));
    run_chain<scalar_t>(x, st, out);
  });
  return out;
}

at::Tensor dasp_spatial_path_cpu(const at::Tensor& x, at::TensorList params) {
  check_dasp_spatial_path(x, params);
  check_backend_dtype("dasp_spatial_path", "cpu", x, {at::kFloat, at::kDouble});
  const int64_t S = static_cast<int64_t>(params.size()) / 7;
  int64_t h = x.size(2), w = x.size(3);
  for (int64_t s = 0; s < S; ++s) {
    h = (h + 1) / 2;
    w = (w + 1) / 2;
  }
  at::Tensor out = empty_output(x, params[7 * (S - 1) + 3].size(0), h, w);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dasp_spatial_path", [&] {
    std::vector<StageWeights<scalar_t>> st;
    for (int64_t s = 0; s < S; ++s) {
      const at::Tensor* p = params.data() + 7 * s;
      st.push_back(prepare<scalar_t>(p[0], p[1], p[2], p[3], p[4], p[5], p[6]));
    }
    run_chain<scalar_t>(x, st, out);
  });
  return out;
}

// ---------------------------------------------------------------------------------------------
// Backward. Recomputes the depthwise branch with the library's dwconv_bn_relu kernel, runs the
// two 1x1 convolutions as matrix products, takes the pointwise BN + ReLU backward in one pass,
// and leaves the depthwise and PPM backward to the _dwconv_bn_relu_backward and
// _ppm_add_backward kernels.
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
  check_backend_dtype(op, "cpu", x, {at::kFloat, at::kDouble});
  check_like_x(op, x, "grad_out", grad_out);
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
  static auto dw_fwd = library_op("dasp_kernels::dwconv_bn_relu")
                           .typed<at::Tensor(const at::Tensor&, const at::Tensor&,
                                             const at::Tensor&, const at::Tensor&, int64_t,
                                             int64_t, bool)>();
  static auto dw_bwd = library_op("dasp_kernels::_dwconv_bn_relu_backward")
                           .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
                               const at::Tensor&, const at::Tensor&, const at::Tensor&,
                               const at::Tensor&, const at::Tensor&, int64_t, int64_t, bool)>();
  static auto ppm_bwd = library_op("dasp_kernels::_ppm_add_backward")
                            .typed<std::tuple<at::Tensor, at::Tensor>(
                                const at::Tensor&, const at::Tensor&, const at::Tensor&)>();

  const at::Tensor y1 = dw_fwd.call(x, dw_weight, dw_scale, dw_shift, 2, p, true);
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
      dw_bwd.call(g_y1, x, dw_weight, dw_scale, dw_shift, 2, p, true);
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
  m.impl("dasp_stage", &dasp_stage_cpu);
  m.impl("dasp_spatial_path", &dasp_spatial_path_cpu);
}

}  // namespace dasp_kernels
