// The stage kernel's depthwise + BN + ReLU and 2x2 max pool in float32 vectors, for one chunk of
// an output row (see dasp_stage_kernel.h), and its two data movers: the even/odd split of an input
// row and the 8 x 8 transpose of a channels-first output tile. Included once per instruction set
// by dasp_stage_kernel.h; hence no include guard. Stride 2 throughout (every stage halves).
//
// Names: K kernel size, P = K / 2 its padding; NP pixels per register block; NC input columns one
// block reads; cv the first channel of a channel vector; ev / od the even / odd columns of a
// de-interleaved row; nv pixel vectors of a chunk.
#include "kernel_util.h"

namespace dasp_kernels::cpu::DASP_ISA {
namespace stage {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t kV = Vec::size();  // float lanes per vector in this build

// Channel vectors, NP pixels starting at ox: d[j * cin + c] for channels [0, cin). Taps that
// leave the row are skipped when CHECK.
template <int K, bool CHECK, int NP>
inline void dw_cv_px(const float* const* rows, int64_t w_in, int64_t s_w, int64_t cin,
                     const float* wdw, const float* shift, int64_t ox, float* d) {
  constexpr int P = K / 2;
  const Vec zero(0.f);
  for (int64_t cv = 0; cv < cin; cv += kV) {
    Vec acc[NP];
    DASP_UNROLL
    for (int j = 0; j < NP; ++j) acc[j] = zero;
    DASP_UNROLL
    for (int ky = 0; ky < K; ++ky) {
      const float* r = rows[ky];
      if (!r) continue;
      r += cv;
      DASP_UNROLL
      for (int kx = 0; kx < K; ++kx) {
        const Vec wv = Vec::loadu(wdw + (ky * K + kx) * cin + cv);
        DASP_UNROLL
        for (int j = 0; j < NP; ++j) {
          const int64_t ix = 2 * (ox + j) - P + kx;
          if (CHECK && (ix < 0 || ix >= w_in)) continue;
          acc[j] = at::vec::fmadd(wv, Vec::loadu(r + ix * s_w), acc[j]);
        }
      }
    }
    const Vec sh = Vec::loadu(shift + cv);
    DASP_UNROLL
    for (int j = 0; j < NP; ++j) util::vmax(acc[j] + sh, zero).store(d + j * cin + cv);
  }
}

// NP consecutive interior output pixels (every tap inside the row), channel vectors. The NP
// pixels share input columns (stride 2), so each of the NC = 2 NP + K - 2 columns of a row is
// loaded once. The 2x2 pool reads columns and rows the taps already load, so it is taken on the
// way (pm: its running max).
template <int K, int NP>
inline void dw_pool_cv_group(const float* const* rows, int64_t s_w, int64_t cin, const float* wdw,
                             const float* shift, int64_t ox, float* d, float* q) {
  constexpr int P = K / 2, NC = 2 * NP + K - 2;
  static_assert(P >= 1, "the pool needs the taps of rows and columns 2y, 2y + 1");
  const Vec zero(0.f), lowest(-__builtin_huge_valf());
  for (int64_t cv = 0; cv < cin; cv += kV) {
    Vec acc[NP], pm[NP];
    DASP_UNROLL
    for (int j = 0; j < NP; ++j) {
      acc[j] = zero;
      pm[j] = lowest;
    }
    DASP_UNROLL
    for (int ky = 0; ky < K; ++ky) {
      if (!rows[ky]) continue;  // zero padding rows (and a missing row 2y + 1 for the pool)
      const float* r = rows[ky] + (2 * ox - P) * s_w + cv;
      Vec w[K];
      DASP_UNROLL
      for (int kx = 0; kx < K; ++kx) w[kx] = Vec::loadu(wdw + (ky * K + kx) * cin + cv);
#pragma GCC unroll 32
      for (int c = 0; c < NC; ++c) {
        const Vec v = Vec::loadu(r);
        r += s_w;
        DASP_UNROLL
        for (int j = 0; j < NP; ++j) {
          const int kx = c - 2 * j;
          if (kx >= 0 && kx < K) acc[j] = at::vec::fmadd(w[kx], v, acc[j]);
          if ((ky == P || ky == P + 1) && (kx == P || kx == P + 1)) pm[j] = util::vmax(pm[j], v);
        }
      }
    }
    const Vec sh = Vec::loadu(shift + cv);
    DASP_UNROLL
    for (int j = 0; j < NP; ++j) {
      util::vmax(acc[j] + sh, zero).store(d + j * cin + cv);
      pm[j].store(q + j * cin + cv);
    }
  }
}

// 2x2 ceil-mode max pool, channel vectors: q[i * cin + c], pixels [ox0, ox0 + n).
inline void pool_cv(const float* r0, const float* r1, int64_t w_in, int64_t s_w, int64_t cin,
                    int64_t ox0, int64_t n, float* q) {
  for (int64_t i = 0; i < n; ++i) {
    const int64_t x0 = 2 * (ox0 + i), x1 = util::imin(x0 + 1, w_in - 1);
    const float *a = r0 + x0 * s_w, *b = r0 + x1 * s_w, *c = r1 + x0 * s_w, *e = r1 + x1 * s_w;
    float* qi = q + i * cin;
    for (int64_t cv = 0; cv < cin; cv += kV) {
      const Vec top = util::vmax(Vec::loadu(a + cv), Vec::loadu(b + cv));
      util::vmax(top, util::vmax(Vec::loadu(c + cv), Vec::loadu(e + cv))).store(qi + cv);
    }
  }
}

// Depthwise result d and pooled input q of output pixels [ox0, ox0 + n), channel vectors.
template <int K>
void dw_cv(const float* const* rows, const float* pr0, const float* pr1, int64_t w_in,
           int64_t s_w, int64_t cin, const float* wdw, const float* shift, int64_t ox0, int64_t n,
           float* d, float* q) {
  constexpr int64_t P = K / 2;
  constexpr int NP = 4;
  const int64_t end = ox0 + n;
  // Interior [lo, hi): 0 <= 2 ox - P and 2 ox + P <= w_in - 1.
  const int64_t lo = util::imin(end, util::imax(ox0, (P + 1) / 2));
  const int64_t hi = util::imin(end, util::imax(lo, (w_in - 1 - P) / 2 + 1));
  if constexpr (P == 0) {  // K = 1: no shared taps; the pool reads its own rows and columns
    for (int64_t ox = ox0; ox < end; ++ox)
      dw_cv_px<K, false, 1>(rows, w_in, s_w, cin, wdw, shift, ox, d + (ox - ox0) * cin);
    pool_cv(pr0, pr1, w_in, s_w, cin, ox0, n, q);
  } else {
    for (int64_t ox = ox0; ox < lo; ++ox)
      dw_cv_px<K, true, 1>(rows, w_in, s_w, cin, wdw, shift, ox, d + (ox - ox0) * cin);
    pool_cv(pr0, pr1, w_in, s_w, cin, ox0, lo - ox0, q);
    int64_t ox = lo;
    for (; ox + NP <= hi; ox += NP)
      dw_pool_cv_group<K, NP>(rows, s_w, cin, wdw, shift, ox, d + (ox - ox0) * cin,
                              q + (ox - ox0) * cin);
    for (; ox < hi; ++ox)
      dw_pool_cv_group<K, 1>(rows, s_w, cin, wdw, shift, ox, d + (ox - ox0) * cin,
                             q + (ox - ox0) * cin);
    for (int64_t x = ox; x < end; ++x)
      dw_cv_px<K, true, 1>(rows, w_in, s_w, cin, wdw, shift, x, d + (x - ox0) * cin);
    pool_cv(pr0, pr1, w_in, s_w, cin, ox, end - ox, q + (ox - ox0) * cin);
  }
}

// Splits one channel of an input row (w_in columns, stride s_w) into its even and odd columns.
inline void deinterleave(const float* src, int64_t w_in, int64_t s_w, float* ev, float* od) {
  const int64_t ne = (w_in + 1) / 2, no = w_in / 2;
  int64_t i = 0;
#if defined(CPU_CAPABILITY_AVX512)
  if (s_w == 1) {
    const __m512i even =
        _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odd =
        _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    for (; i + 16 <= no; i += 16) {
      const __m512 a = _mm512_loadu_ps(src + 2 * i), b = _mm512_loadu_ps(src + 2 * i + 16);
      _mm512_storeu_ps(ev + i, _mm512_permutex2var_ps(a, even, b));
      _mm512_storeu_ps(od + i, _mm512_permutex2var_ps(a, odd, b));
    }
  }
#elif defined(CPU_CAPABILITY_AVX2)
  if (s_w == 1) {
    for (; i + 8 <= no; i += 8) {
      const __m256 a = _mm256_loadu_ps(src + 2 * i), b = _mm256_loadu_ps(src + 2 * i + 8);
      // [a0 a2 b0 b2 a4 a6 b4 b6] -> [a0 a2 a4 a6 b0 b2 b4 b6]
      const __m256 e = _mm256_shuffle_ps(a, b, 0x88), o = _mm256_shuffle_ps(a, b, 0xDD);
      _mm256_storeu_ps(ev + i, _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(e), 0xD8)));
      _mm256_storeu_ps(od + i, _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(o), 0xD8)));
    }
  }
#endif
  for (int64_t j = i; j < ne; ++j) ev[j] = src[2 * j * s_w];
  for (int64_t j = i; j < no; ++j) od[j] = src[(2 * j + 1) * s_w];
}

// Pixel vectors, one channel: d[i] for i in [0, nv * kV), pixels ox0 + i. ev[ky] / od[ky] point at
// column 0 of the de-interleaved rows, or are null (zero padding rows). Blocks of 4 vectors.
template <int K>
void dw_pv(const float* const* ev, const float* const* od, const float* w, float shift,
           int64_t ox0, int64_t nv, float* d) {
  constexpr int P = K / 2;
  const Vec zero(0.f), sh(shift);
  // Tap kx of pixel x reads column 2x + kx - P: the even or odd row at x + floor((kx - P) / 2).
  auto tap = [&](int ky, int kx, int64_t x) {
    const int off = kx - P;
    return ((off & 1) ? od[ky] + ((off - 1) >> 1) : ev[ky] + (off >> 1)) + x;
  };
  int64_t v = 0;
  for (; v + 4 <= nv; v += 4) {
    Vec acc[4] = {zero, zero, zero, zero};
    DASP_UNROLL
    for (int ky = 0; ky < K; ++ky) {
      if (!ev[ky]) continue;
      DASP_UNROLL
      for (int kx = 0; kx < K; ++kx) {
        const float* s = tap(ky, kx, ox0 + v * kV);
        const Vec wv(w[ky * K + kx]);
        DASP_UNROLL
        for (int j = 0; j < 4; ++j) acc[j] = at::vec::fmadd(wv, Vec::loadu(s + kV * j), acc[j]);
      }
    }
    DASP_UNROLL
    for (int j = 0; j < 4; ++j) util::vmax(acc[j] + sh, zero).store(d + (v + j) * kV);
  }
  for (; v < nv; ++v) {
    Vec acc = zero;
    for (int ky = 0; ky < K; ++ky) {
      if (!ev[ky]) continue;
      for (int kx = 0; kx < K; ++kx)
        acc = at::vec::fmadd(Vec(w[ky * K + kx]), Vec::loadu(tap(ky, kx, ox0 + v * kV)), acc);
    }
    util::vmax(acc + sh, zero).store(d + v * kV);
  }
}

using DwPvFn = void (*)(const float* const*, const float* const*, const float*, float, int64_t,
                        int64_t, float*);
using DwCvFn = void (*)(const float* const*, const float*, const float*, int64_t, int64_t,
                        int64_t, const float*, const float*, int64_t, int64_t, float*, float*);

inline DwPvFn pick_dw_pv(int64_t k) {
  switch (k) {
    case 1: return dw_pv<1>;
    case 3: return dw_pv<3>;
    case 5: return dw_pv<5>;
    default: return dw_pv<7>;
  }
}

inline DwCvFn pick_dw_cv(int64_t k) {
  switch (k) {
    case 1: return dw_cv<1>;
    case 3: return dw_cv<3>;
    case 5: return dw_cv<5>;
    default: return dw_cv<7>;
  }
}

// transpose8(o, ldo, out, o_sc): out[j * o_sc + i] = o[i * ldo + j] for i, j < 8, in registers
// (AVX2 and AVX-512 builds: kHaveTranspose8; the others store element by element).
#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
constexpr bool kHaveTranspose8 = true;
inline void transpose8(const float* o, int64_t ldo, float* out, int64_t o_sc) {
  __m256 r[8];
  for (int j = 0; j < 8; ++j) r[j] = _mm256_loadu_ps(o + j * ldo);
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
  for (int j = 0; j < 8; ++j) _mm256_storeu_ps(out + j * o_sc, c[j]);
}
#else
constexpr bool kHaveTranspose8 = false;
inline void transpose8(const float* o, int64_t ldo, float* out, int64_t o_sc) {
  for (int j = 0; j < 8; ++j)
    for (int i = 0; i < 8; ++i) out[j * o_sc + i] = o[i * ldo + j];
}
#endif

}  // namespace stage
}  // namespace dasp_kernels::cpu::DASP_ISA
