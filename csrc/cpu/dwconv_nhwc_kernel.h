// Depthwise conv + BN + activation, channels-last: forward and backward, vectorised across channels
// (see dwconv_bn_relu_kernel.h for the scheme).
// Included by dwconv_bn_relu_kernel.h, once per instruction set; hence no include guard.

namespace dasp_kernels::cpu::DASP_ISA {
namespace dw {

// y (or the pre-activation acc) of PX pixels ox, ox+1, ... for channels [c, c + CV*V), the last
// vector holding only `cl` channels when PARTIAL. Taps kx in [kx0, kx1) for every pixel; iy0:
// the input row of tap ky = 0.
template <typename T, int PX, int CV, bool PARTIAL>
inline void nhwc_taps(const T* xn, const T* wt, const DwShape& p, int64_t iy0, int ky0, int ky1,
                      int kx0, int kx1, int64_t ox, int64_t c, int64_t cl,
                      Vec<T> (&acc)[PX][CV]) {
  constexpr int V = Vec<T>::size();
  const int64_t W = p.W, C = p.C, K = p.K, S = p.S, D = p.D;
  for (int px = 0; px < PX; ++px)
    for (int v = 0; v < CV; ++v) acc[px][v] = Vec<T>(T(0));
  for (int ky = ky0; ky < ky1; ++ky) {
    const T* xr = xn + (iy0 + D * ky) * W * C + c;
    const T* wr = wt + ky * K * C + c;
    for (int kx = kx0; kx < kx1; ++kx) {
      Vec<T> wv[CV];
      DASP_UNROLL
      for (int v = 0; v < CV; ++v)
        wv[v] = (PARTIAL && v == CV - 1) ? Vec<T>::loadu(wr + kx * C + v * V, cl)
                                         : Vec<T>::loadu(wr + kx * C + v * V);
      const T* xs = xr + ((ox * S) - p.pad_l + D * kx) * C;
      DASP_UNROLL
      for (int px = 0; px < PX; ++px) {
        DASP_UNROLL
        for (int v = 0; v < CV; ++v) {
          const T* src = xs + px * S * C + v * V;
          const Vec<T> xv = (PARTIAL && v == CV - 1) ? Vec<T>::loadu(src, cl) : Vec<T>::loadu(src);
          acc[px][v] = at::vec::fmadd(xv, wv[v], acc[px][v]);
        }
      }
    }
  }
}

// The output pixels [oxL, oxR) of a row whose taps all lie inside the input row.
struct InnerCols {
  int64_t oxL, oxR;
  explicit InnerCols(const DwShape& p) {
    oxL = imin(p.Wo, ceil_div(p.pad_l, p.S));
    oxR = iclamp(floor_div(p.W - 1 + p.pad_l - p.D * (p.K - 1), p.S) + 1, oxL, p.Wo);
  }
};

// Calls f(ox, npix_tag, kx0, kx1) over the pixels of an output row: border pixels one by one
// with their clipped tap range (taps kx with 0 <= ox*S - pad_l + D*kx < W), interior pixels in
// blocks of 4 with all K taps.
template <typename F>
inline void nhwc_row_pixels(const DwShape& p, F&& f) {
  const int64_t Wo = p.Wo, W = p.W, K = p.K, S = p.S, D = p.D;
  const InnerCols in(p);
  const int64_t oxL = in.oxL, oxR = in.oxR;
  auto border = [&](int64_t ox) {
    const int64_t ix0 = ox * S - p.pad_l;
    const int kx0 = static_cast<int>(imin(K, imax(0, ceil_div(-ix0, D))));
    const int kx1 = static_cast<int>(imax(kx0, imin(K, floor_div(W - 1 - ix0, D) + 1)));
    f(ox, std::integral_constant<int, 1>{}, kx0, kx1);
  };
  for (int64_t ox = 0; ox < oxL; ++ox) border(ox);
  int64_t ox = oxL;
  for (; ox + 4 <= oxR; ox += 4) f(ox, std::integral_constant<int, 4>{}, 0, static_cast<int>(K));
  for (; ox < oxR; ++ox) f(ox, std::integral_constant<int, 1>{}, 0, static_cast<int>(K));
  for (ox = oxR; ox < Wo; ++ox) border(ox);
}

// Runs g(c, cv_tag, partial_tag, cl) over channel chunks of CV vectors, then 1, then a partial
// one.
template <typename T, int CV, typename G>
inline void channel_chunks_of(int64_t C, G&& g) {
  constexpr int V = Vec<T>::size();
  int64_t c = 0;
  if constexpr (CV > 1)
    for (; c + CV * V <= C; c += CV * V)
      g(c, std::integral_constant<int, CV>{}, std::false_type{}, int64_t(V));
  for (; c + V <= C; c += V) g(c, std::integral_constant<int, 1>{}, std::false_type{}, int64_t(V));
  if (c < C) g(c, std::integral_constant<int, 1>{}, std::true_type{}, C - c);
}

// Chunks of 2 vectors: those of the tap-by-tap kernels (nhwc_taps) and the backward.
template <typename T, typename G>
inline void channel_chunks(int64_t C, G&& g) {
  channel_chunks_of<T, 2>(C, std::forward<G>(g));
}

// Prefetches a few rows (NHWC rows of one image: long contiguous streams) a fixed distance ahead
// of the pixel being computed. The hardware prefetcher alone left the loads waiting on memory.
struct RowsAhead {
  static constexpr int kMax = 8;
  const char* row[kMax];
  int n = 0;
  int64_t bytes = 0, off = 0;

  void reset(int64_t row_bytes) {
    n = 0;
    off = 0;
    bytes = row_bytes;
  }
  void add(const void* p) {
    if (n < kMax) row[n++] = static_cast<const char*>(p);
  }
  void upto(int64_t target) {
    target = imin(bytes, target);
    for (; off < target; off += 64)
      for (int i = 0; i < n; ++i) DASP_PREFETCH_L2(row[i] + off);
  }
};

// Pixels of input prefetched ahead of the one being read.
constexpr int64_t kPixelsAhead = 16;

// The input rows output row oy reads that the previous output row did not (with dilation: all of
// them, the previous row's being other rows).
inline void add_new_rows(RowsAhead& ra, const char* xn, int64_t row_bytes, int64_t oy, int64_t oyA,
                         int ky0, int ky1, const DwShape& p) {
  const int first = oy == oyA || p.D > 1 ? ky0 : static_cast<int>(imax(ky0, p.K - p.S));
  for (int ky = first; ky < ky1; ++ky) ra.add(xn + (oy * p.S - p.pad_t + p.D * ky) * row_bytes);
}

// Tasks (n, band). A band runs in groups of p.cgroup channels (0: all at once), group by group:
// the input rows that a group's output rows read then stay in L1 from one pixel block and one
// output row to the next, where whole pixel rows of many channels would not. Calls
// row(xn, yrow, g0, g1, oy, ky0, ky1, ra) for each output row oy of channels [g0, g1), xn the
// image's input, yrow the output row, ra the input rows prefetched ahead; both forwards use it.
template <typename T, typename X, typename Row>
void nhwc_fwd_rows(const DwShape& p, const DwArgs<T, X>& a, int64_t t0, int64_t t1, Row&& row) {
  const int64_t C = p.C, H = p.H, W = p.W, Ho = p.Ho, Wo = p.Wo;
  const int64_t G = p.cgroup > 0 ? p.cgroup : C;
  const int64_t pix_bytes = C * static_cast<int64_t>(sizeof(X));
  for (int64_t task = t0; task < t1; ++task) {
    const int64_t n = task / p.bands, band = task % p.bands;
    const X* xn = a.x + n * H * W * C;
    X* yn = a.y + n * Ho * Wo * C;
    const int64_t oyA = band * Ho / p.bands, oyB = (band + 1) * Ho / p.bands;
    for (int64_t g0 = 0; g0 < C; g0 += G)
      for (int64_t oy = oyA; oy < oyB; ++oy) {
        int ky0, ky1;
        ky_range(oy, p, ky0, ky1);
        // Whole pixel rows prefetched ahead: only when a group is all the channels.
        RowsAhead ra;
        ra.reset(G == C ? W * pix_bytes : 0);
        add_new_rows(ra, reinterpret_cast<const char*>(xn), W * pix_bytes, oy, oyA, ky0, ky1, p);
        row(xn, yn + oy * Wo * C, g0, imin(g0 + G, C), oy, ky0, ky1, ra);
      }
  }
  stream_fence();
}

// The tap-by-tap forward: any K, stride and dilation.
template <typename T>
void fwd_nhwc_generic(const DwShape& p, const DwArgs<T>& a, int64_t t0, int64_t t1) {
  constexpr int V = Vec<T>::size();
  const int64_t C = p.C, K = p.K, S = p.S, pad = p.pad_l;
  const int64_t pix_bytes = C * static_cast<int64_t>(sizeof(T));
  const ActV<T> act(p);
  nhwc_fwd_rows<T>(p, a, t0, t1, [&](const T* xn, T* yrow, int64_t g0, int64_t g1, int64_t oy,
                                     int ky0, int ky1, RowsAhead& ra) {
    const int64_t iy0 = oy * S - p.pad_t;
    nhwc_row_pixels(p, [&](int64_t ox, auto px_tag, int kx0, int kx1) {
      constexpr int PX = decltype(px_tag)::value;
      ra.upto(((ox + PX + kPixelsAhead) * S - pad + p.D * (K - 1) + 1) * pix_bytes);
      channel_chunks<T>(g1 - g0, [&](int64_t cg, auto cv_tag, auto part_tag, int64_t cl) {
        constexpr int CV = decltype(cv_tag)::value;
        constexpr bool PART = decltype(part_tag)::value;
        const int64_t c = g0 + cg;
        Vec<T> acc[PX][CV];
        nhwc_taps<T, PX, CV, PART>(xn, a.w, p, iy0, ky0, ky1, kx0, kx1, ox, c, cl, acc);
        for (int v = 0; v < CV; ++v) {
          const bool part = PART && v == CV - 1;
          const int64_t cc = c + v * V, m = part ? cl : V;
          const Vec<T> sc = load_n(a.scale + cc, m), sh = load_n(a.shift + cc, m);
          for (int px = 0; px < PX; ++px)
            put(bn_act(acc[px][v], sc, sh, act), yrow + (ox + px) * C + cc, m, p.stream);
        }
      });
    });
  });
}

// The forward's entry (dwconv_nhwc_fwd.h).
template <typename T>
void fwd_nhwc(const DwShape& p, const DwArgs<T>& a, int64_t t0, int64_t t1);

// NCHW input with small planes, by blocks of p.cblock channels: a task (n, channel block, band)
// moves the input rows its band reads into a channels-last tile (at::vec::transpose_mxn), runs
// fwd_nhwc on the tile and moves the output back. Plane by plane (fwd_nchw), a small plane's rows
// fill few lanes of a row vector (a 7-pixel row in 16 lanes) and every plane pays the set-up of
// its ring for a few dozen pixels; channel vectors are full, and the tile stays in L2.
template <typename T>
void fwd_nchw_blocked(const DwShape& p, const DwArgs<T>& a, int64_t t0, int64_t t1) {
  const int64_t C = p.C, H = p.H, W = p.W, Ho = p.Ho, Wo = p.Wo, S = p.S, CB = p.cblock;
  const int64_t KK = p.K * p.K, blocks = ceil_div(C, CB), span = p.D * (p.K - 1);
  const int64_t band_rows = ceil_div(Ho, p.bands);  // output rows of the thickest band
  const int64_t in_rows = imin(H, (band_rows - 1) * S + span + 1);
  Scratch<T> buf((in_rows * W + band_rows * Wo + KK) * CB);
  T* xs = buf.data();             // [in_rows][W][cb]
  T* ys = xs + in_rows * W * CB;  // [band_rows][Wo][cb]
  T* wt = ys + band_rows * Wo * CB;  // [K*K][cb]
  int64_t cur = -1;  // the channel block whose weights are in wt
  for (int64_t task = t0; task < t1; ++task) {
    const int64_t band = task % p.bands, blk = (task / p.bands) % blocks;
    const int64_t n = task / (p.bands * blocks), c0 = blk * CB, cb = imin(CB, C - c0);
    if (blk != cur) {
      for (int64_t c = 0; c < cb; ++c)
        for (int64_t i = 0; i < KK; ++i) wt[i * cb + c] = a.w[(c0 + c) * KK + i];
      cur = blk;
    }
    const int64_t oyA = band * Ho / p.bands, oyB = (band + 1) * Ho / p.bands;
    const int64_t iyA = iclamp(oyA * S - p.pad_t, 0, H);
    const int64_t iyB = iclamp((oyB - 1) * S - p.pad_t + span + 1, iyA, H);
    const T* xb = a.x + (n * C + c0) * H * W;
    at::vec::transpose_mxn<T>(xb + iyA * W, H * W, xs, cb, static_cast<int>(cb),
                              static_cast<int>((iyB - iyA) * W));
    // The tile as an image of its own: rows [iyA, iyB) of the input, rows [oyA, oyB) of the
    // output, the top padding moved by the rows cut off.
    DwShape q = p;
    q.N = 1;
    q.C = cb;
    q.H = iyB - iyA;
    q.Ho = oyB - oyA;
    q.pad_t = p.pad_t + iyA - oyA * S;
    q.bands = 1;
    q.stream = false;
    q.cblock = 0;
    q.cgroup = 0;
    DwArgs<T> b{};
    b.x = xs;
    b.w = wt;
    b.scale = a.scale + c0;
    b.shift = a.shift + c0;
    b.y = ys;
    fwd_nhwc<T>(q, b, 0, 1);
    at::vec::transpose_mxn<T>(ys, cb, a.y + (n * C + c0) * Ho * Wo + oyA * Wo, Ho * Wo,
                              static_cast<int>((oyB - oyA) * Wo), static_cast<int>(cb));
  }
}

// What the helpers of one NHWC backward task (image, band) share. lp: zero gy pixels left of
// ox = 0 in a ring row (D*(K-1) / S); LGp: gy pixels per ring row.
template <typename T, int K>
struct NhwcBwd {
  const DwShape& p;
  const DwArgs<T>& a;
  const BwdBand& bb;
  const T* xn;  // the image's input, grad_out and grad_x
  const T* gn;
  T* gxn;
  T* gring;  // gy_ring_rows rows of gy = dL/d(conv), row oy in slot oy % slots
  int64_t LGp, lp, slots;
  T* gw;  // this task's partial sums: [K*K][C], [C], [C]
  T* gsc;
  T* gsh;
  const ActV<T>& act;
  T* gy_row(int64_t oy) const { return gring + ((oy % slots) * LGp + lp) * p.C; }
};

// grad_x of PX pixels ix, ix + S, ... of row iy (they share their taps: the kx with
// ix + pad - D*kx a multiple of S), from the n_ky gy rows gys that read the row with taps kys.
template <typename T, int K, int PX>
void gx_pixels_nhwc(const NhwcBwd<T, K>& b, const T* const* gys, const int* kys, int n_ky,
                    int64_t ix, T* gxrow) {
  constexpr int V = Vec<T>::size();
  const int64_t C = b.p.C, S = b.p.S, pad = b.p.pad_l, D = b.p.D;
  // Without dilation the taps are kxs, kxs + S, ...; with it, those of the right phase.
  const int kxs = D == 1 ? static_cast<int>((ix + pad) % S) : 0;
  const int kstep = D == 1 ? static_cast<int>(S) : 1;
  channel_chunks<T>(C, [&](int64_t c, auto cv_tag, auto part_tag, int64_t cl) {
    constexpr int CV = decltype(cv_tag)::value;
    constexpr bool PART = decltype(part_tag)::value;
    Vec<T> acc[PX][CV];
    for (int px = 0; px < PX; ++px)
      for (int v = 0; v < CV; ++v) acc[px][v] = Vec<T>(T(0));
    for (int i = 0; i < n_ky; ++i) {
      const T* wr = b.a.w + kys[i] * K * C + c;
      for (int kx = kxs; kx < K; kx += kstep) {
        if (D > 1 && (ix + pad - D * kx) % S != 0) continue;
        Vec<T> wv[CV];
        for (int v = 0; v < CV; ++v)
          wv[v] = (PART && v == CV - 1) ? Vec<T>::loadu(wr + kx * C + v * V, cl)
                                        : Vec<T>::loadu(wr + kx * C + v * V);
        const T* gr = gys[i] + ((ix + pad - D * kx) / S) * C + c;
        DASP_UNROLL
        for (int px = 0; px < PX; ++px) {
          DASP_UNROLL
          for (int v = 0; v < CV; ++v) {
            const T* src = gr + px * C + v * V;
            const Vec<T> gv = (PART && v == CV - 1) ? Vec<T>::loadu(src, cl) : Vec<T>::loadu(src);
            acc[px][v] = at::vec::fmadd(gv, wv[v], acc[px][v]);
          }
        }
      }
    }
    for (int px = 0; px < PX; ++px)
      for (int v = 0; v < CV; ++v)
        put(acc[px][v], gxrow + (ix + px * S) * C + c + v * V, (PART && v == CV - 1) ? cl : V,
            b.p.stream);
  });
}

// grad_x row iy, once every gy row that reads it is in the ring: pixels by phase r = ix mod S.
template <typename T, int K>
void gx_row_nhwc(const NhwcBwd<T, K>& b, int64_t iy) {
  const T* gys[K] = {};
  int kys[K];
  const int n_ky = rows_reading<T, K>(iy, b.bb, [&](int64_t oy) { return b.gy_row(oy); }, gys, kys);
  const int64_t W = b.p.W, S = b.p.S;
  T* gxrow = b.gxn + iy * W * b.p.C;
  for (int64_t r = 0; r < S; ++r) {
    int64_t ix = r;
    for (; ix + 3 * S < W; ix += 4 * S) gx_pixels_nhwc<T, K, 4>(b, gys, kys, n_ky, ix, gxrow);
    for (; ix < W; ix += S) gx_pixels_nhwc<T, K, 1>(b, gys, kys, n_ky, ix, gxrow);
  }
}

// Output row oy: recomputes y, writes gy into the ring and, for a row the band owns, adds to the
// scale and shift sums.
template <typename T, int K>
void gy_row_nhwc(const NhwcBwd<T, K>& b, int64_t oy, int ky0, int ky1, bool own) {
  constexpr int V = Vec<T>::size();
  const DwShape& p = b.p;
  const int64_t C = p.C, W = p.W, Wo = p.Wo, S = p.S, pad = p.pad_l;
  const int64_t iy0 = oy * S - p.pad_t;
  const T* grow = b.gn + oy * Wo * C;
  T* G = b.gy_row(oy);
  const int64_t pix_bytes = C * static_cast<int64_t>(sizeof(T));
  RowsAhead ra, ga;
  ra.reset(W * pix_bytes);
  add_new_rows(ra, reinterpret_cast<const char*>(b.xn), W * pix_bytes, oy, b.bb.oyH, ky0, ky1, p);
  ga.reset(Wo * pix_bytes);
  ga.add(grow);
  nhwc_row_pixels(p, [&](int64_t ox, auto px_tag, int kx0, int kx1) {
    constexpr int PX = decltype(px_tag)::value;
    ra.upto(((ox + PX + kPixelsAhead) * S - pad + p.D * (K - 1) + 1) * pix_bytes);
    ga.upto((ox + PX + kPixelsAhead) * pix_bytes);
    channel_chunks<T>(C, [&](int64_t c, auto cv_tag, auto part_tag, int64_t cl) {
      constexpr int CV = decltype(cv_tag)::value;
      constexpr bool PART = decltype(part_tag)::value;
      Vec<T> acc[PX][CV];
      nhwc_taps<T, PX, CV, PART>(b.xn, b.a.w, p, iy0, ky0, ky1, kx0, kx1, ox, c, cl, acc);
      for (int v = 0; v < CV; ++v) {
        const int64_t cnt = (PART && v == CV - 1) ? cl : V;
        const int64_t cc = c + v * V;
        const Vec<T> sc = load_n<T>(b.a.scale + cc, cnt), sh = load_n<T>(b.a.shift + cc, cnt);
        Vec<T> s = load_n<T>(b.gsc + cc, cnt), h = load_n<T>(b.gsh + cc, cnt);
        for (int px = 0; px < PX; ++px) {
          const int64_t off = (ox + px) * C + cc;
          const Vec<T> gv =
              b.act.grad(load_n<T>(grow + off, cnt), at::vec::fmadd(acc[px][v], sc, sh));
          (gv * sc).store(G + off, cnt);
          s = at::vec::fmadd(gv, acc[px][v], s);
          h = h + gv;
        }
        if (own) {
          s.store(b.gsc + cc, cnt);
          h.store(b.gsh + cc, cnt);
        }
      }
    });
  });
}

// gw[ky][kx][c] += sum_ox gy[ox][c] * x[iy][ox*S - pad + kx][c] for the taps of output row oy.
template <typename T, int K>
void gw_row_nhwc(const NhwcBwd<T, K>& b, int64_t oy, int ky0, int ky1) {
  constexpr int V = Vec<T>::size();
  const int64_t C = b.p.C, W = b.p.W, Wo = b.p.Wo, S = b.p.S, pad = b.p.pad_l, D = b.p.D;
  const T* G = b.gy_row(oy);
  const Vec<T> zero(T(0));
  const InnerCols in(b.p);
  const int64_t oxL = in.oxL, oxR = in.oxR;
  for (int ky = ky0; ky < ky1; ++ky) {
    const T* xr = b.xn + (oy * S - b.p.pad_t + D * ky) * W * C;
    for (int64_t c = 0; c < C; c += V) {
      const int64_t cnt = imin(V, C - c);
      Vec<T> s[K];
      DASP_UNROLL
      for (int kx = 0; kx < K; ++kx) s[kx] = zero;
      auto edge = [&](int64_t ox) {
        const Vec<T> gv = load_n<T>(G + ox * C + c, cnt);
        const int64_t ix0 = ox * S - pad;
        DASP_UNROLL
        for (int kx = 0; kx < K; ++kx) {
          const int64_t ix = ix0 + D * kx;
          if (ix < 0 || ix >= W) continue;
          s[kx] = at::vec::fmadd(gv, load_n<T>(xr + ix * C + c, cnt), s[kx]);
        }
      };
      for (int64_t ox = 0; ox < oxL; ++ox) edge(ox);
      if (cnt == V) {
        for (int64_t ox = oxL; ox < oxR; ++ox) {
          const Vec<T> gv = Vec<T>::loadu(G + ox * C + c);
          const T* xs = xr + (ox * S - pad) * C + c;
          DASP_UNROLL
          for (int kx = 0; kx < K; ++kx)
            s[kx] = at::vec::fmadd(gv, Vec<T>::loadu(xs + D * kx * C), s[kx]);
        }
      } else {
        for (int64_t ox = oxL; ox < oxR; ++ox) edge(ox);
      }
      for (int64_t ox = oxR; ox < Wo; ++ox) edge(ox);
      T* gwr = b.gw + ky * K * C + c;
      DASP_UNROLL
      for (int kx = 0; kx < K; ++kx)
        (load_n<T>(gwr + kx * C, cnt) + s[kx]).store(gwr + kx * C, cnt);
    }
  }
}

// Tasks (image, band).
template <typename T, int K>
void bwd_nhwc(const DwShape& p, const DwArgs<T>& a, int64_t t0, int64_t t1) {
  const int64_t C = p.C, H = p.H, W = p.W, Ho = p.Ho, Wo = p.Wo, S = p.S;
  const int64_t lp = p.D * (K - 1) / S;
  const int64_t LGp = lp + (W - 1 + p.pad_l) / S + 2;
  const int64_t slots = gy_ring_rows(p);
  Scratch<T> gring(slots * LGp * C);
  const ActV<T> act(p);
  for (int64_t task = t0; task < t1; ++task) {
    const int64_t n = task / p.bands, band = task % p.bands;
    const BwdBand bb(p, band);
    const NhwcBwd<T, K> b{p, a, bb, a.x + n * H * W * C, a.gout + n * Ho * Wo * C,
                          a.gx + n * H * W * C, gring.data(), LGp, lp, slots,
                          a.gw_part + task * K * K * C, a.gscale_part + task * C,
                          a.gshift_part + task * C, act};
    fill(b.gw, K * K * C, T(0));
    fill(b.gsc, C, T(0));
    fill(b.gsh, C, T(0));
    fill(gring.data(), slots * LGp * C, T(0));
    int64_t next_iy = bb.iyA;
    for (int64_t oy = bb.oyH; oy < bb.oyB; ++oy) {
      int ky0, ky1;
      ky_range(oy, p, ky0, ky1);
      const bool own = oy >= bb.oyA;
      gy_row_nhwc<T, K>(b, oy, ky0, ky1, own);
      if (own) gw_row_nhwc<T, K>(b, oy, ky0, ky1);
      while (next_iy < bb.iyB && bb.last(next_iy) <= oy) gx_row_nhwc<T, K>(b, next_iy++);
    }
    while (next_iy < bb.iyB) gx_row_nhwc<T, K>(b, next_iy++);
  }
  stream_fence();
}

}  // namespace dw
}  // namespace dasp_kernels::cpu::DASP_ISA
