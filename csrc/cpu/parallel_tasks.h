// How the CPU ops split their work into tasks and run them on ATen's intra-op threads. Results
// never depend on which thread ran a task, nor on the thread count where the kernels write
// per-task partial sums over fixed bands.
#pragma once
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

namespace dasp_kernels::cpu {

// Bands of rows per unit (plane or image): enough that units * bands tasks give every thread about
// tasks_per_thread of them, so that a thread slowed down by other work on the machine holds up
// little, but no band thinner than min_rows (each band recomputes a few halo rows). One thread:
// one band per unit.
inline int64_t pick_bands(int64_t units, int64_t rows, int64_t min_rows, int64_t tasks_per_thread) {
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  if (threads == 1 || units <= 0) return 1;
  const int64_t want = (tasks_per_thread * threads + units - 1) / units;
  return std::clamp<int64_t>(want, 1, std::max<int64_t>(1, rows / min_rows));
}

// Runs tasks [0, n), handing them out one at a time from a shared counter instead of in fixed
// halves: on a busy machine a thread that is descheduled holds up at most one task, not half of
// the work. Each worker first builds its state with make() (e.g. its scratch), then calls
// fn(state, t) for every task t it takes.
template <typename Make, typename F>
void run_tasks_with(int64_t n, const Make& make, const F& fn) {
  if (n <= 0) return;
  const int64_t workers = std::min<int64_t>(n, at::get_num_threads());
  if (workers <= 1 || at::in_parallel_region()) {
    auto state = make();
    for (int64_t t = 0; t < n; ++t) fn(state, t);
    return;
  }
  std::atomic<int64_t> next{0};
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    auto state = make();
    for (int64_t t = next.fetch_add(1); t < n; t = next.fetch_add(1)) fn(state, t);
  });
}

// As run_tasks_with, without worker state: fn(t0, t1) runs tasks [t0, t1) (all of them at once
// on one thread).
template <typename F>
void run_tasks(int64_t n, const F& fn) {
  if (n <= 0) return;
  const int64_t workers = std::min<int64_t>(n, at::get_num_threads());
  if (workers <= 1 || at::in_parallel_region()) {
    fn(int64_t(0), n);
    return;
  }
  run_tasks_with(n, [] { return 0; }, [&](int, int64_t t) { fn(t, t + 1); });
}

}  // namespace dasp_kernels::cpu
