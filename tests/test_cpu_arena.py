"""dasp_kernels.cpu_arena(): large CPU blocks freed inside it are reused, not page-faulted again."""
import resource

import pytest
import torch

import dasp_kernels
from dasp_kernels import cpu_arena, cpu_arena_release, cpu_arena_stats

pytestmark = pytest.mark.skipif(dasp_kernels.backend_status()["cpu"] is not None,
                                reason="the compiled CPU extension did not load")

BIG = 8 * 2**20 // 4  # float32 elements in 8 MiB: above the arena's 1 MiB floor


@pytest.fixture(autouse=True)
def _empty_arena():
    cpu_arena_release()
    yield
    assert not cpu_arena_stats().enabled, "a test left the arena installed"
    cpu_arena_release()


def _minor_faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _counts():
    s = cpu_arena_stats()
    return s.hits, s.misses


def test_a_freed_block_is_handed_out_again():
    hits, misses = _counts()
    with cpu_arena():
        assert cpu_arena_stats().enabled
        a = torch.empty(BIG)
        ptr = a.data_ptr()
        del a
        assert cpu_arena_stats().cached_bytes >= BIG * 4
        b = torch.empty(BIG)
        assert b.data_ptr() == ptr
        assert _counts() == (hits + 1, misses + 1)
        assert cpu_arena_stats().cached_bytes == 0


def test_reused_memory_takes_no_page_faults():
    # What the arena is for: a 32 MiB tensor written in a loop faults its pages once, not per call.
    # (Outside it, whether glibc hands back fresh pages depends on what the process did before:
    # its mmap threshold moves, and libraries set it, so that side is not asserted here.)
    n = 32 * 2**20 // 4
    with cpu_arena():
        torch.empty(n).fill_(1.0)  # first use: fresh pages
        f0 = _minor_faults()
        for _ in range(5):
            torch.empty(n).fill_(1.0)
        assert _minor_faults() - f0 < 100  # 8192 pages per call without the arena


def test_small_blocks_and_outside_the_scope_bypass_it():
    before = _counts()
    with cpu_arena():
        for _ in range(3):
            torch.empty(1000)
    for _ in range(3):
        torch.empty(BIG)
    assert _counts() == before
    assert cpu_arena_stats().cached_bytes == 0


def test_tensors_may_outlive_the_scope():
    with cpu_arena():
        a = torch.full((BIG,), 2.0)
    assert not cpu_arena_stats().enabled
    assert a.sum().item() == 2.0 * BIG  # still valid after the arena is uninstalled
    ptr = a.data_ptr()
    del a  # returns to the cache
    assert cpu_arena_stats().cached_bytes >= BIG * 4
    with cpu_arena():
        assert torch.empty(BIG).data_ptr() == ptr


def test_scopes_nest():
    with cpu_arena():
        with cpu_arena():
            assert cpu_arena_stats().enabled
        assert cpu_arena_stats().enabled
    assert not cpu_arena_stats().enabled


def test_closing_a_nested_scope_restores_the_outer_cap():
    with cpu_arena(max_cached_bytes=0):
        with cpu_arena():  # no cap while it is open
            torch.empty(BIG)
            assert cpu_arena_stats().cached_bytes >= BIG * 4
        cpu_arena_release()
        torch.empty(BIG)  # the outer scope's cap again: nothing kept
        assert cpu_arena_stats().cached_bytes == 0
    torch.empty(BIG)  # outside: blocks come from the original allocator
    with cpu_arena():
        torch.empty(BIG)
        assert cpu_arena_stats().cached_bytes >= BIG * 4


def test_the_cap_and_release():
    with cpu_arena(max_cached_bytes=0):
        torch.empty(BIG)  # freed at once: nothing may be kept
        assert cpu_arena_stats().cached_bytes == 0
    with cpu_arena():
        x, y = torch.empty(BIG), torch.empty(BIG)
        del x, y
    assert cpu_arena_stats().cached_bytes >= 2 * BIG * 4
    assert cpu_arena_release() >= 2 * BIG * 4
    assert cpu_arena_stats().cached_bytes == 0


def test_results_are_unchanged_inside_the_arena():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 256, 256)
    stage = [torch.randn(3, 1, 7, 7), torch.rand(3) + 0.5, torch.randn(3),
             torch.randn(64, 3, 1, 1), torch.rand(64) + 0.5, torch.randn(64),
             torch.randn(64, 3, 1, 1)]
    want = dasp_kernels.dasp_stage(x, *stage)
    with cpu_arena():
        for _ in range(3):  # the later calls run on reused, dirty blocks
            got = dasp_kernels.dasp_stage(x, *stage)
            torch.testing.assert_close(got, want, rtol=0, atol=0)
            up = torch.nn.functional.interpolate(got, scale_factor=8.0, mode="bilinear")
    torch.testing.assert_close(up, torch.nn.functional.interpolate(want, scale_factor=8.0,
                                                                   mode="bilinear"))


@pytest.mark.parametrize("bad", [-1, 1.5, "1GB", True])
def test_bad_cap_is_refused(bad):
    with pytest.raises(ValueError, match=r"expected max_cached_bytes to be None or an int >= 0, "
                                         rf"got {bad!r}"):
        with cpu_arena(max_cached_bytes=bad):
            pass
    assert not cpu_arena_stats().enabled


def test_unbalanced_disable_and_missing_extension_are_refused(monkeypatch):
    from dasp_kernels import _loader

    with pytest.raises(RuntimeError, match=r"disable\(\) without a matching enable\(\)"):
        _loader._C._arena_disable()
    monkeypatch.setattr(_loader, "_C", None)
    monkeypatch.setattr(_loader, "load_error", "ImportError: test")
    with pytest.raises(RuntimeError, match="cpu_arena needs the compiled extension, which did not "
                                           "load: ImportError: test"):
        with cpu_arena():
            pass


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="no oneDNN in this torch")
def test_onednn_raw_allocations_go_through_it():
    # oneDNN allocates through raw_allocate / raw_deallocate (torch.compile with freezing reorders
    # conv weights this way); a block of the arena must be freeable as a raw pointer.
    w = torch.randn(256, 256, 3, 3)  # 2.25 MiB: above the arena's floor

    def reorder():
        return torch.ops.aten.mkldnn_reorder_conv2d_weight(w.to_mkldnn(), [1, 1], [1, 1], [1, 1], 1)

    want = reorder().to_dense()
    misses = cpu_arena_stats().misses
    with cpu_arena():
        for _ in range(3):
            got = reorder().to_dense()
            assert got.equal(want)
        kept = reorder()
    assert cpu_arena_stats().misses > misses  # it did allocate through the arena
    # Freed after the scope, through whatever allocator is current: the block must still come
    # back to the arena, not go to free() behind its back.
    cached = cpu_arena_stats().cached_bytes
    del kept
    assert cpu_arena_stats().cached_bytes > cached
