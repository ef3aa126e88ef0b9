// A tiny CPU emulator for the CUDA kernels of csrc/cuda, so that their logic (indexing, tiling,
// barriers, reductions) can be tested on a machine without a GPU. build.py rewrites each .cu file
// into plain C++ that includes this header instead of the CUDA headers and launches kernels through
// emu::launch.
//
// Each CUDA thread of a block is a ucontext fiber; blocks run one after another. __shared__ becomes
// a function-level static, shared by the fibers of the running block. A fiber runs until it reaches
// a barrier (__syncthreads, or the warp barrier inside __shfl_down_sync) and then yields, so a
// missing barrier shows up as wrong results, and a barrier that not all threads reach is reported as
// a deadlock instead of hanging. Fibers are scheduled in reverse order on odd blocks, so reads that
// depend on the scheduling order also tend to show up.
#pragma once
#include <ATen/ATen.h>
#include <ucontext.h>

#include <cstdint>
#include <functional>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1)
      : x(x_), y(y_), z(z_) {}
};
struct emu_uint3 {
  unsigned int x, y, z;
};

namespace emu {

struct Fiber {
  ucontext_t ctx;
  emu_uint3 tid;
  int linear;
  bool done;
  std::vector<char> stack;
};

struct State {
  ucontext_t sched;
  std::vector<Fiber> fibers;
  int cur = -1;
  emu_uint3 block_idx{0, 0, 0};
  dim3 block_dim, grid_dim;
  std::function<void()> body;
  std::map<long, std::pair<int, int>> bars;  // key -> (arrived, generation)
  long progress = 0;
};

inline State& st() {
  static State s;
  return s;
}

inline void yield() {
  State& s = st();
  swapcontext(&s.fibers[s.cur].ctx, &s.sched);
}

inline void barrier(long key, int size) {
  State& s = st();
  auto& b = s.bars[key];
  const int gen = b.second;
  ++s.progress;
  if (++b.first == size) {
    b.first = 0;
    ++b.second;
  } else {
    while (s.bars[key].second == gen) yield();
  }
}

inline void fiber_entry() {
  State& s = st();
  s.body();
  s.fibers[s.cur].done = true;
  ++s.progress;
  // returning resumes uc_link, the scheduler
}

inline void run_block(const std::function<void()>& body, bool reverse) {
  State& s = st();
  const int n = static_cast<int>(s.block_dim.x * s.block_dim.y * s.block_dim.z);
  constexpr size_t kStack = 256 * 1024;
  if (static_cast<int>(s.fibers.size()) != n) s.fibers.assign(n, Fiber{});
  s.body = body;
  s.bars.clear();
  for (int i = 0; i < n; ++i) {
    Fiber& f = s.fibers[i];
    if (f.stack.size() != kStack) f.stack.assign(kStack, 0);
    f.linear = i;
    f.tid = {static_cast<unsigned>(i % s.block_dim.x),
             static_cast<unsigned>((i / s.block_dim.x) % s.block_dim.y),
             static_cast<unsigned>(i / (s.block_dim.x * s.block_dim.y))};
    f.done = false;
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack.data();
    f.ctx.uc_stack.ss_size = f.stack.size();
    f.ctx.uc_link = &s.sched;
    makecontext(&f.ctx, fiber_entry, 0);
  }
  int alive = n;
  while (alive > 0) {
    const long before = s.progress;
    for (int j = 0; j < n; ++j) {
      const int i = reverse ? n - 1 - j : j;
      if (s.fibers[i].done) continue;
      s.cur = i;
      swapcontext(&s.sched, &s.fibers[i].ctx);
      if (s.fibers[i].done) --alive;
    }
    if (alive > 0 && s.progress == before) {
      s.cur = -1;
      throw std::runtime_error("emu: deadlock, some threads of a block never reach a barrier");
    }
  }
  s.cur = -1;
}

inline void run_grid(dim3 g, dim3 b, const std::function<void()>& body) {
  State& s = st();
  TORCH_CHECK(s.cur == -1, "emu: nested launch");
  TORCH_CHECK(b.x * b.y * b.z <= 1024, "emu: more than 1024 threads per block");
  TORCH_CHECK(g.y <= 65535 && g.z <= 65535, "emu: grid y/z over 65535");
  s.grid_dim = g;
  s.block_dim = b;
  long count = 0;
  for (unsigned z = 0; z < g.z; ++z)
    for (unsigned y = 0; y < g.y; ++y)
      for (unsigned x = 0; x < g.x; ++x) {
        s.block_idx = {x, y, z};
        run_block(body, (count++ & 1) != 0);
      }
}

template <typename F>
struct Launch {
  F f;
  dim3 g, b;
  template <typename... A>
  void operator()(A&&... a) {
    run_grid(g, b, [&]() { f(a...); });
  }
};

template <typename F, typename G, typename B, typename... Rest>
Launch<F> launch(F f, G g, B b, Rest...) {
  return Launch<F>{f, dim3(g), dim3(b)};
}

}  // namespace emu

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define threadIdx (emu::st().fibers[emu::st().cur].tid)
#define blockIdx (emu::st().block_idx)
#define blockDim (emu::st().block_dim)
#define gridDim (emu::st().grid_dim)

inline void __syncthreads() {
  const dim3& b = emu::st().block_dim;
  emu::barrier(-1, static_cast<int>(b.x * b.y * b.z));
}

template <typename T>
T __shfl_down_sync(unsigned int mask, T v, int delta) {
  TORCH_CHECK(mask == 0xffffffffu, "emu: only full-warp shuffles are emulated");
  static T buf[32][32];
  const int lin = emu::st().fibers[emu::st().cur].linear;
  const int w = lin / 32, l = lin % 32;
  buf[w][l] = v;
  emu::barrier(w, 32);
  const T r = l + delta < 32 ? buf[w][l + delta] : v;
  emu::barrier(w, 32);
  return r;
}

// Stand-ins for the CUDA parts of ATen/c10 that the kernels' host code uses.
namespace at {
namespace cuda {
inline int getCurrentCUDAStream() { return 0; }
}  // namespace cuda
}  // namespace at
namespace c10 {
namespace cuda {
struct CUDAGuard {
  explicit CUDAGuard(c10::Device) {}
};
}  // namespace cuda
}  // namespace c10
#define C10_CUDA_KERNEL_LAUNCH_CHECK() \
  do {                                 \
  } while (0)
