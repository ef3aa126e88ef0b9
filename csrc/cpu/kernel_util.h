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
#if defined(_MSC_VER)
#include <malloc.h>
#endif
#include <new>

#if defined(__GNUC__)
#define DASP_UNROLL _Pragma("GCC unroll 16")
#define DASP_PREFETCH_L2(p) __builtin_prefetch((p), 0, 2)
#else
#define DASP_UNROLL
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

// Stores n lanes of v at p; a full vector at a 32-byte aligned p goes around the caches when nt
// (non-temporal, AVX2 build only). Callers fence with stream_fence() before their task ends.
template <typename T>
inline void put(const at::vec::Vectorized<T>& v, T* p, int64_t n, bool nt) {
#if defined(CPU_CAPABILITY_AVX2)
  if (nt && n >= at::vec::Vectorized<T>::size() && (reinterpret_cast<uintptr_t>(p) & 31) == 0) {
    if constexpr (std::is_same_v<T, float>)
      _mm256_stream_ps(p, v);
    else
      _mm256_stream_pd(p, v);
    return;
  }
#endif
  v.store(p, n);
}

inline void stream_fence() {
#if defined(CPU_CAPABILITY_AVX2)
  _mm_sfence();
#endif
}

// dst[i] = src[i], i < n, dst with put().
template <typename T>
inline void copy_put(const T* src, int64_t n, T* dst, bool nt) {
  constexpr int V = at::vec::Vectorized<T>::size();
  int64_t i = 0;
  // Scalar head up to a 32-byte boundary, so that the vectors can stream.
  if (nt)
    for (; i < n && (reinterpret_cast<uintptr_t>(dst + i) & 31) != 0; ++i) dst[i] = src[i];
  for (; i + V <= n; i += V) put(at::vec::Vectorized<T>::loadu(src + i), dst + i, V, nt);
  if (i < n) at::vec::Vectorized<T>::loadu(src + i, n - i).store(dst + i, n - i);
}

template <typename T>
inline void fill(T* p, int64_t n, T v) {
  for (int64_t i = 0; i < n; ++i) p[i] = v;
}

inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }
inline int64_t iclamp(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : (v > hi ? hi : v); }

}  // namespace dasp_kernels::cpu::DASP_ISA::util
