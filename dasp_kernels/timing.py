"""The one timing helper of the benchmarks (benchmarks/harness.py re-exports it), the kernel
tuning script (benchmarks/bench_ops_quick.py) and `dasp-kernels check --bench`.

Warm-up calls, then the median and the 20% / 80% quantiles of per-call times. On the CPU each call
is timed with time.perf_counter (and its minor page faults are counted: on Linux they are the
price of a fresh large allocation); on a GPU with CUDA events, the L2 cache flushed before each
call. Several callables can be timed interleaved (one call of each per round, in a new order each
round) so that a change of load on a shared machine hits every provider alike.
"""
import random
import resource
import time
from dataclasses import dataclass, field

import torch

@dataclass
class Timing:
    median_ms: float
    p20_ms: float
    p80_ms: float
    reps: int
    faults_per_call: float = float("nan")  # minor page faults per call (CPU only)
    samples_ms: list = field(default_factory=list, repr=False)


def quantile(values, q):
    """Linear-interpolated quantile (numpy's default) of a non-empty sequence."""
    v = sorted(values)
    pos = (len(v) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def _timing(samples, faults):
    return Timing(quantile(samples, 0.5), quantile(samples, 0.2), quantile(samples, 0.8),
                  len(samples), sum(faults) / len(faults) if faults else float("nan"), samples)


def _minflt():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


class _L2Flush:
    """Zeroes a buffer larger than any current GPU's L2 so each timed call starts cold."""

    def __init__(self, device):
        self.buf = torch.empty(256 * 2**20, dtype=torch.int8, device=device)

    def __call__(self):
        self.buf.zero_()


ORDERS = ("shuffled", "fixed")


def _cpu_clock():
    """Process CPU seconds divided by torch's threads: what the wall time would be on idle
    cores, a steadier number on a loaded machine (benchmarks/bench_ops_quick.py --cpu-time)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return (r.ru_utime + r.ru_stime) / torch.get_num_threads()


def _thread_clock():
    """CPU seconds of the calling thread (CLOCK_THREAD_CPUTIME_ID, nanosecond resolution): with one
    torch thread the kernels run in it, and a core shared with other work no longer moves the
    number by the time the scheduler gave away (getrusage's counts, _cpu_clock, are coarser)."""
    if torch.get_num_threads() != 1:
        raise ValueError(f"measure_interleaved: clock 'thread' expected torch.get_num_threads() 1, "
                         f"got {torch.get_num_threads()}")
    return time.thread_time()


CLOCKS = {"wall": time.perf_counter, "cpu": _cpu_clock, "thread": _thread_clock}


def measure_interleaved(fns, *, device="cpu", warmup=2, min_reps=10, max_reps=200,
                        min_time_s=1.0, gap_s=0.001, order="shuffled", seed=0, before=None,
                        clock="wall"):
    """Time each callable of `fns` ({name: fn}) one call per round, round after round.

    Stops after `min_reps` rounds once every callable has run for `min_time_s` in total, or after
    `max_reps` rounds. On the CPU an untimed pause of `gap_s` before each call lets the worker
    threads of the previous callable (OpenMP, ONNX Runtime) stop spinning, so they do not compete
    with the next. order="shuffled" runs each round in a new order (random, from `seed`): what ran
    just before a call (threads left spinning, or asleep so that the call must wake them, or data
    that evicted its input from the cache) changes its time, and in a fixed order every callable
    would always follow the same neighbour. order="fixed" keeps the order of `fns`.
    before: called, untimed, before each timed call (e.g. a cache flush). clock (CPU only):
    "wall", "cpu" (see _cpu_clock) or "thread" (one thread only, see _thread_clock). Returns
    {name: Timing}.
    """
    if order not in ORDERS:
        raise ValueError(f"measure_interleaved: expected order {' or '.join(map(repr, ORDERS))}, "
                         f"got {order!r}")
    if clock not in CLOCKS:
        raise ValueError(f"measure_interleaved: expected clock 'wall', 'cpu' or 'thread', got "
                         f"{clock!r}")
    now = CLOCKS[clock]
    rng = random.Random(seed)
    names = list(fns)
    device = torch.device(device)
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    flush = _L2Flush(device) if cuda else None
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync()
    samples = {k: [] for k in fns}
    faults = {k: [] for k in fns}
    spent = {k: 0.0 for k in fns}
    for r in range(max_reps):
        if r >= min_reps and all(s >= min_time_s for s in spent.values()):
            break
        if order == "shuffled":
            rng.shuffle(names)
        if cuda:
            events = {}
            for k in names:
                fn = fns[k]
                flush()
                if before is not None:
                    before()
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                events[k] = (start, end)
            torch.cuda.synchronize()
            for k, (start, end) in events.items():
                ms = start.elapsed_time(end)
                samples[k].append(ms)
                spent[k] += ms / 1e3
        else:
            for k in names:
                fn = fns[k]
                if gap_s > 0 and len(fns) > 1:
                    time.sleep(gap_s)
                if before is not None:
                    before()
                f0 = _minflt()
                t0 = now()
                fn()
                t1 = now()
                faults[k].append(_minflt() - f0)
                samples[k].append((t1 - t0) * 1e3)
                spent[k] += t1 - t0
    return {k: _timing(samples[k], faults[k]) for k in fns}


def measure(fn, **timing):
    """Median and 20% / 80% quantiles (ms) of `fn()` after warm-up calls; `timing`: the keywords
    of measure_interleaved (device, warmup, min_reps, ...)."""
    return measure_interleaved({"fn": fn}, **timing)["fn"]


