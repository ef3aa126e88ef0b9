// The opt-in caching CPU allocator behind dasp_kernels.cpu_arena() (see cpu_arena.cpp).
#pragma once
#include <cstdint>

namespace dasp_kernels::cpu {

struct ArenaStats {
  bool enabled;
  int64_t cached_bytes;  // free blocks held for reuse
  int64_t hits;          // allocations served from the cache
  int64_t misses;        // allocations of kMinBytes or more that found no cached block
};

// Nested calls nest: the arena stays ATen's CPU allocator until every enable is undone.
// max_cached_bytes < 0: no cap on the cache.
void arena_enable(int64_t max_cached_bytes);
void arena_disable();
int64_t arena_release();  // frees the cached blocks; returns how many bytes
ArenaStats arena_stats();

}  // namespace dasp_kernels::cpu
