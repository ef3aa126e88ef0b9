// 2x2/2 ceil-mode max pool, 1x1 conv and residual add: forward and backward kernels.
// Included once per instruction set, inside namespace dasp_kernels::cpu::DASP_ISA (see
// cpu_kernels.h); hence no include guard.
//
// A task is a band of pooled rows of one image, cut into tiles of TP pooled pixels. Each tile is
// pooled into a per-thread buffer that stays in cache, then multiplied by the weight with a small
// register-blocked GEMM whose accumulators start from the residual, so the pooled map never goes
// to memory. Max-pool semantics follow PyTorch: scan order (r0c0, r0c1, r1c0, r1c1), a later value
// wins if it is greater or NaN; the backward routes each pooled gradient to that argmax.
#ifndef DASP_ISA
#error "define DASP_ISA before including ppm_add_kernel.h"
#endif

#include <ATen/cpu/vec/vec.h>

#include <cstring>
#include <type_traits>

#include "cpu_kernels.h"
#include "kernel_util.h"

namespace dasp_kernels::cpu::DASP_ISA {
namespace ppm {

using namespace util;

template <typename T>
using Vec = at::vec::Vectorized<T>;

// Pooled pixels per tile.
template <typename T>
constexpr int64_t tile_pixels() {
  return 32 * Vec<T>::size();
}

// Row pitch of the NCHW tile buffers: one cache line more than the tile, so that the rows read
// down a GEMM panel do not all map to the same few L1 sets (a 1 KiB pitch would).
template <typename T>
constexpr int64_t tile_pitch() {
  return tile_pixels<T>() + 64 / sizeof(T);
}

// ---------------------------------------------------------------------------------------------
// GEMM micro-kernel: C[r][0..n) = R[r][0..n) (or 0) + sum_k A(r, k) * B[k][0..n) for r < MR, where
// A(r, k) = A[r * rsa + k * csa] and n = NV vectors, the last one holding nl lanes when PART.

template <typename T, int MR, int NV, bool PART>
inline void micro(int64_t kd, const T* A, int64_t rsa, int64_t csa, const T* B, int64_t ldb,
                  const T* R, int64_t ldr, T* C, int64_t ldc, int64_t nl, bool nt) {
  constexpr int V = Vec<T>::size();
  Vec<T> acc[MR][NV];
  DASP_UNROLL
  for (int r = 0; r < MR; ++r) {
    DASP_UNROLL
    for (int v = 0; v < NV; ++v) {
      const int64_t cnt = (PART && v == NV - 1) ? nl : V;
      acc[r][v] = R ? load_n<T>(R + r * ldr + v * V, cnt) : Vec<T>(T(0));
    }
  }
  for (int64_t k = 0; k < kd; ++k) {
    Vec<T> b[NV];
    DASP_UNROLL
    for (int v = 0; v < NV; ++v)
      b[v] = (PART && v == NV - 1) ? Vec<T>::loadu(B + k * ldb + v * V, nl)
                                   : Vec<T>::loadu(B + k * ldb + v * V);
    const T* ak = A + k * csa;
    DASP_UNROLL
    for (int r = 0; r < MR; ++r) {
      const Vec<T> av(ak[r * rsa]);
      DASP_UNROLL
      for (int v = 0; v < NV; ++v) acc[r][v] = at::vec::fmadd(av, b[v], acc[r][v]);
    }
  }
  DASP_UNROLL
  for (int r = 0; r < MR; ++r) {
    DASP_UNROLL
    for (int v = 0; v < NV; ++v)
      put(acc[r][v], C + r * ldc + v * V, (PART && v == NV - 1) ? nl : V, nt);
  }
}

// Register blocking: MR rows by NV vectors of accumulators.
constexpr int kMR = kNativeVec ? 6 : 4;
constexpr int kNV = kNativeVec ? 2 : 1;

template <typename T, int MR>
inline void micro_cols(int64_t n_rem, int64_t kd, const T* A, int64_t rsa, int64_t csa, const T* B,
                       int64_t ldb, const T* R, int64_t ldr, T* C, int64_t ldc, bool nt) {
  constexpr int V = Vec<T>::size();
  if (kNV == 2 && n_rem >= 2 * V)
    micro<T, MR, 2, false>(kd, A, rsa, csa, B, ldb, R, ldr, C, ldc, V, nt);
  else if (kNV == 2 && n_rem > V)
    micro<T, MR, 2, true>(kd, A, rsa, csa, B, ldb, R, ldr, C, ldc, n_rem - V, nt);
  else if (n_rem >= V)
    micro<T, MR, 1, false>(kd, A, rsa, csa, B, ldb, R, ldr, C, ldc, V, nt);
  else
    micro<T, MR, 1, true>(kd, A, rsa, csa, B, ldb, R, ldr, C, ldc, n_rem, nt);
}

// C[m][n] = R[m][n] (or 0) + sum_k A(m, k) * B[k][n]; B, R and C unit-stride along n. nt: C is
// a large output (see put()).
template <typename T>
void gemm(int64_t M, int64_t N, int64_t kd, const T* A, int64_t rsa, int64_t csa, const T* B,
          int64_t ldb, const T* R, int64_t ldr, T* C, int64_t ldc, bool nt = false) {
  constexpr int V = Vec<T>::size();
  constexpr int MR = kMR;
  for (int64_t n0 = 0; n0 < N; n0 += kNV * V) {
    const int64_t n_rem = N - n0;
    const T* Bn = B + n0;
    T* Cn = C + n0;
    const T* Rn = R ? R + n0 : nullptr;
    int64_t m0 = 0;
    for (; m0 + MR <= M; m0 += MR)
      micro_cols<T, MR>(n_rem, kd, A + m0 * rsa, rsa, csa, Bn, ldb, Rn ? Rn + m0 * ldr : nullptr,
                        ldr, Cn + m0 * ldc, ldc, nt);
    const T* Am = A + m0 * rsa;
    const T* Rm = Rn ? Rn + m0 * ldr : nullptr;
    T* Cm = Cn + m0 * ldc;
    switch (M - m0) {
      case 5: micro_cols<T, 5>(n_rem, kd, Am, rsa, csa, Bn, ldb, Rm, ldr, Cm, ldc, nt); break;
      case 4: micro_cols<T, 4>(n_rem, kd, Am, rsa, csa, Bn, ldb, Rm, ldr, Cm, ldc, nt); break;
      case 3: micro_cols<T, 3>(n_rem, kd, Am, rsa, csa, Bn, ldb, Rm, ldr, Cm, ldc, nt); break;
      case 2: micro_cols<T, 2>(n_rem, kd, Am, rsa, csa, Bn, ldb, Rm, ldr, Cm, ldc, nt); break;
      case 1: micro_cols<T, 1>(n_rem, kd, Am, rsa, csa, Bn, ldb, Rm, ldr, Cm, ldc, nt); break;
      default: break;
    }
  }
}

// acc[i][j] += sum_t A[i][t] * B[j][t] over t < n (lane partial sums, reduced later).
template <typename T, int MA, int MB>
inline void dot_block(int64_t n, const T* A, int64_t lda, const T* B, int64_t ldb, Vec<T>* acc,
                      int64_t ld_acc) {
  constexpr int V = Vec<T>::size();
  Vec<T> s[MA][MB];
  for (int i = 0; i < MA; ++i)
    for (int j = 0; j < MB; ++j) s[i][j] = acc[i * ld_acc + j];
  int64_t t = 0;
  for (; t + V <= n; t += V) {
    Vec<T> a[MA], b[MB];
    DASP_UNROLL
    for (int i = 0; i < MA; ++i) a[i] = Vec<T>::loadu(A + i * lda + t);
    DASP_UNROLL
    for (int j = 0; j < MB; ++j) b[j] = Vec<T>::loadu(B + j * ldb + t);
    DASP_UNROLL
    for (int i = 0; i < MA; ++i) {
      DASP_UNROLL
      for (int j = 0; j < MB; ++j) s[i][j] = at::vec::fmadd(a[i], b[j], s[i][j]);
    }
  }
  if (t < n) {
    Vec<T> a[MA], b[MB];
    for (int i = 0; i < MA; ++i) a[i] = Vec<T>::loadu(A + i * lda + t, n - t);
    for (int j = 0; j < MB; ++j) b[j] = Vec<T>::loadu(B + j * ldb + t, n - t);
    for (int i = 0; i < MA; ++i)
      for (int j = 0; j < MB; ++j) s[i][j] = at::vec::fmadd(a[i], b[j], s[i][j]);
  }
  for (int i = 0; i < MA; ++i)
    for (int j = 0; j < MB; ++j) acc[i * ld_acc + j] = s[i][j];
}

// acc[m][k] (Vec lanes) += sum_t A[m][t] * B[k][t], m < M, k < Kn.
template <typename T>
void dot_all(int64_t M, int64_t Kn, int64_t n, const T* A, int64_t lda, const T* B, int64_t ldb,
             Vec<T>* acc) {
  constexpr int MA = 3, MB = 4;
  int64_t m = 0;
  for (; m + MA <= M; m += MA) {
    int64_t k = 0;
    for (; k + MB <= Kn; k += MB)
      dot_block<T, MA, MB>(n, A + m * lda, lda, B + k * ldb, ldb, acc + m * Kn + k, Kn);
    for (; k < Kn; ++k) dot_block<T, MA, 1>(n, A + m * lda, lda, B + k * ldb, ldb, acc + m * Kn + k, Kn);
  }
  for (; m < M; ++m) {
    int64_t k = 0;
    for (; k + MB <= Kn; k += MB)
      dot_block<T, 1, MB>(n, A + m * lda, lda, B + k * ldb, ldb, acc + m * Kn + k, Kn);
    for (; k < Kn; ++k) dot_block<T, 1, 1>(n, A + m * lda, lda, B + k * ldb, ldb, acc + m * Kn + k, Kn);
  }
}

// ---------------------------------------------------------------------------------------------
// Pooling

// m/idx update of the PyTorch scan: take v if v > m or v is NaN.
template <typename T, bool IDX>
inline void take(const Vec<T>& v, T k, Vec<T>& m, Vec<T>& idx) {
  const Vec<T> mask = (v > m) | v.isnan();
  m = Vec<T>::blendv(m, v, mask);
  if (IDX) idx = Vec<T>::blendv(idx, Vec<T>(k), mask);
}

template <typename T>
inline void take_scalar(T v, int k, T& m, int& idx) {
  if (v > m || v != v) {
    m = v;
    idx = k;
  }
}

// One pooled window, scalar: rows r0 and r1 (r1 null if past the input), columns c and c + 1 (if
// c + 1 < W). Returns the max and writes its position 0..3 (row-major in the 2x2 window).
template <typename T>
inline T pool_one(const T* r0, const T* r1, int64_t cstride, bool has_c1, int& idx) {
  T m = r0[0];
  idx = 0;
  if (has_c1) take_scalar(r0[cstride], 1, m, idx);
  if (r1) {
    take_scalar(r1[0], 2, m, idx);
    if (has_c1) take_scalar(r1[cstride], 3, m, idx);
  }
  return m;
}

// NCHW: pooled pixels ox in [ox0, ox1) of one channel row pair into P[ox - ox0] (and I).
// `ahead`: the row pair below, prefetched into L2 as this one is read (null: none). Without it
// the reads, short runs a plane apart, reached under half the memory bandwidth.
template <typename T, bool IDX>
inline void pool_seg_nchw(const T* r0, const T* r1, int64_t W, int64_t ox0, int64_t ox1, T* P,
                          T* I, const T* ahead = nullptr) {
  constexpr int V = Vec<T>::size();
  const int64_t full = imin(ox1, W / 2);  // windows with two columns
  int64_t ox = ox0;
  for (; ox + V <= full; ox += V) {
    if (ahead) {
      DASP_PREFETCH_L2(ahead + 2 * ox);
      DASP_PREFETCH_L2(ahead + W + 2 * ox);
    }
    auto e0o0 = at::vec::deinterleave2(Vec<T>::loadu(r0 + 2 * ox), Vec<T>::loadu(r0 + 2 * ox + V));
    Vec<T> m = e0o0.first, idx(T(0));
    take<T, IDX>(e0o0.second, T(1), m, idx);
    if (r1) {
      auto e1o1 =
          at::vec::deinterleave2(Vec<T>::loadu(r1 + 2 * ox), Vec<T>::loadu(r1 + 2 * ox + V));
      take<T, IDX>(e1o1.first, T(2), m, idx);
      take<T, IDX>(e1o1.second, T(3), m, idx);
    }
    m.store(P + ox - ox0);
    if (IDX) idx.store(I + ox - ox0);
  }
  for (; ox < ox1; ++ox) {
    int k;
    P[ox - ox0] = pool_one(r0 + 2 * ox, r1 ? r1 + 2 * ox : nullptr, 1, 2 * ox + 1 < W, k);
    if (IDX) I[ox - ox0] = T(k);
  }
}

// NCHW backward: writes grad_x of the windows of [ox0, ox1): D[t] at the argmax I[t], 0 elsewhere.
template <typename T>
inline void scatter_seg_nchw(T* g0, T* g1, int64_t W, int64_t ox0, int64_t ox1, const T* D,
                             const T* I, bool nt) {
  constexpr int V = Vec<T>::size();
  const Vec<T> zero(T(0));
  const int64_t full = imin(ox1, W / 2);
  int64_t ox = ox0;
  for (; ox + V <= full; ox += V) {
    const Vec<T> d = Vec<T>::loadu(D + ox - ox0), idx = Vec<T>::loadu(I + ox - ox0);
    auto top = at::vec::interleave2(Vec<T>::blendv(zero, d, idx == Vec<T>(T(0))),
                                    Vec<T>::blendv(zero, d, idx == Vec<T>(T(1))));
    put(top.first, g0 + 2 * ox, V, nt);
    put(top.second, g0 + 2 * ox + V, V, nt);
    if (g1) {
      auto bot = at::vec::interleave2(Vec<T>::blendv(zero, d, idx == Vec<T>(T(2))),
                                      Vec<T>::blendv(zero, d, idx == Vec<T>(T(3))));
      put(bot.first, g1 + 2 * ox, V, nt);
      put(bot.second, g1 + 2 * ox + V, V, nt);
    }
  }
  for (; ox < ox1; ++ox) {
    const T d = D[ox - ox0];
    const int k = static_cast<int>(I[ox - ox0]);
    const bool c1 = 2 * ox + 1 < W;
    g0[2 * ox] = k == 0 ? d : T(0);
    if (c1) g0[2 * ox + 1] = k == 1 ? d : T(0);
    if (g1) {
      g1[2 * ox] = k == 2 ? d : T(0);
      if (c1) g1[2 * ox + 1] = k == 3 ? d : T(0);
    }
  }
}

// Calls f(oy, ox0, ox1, t) over the row segments of pooled pixels [pa, pb) (t = offset in tile).
template <typename F>
inline void row_segments(int64_t pa, int64_t pb, int64_t Wo, F&& f) {
  int64_t pix = pa;
  while (pix < pb) {
    const int64_t oy = pix / Wo, ox0 = pix % Wo;
    const int64_t ox1 = imin(Wo, ox0 + (pb - pix));
    f(oy, ox0, ox1, pix - pa);
    pix += ox1 - ox0;
  }
}

// NHWC: the pooled channel vectors of one window into P (and I), channels [0, C).
template <typename T, bool IDX>
inline void pool_pixel_nhwc(const T* p00, const T* p01, const T* p10, const T* p11, int64_t C,
                            T* P, T* I) {
  constexpr int V = Vec<T>::size();
  for (int64_t c = 0; c < C; c += V) {
    const int64_t cnt = imin(V, C - c);
    Vec<T> m = load_n<T>(p00 + c, cnt), idx(T(0));
    if (p01) take<T, IDX>(load_n<T>(p01 + c, cnt), T(1), m, idx);
    if (p10) take<T, IDX>(load_n<T>(p10 + c, cnt), T(2), m, idx);
    if (p11) take<T, IDX>(load_n<T>(p11 + c, cnt), T(3), m, idx);
    m.store(P + c, cnt);
    if (IDX) idx.store(I + c, cnt);
  }
}

struct Window {
  int64_t i00, i01, i10, i11;  // input pixel offsets, -1 when outside
};

inline Window window(int64_t oy, int64_t ox, int64_t H, int64_t W) {
  const int64_t iy = 2 * oy, ix = 2 * ox;
  const bool c1 = ix + 1 < W, r1 = iy + 1 < H;
  return {iy * W + ix, c1 ? iy * W + ix + 1 : -1, r1 ? (iy + 1) * W + ix : -1,
          (c1 && r1) ? (iy + 1) * W + ix + 1 : -1};
}

// ---------------------------------------------------------------------------------------------
// Tasks

// Rows a plane apart (residual, grad_out) prefetched ahead of the one being read.
constexpr int64_t kPlanesAhead = 2;

// Pools pooled pixels [tA, tA + tn) of every plane: P[ci * ld + t] (and argmax I when IDX).
// Each row pair read prefetches the pair below it, which the next tile (or segment) reads.
template <typename T, bool IDX>
inline void pool_tile_nchw(const T* xn, int64_t Cin, int64_t H, int64_t W, int64_t Wo, int64_t tA,
                           int64_t tn, T* P, T* I, int64_t ld) {
  for (int64_t ci = 0; ci < Cin; ++ci) {
    const T* xc = xn + ci * H * W;
    row_segments(tA, tA + tn, Wo, [&](int64_t oy, int64_t ox0, int64_t ox1, int64_t t) {
      const T* r0 = xc + 2 * oy * W;
      pool_seg_nchw<T, IDX>(r0, 2 * oy + 1 < H ? r0 + W : nullptr, W, ox0, ox1, P + ci * ld + t,
                            IDX ? I + ci * ld + t : nullptr, 2 * oy + 3 < H ? r0 + 2 * W : nullptr);
    });
  }
}

// out[i] = o[i] + r[i], i < n.
template <typename T>
inline void add_rows(const T* o, const T* r, int64_t n, T* out, bool nt) {
  put_n(out, n, nt, [&](int64_t i, int64_t m) { return load_n(o + i, m) + load_n(r + i, m); });
}

template <typename T>
void fwd_nchw(const PpmShape& p, const PpmArgs<T>& a, int64_t t0, int64_t t1) {
  constexpr int64_t TP = tile_pixels<T>(), LD = tile_pitch<T>();
  const int64_t Cin = p.Cin, Cout = p.Cout, H = p.H, W = p.W, Wo = p.Wo, HWo = p.Ho * p.Wo;
  Scratch<T> buf((Cin + Cout) * LD);
  T* P = buf.data();
  T* O = P + Cin * LD;
  for (int64_t task = t0; task < t1; ++task) {
    const int64_t n = task / p.bands, band = task % p.bands;
    const int64_t pA = (band * p.Ho / p.bands) * Wo, pB = ((band + 1) * p.Ho / p.bands) * Wo;
    const T* xn = a.x + n * Cin * H * W;
    for (int64_t tA = pA; tA < pB; tA += TP) {
      const int64_t tn = imin(TP, pB - tA);
      pool_tile_nchw<T, false>(xn, Cin, H, W, Wo, tA, tn, P, nullptr, LD);
      // Into a local tile first: adding the residual inside the GEMM read and wrote rows a
      // whole plane apart per micro-tile, which thrashed L1 and was 3x slower.
      gemm<T>(Cout, tn, Cin, a.w, Cin, 1, P, LD, nullptr, 0, O, LD);
      const int64_t off = n * Cout * HWo + tA;
      for (int64_t co = 0; co < Cout; ++co) {
        if (co + kPlanesAhead < Cout) prefetch_span(a.residual + off + (co + kPlanesAhead) * HWo, tn);
        add_rows(O + co * LD, a.residual + off + co * HWo, tn, a.out + off + co * HWo, p.stream);
      }
    }
  }
  stream_fence();
}

template <typename T>
void fwd_nhwc(const PpmShape& p, const PpmArgs<T>& a, int64_t t0, int64_t t1) {
  constexpr int64_t TP = tile_pixels<T>();
  const int64_t Cin = p.Cin, Cout = p.Cout, H = p.H, W = p.W, Wo = p.Wo, HWo = p.Ho * p.Wo;
  Scratch<T> P(TP * Cin);
  for (int64_t task = t0; task < t1; ++task) {
    const int64_t n = task / p.bands, band = task % p.bands;
    const int64_t pA = (band * p.Ho / p.bands) * Wo, pB = ((band + 1) * p.Ho / p.bands) * Wo;
    const T* xn = a.x + n * H * W * Cin;
    for (int64_t tA = pA; tA < pB; tA += TP) {
      const int64_t tn = imin(TP, pB - tA);
      for (int64_t t = 0; t < tn; ++t) {
        const Window w = window((tA + t) / Wo, (tA + t) % Wo, H, W);
        auto px = [&](int64_t i) { return i < 0 ? nullptr : xn + i * Cin; };
        pool_pixel_nhwc<T, false>(px(w.i00), px(w.i01), px(w.i10), px(w.i11), Cin,
                                  P.data() + t * Cin, nullptr);
      }
      const int64_t off = (n * HWo + tA) * Cout;
      gemm<T>(tn, Cout, Cin, P.data(), Cin, 1, a.wt, Cout, a.residual + off, Cout, a.out + off, Cout,
              p.stream);
    }
  }
  stream_fence();
}

template <typename T>
void bwd_nchw(const PpmShape& p, const PpmArgs<T>& a, int64_t t0, int64_t t1) {
  constexpr int64_t TP = tile_pixels<T>(), LD = tile_pitch<T>();
  const int64_t Cin = p.Cin, Cout = p.Cout, H = p.H, W = p.W, Wo = p.Wo, HWo = p.Ho * p.Wo;
  Scratch<T> buf((3 * Cin + Cout) * LD);
  T* P = buf.data();
  T* I = P + Cin * LD;
  T* D = I + Cin * LD;
  T* Gt = D + Cin * LD;  // the tile of grad_out: its rows are a whole plane apart in memory
  Scratch<Vec<T>> gwv(Cout * Cin);
  for (int64_t task = t0; task < t1; ++task) {
    const int64_t n = task / p.bands, band = task % p.bands;
    const int64_t pA = (band * p.Ho / p.bands) * Wo, pB = ((band + 1) * p.Ho / p.bands) * Wo;
    const T* xn = a.x + n * Cin * H * W;
    for (int64_t i = 0; i < Cout * Cin; ++i) gwv.data()[i] = Vec<T>(T(0));
    for (int64_t tA = pA; tA < pB; tA += TP) {
      const int64_t tn = imin(TP, pB - tA);
      const T* G = a.gout + n * Cout * HWo + tA;
      pool_tile_nchw<T, true>(xn, Cin, H, W, Wo, tA, tn, P, I, LD);
      for (int64_t co = 0; co < Cout; ++co) {
        if (co + kPlanesAhead < Cout) prefetch_span(G + (co + kPlanesAhead) * HWo, tn);
        copy_n(G + co * HWo, tn, Gt + co * LD);
      }
      // dP[ci][t] = sum_co w[co][ci] * G[co][t]
      gemm<T>(Cin, tn, Cout, a.wt, Cout, 1, Gt, LD, nullptr, 0, D, LD);
      for (int64_t ci = 0; ci < Cin; ++ci) {
        T* gc = a.gx + (n * Cin + ci) * H * W;
        row_segments(tA, tA + tn, Wo, [&](int64_t oy, int64_t ox0, int64_t ox1, int64_t t) {
          T* g0 = gc + 2 * oy * W;
          scatter_seg_nchw<T>(g0, 2 * oy + 1 < H ? g0 + W : nullptr, W, ox0, ox1,
                              D + ci * LD + t, I + ci * LD + t, p.stream);
        });
      }
      // gw[co][ci] += sum_t G[co][t] * P[ci][t]
      dot_all<T>(Cout, Cin, tn, Gt, LD, P, LD, gwv.data());
    }
    T* gw = a.gw_part + task * Cout * Cin;
    for (int64_t i = 0; i < Cout * Cin; ++i) gw[i] = hsum(gwv.data()[i]);
  }
  stream_fence();
}

template <typename T>
void bwd_nhwc(const PpmShape& p, const PpmArgs<T>& a, int64_t t0, int64_t t1) {
  constexpr int V = Vec<T>::size();
  constexpr int64_t TP = tile_pixels<T>();
  const int64_t Cin = p.Cin, Cout = p.Cout, H = p.H, W = p.W, Wo = p.Wo, HWo = p.Ho * p.Wo;
  Scratch<T> buf(3 * TP * Cin + Cout * Cin);
  T* P = buf.data();
  T* I = P + TP * Cin;
  T* D = I + TP * Cin;
  T* gwb = D + TP * Cin;
  const Vec<T> zero(T(0));
  for (int64_t task = t0; task < t1; ++task) {
    const int64_t n = task / p.bands, band = task % p.bands;
    const int64_t pA = (band * p.Ho / p.bands) * Wo, pB = ((band + 1) * p.Ho / p.bands) * Wo;
    const T* xn = a.x + n * H * W * Cin;
    T* gxn = a.gx + n * H * W * Cin;
    fill(gwb, Cout * Cin, T(0));
    for (int64_t tA = pA; tA < pB; tA += TP) {
      const int64_t tn = imin(TP, pB - tA);
      for (int64_t t = 0; t < tn; ++t) {
        const Window w = window((tA + t) / Wo, (tA + t) % Wo, H, W);
        auto px = [&](int64_t i) { return i < 0 ? nullptr : xn + i * Cin; };
        pool_pixel_nhwc<T, true>(px(w.i00), px(w.i01), px(w.i10), px(w.i11), Cin, P + t * Cin,
                                 I + t * Cin);
      }
      const T* G = a.gout + (n * HWo + tA) * Cout;
      // dP[t][ci] = sum_co G[t][co] * w[co][ci]
      gemm<T>(tn, Cin, Cout, G, Cout, 1, a.w, Cin, nullptr, 0, D, Cin);
      for (int64_t t = 0; t < tn; ++t) {
        const Window w = window((tA + t) / Wo, (tA + t) % Wo, H, W);
        const int64_t pos[4] = {w.i00, w.i01, w.i10, w.i11};
        for (int64_t c = 0; c < Cin; c += V) {
          const int64_t cnt = imin(V, Cin - c);
          const Vec<T> d = load_n<T>(D + t * Cin + c, cnt), idx = load_n<T>(I + t * Cin + c, cnt);
          for (int k = 0; k < 4; ++k)
            if (pos[k] >= 0)
              put(Vec<T>::blendv(zero, d, idx == Vec<T>(T(k))), gxn + pos[k] * Cin + c, cnt,
                  p.stream);
        }
      }
      // gw[co][ci] += sum_t G[t][co] * P[t][ci]
      gemm<T>(Cout, Cin, tn, G, 1, Cout, P, Cin, gwb, Cin, gwb, Cin);
    }
    copy_n(gwb, Cout * Cin, a.gw_part + task * Cout * Cin);
  }
  stream_fence();
}

}  // namespace ppm
}  // namespace dasp_kernels::cpu::DASP_ISA
