// Small helpers for the kernel headers, defined inside namespace dasp_kernels::cpu::DASP_ISA so
// that nothing here is shared (and possibly AVX2-compiled) across translation units.
#pragma once
#ifndef DASP_ISA
#error "define DASP_ISA before including kernel_util.h"
#endif

#include <ATen/cpu/vec/vec.h>

#include <cstdint>
#include <cstdlib>
#include <type_traits>
#include <utility>
#if defined(_MSC_VER)
#include <malloc.h>
#endif
#include <new>

#if defined(__GNUC__)
#define DASP_UNROLL _Pragma("GCC unroll 16")
#define DASP_ALWAYS_INLINE inline __attribute__((always_inline))
#define DASP_ALWAYS_INLINE_LAMBDA __attribute__((always_inline))
#define DASP_PREFETCH_L2(p) __builtin_prefetch((p), 0, 2)
#else
#define DASP_UNROLL
#define DASP_ALWAYS_INLINE inline
#define DASP_ALWAYS_INLINE_LAMBDA
#define DASP_PREFETCH_L2(p) ((void)0)
#endif

namespace dasp_kernels::cpu::DASP_ISA::util {

// Whether at::vec::Vectorized is a machine register here. The portable x86 build's Vectorized
// is a 32-byte array (two SSE registers per value), so the kernels keep fewer accumulators there
// to stay within the 16 registers.
#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512) || defined(__aarch64__)
constexpr bool kNativeVec = true;
#else
constexpr bool kNativeVec = false;
#endif

inline int64_t round_up(int64_t a, int64_t b) { return (a + b - 1) / b * b; }
inline int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }
inline int64_t ceil_div(int64_t a, int64_t b) { return -floor_div(-a, b); }

// Loads n < size() lanes (rest zero) or a full vector.
template <typename T>
inline at::vec::Vectorized<T> load_n(const T* p, int64_t n) {
  return n >= at::vec::Vectorized<T>::size() ? at::vec::Vectorized<T>::loadu(p)
                                              : at::vec::Vectorized<T>::loadu(p, n);
}

// Lane sum in lane order (deterministic).
template <typename T>
inline T hsum(const at::vec::Vectorized<T>& v) {
  alignas(64) T tmp[at::vec::Vectorized<T>::size()];
  v.store(tmp);
  T s = 0;
  for (int i = 0; i < at::vec::Vectorized<T>::size(); ++i) s += tmp[i];
  return s;
}

// f(std::integral_constant<int, i>{}) for i = 0 .. N-1, unrolled: for template arguments that
// depend on a loop index.
// Forced inline, the helper lambda too: left to itself GCC kept the depthwise sweep's
// static_for<NJ> a function of its own, its accumulators in memory (a load and a store around
// every FMA: 2.4x oneDNN's time at 32x112x112 K3, one thread).
template <int N, typename F>
DASP_ALWAYS_INLINE void static_for(F&& f) {
  [&]<int... I>(std::integer_sequence<int, I...>) DASP_ALWAYS_INLINE_LAMBDA {
    (f(std::integral_constant<int, I>{}), ...);
  }(std::make_integer_sequence<int, N>{});
}

// lane_shift<k>(a, b): lanes [k, k + size()) of the concatenation a, b, i.e. the vector k elements
// past a when a and b are consecutive vectors in memory. It replaces an unaligned load, which
// splits across two cache lines for most k and loads (a 256-bit load: half of them), with one
// in-register shuffle (two on AVX2), so a tap loop is no longer bound by its loads. Only the
// AVX2 and AVX-512 builds have it (kHaveLaneShift).
#if defined(CPU_CAPABILITY_AVX512)
constexpr bool kHaveLaneShift = true;
template <int k, typename T>
inline at::vec::Vectorized<T> lane_shift(const at::vec::Vectorized<T>& a,
                                         const at::vec::Vectorized<T>& b) {
  static_assert(k >= 0 && k < at::vec::Vectorized<T>::size());
  if constexpr (k == 0) {
    return a;
  } else if constexpr (std::is_same_v<T, float>) {
    return _mm512_castsi512_ps(
        _mm512_alignr_epi32(_mm512_castps_si512(b), _mm512_castps_si512(a), k));
  } else {
    return _mm512_castsi512_pd(
        _mm512_alignr_epi64(_mm512_castpd_si512(b), _mm512_castpd_si512(a), k));
  }
}
#elif defined(CPU_CAPABILITY_AVX2)
constexpr bool kHaveLaneShift = true;
template <int k, typename T>
inline at::vec::Vectorized<T> lane_shift(const at::vec::Vectorized<T>& a,
                                         const at::vec::Vectorized<T>& b) {
  static_assert(k >= 0 && k < at::vec::Vectorized<T>::size());
  constexpr int half = 16 / sizeof(T);  // lanes per 128-bit half
  auto bits = [](const at::vec::Vectorized<T>& v) {
    if constexpr (std::is_same_v<T, float>) return _mm256_castps_si256(v);
    else return _mm256_castpd_si256(v);
  };
  auto back = [](__m256i v) -> at::vec::Vectorized<T> {
    if constexpr (std::is_same_v<T, float>) return _mm256_castsi256_ps(v);
    else return _mm256_castsi256_pd(v);
  };
  if constexpr (k == 0) {
    return a;
  } else {
    // vpalignr works within 128-bit halves: pair a with (a.hi, b.lo), or that with b.
    const __m256i ai = bits(a), bi = bits(b), mid = _mm256_permute2x128_si256(ai, bi, 0x21);
    if constexpr (k < half) return back(_mm256_alignr_epi8(mid, ai, k * sizeof(T)));
    else if constexpr (k == half) return back(mid);
    else return back(_mm256_alignr_epi8(bi, mid, (k - half) * sizeof(T)));
  }
}
#else
constexpr bool kHaveLaneShift = false;
template <int k, typename T>
inline at::vec::Vectorized<T> lane_shift(const at::vec::Vectorized<T>& a,
                                         const at::vec::Vectorized<T>&) {
  static_assert(k == 0, "lane_shift: only the AVX2 and AVX-512 builds shift lanes");
  return a;
}
#endif

// vmax(a, b): lanes a > b ? a : b, the x86 max instruction (b where either is NaN), as the stage
// kernels have always computed ReLU and the max pool; at::vec::maximum propagates NaN instead.
template <typename T>
inline at::vec::Vectorized<T> vmax(const at::vec::Vectorized<T>& a,
                                   const at::vec::Vectorized<T>& b) {
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<T, float>) return _mm512_max_ps(a, b);
  else return _mm512_max_pd(a, b);
#elif defined(CPU_CAPABILITY_AVX2)
  if constexpr (std::is_same_v<T, float>) return _mm256_max_ps(a, b);
  else return _mm256_max_pd(a, b);
#else
  return at::vec::Vectorized<T>::blendv(b, a, a > b);
#endif
}

// every3<O>(a, b, c): lanes O, O + 3, O + 6, ... of the concatenation a, b, c, i.e. channel O
// of 3-channel pixels (a channels-last RGB row); interleave3<k>(r, g, b): vector k of the
// pixels whose channels are r, g, b, its inverse. Since 3 and the lane count V are coprime, every
// lane position is taken from exactly one of the three sources: two blends and one permute (or
// three permutes and two blends), where a gather or scatter moves the lanes one by one. float in
// the AVX2 and AVX-512 builds (kHaveEvery3). The lane masks and permute indices below are worked
// out at compile time.
template <int O, int V>
struct Every3Lanes {
  unsigned b = 0, c = 0;  // lane positions that come from b and from c
  alignas(64) int idx[V] = {};
  constexpr Every3Lanes() {
    for (int i = 0; i < V; ++i) {
      const int e = 3 * i + O;  // element of a ++ b ++ c that lands in lane i
      if (e / V == 1) b |= 1u << (e % V);
      if (e / V == 2) c |= 1u << (e % V);
      idx[i] = e % V;
    }
  }
};
template <int K, int V>
struct Interleave3Lanes {
  unsigned g = 0, b = 0;  // lanes of pixel vector K that hold channel 1 and channel 2
  alignas(64) int idx[V] = {};
  constexpr Interleave3Lanes() {
    for (int p = 0; p < V; ++p) {
      const int e = K * V + p;  // element of the pixel stream: pixel e / 3, channel e % 3
      if (e % 3 == 1) g |= 1u << p;
      if (e % 3 == 2) b |= 1u << p;
      idx[p] = e / 3 % V;
    }
  }
};
template <int O, int V>
inline constexpr Every3Lanes<O, V> kEvery3{};
template <int K, int V>
inline constexpr Interleave3Lanes<K, V> kInterleave3{};

#if defined(CPU_CAPABILITY_AVX512)
constexpr bool kHaveEvery3 = true;
template <int O>
inline at::vec::Vectorized<float> every3(const at::vec::Vectorized<float>& a,
                                         const at::vec::Vectorized<float>& b,
                                         const at::vec::Vectorized<float>& c) {
  constexpr const auto& m = kEvery3<O, 16>;
  const __m512 abc = _mm512_mask_blend_ps(m.c, _mm512_mask_blend_ps(m.b, a, b), c);
  return _mm512_permutexvar_ps(_mm512_load_si512(m.idx), abc);
}
template <int K>
inline at::vec::Vectorized<float> interleave3(const at::vec::Vectorized<float>& r,
                                              const at::vec::Vectorized<float>& g,
                                              const at::vec::Vectorized<float>& b) {
  constexpr const auto& m = kInterleave3<K, 16>;
  const __m512i idx = _mm512_load_si512(m.idx);
  const __m512 rg = _mm512_mask_blend_ps(m.g, _mm512_permutexvar_ps(idx, r),
                                         _mm512_permutexvar_ps(idx, g));
  return _mm512_mask_blend_ps(m.b, rg, _mm512_permutexvar_ps(idx, b));
}
#elif defined(CPU_CAPABILITY_AVX2)
constexpr bool kHaveEvery3 = true;
template <int O>
inline at::vec::Vectorized<float> every3(const at::vec::Vectorized<float>& a,
                                         const at::vec::Vectorized<float>& b,
                                         const at::vec::Vectorized<float>& c) {
  constexpr const auto& m = kEvery3<O, 8>;
  const __m256 abc = _mm256_blend_ps(_mm256_blend_ps(a, b, m.b), c, m.c);
  return _mm256_permutevar8x32_ps(abc, _mm256_load_si256(reinterpret_cast<const __m256i*>(m.idx)));
}
template <int K>
inline at::vec::Vectorized<float> interleave3(const at::vec::Vectorized<float>& r,
                                              const at::vec::Vectorized<float>& g,
                                              const at::vec::Vectorized<float>& b) {
  constexpr const auto& m = kInterleave3<K, 8>;
  const __m256i idx = _mm256_load_si256(reinterpret_cast<const __m256i*>(m.idx));
  const __m256 rg = _mm256_blend_ps(_mm256_permutevar8x32_ps(r, idx),
                                    _mm256_permutevar8x32_ps(g, idx), m.g);
  return _mm256_blend_ps(rg, _mm256_permutevar8x32_ps(b, idx), m.b);
}
#else
constexpr bool kHaveEvery3 = false;
// Never called: kHaveEvery3 is false.
template <int O>
inline at::vec::Vectorized<float> every3(const at::vec::Vectorized<float>& a,
                                         const at::vec::Vectorized<float>&,
                                         const at::vec::Vectorized<float>&) {
  return a;
}
template <int K>
inline at::vec::Vectorized<float> interleave3(const at::vec::Vectorized<float>& r,
                                              const at::vec::Vectorized<float>&,
                                              const at::vec::Vectorized<float>&) {
  return r;
}
#endif

// A per-call scratch buffer (std::vector would instantiate std:: templates in this ISA's code).
template <typename T>
struct Scratch {
  T* ptr = nullptr;
  explicit Scratch(int64_t n) {
    // 64-byte aligned: T may be an over-aligned at::vec::Vectorized.
    const size_t bytes = (static_cast<size_t>(n > 0 ? n : 1) * sizeof(T) + 63) / 64 * 64;
#if defined(_MSC_VER)
    ptr = static_cast<T*>(_aligned_malloc(bytes, 64));
#else
    ptr = static_cast<T*>(std::aligned_alloc(64, bytes));
#endif
    if (ptr == nullptr) throw std::bad_alloc();
  }
  ~Scratch() {
#if defined(_MSC_VER)
    _aligned_free(ptr);
#else
    std::free(ptr);
#endif
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  T* data() const { return ptr; }
};

// Vector copy (libc's memcpy, rep movsb here, was slow on rows streamed from memory).
template <typename T>
inline void copy_n(const T* src, int64_t n, T* dst) {
  constexpr int V = at::vec::Vectorized<T>::size();
  int64_t i = 0;
  for (; i + V <= n; i += V) at::vec::Vectorized<T>::loadu(src + i).store(dst + i);
  if (i < n) at::vec::Vectorized<T>::loadu(src + i, n - i).store(dst + i, n - i);
}

// Software prefetch (to L2) of the cache lines of [p, p + n).
template <typename T>
inline void prefetch_span(const T* p, int64_t n) {
  const char* c = reinterpret_cast<const char*>(p);
  const int64_t bytes = n * static_cast<int64_t>(sizeof(T));
  for (int64_t b = 0; b < bytes; b += 64) DASP_PREFETCH_L2(c + b);
  if (bytes > 0) DASP_PREFETCH_L2(c + bytes - 1);
}

// Bytes a non-temporal store of one vector must be aligned to.
constexpr uintptr_t kStreamAlign = sizeof(at::vec::Vectorized<float>);

// Stores n lanes of v at p; a full vector at a vector-aligned p goes around the caches when nt
// (non-temporal, AVX2 and AVX-512 builds only). Callers fence with stream_fence() before their
// task ends.
template <typename T>
inline void put(const at::vec::Vectorized<T>& v, T* p, int64_t n, bool nt) {
#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
  if (nt && n >= at::vec::Vectorized<T>::size() &&
      (reinterpret_cast<uintptr_t>(p) & (kStreamAlign - 1)) == 0) {
#if defined(CPU_CAPABILITY_AVX512)
    if constexpr (std::is_same_v<T, float>)
      _mm512_stream_ps(p, v);
    else
      _mm512_stream_pd(p, v);
#else
    if constexpr (std::is_same_v<T, float>)
      _mm256_stream_ps(p, v);
    else
      _mm256_stream_pd(p, v);
#endif
    return;
  }
#endif
  v.store(p, n);
}

inline void stream_fence() {
#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
  _mm_sfence();
#endif
}

// dst[i] = f(i, m)'s lanes for i < n, the full vectors written with put(); f(i, m) returns the
// m <= size() lanes starting at element i (a scalar head up to a vector boundary when nt, so that
// the vectors can stream; a partial tail).
template <typename T, typename F>
inline void put_n(T* dst, int64_t n, bool nt, F&& f) {
  constexpr int V = at::vec::Vectorized<T>::size();
  int64_t i = 0;
  if (nt)
    for (; i < n && (reinterpret_cast<uintptr_t>(dst + i) & (kStreamAlign - 1)) != 0; ++i)
      f(i, 1).store(dst + i, 1);
  for (; i + V <= n; i += V) put(f(i, V), dst + i, V, nt);
  if (i < n) f(i, n - i).store(dst + i, n - i);
}

// dst[i] = src[i], i < n, dst with put().
template <typename T>
inline void copy_put(const T* src, int64_t n, T* dst, bool nt) {
  put_n(dst, n, nt, [&](int64_t i, int64_t m) { return load_n(src + i, m); });
}

// The compute ceiling of this build for the benchmarks' roofline (stream/fma): `iters` rounds of
// kFmaChains independent vector FMAs, in registers only. kFmaChains covers FMA latency x FMA
// pipes on current x86 cores and fits AVX2's 16 registers. The result only keeps the loop alive.
constexpr int kFmaChains = 12;
template <typename T>
T fma_loop(int64_t iters) {
  using Vec = at::vec::Vectorized<T>;
  Vec acc[kFmaChains];
  DASP_UNROLL
  for (int c = 0; c < kFmaChains; ++c) acc[c] = Vec(T(c) * T(1e-3));
  const Vec a(T(0.999999)), b(T(1e-7));
  for (int64_t i = 0; i < iters; ++i) {
    DASP_UNROLL
    for (int c = 0; c < kFmaChains; ++c) acc[c] = at::vec::fmadd(acc[c], a, b);
  }
  T s = 0;
  for (int c = 0; c < kFmaChains; ++c) s += hsum(acc[c]);
  return s;
}

template <typename T>
inline void fill(T* p, int64_t n, T v) {
  for (int64_t i = 0; i < n; ++i) p[i] = v;
}

inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }
inline int64_t iclamp(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : (v > hi ? hi : v); }

}  // namespace dasp_kernels::cpu::DASP_ISA::util
