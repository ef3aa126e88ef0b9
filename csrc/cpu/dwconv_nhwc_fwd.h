// Depthwise conv + BN + activation forward, channels-last, vectorised across channels: the
// register-blocked kernel (fwd_nhwc) for K and stride known at compile time.
//
// Per output row, channel chunk of CV vectors and block of PX output pixels, input row by input
// row (ky): the K weight vectors of the row are loaded once into registers, then the row's input
// pixels are swept once, each loaded vector FMA'd into every output pixel of the block that reads
// it. Loads per FMA drop from ~1.25 (a weight and an input per FMA, nhwc_taps) to ~0.5. Each
// output still gets its taps in (ky, kx) order starting from zero, then * scale + shift, then the
// activation: the same sums as nhwc_taps, bit for bit.
// Included by dwconv_bn_relu_kernel.h after dwconv_nhwc_kernel.h, once per instruction set;
// hence no include guard.

namespace dasp_kernels::cpu::DASP_ISA {
namespace dw {

// Vector registers of this build: the tile sizes below are chosen to fit them (the portable x86
// build's Vectorized is two SSE registers).
#if defined(CPU_CAPABILITY_AVX512)
constexpr int kVecRegs = 32;
#elif defined(CPU_CAPABILITY_AVX2) || defined(__aarch64__)
constexpr int kVecRegs = 16;
#else
constexpr int kVecRegs = 8;
#endif

// Channel vectors per chunk and output pixels per block for kernel size K: K*CV weights, PX*CV
// accumulators and CV input vectors in registers, two spare.
template <int K>
struct NhwcTile {
  static constexpr int CV = kVecRegs >= 32 && K <= 5 ? 2 : 1;
  static constexpr int fit = (kVecRegs - 2 - CV * (K + 1)) / CV;
  static constexpr int PX = fit > 8 ? 8 : fit < 1 ? 1 : fit;
};

// How an output row's pixels map onto its input row, in sweep units: output pixel o0 + i*ostep
// reads at tap kx the input pixel o0*S - pad_l + D*(i*SP + kx). With D dividing S: unit D,
// SP = S / D, ostep 1; with S dividing D: unit D, SP = 1, and the outputs of one block are
// ostep = D / S apart (one phase of the row). ok: one of the two holds with SP 1 or 2.
struct NhwcSweep {
  int64_t sp = 1, ostep = 1;
  bool ok = false;
  explicit NhwcSweep(const DwShape& p) {
    if (p.S % p.D == 0 && p.S / p.D <= 2) {
      sp = p.S / p.D;
      ok = true;
    } else if (p.D % p.S == 0) {
      ostep = p.D / p.S;
      ok = true;
    }
  }
};

// Loads v into a register and keeps it there: without this GCC folds the load into each FMA that
// uses the vector (a memory operand per FMA, the loads the sweep exists to save).
template <typename T>
C10_ALWAYS_INLINE Vec<T> in_register(const Vec<T>& v) {
#if (defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)) && defined(__GNUC__)
  auto raw = v.operator typename std::conditional_t<
      std::is_same_v<T, float>,
      std::conditional_t<sizeof(Vec<T>) == 64, __m512, __m256>,
      std::conditional_t<sizeof(Vec<T>) == 64, __m512d, __m256d>>();
  asm("" : "+v"(raw));
  return Vec<T>(raw);
#else
  return v;
#endif
}

// acc[px][v] += the taps of input row ky for the PX outputs of a block: xr, the block's sweep
// unit j = 0 (channel c), U elements per unit; wr, the weights of row ky (channel c). EDGE: only
// units [jlo, jhi) lie inside the input row (the others are padding, their taps skipped).
// A micro-kernel: fully unrolled over units, pixels and channel vectors so that the weights and
// accumulators stay in registers.
template <typename T, int K, int SP, int PX, int CV, bool PART, bool EDGE, typename X = T>
C10_ALWAYS_INLINE void nhwc_sweep(const X* xr, int64_t U, const T* wr, int64_t C, int64_t cl,
                                  int jlo, int jhi, Vec<T> (&acc)[PX][CV]) {
  constexpr int V = Vec<T>::size();
  constexpr int NJ = (PX - 1) * SP + K;
  auto load = [&](const auto* src, int v) {
    return load_x<T>(src, (PART && v == CV - 1) ? cl : int64_t(V));
  };
  Vec<T> w[K][CV];
  static_for<K>([&](auto kx_) {
    constexpr int kx = decltype(kx_)::value;
    for (int v = 0; v < CV; ++v) w[kx][v] = load(wr + kx * C + v * V, v);
  });
  const X* xj = xr;  // unit j's input, advanced by U: one address register for the sweep
  static_for<NJ>([&](auto j_) {
    constexpr int j = decltype(j_)::value;
    const X* src = xj;
    xj += U;
    if (EDGE && (j < jlo || j >= jhi)) return;
    Vec<T> xv[CV];
    for (int v = 0; v < CV; ++v) xv[v] = in_register(load(src + v * V, v));
    static_for<PX>([&](auto px_) {
      constexpr int px = decltype(px_)::value;
      constexpr int kx = j - px * SP;
      if constexpr (kx >= 0 && kx < K)
        for (int v = 0; v < CV; ++v) acc[px][v] = at::vec::fmadd(xv[v], w[kx][v], acc[px][v]);
    });
  });
}

// What the blocks of one output row share. X: the storage type of x and y (T, or bf16_t with T
// float: widened on load, rounded on store, bf16_io.h).
template <typename T, typename X = T>
struct NhwcRow {
  const X* xn;  // the image's input
  X* yrow;      // the output row
  const DwArgs<T, X>& a;
  const DwShape& p;
  const ActV<T>& act;
  int64_t iy0;  // input row of tap ky = 0
  int ky0, ky1;
  int64_t U, ostep;  // elements per sweep unit; output pixels between a block's outputs
  RowsAhead* ra;     // the input rows prefetched ahead of the blocks
};

// y of the npx outputs of a block, act(acc * scale + shift), for activation ID (-1: any, through
// ActV's switch).
template <typename T, int ID, int PX, int CV, bool PART, typename X = T>
C10_ALWAYS_INLINE void nhwc_store_act(const NhwcRow<T, X>& r, const Vec<T> (&acc)[PX][CV],
                                      int64_t o0, int npx, int64_t c, int64_t cl) {
  constexpr int V = Vec<T>::size();
  const int64_t C = r.p.C;
  for (int v = 0; v < CV; ++v) {
    const int64_t cc = c + v * V, m = (PART && v == CV - 1) ? cl : V;
    const Vec<T> sc = load_n(r.a.scale + cc, m), sh = load_n(r.a.shift + cc, m);
    DASP_UNROLL
    for (int px = 0; px < PX; ++px) {
      if (px >= npx) break;
      const Vec<T> z = at::vec::fmadd(acc[px][v], sc, sh);
      Vec<T> y;
      if constexpr (ID < 0)
        y = r.act(z);
      else
        y = r.act.template apply<ID>(z);
      put_x<T>(y, r.yrow + (o0 + px * r.ostep) * C + cc, m, r.p.stream);
    }
  }
}

// The slow activations, out of line: acc arrives copied to memory, so that the block's
// accumulators are not live across calls (they would then live on the stack throughout).
template <typename T, int PX, int CV, bool PART, typename X = T>
C10_NOINLINE void nhwc_store_any(const NhwcRow<T, X>& r, const Vec<T> (&acc)[PX][CV], int64_t o0,
                                 int npx, int64_t c, int64_t cl) {
  nhwc_store_act<T, -1, PX, CV, PART>(r, acc, o0, npx, c, cl);
}

// y of the npx outputs of a block: the activation's switch taken once per block, the fast ones
// inline.
template <typename T, int PX, int CV, bool PART, typename X = T>
C10_ALWAYS_INLINE void nhwc_store(const NhwcRow<T, X>& r, const Vec<T> (&acc)[PX][CV], int64_t o0,
                                  int npx, int64_t c, int64_t cl) {
  switch (r.act.id) {
    case kActNone: return nhwc_store_act<T, kActNone, PX, CV, PART>(r, acc, o0, npx, c, cl);
    case kActRelu: return nhwc_store_act<T, kActRelu, PX, CV, PART>(r, acc, o0, npx, c, cl);
    case kActHardtanh:
      return nhwc_store_act<T, kActHardtanh, PX, CV, PART>(r, acc, o0, npx, c, cl);
    case kActHardswish:
      return nhwc_store_act<T, kActHardswish, PX, CV, PART>(r, acc, o0, npx, c, cl);
    case kActLeaky: return nhwc_store_act<T, kActLeaky, PX, CV, PART>(r, acc, o0, npx, c, cl);
    default: {
      Vec<T> copy[PX][CV];
      for (int px = 0; px < PX; ++px)
        for (int v = 0; v < CV; ++v) copy[px][v] = acc[px][v];
      return nhwc_store_any<T, PX, CV, PART>(r, copy, o0, npx, c, cl);
    }
  }
}

// The block of outputs o0 + i*ostep, i < npx, for the channel chunk at c. ix0: the input pixel of
// its unit 0; [jlo, jhi): its units inside the input row.
template <typename T, int K, int SP, int PX, int CV, bool PART, bool EDGE, typename X = T>
void nhwc_block(const NhwcRow<T, X>& r, int64_t o0, int npx, int64_t ix0, int jlo, int jhi,
                int64_t c, int64_t cl) {
  const int64_t C = r.p.C, W = r.p.W, D = r.p.D;
  Vec<T> acc[PX][CV];
  for (int px = 0; px < PX; ++px)
    for (int v = 0; v < CV; ++v) acc[px][v] = Vec<T>(T(0));
  for (int ky = r.ky0; ky < r.ky1; ++ky) {
    const X* xr = r.xn + ((r.iy0 + D * ky) * W + ix0) * C + c;
    nhwc_sweep<T, K, SP, PX, CV, PART, EDGE>(xr, r.U, r.a.w + ky * K * C + c, C, cl, jlo, jhi,
                                              acc);
  }
  nhwc_store<T, PX, CV, PART>(r, acc, o0, npx, c, cl);
}

// One output row for the channels [c0, c1): blocks of PX outputs (per phase where ostep > 1),
// those that reach into the padding or past the row's end through the checked micro-kernel.
template <typename T, int K, int SP, typename X = T>
void nhwc_row(const NhwcRow<T, X>& r, int64_t c0, int64_t c1) {
  using Tile = NhwcTile<K>;
  constexpr int PX = Tile::PX, NJ = (PX - 1) * SP + K;
  const DwShape& p = r.p;
  const int64_t Wo = p.Wo, S = p.S, D = p.D, m = r.ostep;
  for (int64_t s0 = 0; s0 < Wo; s0 += PX * m) {
    r.ra->upto(((s0 + PX * m + kPixelsAhead) * S - p.pad_l + D * (K - 1) + 1) * p.C *
               static_cast<int64_t>(sizeof(X)));
    for (int64_t o0 = s0; o0 < imin(s0 + m, Wo); ++o0) {
      const int npx = static_cast<int>(imin(PX, (Wo - 1 - o0) / m + 1));
      const int64_t ix0 = o0 * S - p.pad_l;
      const int need = (npx - 1) * SP + K;  // units the npx outputs read
      const int jlo = static_cast<int>(iclamp(ceil_div(-ix0, D), 0, need));
      const int jhi = static_cast<int>(iclamp(floor_div(p.W - 1 - ix0, D) + 1, jlo, need));
      const bool edge = jlo > 0 || jhi < NJ;
      channel_chunks_of<T, Tile::CV>(c1 - c0, [&](int64_t cg, auto cv_tag, auto part_tag,
                                                  int64_t cl) {
        constexpr int CV = decltype(cv_tag)::value;
        constexpr bool PART = decltype(part_tag)::value;
        if (edge)
          nhwc_block<T, K, SP, PX, CV, PART, true>(r, o0, npx, ix0, jlo, jhi, c0 + cg, cl);
        else
          nhwc_block<T, K, SP, PX, CV, PART, false>(r, o0, npx, ix0, 0, NJ, c0 + cg, cl);
      });
    }
  }
}

// Tasks (n, band), in groups of p.cgroup channels (nhwc_fwd_rows).
template <typename T, int K, int SP, typename X = T>
void fwd_nhwc_tiled(const DwShape& p, const DwArgs<T, X>& a, int64_t t0, int64_t t1) {
  const NhwcSweep sw(p);
  const ActV<T> act(p);
  nhwc_fwd_rows<T>(p, a, t0, t1, [&](const X* xn, X* yrow, int64_t g0, int64_t g1, int64_t oy,
                                     int ky0, int ky1, RowsAhead& ra) {
    const NhwcRow<T, X> r{xn, yrow, a, p, act, oy * p.S - p.pad_t, ky0, ky1, p.D * p.C, sw.ostep,
                          &ra};
    nhwc_row<T, K, SP>(r, g0, g1);
  });
}

// The forward's entry: the tiled kernel where K <= 9 and the stride and dilation fit a sweep
// (NhwcSweep), else the tap-by-tap one.
template <typename T>
void fwd_nhwc(const DwShape& p, const DwArgs<T>& a, int64_t t0, int64_t t1) {
  const NhwcSweep sw(p);
  if (!sw.ok || p.K < 1 || p.K > 9) return fwd_nhwc_generic<T>(p, a, t0, t1);
  bool done = false;
  static_for<9>([&](auto k_) {
    constexpr int K = decltype(k_)::value + 1;
    if (done || p.K != K) return;
    done = true;
    // Rows narrower than a block at stride 2 are one partial, checked block each: there the
    // tap-by-tap kernel was faster (1x672x14x14 K5 s2, one thread: ~10%).
    if (sw.sp == 2 && p.Wo < NhwcTile<K>::PX) return fwd_nhwc_generic<T>(p, a, t0, t1);
    if (sw.sp == 1)
      fwd_nhwc_tiled<T, K, 1>(p, a, t0, t1);
    else
      fwd_nhwc_tiled<T, K, 2>(p, a, t0, t1);
  });
}

// Whether fwd_nhwc_bf16 runs shape p: what fwd_nhwc gives the tiled kernel (the host computes
// the others in float32 and rounds, bf16_via_float.h).
inline bool nhwc_bf16_ok(const DwShape& p) {
  const NhwcSweep sw(p);
  if (!sw.ok || p.K < 1 || p.K > 9) return false;
  bool ok = false;
  static_for<9>([&](auto k_) {
    constexpr int K = decltype(k_)::value + 1;
    if (p.K == K) ok = !(sw.sp == 2 && p.Wo < NhwcTile<K>::PX);
  });
  return ok;
}

// The channels-last forward on bf16 x and y (float weights, scale and shift): the tiled kernel
// with float accumulators, x widened on load and y rounded to nearest even on store. Shapes with
// nhwc_bf16_ok only.
inline void fwd_nhwc_bf16(const DwShape& p, const DwArgs<float, bf16_t>& a, int64_t t0,
                          int64_t t1) {
  const NhwcSweep sw(p);
  static_for<9>([&](auto k_) {
    constexpr int K = decltype(k_)::value + 1;
    if (p.K != K) return;
    if (sw.sp == 1)
      fwd_nhwc_tiled<float, K, 1>(p, a, t0, t1);
    else
      fwd_nhwc_tiled<float, K, 2>(p, a, t0, t1);
  });
}

}  // namespace dw
}  // namespace dasp_kernels::cpu::DASP_ISA
