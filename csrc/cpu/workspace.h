// Per-thread scratch of the CPU kernels that run on the host side of the per-ISA split (the
// stage chain's row buffers, rings and tiles): one growing buffer per thread, kept across calls,
// so that steady-state calls touch no fresh pages. Carved up per call with take(); the next
// reset() reuses it. See docs/architecture.md for the other reuse mechanisms (output_pool.h for
// outputs, cpu_arena.h for every ATen CPU allocation, util::Scratch for per-call kernel buffers).
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace dasp_kernels::cpu {

class Workspace {
 public:
  // Makes room for `bytes` (at least) and forgets what was taken before.
  void reset(size_t bytes) {
    if (buf_.size() < bytes) buf_.resize(bytes);
    used_ = 0;
  }
  // The next n elements, 64-byte aligned within the buffer (so take() of the sizes counted with
  // bytes_for() never runs past reset()'s room).
  template <typename T>
  T* take(int64_t n) {
    T* p = reinterpret_cast<T*>(buf_.data() + used_);
    used_ += bytes_for<T>(n);
    return p;
  }
  template <typename T>
  static size_t bytes_for(int64_t n) {
    return (static_cast<size_t>(n) * sizeof(T) + 63) / 64 * 64;
  }

 private:
  std::vector<char> buf_;
  size_t used_ = 0;
};

// This thread's workspace.
inline Workspace& thread_workspace() {
  thread_local Workspace ws;
  return ws;
}

}  // namespace dasp_kernels::cpu
