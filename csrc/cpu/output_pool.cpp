#include "output_pool.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <vector>

namespace dasp_kernels::cpu {
namespace {

// Large outputs are taken from a few storages that this pool holds and that nothing else
// references any more (no tensor, view, Python storage or weak reference), so that steady-state
// calls do not pay the page faults of fresh memory (~1.3 us per 4 KiB page here, 2.7 ms for the
// 8 MB output of the spatial path, ~20 ms for a 64 MB stage-1 ppm_add output). A storage someone
// still holds is never handed out again. Shared by the outputs and gradients of every CPU op.
// DASP_KERNELS_OUTPUT_POOL=0 turns the pool off.
class OutputPool {
 public:
  static constexpr size_t kMinBytes = size_t(1) << 20;
  static constexpr size_t kMaxBytes = size_t(512) << 20;
  static constexpr size_t kSlots = 8;

  at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& opts, at::MemoryFormat fmt) {
    const size_t nbytes = c10::multiply_integers(sizes) * opts.dtype().itemsize();
    if (nbytes < kMinBytes || nbytes > kMaxBytes || !enabled())
      return at::empty(sizes, opts.memory_format(fmt));
    std::lock_guard<std::mutex> lock(mu_);
    for (size_t i = 0; i < slots_.size(); ++i) {
      if (slots_[i].nbytes() == nbytes && unique(slots_[i])) {
        c10::Storage st = slots_[i];
        std::rotate(slots_.begin(), slots_.begin() + i, slots_.begin() + i + 1);
        auto t = at::detail::make_tensor<c10::TensorImpl>(
            std::move(st), c10::DispatchKeySet(c10::DispatchKey::CPU), opts.dtype());
        t.unsafeGetTensorImpl()->set_sizes_contiguous(sizes);
        t.unsafeGetTensorImpl()->empty_tensor_restride(fmt);
        return t;
      }
    }
    at::Tensor t = at::empty(sizes, opts.memory_format(fmt));
    slots_.insert(slots_.begin(), t.storage());
    size_t total = 0;
    for (size_t i = 0; i < slots_.size(); ++i) {
      total += slots_[i].nbytes();
      if (i >= kSlots || total > kMaxBytes) {
        slots_.resize(i);
        break;
      }
    }
    return t;
  }

 private:
  static bool enabled() {
    const char* e = std::getenv("DASP_KERNELS_OUTPUT_POOL");
    return !(e && std::strcmp(e, "0") == 0);
  }
  // Only the pool's own reference: no other strong reference, and no weak one (ours below and
  // the one every live object counts for itself make two).
  static bool unique(const c10::Storage& st) {
    if (st.use_count() != 1) return false;
    return st.getWeakStorageImpl().weak_use_count() == 2;
  }
  std::mutex mu_;
  std::vector<c10::Storage> slots_;
};

}  // namespace

at::Tensor pooled_empty(at::IntArrayRef sizes, const at::TensorOptions& opts,
                        at::MemoryFormat fmt) {
  static OutputPool* pool = new OutputPool();  // never destroyed: outlives late callers
  return pool->empty(sizes, opts, fmt);
}

}  // namespace dasp_kernels::cpu
