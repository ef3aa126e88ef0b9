// bfloat16 storage for float kernels: a bf16 value is the high half of a float32's bits, so a
// load is a widening and a 16-bit shift (exact), and a store rounds to nearest even in integer
// arithmetic, NaN written as 0x7fc0: the bits of ATen's own conversion (c10::BFloat16). The
// rounding is done in software on every ISA: AVX512_BF16's vcvtneps2bf16 would need a runtime
// check (the AVX-512 build is chosen from ATen's capability, which does not imply BF16) and a
// function of another target, which cannot be inlined into the micro-kernels; the software
// rounding is a few integer operations per vector, next to the K*K FMAs of each output vector.
// The kernels see bf16 as uint16_t (cpu_kernels.h includes no c10 types).
// Included by dwconv_bn_relu_kernel.h once per instruction set; hence no include guard.

namespace dasp_kernels::cpu::DASP_ISA {
namespace dw {

using bf16_t = uint16_t;

inline float bf16_to_float(bf16_t v) {
  const uint32_t u = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline bf16_t float_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;  // NaN
  return static_cast<bf16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

// n lanes (a full vector when n >= size) of bf16 at p as floats, the rest zero.
inline Vec<float> load_bf16(const bf16_t* p, int64_t n = Vec<float>::size()) {
#if defined(CPU_CAPABILITY_AVX512)
  const __mmask16 m = n >= 16 ? __mmask16(0xffff) : __mmask16((1u << n) - 1);
  const __m256i h = _mm256_maskz_loadu_epi16(m, p);
  return Vec<float>(_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)));
#elif defined(CPU_CAPABILITY_AVX2)
  __m128i h;
  if (n >= 8) {
    h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  } else {
    alignas(16) bf16_t tmp[8] = {};
    std::memcpy(tmp, p, n * sizeof(bf16_t));
    h = _mm_load_si128(reinterpret_cast<const __m128i*>(tmp));
  }
  return Vec<float>(_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)));
#else
  constexpr int V = Vec<float>::size();
  alignas(64) float tmp[V] = {};
  for (int64_t i = 0; i < n && i < V; ++i) tmp[i] = bf16_to_float(p[i]);
  return Vec<float>::loadu(tmp);
#endif
}

// Stores the first n lanes (a full vector when n >= size) of v at p, rounded to nearest even.
inline void store_bf16(const Vec<float>& v, bf16_t* p, int64_t n = Vec<float>::size()) {
#if defined(CPU_CAPABILITY_AVX512)
  const __m512 f = v;
  const __m512i u = _mm512_castps_si512(f);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(
      _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), odd), 16);
  const __mmask16 nan = _mm512_cmp_ps_mask(f, f, _CMP_UNORD_Q);
  r = _mm512_mask_mov_epi32(r, nan, _mm512_set1_epi32(0x7fc0));
  const __m256i h = _mm512_cvtepi32_epi16(r);
  const __mmask16 m = n >= 16 ? __mmask16(0xffff) : __mmask16((1u << n) - 1);
  _mm256_mask_storeu_epi16(p, m, h);
#elif defined(CPU_CAPABILITY_AVX2)
  const __m256 f = v;
  const __m256i u = _mm256_castps_si256(f);
  const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  __m256i r = _mm256_srli_epi32(
      _mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)), odd), 16);
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(f, f, _CMP_UNORD_Q));
  r = _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7fc0), nan);
  // Values < 2^16: the unsigned-saturating pack is exact; it packs within 128-bit lanes, so the
  // halves are gathered after.
  const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08);
  const __m128i h = _mm256_castsi256_si128(packed);
  if (n >= 8) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), h);
  } else {
    alignas(16) bf16_t tmp[8];
    _mm_store_si128(reinterpret_cast<__m128i*>(tmp), h);
    std::memcpy(p, tmp, n * sizeof(bf16_t));
  }
#else
  constexpr int V = Vec<float>::size();
  alignas(64) float tmp[V];
  v.store(tmp);
  for (int64_t i = 0; i < n && i < V; ++i) p[i] = float_to_bf16(tmp[i]);
#endif
}

// Storage-generic loads and stores of the kernels templated on (compute T, storage X): X = T is
// the plain path (the non-temporal put of kernel_util.h), X = bf16_t the widening/rounding one.
template <typename T, typename X>
C10_ALWAYS_INLINE Vec<T> load_x(const X* p, int64_t n = Vec<T>::size()) {
  if constexpr (std::is_same_v<X, T>)
    return n >= Vec<T>::size() ? Vec<T>::loadu(p) : Vec<T>::loadu(p, n);
  else
    return load_bf16(p, n);
}

template <typename T, typename X>
C10_ALWAYS_INLINE void put_x(const Vec<T>& v, X* p, int64_t n, bool nt) {
  if constexpr (std::is_same_v<X, T>)
    put(v, p, n, nt);
  else
    store_bf16(v, p, n);
}

}  // namespace dw
}  // namespace dasp_kernels::cpu::DASP_ISA
