// Depthwise conv + BN + activation backward: the band bookkeeping both layouts share, and the NCHW
// backward (see dwconv_bn_relu_kernel.h for the scheme).
// Included by dwconv_bn_relu_kernel.h, once per instruction set; hence no include guard.

namespace dasp_kernels::cpu::DASP_ISA {
namespace dw {

// The rows one backward band covers. It owns output rows [oyA, oyB) (their weight, scale and shift
// gradients) and writes grad_x rows [iyA, iyB): row iy belongs to the band holding last(iy), the
// last output row that reads it. It recomputes gy from oyH, the first output row those need.
struct BwdBand {
  int64_t Ho, S, pad, D, oyA, oyB, iyA, iyB, oyH;  // pad: the top padding
  BwdBand(const DwShape& p, int64_t band) : Ho(p.Ho), S(p.S), pad(p.pad_t), D(p.D) {
    oyA = band * p.Ho / p.bands;
    oyB = (band + 1) * p.Ho / p.bands;
    iyA = band == 0 ? 0 : iclamp(oyA * S - pad, 0, p.H);
    iyB = band == p.bands - 1 ? p.H : iclamp(oyB * S - pad, 0, p.H);
    oyH = iyA < iyB ? imax(0, ceil_div(iyA + pad - D * (p.K - 1), S)) : oyA;
  }
  int64_t last(int64_t iy) const { return imin(Ho - 1, (iy + pad) / S); }
};

// Slots of a backward task's gy ring: a grad_x row, written once the last output row reading it
// is in, reads gy rows back to D*(K-1)/S before that one.
inline int64_t gy_ring_rows(const DwShape& p) { return imax(p.K, p.D * (p.K - 1) / p.S + 1); }

// The output rows whose tap ky reads input row iy: returns how many, with their taps kys[] and
// their gy rows gys[] = gy_row(oy).
template <typename T, int K, typename GyRow>
inline int rows_reading(int64_t iy, const BwdBand& b, GyRow&& gy_row, const T** gys, int* kys) {
  int n = 0;
  for (int ky = 0; ky < K; ++ky) {
    const int64_t t = iy + b.pad - b.D * ky;
    if (t < 0) break;
    if (t % b.S) continue;
    const int64_t oy = t / b.S;
    if (oy >= b.Ho) continue;
    gys[n] = gy_row(oy);
    kys[n++] = ky;
  }
  return n;
}

// gw[r*K + kx] += sum_{ox < Wo} gy[ox] * phase row r at ox + kx/S (TapOffsets toff: at toff[kx]),
// for NR input rows at once (NR*K independent accumulators).
template <typename T, int K, int S, int NR>
inline void gw_rows(const T* const* rows, const T* G, int64_t Wo, int64_t L, Vec<T>* gw,
                    const int64_t* toff) {
  constexpr int V = Vec<T>::size();
  const Vec<T> zero(T(0));
  Vec<T> s[NR][K];
  DASP_UNROLL
  for (int r = 0; r < NR; ++r) {
    DASP_UNROLL
    for (int kx = 0; kx < K; ++kx) s[r][kx] = zero;
  }
  const T* ph[NR][S];
  for (int r = 0; r < NR; ++r)
    for (int q = 0; q < S; ++q) ph[r][q] = rows[r] + q * L;
  // Where tap kx reads, from rows[r].
  auto tap = [&](int r, int kx) { return toff ? rows[r] + toff[kx] : ph[r][kx % S] + kx / S; };
  int64_t o = 0;
  for (; o + V <= Wo; o += V) {
    const Vec<T> gv = Vec<T>::loadu(G + o);
    DASP_UNROLL
    for (int r = 0; r < NR; ++r) {
      DASP_UNROLL
      for (int kx = 0; kx < K; ++kx)
        s[r][kx] = at::vec::fmadd(gv, Vec<T>::loadu(tap(r, kx) + o), s[r][kx]);
    }
  }
  if (o < Wo) {
    // Lanes past Wo hold real input columns: zero them so inf/NaN there cannot leak.
    const int64_t cnt = Wo - o;
    const Vec<T> gv = Vec<T>::loadu(G + o);
    for (int r = 0; r < NR; ++r)
      for (int kx = 0; kx < K; ++kx) {
        const Vec<T> xv = Vec<T>::set(zero, Vec<T>::loadu(tap(r, kx) + o), cnt);
        s[r][kx] = at::vec::fmadd(gv, xv, s[r][kx]);
      }
  }
  for (int r = 0; r < NR; ++r)
    for (int kx = 0; kx < K; ++kx) gw[r * K + kx] = gw[r * K + kx] + s[r][kx];
}

// What the helpers of one NCHW backward task (plane, band) share. Names: lp, the gy columns left
// of position 0 that a tap reaches (D*(K-1) / S); Jv, the phase positions covering an input row
// rounded up to whole vectors; LG, the length of one gy ring row (lp zero columns, the row, room
// for the vector reads past it).
template <typename T, int K, int S>
struct NchwBwd {
  const DwShape& p;
  const BwdBand& bb;
  const Vec<T>* wv;  // the plane's weights, broadcast: wv[ky * K + kx]
  T* gring;          // gy_ring_rows rows of zero-padded gy = dL/d(conv), row oy in slot oy % slots
  int64_t LG, lp, Jv, slots;
  T* qrow;  // S = 2: the grad_x row with its phases interleaved, before the padding is cut
  T* gxp;   // grad_x of the plane
  const ActV<T>& act;
  const int64_t* toff;  // TapOffsets::get
  T* gy_row(int64_t oy) const { return gring + (oy % slots) * LG + lp; }
};

// The sums of one task: gw[ky * K + kx] and the scale and shift sums, each in two halves
// (alternate vectors, for two independent chains).
template <typename T, int K>
struct NchwBwdSums {
  Vec<T> gw[K * K];
  Vec<T> gs[2], gh[2];
};

// Stride 1: grad_x[ix] = sum_{ky, kx} w[ky][kx] * gy[ix + pad - kx] over the n output rows that
// read input row iy (gys, their taps kys), in blocks of NU vectors.
template <typename T, int K, int NU>
void gx_row_s1(const NchwBwd<T, K, 1>& b, const T* const* gys, const int* kys, int n, T* gxrow) {
  constexpr int V = Vec<T>::size();
  const int64_t W = b.p.W, pad = b.p.pad_l, D = b.p.D;
  const Vec<T> zero(T(0));
  auto block = [&](int64_t ix, Vec<T>* acc, auto nu_tag) {
    constexpr int nu = decltype(nu_tag)::value;
    for (int u = 0; u < nu; ++u) acc[u] = zero;
    for (int i = 0; i < n; ++i) {
      const T* gr = gys[i] + ix + pad;
      const Vec<T>* wr = b.wv + kys[i] * K;
      DASP_UNROLL
      for (int kx = 0; kx < K; ++kx) {
        DASP_UNROLL
        for (int u = 0; u < nu; ++u)
          acc[u] = at::vec::fmadd(Vec<T>::loadu(gr + u * V - D * kx), wr[kx], acc[u]);
      }
    }
  };
  Vec<T> acc[NU];
  int64_t ix = 0;
  for (; ix + NU * V <= W; ix += NU * V) {
    block(ix, acc, std::integral_constant<int, NU>{});
    for (int u = 0; u < NU; ++u) put(acc[u], gxrow + ix + u * V, V, b.p.stream);
  }
  for (; ix < W; ix += V) {
    block(ix, acc, std::integral_constant<int, 1>{});
    put(acc[0], gxrow + ix, imin(V, W - ix), b.p.stream);
  }
}

// Stride 2: phase r of the padded grad row, q = 2j + r, gets w[ky][kx] * gy[j - m] for the taps
// with D*kx = 2m + r; the two phases are interleaved into qrow, whose columns [pad, pad + W) are
// the grad_x row.
template <typename T, int K, int S>
void gx_row_s2(const NchwBwd<T, K, S>& b, const T* const* gys, const int* kys, int n, T* gxrow) {
  constexpr int V = Vec<T>::size();
  const Vec<T> zero(T(0));
  const int64_t D = b.p.D;
  auto block = [&](int64_t j, auto nj_tag) {
    constexpr int NJ = decltype(nj_tag)::value;
    Vec<T> a0[NJ], a1[NJ];
    DASP_UNROLL
    for (int u = 0; u < NJ; ++u) a0[u] = a1[u] = zero;
    for (int i = 0; i < n; ++i) {
      const T* gr = gys[i] + j;
      const Vec<T>* wr = b.wv + kys[i] * K;
      if (D == 1) {
        // Taps 2m and 2m + 1 share their gy vectors.
        DASP_UNROLL
        for (int m = 0; 2 * m < K; ++m) {
          DASP_UNROLL
          for (int u = 0; u < NJ; ++u) {
            const Vec<T> gv = Vec<T>::loadu(gr - m + u * V);
            a0[u] = at::vec::fmadd(gv, wr[2 * m], a0[u]);
            if (2 * m + 1 < K) a1[u] = at::vec::fmadd(gv, wr[2 * m + 1], a1[u]);
          }
        }
        continue;
      }
      DASP_UNROLL
      for (int kx = 0; kx < K; ++kx) {
        const T* src = gr - D * kx / 2;
        if ((D * kx) % 2) {
          DASP_UNROLL
          for (int u = 0; u < NJ; ++u)
            a1[u] = at::vec::fmadd(Vec<T>::loadu(src + u * V), wr[kx], a1[u]);
        } else {
          DASP_UNROLL
          for (int u = 0; u < NJ; ++u)
            a0[u] = at::vec::fmadd(Vec<T>::loadu(src + u * V), wr[kx], a0[u]);
        }
      }
    }
    DASP_UNROLL
    for (int u = 0; u < NJ; ++u) {
      auto lohi = at::vec::interleave2(a0[u], a1[u]);
      lohi.first.store(b.qrow + 2 * (j + u * V));
      lohi.second.store(b.qrow + 2 * (j + u * V) + V);
    }
  };
  int64_t j = 0;
  for (; j + 4 * V <= b.Jv; j += 4 * V) block(j, std::integral_constant<int, 4>{});
  for (; j < b.Jv; j += V) block(j, std::integral_constant<int, 1>{});
  copy_put(b.qrow + b.p.pad_l, b.p.W, gxrow, b.p.stream);
}

// grad_x row iy, once every gy row that reads it is in the ring.
template <typename T, int K, int S, int NU>
void gx_row_nchw(const NchwBwd<T, K, S>& b, int64_t iy) {
  const T* gys[K] = {};
  int kys[K];
  auto gy_row = [&](int64_t oy) { return b.gy_row(oy); };
  const int n = rows_reading<T, K>(iy, b.bb, gy_row, gys, kys);
  T* gxrow = b.gxp + iy * b.p.W;
  if constexpr (S == 1)
    gx_row_s1<T, K, NU>(b, gys, kys, n, gxrow);
  else
    gx_row_s2<T, K, S>(b, gys, kys, n, gxrow);
}

// Output row oy: recomputes y, writes gy into the ring and, for a row the band owns, adds to the
// sums (scale, shift, and the weights: KB kernel rows at a time, up to 12 accumulators).
template <typename T, int K, int S, int NU>
void gy_row_nchw(const NchwBwd<T, K, S>& b, const NchwGeom<T, K, S>& g, PlaneRing<T, K, S>& ring,
                 const T* xp, const T* gp, const Vec<T>& sc, const Vec<T>& sh, int64_t oy,
                 NchwBwdSums<T, K>& sums) {
  constexpr int V = Vec<T>::size();
  constexpr int KB = K * K <= 12 ? K : (12 / K > 1 ? 12 / K : 1);
  const DwShape& p = b.p;
  const int64_t H = p.H, W = p.W, Wo = p.Wo;
  const Vec<T> zero(T(0));
  int ky0, ky1;
  ky_range(oy, p, ky0, ky1);
  const T* rows[K];
  for (int ky = ky0; ky < ky1; ++ky)
    rows[ky] = ring.row(xp, oy * S - p.pad_t + p.D * ky, W, H, p.pad_l, W, 1);
  const bool own = oy >= b.bb.oyA;
  const T* grow = gp + oy * Wo;
  T* G = b.gy_row(oy);
  RowPrefetch pf;  // next output row's new input rows and its grad_out row
  prefetch_next_rows(pf, xp, oy, b.bb.oyB, p, W);
  if (oy + 1 < b.bb.oyB) pf.add(grow + Wo, Wo * static_cast<int64_t>(sizeof(T)));
  pf.plan(Wo / (NU * V) + 1);
  Vec<T> acc[NU];
  auto finish = [&](int64_t ox, const Vec<T>& accv, int h) {
    const int64_t cnt = imin(V, Wo - ox);
    // Lanes past Wo read real input columns: zero them so inf/NaN there cannot leak.
    const Vec<T> y = cnt < V ? Vec<T>::set(zero, accv, cnt) : accv;
    const Vec<T> gv = b.act.grad(load_n<T>(grow + ox, cnt), at::vec::fmadd(y, sc, sh));
    (gv * sc).store(G + ox, cnt);
    if (own) {
      sums.gs[h] = at::vec::fmadd(gv, y, sums.gs[h]);
      sums.gh[h] = sums.gh[h] + gv;
    }
  };
  int64_t ox = 0;
  for (; ox + NU * V <= Wo; ox += NU * V) {
    pf.step();
    conv_block<T, K, S, NU>(rows, ky0, ky1, b.wv, g.L, ox, acc, b.toff);
    DASP_UNROLL
    for (int u = 0; u < NU; ++u) finish(ox + u * V, acc[u], u & 1);
  }
  pf.rest();
  for (; ox < Wo; ox += V) {
    conv_block<T, K, S, 1>(rows, ky0, ky1, b.wv, g.L, ox, acc, b.toff);
    finish(ox, acc[0], 0);
  }
  if (!own) return;
  // gw[ky][kx] += sum_ox gy[ox] * xpad[S*ox + kx]
  int ky = ky0;
  for (; ky + KB <= ky1; ky += KB)
    gw_rows<T, K, S, KB>(rows + ky, G, Wo, g.L, sums.gw + ky * K, b.toff);
  for (; ky < ky1; ++ky) gw_rows<T, K, S, 1>(rows + ky, G, Wo, g.L, sums.gw + ky * K, b.toff);
}

// Tasks (plane, band). NU: output vectors per register block.
template <typename T, int K, int S>
void bwd_nchw(const DwShape& p, const DwArgs<T>& a, int64_t t0, int64_t t1) {
  constexpr int V = Vec<T>::size();
  constexpr int NU = kNativeVec ? 8 : 4;
  const int64_t lp = p.D * (K - 1) / S;
  const int64_t H = p.H, W = p.W, Ho = p.Ho, Wo = p.Wo, pad = p.pad_l;
  const NchwGeom<T, K, S> g(p);
  const int64_t J = (pad + W - 1) / S + 1;  // phase positions j covering the input row
  const int64_t Jv = round_up(J, V);
  const int64_t LG = round_up(lp + pad + round_up(W, V) + Jv + V, V);
  const int64_t slots = ring_rows(p), gslots = gy_ring_rows(p);
  Scratch<T> buf(slots * S * g.L + gslots * LG + S * Jv);
  Scratch<int64_t> tags(slots);
  PlaneRing<T, K, S> ring{g.L, buf.data(), tags.data(), slots};
  T* gring = buf.data() + slots * S * g.L;
  T* qrow = gring + gslots * LG;
  const TapOffsets<K> toff(p, g.L);
  const ActV<T> act(p);
  Vec<T> wv[K * K];
  NchwBwdSums<T, K> sums;
  int64_t cur = -1;
  const Vec<T> zero(T(0));
  for (int64_t task = t0; task < t1; ++task) {
    const int64_t plane = task / p.bands, band = task % p.bands;
    const int64_t c = plane % p.C;
    if (plane != cur) {
      ring.reset();
      cur = plane;
      for (int i = 0; i < K * K; ++i) wv[i] = Vec<T>(a.w[c * K * K + i]);
    }
    // A band starts from scratch: the gy ring is re-made from its halo rows.
    fill(gring, gslots * LG, T(0));
    for (int i = 0; i < K * K; ++i) sums.gw[i] = zero;
    sums.gs[0] = sums.gs[1] = sums.gh[0] = sums.gh[1] = zero;
    const Vec<T> sc(a.scale[c]), sh(a.shift[c]);
    const T* xp = a.x + plane * H * W;
    const T* gp = a.gout + plane * Ho * Wo;
    const BwdBand bb(p, band);
    const NchwBwd<T, K, S> b{p, bb, wv, gring, LG, lp, Jv, gslots, qrow, a.gx + plane * H * W,
                             act, toff.get};
    int64_t next_iy = bb.iyA;
    for (int64_t oy = bb.oyH; oy < bb.oyB; ++oy) {
      gy_row_nchw<T, K, S, NU>(b, g, ring, xp, gp, sc, sh, oy, sums);
      while (next_iy < bb.iyB && bb.last(next_iy) <= oy) gx_row_nchw<T, K, S, NU>(b, next_iy++);
    }
    while (next_iy < bb.iyB) gx_row_nchw<T, K, S, NU>(b, next_iy++);
    for (int i = 0; i < K * K; ++i) a.gw_part[task * K * K + i] = hsum(sums.gw[i]);
    a.gscale_part[task] = hsum(sums.gs[0] + sums.gs[1]);
    a.gshift_part[task] = hsum(sums.gh[0] + sums.gh[1]);
  }
  stream_fence();
}

}  // namespace dw
}  // namespace dasp_kernels::cpu::DASP_ISA
