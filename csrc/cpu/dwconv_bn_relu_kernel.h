// Depthwise KxK conv (any padding, dilation D) + per-channel scale/shift + activation (dw_act.h):
// forward and backward kernels.
// Included once per instruction set, inside namespace dasp_kernels::cpu::DASP_ISA (see
// cpu_kernels.h); hence no include guard.
//
// NCHW: one task = rows [oyA, oyB) of one (n, c) plane, vectorised along the output width. Input
//   rows are copied once into a small ring of zero-padded rows, split into S phase rows
//   (ph_r[j] = xpad[S*j + r]), so that every tap of a stride-2 conv is a contiguous vector load
//   (tap kx of a dilated conv: phase (D*kx) mod S, offset (D*kx) / S).
// NHWC: one task = rows [oyA, oyB) of one image, vectorised across channels.
// Backward recomputes y, keeps the last K rows of gy = dL/dconv in a ring, and writes each grad_x
// row once all of its gy rows exist (a gather, no atomics); a band recomputes the few gy rows
// before it that its first grad_x rows need. Weight/scale/shift gradients are summed per task.
#ifndef DASP_ISA
#error "define DASP_ISA before including dwconv_bn_relu_kernel.h"
#endif

#include <ATen/cpu/vec/vec.h>

#include <cstring>
#include <type_traits>

#include "cpu_kernels.h"
#include "dw_act.h"
#include "kernel_util.h"

namespace dasp_kernels::cpu::DASP_ISA {
namespace dw {

using namespace util;

template <typename T>
using Vec = at::vec::Vectorized<T>;

// ---------------------------------------------------------------------------------------------
// NCHW

// Positions [j, j + V) of the S phase rows at ph (each of length L) from a and b: the S*V
// padded-row elements that phase position j starts.
template <typename T, int S>
inline void put_phase_step(T* ph, int64_t L, int64_t j, const Vec<T>& a, const Vec<T>& b) {
  if constexpr (S == 1) {
    a.store(ph + j);
  } else {
    auto ab = at::vec::deinterleave2(a, b);
    ab.first.store(ph + j);
    ab.second.store(ph + L + j);
  }
}

// a, b = the S*V elements xrow[q * cs], xrow[(q + 1) * cs], ... of a row of W elements, zero
// outside the row: a step at the row's ends (or a strided one), element by element.
template <typename T, int S>
inline void load_staged(const T* xrow, int64_t W, int64_t q, int64_t cs, Vec<T>& a, Vec<T>& b) {
  constexpr int V = Vec<T>::size();
  alignas(64) T tmp[2 * V] = {};
  for (int i = 0; i < S * V; ++i) {
    const int64_t ix = q + i;
    tmp[i] = (ix >= 0 && ix < W) ? xrow[ix * cs] : T(0);
  }
  a = Vec<T>::loadu(tmp);
  b = Vec<T>::loadu(tmp + V);
}

// ph[r * L + j] = xpad[S * j + r], xpad[q] = xrow[q - pad] inside the row, 0 outside. L % V == 0.
// Vector loads straight from the input row (a libc memcpy of a row was slower here), masked at
// the row's end. `ahead`: a row that a later output row reads, prefetched into L2 alongside
// (null: none). cs: the row's element stride (> 1: one channel of a channels-last row).
template <typename T, int S>
inline void fill_phases(const T* xrow, int64_t W, int64_t pad, int64_t L, T* ph,
                        const T* ahead, int64_t cs = 1) {
  constexpr int V = Vec<T>::size();
  auto put_step = [&](const Vec<T>& a, const Vec<T>& b, int64_t j) {
    put_phase_step<T, S>(ph, L, j, a, b);
  };
  // A step whose elements run past the row's start (or past its end, in a channels-last row).
  auto staged = [&](int64_t j) {
    Vec<T> a, b;
    load_staged<T, S>(xrow, W, S * j - pad, cs, a, b);
    put_step(a, b, j);
  };
  int64_t j = 0;
  if (cs == 1) {
    for (; j < L && S * j - pad < 0; j += V) staged(j);
    for (; j < L && S * j - pad < W; j += V) {
      const T* src = xrow + S * j - pad;
      const int64_t n = W - (S * j - pad);  // row elements left from src
      if (ahead) DASP_PREFETCH_L2(ahead + (src - xrow));
      const Vec<T> a = load_n(src, imin(n, V));
      put_step(a, S == 1 || n <= V ? Vec<T>(T(0)) : load_n(src + V, imin(n - V, V)), j);
    }
  } else {
    // One channel of a channels-last row (not a float RGB one where the build has every3: those
    // go through fill_rgb), gathered (hardware gathers in the AVX2 and AVX-512 builds); the row's
    // ends staged.
    using I = at::vec::int_same_size_t<T>;
    const auto idx = Vec<I>::arange(I(0), I(S * cs));  // lane i: element S*i of the channel
    for (; j < L && S * j - pad < W; j += V) {
      const int64_t q = S * j - pad;
      if (q < 0 || q + S * V > W) {
        staged(j);
        continue;
      }
      for (int r = 0; r < S; ++r)
        at::vec::gather<sizeof(T)>(xrow + (q + r) * cs, idx).store(ph + r * L + j);
    }
  }
  for (int r = 0; r < S; ++r) fill(ph + r * L + j, L - j, T(0));
}

// Ring slots of input rows: the D*(K-1) + 1 rows an output row spans (K without dilation), so
// that the rows an output row reads are in distinct slots and the next output row reuses them.
inline int64_t ring_rows(const DwShape& p) { return p.D * (p.K - 1) + 1; }

// The rows of input ring shared by forward and backward for one plane.
template <typename T, int K, int S>
struct PlaneRing {
  int64_t L;
  T* ring;        // `slots` slots of S phase rows of length L
  int64_t* tag;   // the input row each slot holds, -1: none
  int64_t slots;  // ring_rows()

  void reset() { fill(tag, slots, int64_t(-1)); }
  // Filling input row iy prefetches the row kAhead below (null past the plane's H rows).
  static constexpr int64_t kAhead = 2 * S;
  static const T* ahead(const T* xp, int64_t iy, int64_t H, int64_t rs) {
    return iy + kAhead < H ? xp + (iy + kAhead) * rs : nullptr;
  }
  // The slot of input row iy, filled by fill_slot(slot) unless it holds iy already.
  template <typename Fill>
  T* slot(int64_t iy, Fill&& fill_slot) {
    const int64_t s = iy % slots;
    T* r = ring + s * S * L;
    if (tag[s] != iy) {
      fill_slot(r);
      tag[s] = iy;
    }
    return r;
  }
  // Phase rows of input row iy (0 <= iy < H); rs, cs: row and element strides of the plane (W, 1
  // when contiguous).
  const T* row(const T* xp, int64_t iy, int64_t W, int64_t H, int64_t pad, int64_t rs,
               int64_t cs) {
    return slot(iy, [&](T* r) {
      fill_phases<T, S>(xp + iy * rs, W, pad, L, r, ahead(xp, iy, H, rs), cs);
    });
  }
};

// Where tap kx of a dilated conv reads in the phase rows of an input row: phase (D*kx) mod S at
// offset (D*kx) / S. Null without dilation (the taps' offsets are then compile-time constants).
template <int K>
struct TapOffsets {
  int64_t off[K];
  const int64_t* get;
  TapOffsets(const DwShape& p, int64_t L) : get(p.D == 1 ? nullptr : off) {
    for (int kx = 0; kx < K; ++kx) off[kx] = (p.D * kx) % p.S * L + (p.D * kx) / p.S;
  }
};

// acc[u] = sum over taps of one output-row block of NU vectors starting at ox, taps in (ky, kx)
// order for every output. toff: TapOffsets::get.
template <typename T, int K, int S, int NU>
inline void conv_block(const T* const* rows, int ky0, int ky1, const Vec<T>* wv, int64_t L,
                       int64_t ox, Vec<T>* acc, const int64_t* toff) {
  constexpr int V = Vec<T>::size();
  DASP_UNROLL
  for (int u = 0; u < NU; ++u) acc[u] = Vec<T>(T(0));
  if (toff) {
    for (int ky = ky0; ky < ky1; ++ky) {
      DASP_UNROLL
      for (int kx = 0; kx < K; ++kx) {
        const T* src = rows[ky] + toff[kx] + ox;
        const Vec<T> w = wv[ky * K + kx];
        DASP_UNROLL
        for (int u = 0; u < NU; ++u) acc[u] = at::vec::fmadd(Vec<T>::loadu(src + u * V), w, acc[u]);
      }
    }
    return;
  }
  if constexpr (S == 2 && K >= 3 && kHaveLaneShift && (K - 1) / 2 < Vec<T>::size()) {
    // Even taps (phase 0, offset kx/2) from the vectors at ox + u*V and the next one, shifted in
    // registers; odd taps loaded, so that the loop is bound neither by its loads nor by its
    // shuffles. Reads the even row up to ox + (NU+1)*V, inside L since L >= Wv + V when K >= 3.
    for (int ky = ky0; ky < ky1; ++ky) {
      const T* ev = rows[ky] + ox;
      const T* od = rows[ky] + L + ox;
      const Vec<T>* w = wv + ky * K;
      Vec<T> cur = Vec<T>::loadu(ev);
      DASP_UNROLL
      for (int u = 0; u < NU; ++u) {
        const Vec<T> next = Vec<T>::loadu(ev + (u + 1) * V);
        Vec<T> s = acc[u];
        static_for<K>([&](auto kx_c) {
          constexpr int kx = decltype(kx_c)::value;
          if constexpr (kx % 2 == 0)
            s = at::vec::fmadd(lane_shift<kx / 2>(cur, next), w[kx], s);
          else
            s = at::vec::fmadd(Vec<T>::loadu(od + u * V + kx / 2), w[kx], s);
        });
        acc[u] = s;
        cur = next;
      }
    }
    return;
  }
  for (int ky = ky0; ky < ky1; ++ky) {
    // One base pointer per phase, so that every tap is a constant offset from it.
    const T* ph[S];
    for (int r = 0; r < S; ++r) ph[r] = rows[ky] + r * L + ox;
    DASP_UNROLL
    for (int kx = 0; kx < K; ++kx) {
      const T* src = ph[kx % S] + kx / S;
      const Vec<T> w = wv[ky * K + kx];
      DASP_UNROLL
      for (int u = 0; u < NU; ++u) acc[u] = at::vec::fmadd(Vec<T>::loadu(src + u * V), w, acc[u]);
    }
  }
}

// Software prefetch of a few rows (to L2), spread over the steps of a compute loop.
struct RowPrefetch {
  static constexpr int kMax = 4;
  const char* row[kMax];
  int64_t bytes[kMax];
  int n = 0;
  int64_t line = 0, per_step = 0, lines = 0;

  void add(const void* p, int64_t nbytes) {
    if (n < kMax) {
      row[n] = static_cast<const char*>(p);
      bytes[n++] = nbytes;
    }
  }
  void plan(int64_t steps) {
    for (int i = 0; i < n; ++i) lines = imax(lines, (bytes[i] + 63) / 64);
    per_step = (lines + steps - 1) / imax(1, steps);
  }
  void step() {
    const int64_t end = imin(lines, line + per_step);
    for (; line < end; ++line)
      for (int i = 0; i < n; ++i)
        if (line * 64 < bytes[i]) DASP_PREFETCH_L2(row[i] + line * 64);
  }
  void rest() {
    per_step = lines;
    step();
  }
};

// Adds to pf the last S input rows of the span of output row oy + dist (those that row
// oy + dist - 1 does not read; none past the band's last row oyB - 1); rs: the plane's row stride.
template <typename T>
inline void prefetch_next_rows(RowPrefetch& pf, const T* xp, int64_t oy, int64_t oyB,
                               const DwShape& p, int64_t rs, int64_t dist = 1) {
  if (oy + dist >= oyB) return;
  const int64_t S = p.S, H = p.H;
  for (int64_t q = 0; q < S; ++q) {
    const int64_t iy = (oy + dist) * S - p.pad_t + p.D * (p.K - 1) + 1 - S + q;
    if (iy >= 0 && iy < H) pf.add(xp + iy * rs, rs * static_cast<int64_t>(sizeof(T)));
  }
}

// One forward output row: block(ox) over its full blocks of NU vectors, spreading pf's prefetches
// over them, then tail(ox) over the vectors left (the last one partial).
template <int NU, int V, typename Block, typename Tail>
inline void for_row_blocks(int64_t Wo, RowPrefetch& pf, Block&& block, Tail&& tail) {
  pf.plan(Wo / (NU * V) + 1);
  int64_t ox = 0;
  for (; ox + NU * V <= Wo; ox += NU * V) {
    pf.step();
    block(ox);
  }
  pf.rest();
  for (; ox < Wo; ox += V) tail(ox);
}

// How many output rows ahead the forward prefetches its input rows: 3 rather than 1, since with
// the input cold in memory the rows arrived late.
constexpr int64_t kFwdPrefetchRows = 3;

template <typename T>
inline Vec<T> bn_act(const Vec<T>& acc, const Vec<T>& sc, const Vec<T>& sh, const ActV<T>& act) {
  return act(at::vec::fmadd(acc, sc, sh));
}

// Wv: the output row in whole vectors; L: the length of one phase row (Wv plus the D*(K-1) / S
// positions the taps reach past it, in whole vectors).
template <typename T, int K, int S>
struct NchwGeom {
  int64_t Wv, L;
  explicit NchwGeom(const DwShape& p) {
    constexpr int V = Vec<T>::size();
    Wv = round_up(p.Wo, V);
    L = round_up(Wv + p.D * (K - 1) / S, V);
  }
};

// Valid ky range of output row oy: 0 <= oy*S - pad_t + D*ky < H (empty when no tap is inside).
inline void ky_range(int64_t oy, const DwShape& p, int& ky0, int& ky1) {
  const int64_t top = oy * p.S - p.pad_t;  // the input row of tap 0
  ky0 = static_cast<int>(imin(p.K, imax(0, ceil_div(-top, p.D))));
  ky1 = static_cast<int>(imax(ky0, imin(p.K, floor_div(p.H - 1 - top, p.D) + 1)));
}

// CL: a channels-last tensor with few channels, run plane by plane like NCHW (tasks (n, band),
// see below): vectors along the width need the channel's pixels picked into the phase rows
// (fill_phases), which beats channel vectors holding C < V lanes (README: channels_last RGB).
template <typename T, int K, int S, bool CL = false>
void fwd_nchw(const DwShape& p, const DwArgs<T>& a, int64_t t0, int64_t t1) {
  constexpr int V = Vec<T>::size();
  // Independent accumulators: enough to cover the FMA latency (fewer where Vectorized is an array).
  constexpr int NU = kNativeVec ? 8 : 4;
  const int64_t H = p.H, W = p.W, Ho = p.Ho, Wo = p.Wo, pt = p.pad_t, pl = p.pad_l;
  const NchwGeom<T, K, S> g(p);
  const int64_t slots = ring_rows(p);
  Scratch<T> buf(slots * S * g.L);
  Scratch<int64_t> tags(slots);
  PlaneRing<T, K, S> ring{g.L, buf.data(), tags.data(), slots};
  const TapOffsets<K> toff(p, g.L);
  const ActV<T> act(p);
  Vec<T> wv[K * K];
  int64_t cur = -1;
  // CL: a task is (n, band) and runs the band for each channel in turn (unit = task * C + c), so
  // the band's pixel rows come from memory once, later channels finding them in cache, and no
  // two threads write the same output cache lines.
  const int64_t per_task = CL ? p.C : 1;
  for (int64_t unit = t0 * per_task; unit < t1 * per_task; ++unit) {
    const int64_t plane = CL ? (unit / (p.bands * p.C)) * p.C + unit % p.C : unit / p.bands;
    const int64_t band = CL ? (unit / p.C) % p.bands : unit % p.bands;
    const int64_t c = plane % p.C;
    if (plane != cur) {
      ring.reset();
      cur = plane;
      for (int i = 0; i < K * K; ++i) wv[i] = Vec<T>(a.w[c * K * K + i]);
    }
    const Vec<T> sc(a.scale[c]), sh(a.shift[c]);
    // Element and row strides of the plane, in x and in y.
    const int64_t cs = CL ? p.C : 1, rs = W * cs, yrs = Wo * cs;
    const T* xp = CL ? a.x + (plane / p.C) * H * W * p.C + c : a.x + plane * H * W;
    T* yp = CL ? a.y + (plane / p.C) * Ho * Wo * p.C + c : a.y + plane * Ho * Wo;
    auto store = [&](const Vec<T>& v, T* dst, int64_t n) {
      if constexpr (CL) {
        alignas(64) T tmp[V];
        v.store(tmp);
        for (int64_t i = 0; i < n; ++i) dst[i * cs] = tmp[i];
      } else {
        put(v, dst, n, p.stream);
      }
    };
    const int64_t oyA = band * Ho / p.bands, oyB = (band + 1) * Ho / p.bands;
    for (int64_t oy = oyA; oy < oyB; ++oy) {
      int ky0, ky1;
      ky_range(oy, p, ky0, ky1);
      const T* rows[K];
      for (int ky = ky0; ky < ky1; ++ky)
        rows[ky] = ring.row(xp, oy * S - pt + p.D * ky, W, H, pl, rs, cs);
      T* yrow = yp + oy * yrs;
      // The S input rows that the next output row adds, fetched while this row computes:
      // reading them only when needed left the loads waiting on memory.
      RowPrefetch pf;
      prefetch_next_rows(pf, xp, oy, oyB, p, rs, kFwdPrefetchRows);
      Vec<T> acc[NU];
      for_row_blocks<NU, V>(
          Wo, pf,
          [&](int64_t ox) {
            conv_block<T, K, S, NU>(rows, ky0, ky1, wv, g.L, ox, acc, toff.get);
            DASP_UNROLL
            for (int u = 0; u < NU; ++u)
              store(bn_act(acc[u], sc, sh, act), yrow + (ox + u * V) * cs, V);
          },
          [&](int64_t ox) {
            conv_block<T, K, S, 1>(rows, ky0, ky1, wv, g.L, ox, acc, toff.get);
            store(bn_act(acc[0], sc, sh, act), yrow + ox * cs, imin(V, Wo - ox));
          });
    }
  }
  stream_fence();
}

// The phase rows of all three channels of one channels-last RGB float row, channel c's at
// dst + c * cstride (as fill_phases lays out one channel): the pixel row is read once, each S*V
// pixels as 3*S vectors split with every3<c>. The row's ends are staged.
template <int S>
inline void fill_rgb(const float* xrow, int64_t W, int64_t pad, int64_t L, float* dst,
                     int64_t cstride, const float* ahead) {
  using T = float;
  constexpr int V = Vec<T>::size();
  auto put_step = [&](int c, const Vec<T>& a, const Vec<T>& b, int64_t j) {
    put_phase_step<T, S>(dst + c * cstride, L, j, a, b);
  };
  int64_t j = 0;
  for (; j < L && S * j - pad < W; j += V) {
    const int64_t q = S * j - pad;  // first pixel of the step
    if (q >= 0 && q + S * V <= W) {
      const T* src = xrow + 3 * q;
      if (ahead) {
        const T* pf = ahead + 3 * q;
        for (int l = 0; l < 3 * S * V; l += 64 / int(sizeof(T))) DASP_PREFETCH_L2(pf + l);
      }
      Vec<T> v[3 * S];
      for (int i = 0; i < 3 * S; ++i) v[i] = Vec<T>::loadu(src + i * V);
      static_for<3>([&](auto c_) {
        constexpr int c = decltype(c_)::value;
        if constexpr (S == 1)
          put_step(c, every3<c>(v[0], v[1], v[2]), Vec<T>(T(0)), j);
        else
          put_step(c, every3<c>(v[0], v[1], v[2]), every3<c>(v[3], v[4], v[5]), j);
      });
      continue;
    }
    for (int c = 0; c < 3; ++c) {
      Vec<T> a, b;
      load_staged<T, S>(xrow + c, W, q, 3, a, b);
      put_step(c, a, b, j);
    }
  }
  for (int c = 0; c < 3; ++c)
    for (int r = 0; r < S; ++r) fill(dst + c * cstride + r * L + j, L - j, T(0));
}

// Channels-last RGB float input (the image), tasks (n, band) as fwd_nhwc_planes: each pixel row
// is split once into the three channels' phase rows (fill_rgb), each channel's output rows are
// computed as in fwd_nchw, and the three are interleaved back into pixels (interleave3) for
// vector stores. Same taps in the same order as NCHW: the output is bit-identical.
template <int K, int S>
void fwd_rgb(const DwShape& p, const DwArgs<float>& a, int64_t t0, int64_t t1) {
  using T = float;
  constexpr int V = Vec<T>::size();
  constexpr int NU = kNativeVec ? 8 : 4;
  const int64_t H = p.H, W = p.W, Ho = p.Ho, Wo = p.Wo, pt = p.pad_t, pl = p.pad_l;
  const NchwGeom<T, K, S> g(p);
  const int64_t slots = ring_rows(p);
  const int64_t L = g.L, cstride = slots * S * L;  // a channel's ring: slots of S phase rows
  Scratch<T> buf(3 * cstride + 3 * NU * V);
  Scratch<int64_t> tags(slots);
  // Channel 0's ring; a slot's rows of channels 1 and 2 lie cstride and 2 * cstride further.
  PlaneRing<T, K, S> ring{L, buf.data(), tags.data(), slots};
  const TapOffsets<K> toff(p, L);
  const ActV<T> act(p);
  T* obuf = buf.data() + 3 * cstride;  // a block's output, channel by channel
  Vec<T> wv[3][K * K], sc[3], sh[3];
  for (int c = 0; c < 3; ++c) {
    for (int i = 0; i < K * K; ++i) wv[c][i] = Vec<T>(a.w[c * K * K + i]);
    sc[c] = Vec<T>(a.scale[c]);
    sh[c] = Vec<T>(a.shift[c]);
  }
  const int64_t rs = 3 * W;
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t n = t / p.bands, band = t % p.bands;
    const T* xn = a.x + n * H * rs;
    T* yn = a.y + n * Ho * Wo * 3;
    ring.reset();
    const int64_t oyA = band * Ho / p.bands, oyB = (band + 1) * Ho / p.bands;
    for (int64_t oy = oyA; oy < oyB; ++oy) {
      int ky0, ky1;
      ky_range(oy, p, ky0, ky1);
      const T* rows[3][K];
      for (int ky = ky0; ky < ky1; ++ky) {
        const int64_t iy = oy * S - pt + p.D * ky;
        const T* r = ring.slot(iy, [&](T* slot) {
          fill_rgb<S>(xn + iy * rs, W, pl, L, slot, cstride, ring.ahead(xn, iy, H, rs));
        });
        for (int c = 0; c < 3; ++c) rows[c][ky] = r + c * cstride;
      }
      T* yrow = yn + oy * Wo * 3;
      RowPrefetch pf;
      prefetch_next_rows(pf, xn, oy, oyB, p, rs, kFwdPrefetchRows);
      Vec<T> acc[NU];
      for_row_blocks<NU, V>(
          Wo, pf,
          [&](int64_t ox) {
            for (int c = 0; c < 3; ++c) {
              conv_block<T, K, S, NU>(rows[c], ky0, ky1, wv[c], L, ox, acc, toff.get);
              DASP_UNROLL
              for (int u = 0; u < NU; ++u)
                bn_act(acc[u], sc[c], sh[c], act).store(obuf + c * NU * V + u * V);
            }
            for (int u = 0; u < NU; ++u) {
              const T* o = obuf + u * V;
              const Vec<T> r = Vec<T>::loadu(o), gr = Vec<T>::loadu(o + NU * V),
                           b = Vec<T>::loadu(o + 2 * NU * V);
              T* dst = yrow + 3 * (ox + u * V);
              put(interleave3<0>(r, gr, b), dst, V, p.stream);
              put(interleave3<1>(r, gr, b), dst + V, V, p.stream);
              put(interleave3<2>(r, gr, b), dst + 2 * V, V, p.stream);
            }
          },
          [&](int64_t ox) {
            for (int c = 0; c < 3; ++c) {
              conv_block<T, K, S, 1>(rows[c], ky0, ky1, wv[c], L, ox, acc, toff.get);
              bn_act(acc[0], sc[c], sh[c], act).store(obuf + c * V);
            }
            const int64_t m = imin(V, Wo - ox);
            for (int64_t i = 0; i < m; ++i)
              for (int c = 0; c < 3; ++c) yrow[3 * (ox + i) + c] = obuf[c * V + i];
          });
    }
  }
  stream_fence();
}

template <typename T, int K, int S>
void fwd_nhwc_planes(const DwShape& p, const DwArgs<T>& a, int64_t t0, int64_t t1) {
  if constexpr (kHaveEvery3 && std::is_same_v<T, float>) {
    if (p.C == 3) return fwd_rgb<K, S>(p, a, t0, t1);
  }
  fwd_nchw<T, K, S, true>(p, a, t0, t1);
}

}  // namespace dw
}  // namespace dasp_kernels::cpu::DASP_ISA

// The backward of both layouts and the NHWC forward, in two more files.
#include "dwconv_bwd_kernel.h"
#include "dwconv_nhwc_kernel.h"
#include "bf16_io.h"
#include "dwconv_nhwc_fwd.h"
