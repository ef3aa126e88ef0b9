// Runs tasks [0, n) on ATen's intra-op threads, handing them out one at a time from a shared
// counter instead of in fixed halves: on a busy machine a thread that is descheduled holds up at
// most one task, not half of the work. Results never depend on which thread ran a task (the
// kernels write per-task partial sums).
#pragma once
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

namespace dasp_kernels::cpu {

template <typename F>
void run_tasks(int64_t n, const F& fn) {
  if (n <= 0) return;
  const int64_t workers = std::min<int64_t>(n, at::get_num_threads());
  if (workers <= 1 || at::in_parallel_region()) {
    fn(int64_t(0), n);
    return;
  }
  std::atomic<int64_t> next{0};
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    for (int64_t t = next.fetch_add(1); t < n; t = next.fetch_add(1)) fn(t, t + 1);
  });
}

}  // namespace dasp_kernels::cpu
