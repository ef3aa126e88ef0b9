// An opt-in caching allocator for CPU tensors (dasp_kernels.cpu_arena()). Freed blocks of at least
// kMinBytes are kept and handed out again for a request of the same rounded size, so a model run
// in a loop stops paying page faults for its large intermediates and outputs: glibc returns such
// blocks to the OS on free, and touching fresh pages costs ~1.3 us per 4 KiB here (README). ONNX
// Runtime's CPU arena does the same for its own tensors.
//
// While enabled it is ATen's CPU allocator (c10::SetCPUAllocator); smaller requests go to the
// allocator it replaced. Tensors may outlive the scope: their blocks come back to the cache, which
// lasts until release() (or the cap). oneDNN frees raw pointers through whichever allocator is
// current at that moment, so once the first scope closes ATen's CPU allocator stays a Forwarder:
// the original allocator, except that raw pointers are freed by the arena, which knows its own
// blocks and hands any other pointer to the original's raw deleter. Otherwise a block of the arena
// freed outside a scope would go to free() behind its back, and its address, once reused by
// malloc, could later be taken for an arena block.
#include "cpu_arena.h"

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/util/Exception.h>

#include <cstdlib>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace dasp_kernels::cpu {
namespace {

constexpr size_t kMinBytes = size_t(1) << 20;  // smaller blocks: glibc's heap reuses them already
constexpr size_t kRound = size_t(64) << 10;    // sizes rounded up to this share a bucket
constexpr size_t kAlign = 64;                  // as c10's default CPU allocator

class Arena final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t n) override {
    if (n < kMinBytes) return fallback_->allocate(n);
    const size_t bytes = (n + kRound - 1) / kRound * kRound;
    void* p = nullptr;
    {
      // One lock for the lookup and the record. A miss allocates under it too: aligned_alloc
      // only reserves the block (its pages fault in later, outside the lock).
      std::lock_guard<std::mutex> lock(mu_);
      p = take(bytes);
      if (p == nullptr) {
        p = std::aligned_alloc(kAlign, bytes);
        TORCH_CHECK(p != nullptr, "dasp_kernels cpu_arena: out of memory allocating ", bytes,
                    " bytes");
      }
      live_[p] = bytes;
    }
    // The pointer is its own context, so that raw_allocate / raw_deallocate work (oneDNN uses them).
    return {p, p, &Arena::give_back, c10::Device(c10::DeviceType::CPU)};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &Arena::give_back; }

  void copy_data(void* dest, const void* src, size_t count) const override {
    default_copy_data(dest, src, count);
  }

  void enable(int64_t max_cached_bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    if (depth_ > 0) {
      caps_.push_back(max_cached_bytes);
      ++depth_;
      return;
    }
    if (fallback_ == nullptr) {  // the first scope: remember ATen's own allocator, for good
      c10::Allocator* current = c10::GetCPUAllocator();
      TORCH_CHECK(current->raw_deleter() != nullptr, "dasp_kernels cpu_arena: ATen's CPU "
                  "allocator has no raw deleter, so the arena cannot stand in for it");
      fallback_ = current;
      fallback_raw_ = current->raw_deleter();
    }
    c10::SetCPUAllocator(this, kPriority);
    TORCH_CHECK(c10::GetCPUAllocator() == this, "dasp_kernels cpu_arena: could not install the "
                "arena as ATen's CPU allocator (another one was set with a higher priority)");
    caps_.assign(1, max_cached_bytes);
    depth_ = 1;
  }

  // Closing a nested scope puts the enclosing scope's cap back. The outermost scope's cap stays
  // after it closes, for the blocks of tensors that outlive it.
  void disable() {
    std::lock_guard<std::mutex> lock(mu_);
    TORCH_CHECK(depth_ > 0, "dasp_kernels cpu_arena: disable() without a matching enable()");
    if (--depth_ > 0) {
      caps_.pop_back();
      return;
    }
    c10::SetCPUAllocator(&forwarder_, kPriority);
  }

  // Frees every cached block; returns how many bytes.
  int64_t release() {
    std::vector<void*> blocks;
    int64_t freed = 0;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (auto& [bytes, ptrs] : free_) {
        freed += static_cast<int64_t>(bytes * ptrs.size());
        blocks.insert(blocks.end(), ptrs.begin(), ptrs.end());
      }
      free_.clear();
      cached_ = 0;
    }
    for (void* p : blocks) std::free(p);
    return freed;
  }

  ArenaStats stats() {
    std::lock_guard<std::mutex> lock(mu_);
    return {depth_ > 0, static_cast<int64_t>(cached_), hits_, misses_};
  }

  static Arena& instance() {
    // Never destroyed: tensors freed during interpreter shutdown still return their blocks here.
    static Arena* arena = new Arena();
    return *arena;
  }

 private:
  // The priority SetCPUAllocator needs to replace c10's default allocator and to put it back.
  static constexpr uint8_t kPriority = 0;

  // A cached block of `bytes`, or null; mu_ held.
  void* take(size_t bytes) {
    auto it = free_.find(bytes);
    if (it == free_.end() || it->second.empty()) {
      ++misses_;
      return nullptr;
    }
    void* p = it->second.back();
    it->second.pop_back();
    cached_ -= bytes;
    ++hits_;
    return p;
  }

  // The deleter of the arena's blocks, and raw_deallocate's while the arena or the Forwarder is
  // ATen's CPU allocator: then it may be handed any other raw pointer too.
  static void give_back(void* p) { instance().keep_or_free(p); }

  void keep_or_free(void* p) {
    c10::DeleterFnPtr theirs = nullptr;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = live_.find(p);
      if (it == live_.end()) {
        theirs = fallback_raw_;
      } else {
        const size_t bytes = it->second;
        live_.erase(it);
        const int64_t cap = caps_.empty() ? -1 : caps_.back();  // the innermost open scope's
        if (cap < 0 || cached_ + bytes <= static_cast<size_t>(cap)) {
          free_[bytes].push_back(p);
          cached_ += bytes;
          return;
        }
      }
    }
    if (theirs == nullptr) {
      std::free(p);  // ours, beyond the cap
      return;
    }
    theirs(p);
  }

  // ATen's CPU allocator between scopes (see the top of the file).
  struct Forwarder final : c10::Allocator {
    c10::DataPtr allocate(size_t n) override { return instance().fallback_->allocate(n); }
    c10::DeleterFnPtr raw_deleter() const override { return &Arena::give_back; }
    void copy_data(void* dest, const void* src, size_t count) const override {
      default_copy_data(dest, src, count);
    }
  };

  Forwarder forwarder_;
  std::mutex mu_;
  c10::Allocator* fallback_ = nullptr;  // set by the first enable(), never changed after
  c10::DeleterFnPtr fallback_raw_ = nullptr;  // how the replaced allocator frees a raw pointer
  int depth_ = 0;             // enable() calls not yet undone (nested scopes)
  // The cap of each open scope, outermost first (< 0: none). The outermost's stays after it
  // closes; empty before the first scope.
  std::vector<int64_t> caps_;
  size_t cached_ = 0;
  int64_t hits_ = 0, misses_ = 0;
  std::unordered_map<size_t, std::vector<void*>> free_;  // rounded size -> free blocks
  std::unordered_map<void*, size_t> live_;                // blocks handed out -> rounded size
};

}  // namespace

void arena_enable(int64_t max_cached_bytes) { Arena::instance().enable(max_cached_bytes); }
void arena_disable() { Arena::instance().disable(); }
int64_t arena_release() { return Arena::instance().release(); }
ArenaStats arena_stats() { return Arena::instance().stats(); }

}  // namespace dasp_kernels::cpu
