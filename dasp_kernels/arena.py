"""An opt-in caching allocator for CPU tensors: large blocks freed are kept and reused.

    with dasp_kernels.cpu_arena():
        for x in images:
            y = model(x)

glibc hands blocks above its mmap threshold (at most 32 MB) back to the OS on free, so a model run
in a loop pays page faults for every large intermediate and output, call after call (~1.3 us per
4 KiB page here: ~20 ms for a 64 MB tensor). Inside `cpu_arena()` ATen's CPU allocations of 1 MiB
or more come from a cache of freed blocks of the same size instead, as in ONNX Runtime's CPU arena;
smaller ones go to the allocator it replaced. Tensors may outlive the `with` block: their memory
returns to the cache when they are freed. The cache lasts until `cpu_arena_release()` (or stays
under `max_cached_bytes`).

The arena is process-wide (it is ATen's CPU allocator while any `cpu_arena()` is open), so open it
where no other thread is allocating CPU tensors at that moment: around the calls of a loop, or once
at start-up. Scopes nest; a nested scope's `max_cached_bytes` holds until it closes, then the
enclosing scope's applies again.
"""
import contextlib
from typing import NamedTuple, Optional

from dasp_kernels import _loader


class ArenaStats(NamedTuple):
    enabled: bool       # a cpu_arena() is open
    cached_bytes: int   # freed blocks held for reuse
    hits: int           # allocations served from the cache
    misses: int         # allocations of 1 MiB or more that found no cached block


def _c():
    if _loader._C is None:
        raise RuntimeError("dasp_kernels cpu_arena needs the compiled extension, which did not "
                           f"load: {_loader.load_error}")
    return _loader._C


@contextlib.contextmanager
def cpu_arena(max_cached_bytes: Optional[int] = None):
    """Makes the caching arena ATen's CPU allocator for the `with` block (see the module doc).

    max_cached_bytes: the most the cache holds; a block freed beyond it goes back to the OS. None:
    no cap (like ONNX Runtime's arena, it grows to what the model needs at once).
    """
    if max_cached_bytes is not None and (isinstance(max_cached_bytes, bool)
                                         or not isinstance(max_cached_bytes, int)
                                         or max_cached_bytes < 0):
        raise ValueError("cpu_arena: expected max_cached_bytes to be None or an int >= 0, got "
                         f"{max_cached_bytes!r}")
    c = _c()
    c._arena_enable(-1 if max_cached_bytes is None else max_cached_bytes)
    try:
        yield
    finally:
        c._arena_disable()


def cpu_arena_release() -> int:
    """Frees the blocks the arena holds for reuse; returns how many bytes."""
    return _c()._arena_release()


def cpu_arena_stats() -> ArenaStats:
    return ArenaStats(*_c()._arena_stats())
