"""Quick CPU timings of the C++ ops against the eager reference, for tuning the CPU kernels.

    python benchmarks/bench_ops_quick.py [--threads N] [--repeat R] [--backward]
                                         [--before none|flush|idle|flush+idle] [--idle-ms MS]

Prints best-of-R milliseconds (the machine may be shared; the best run is the least disturbed),
the median, and effective bandwidth over the tensors each op must read and write, beside the
bandwidth of a 256 MiB copy timed in the same run. Not the project benchmark (see
benchmarks/harness.py); no results are stored.

--before sets what happens, untimed, before each timed call:
  none        nothing: back to back, so the input is warm in cache (when it fits) and the
              worker threads are awake
  flush       a 64 MiB buffer (more than the L3) is written on torch's threads: the input comes
              from memory, the threads stay awake (how triton.testing.do_bench times kernels)
  idle        a sleep of --idle-ms (default 1) ms: the worker threads go idle and must be woken
  flush+idle  both, close to what each call of the interleaved harness meets after the other
              providers' calls
"""
import argparse
import time

import torch

import dasp_kernels
from dasp_kernels import reference, timing

CPU_TIME = False
BEFORE = "none"
FLUSH_MB = 64
IDLE_S = 0.001
_flush_buf = None


def before_call(kind):
    """The untimed step run before each timed call for --before `kind` (None for "none")."""
    def flush():
        global _flush_buf
        if _flush_buf is None:
            _flush_buf = torch.zeros(FLUSH_MB * 2**20 // 4)
        _flush_buf.add_(1.0)  # written, on torch's threads

    steps = {"none": [], "flush": [flush], "idle": [lambda: time.sleep(IDLE_S)],
             "flush+idle": [flush, lambda: time.sleep(IDLE_S)]}[kind]
    if not steps:
        return None
    return lambda: [step() for step in steps]


def time_ms(fn, repeat, warmup=2, before=None):
    """(best, median) ms of fn() over `repeat` back-to-back calls (dasp_kernels.timing), each
    after `before()` (untimed) if given; with --cpu-time, on the CPU clock."""
    t = timing.measure(fn, warmup=warmup, min_reps=repeat, max_reps=repeat, min_time_s=0.0,
                       gap_s=0.0, before=before, clock="cpu" if CPU_TIME else "wall")
    return min(t.samples_ms), t.median_ms


def best_ms(fn, repeat, warmup=2):
    """Best ms of fn() under the --before condition (the reference's column)."""
    return time_ms(fn, repeat, warmup, before_call(BEFORE))[0]


def row(name, ref_ms, fn, repeat, nbytes):
    """Times our op `fn` under the --before condition and prints it beside the reference."""
    best, med = time_ms(fn, repeat, before=before_call(BEFORE))
    print(f"{name:44s} reference {ref_ms:8.2f} ms   cpu {best:8.2f} ms (median {med:6.2f})   "
          f"x{ref_ms / best:5.1f}   cpu {nbytes / best / 1e6:6.1f} GB/s "
          f"(median {nbytes / med / 1e6:5.1f})")


def copy_row(repeat, mb=256):
    """The copy ceiling of this run: a <mb> MiB tensor copied into another (read + write)."""
    a, b = torch.empty(mb * 2**20 // 4), torch.ones(mb * 2**20 // 4)
    best, med = time_ms(lambda: a.copy_(b), max(3, repeat // 5))
    nbytes = 2 * a.numel() * a.element_size()
    print(f"{'copy ' + str(mb) + ' MiB':44s} {'':22s}torch {best:8.2f} ms (median {med:6.2f})   "
          f"{'':6s}   copy {nbytes / best / 1e6:5.1f} GB/s (median {nbytes / med / 1e6:5.1f})")


def dw_case(name, n, c, h, w, k, s, cl, repeat, backward):
    x = torch.randn(n, c, h, w)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    wt, sc, sh = torch.randn(c, 1, k, k), torch.rand(c) + 0.5, torch.randn(c)
    conf = (s, [k // 2] * 4, 1, "relu", 0.0, 0.0)  # stride, padding, dilation, act, alpha, beta
    op = torch.ops.dasp_kernels
    y = op.dwconv_bn_act(x, wt, sc, sh, *conf)
    torch.testing.assert_close(y, reference.dwconv_bn_act(x, wt, sc, sh, *conf),
                               rtol=1e-4, atol=1e-4)
    nbytes = (x.numel() + y.numel()) * x.element_size()
    with torch.no_grad():
        r = best_ms(lambda: reference.dwconv_bn_act(x, wt, sc, sh, *conf), repeat)
        row(f"dwconv {name} fwd", r, lambda: op.dwconv_bn_act(x, wt, sc, sh, *conf), repeat,
            nbytes)
    if backward:
        go = torch.randn_like(y)
        xx, ww, ss, hh = (t.clone().requires_grad_() for t in (x, wt, sc, sh))

        def ref_bwd():
            out = reference.dwconv_bn_act(xx, ww, ss, hh, *conf)
            torch.autograd.grad(out, (xx, ww, ss, hh), go)

        r = best_ms(ref_bwd, repeat)
        row(f"dwconv {name} fwd+bwd(ref) / bwd(cpu)", r,
            lambda: op._dwconv_bn_act_backward(go, x, wt, sc, sh, *conf), repeat,
            nbytes * 2 + x.numel() * x.element_size())


def ppm_case(name, n, cin, cout, h, w, cl, repeat, backward):
    x = torch.randn(n, cin, h, w)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    wt = torch.randn(cout, cin, 1, 1) / cin ** 0.5
    res = torch.randn(n, cout, (h + 1) // 2, (w + 1) // 2)
    if cl:
        res = res.contiguous(memory_format=torch.channels_last)
    op = torch.ops.dasp_kernels
    y = op.ppm_add(x, wt, res)
    torch.testing.assert_close(y, reference.ppm_add(x, wt, res), rtol=1e-4, atol=1e-4)
    nbytes = (x.numel() + 2 * y.numel()) * x.element_size()
    with torch.no_grad():
        r = best_ms(lambda: reference.ppm_add(x, wt, res), repeat)
        row(f"ppm_add {name} fwd", r, lambda: op.ppm_add(x, wt, res), repeat, nbytes)
    if backward:
        go = torch.randn_like(y)
        xx, ww = x.clone().requires_grad_(), wt.clone().requires_grad_()

        def ref_bwd():
            torch.autograd.grad(reference.ppm_add(xx, ww, res), (xx, ww), go)

        r = best_ms(ref_bwd, repeat)
        row(f"ppm_add {name} fwd+bwd(ref) / bwd(cpu)", r, lambda: op._ppm_add_backward(go, x, wt),
            repeat, 2 * nbytes)


def positive_int(text):
    """argparse type: an integer >= 1 (a count of calls, threads or MiB)."""
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return v


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=positive_int, default=None)
    ap.add_argument("--repeat", type=positive_int, default=10)
    ap.add_argument("--backward", action="store_true")
    ap.add_argument("--only", default="", help="substring filter on case names")
    ap.add_argument("--cpu-time", action="store_true",
                    help="time by process CPU time / threads instead of wall time")
    ap.add_argument("--copy-mb", type=positive_int, default=256, help="size of the copy ceiling's tensors")
    ap.add_argument("--before", choices=["none", "flush", "idle", "flush+idle"], default="none",
                    help="what happens, untimed, before each timed call (see the module doc)")
    ap.add_argument("--idle-ms", type=positive_int, default=1,
                    help="length of the idle step of --before idle / flush+idle")
    args = ap.parse_args()
    global CPU_TIME, BEFORE, IDLE_S
    CPU_TIME = args.cpu_time
    BEFORE = args.before
    IDLE_S = args.idle_ms / 1e3
    before = args.before + (f" ({args.idle_ms} ms)" if "idle" in args.before else "")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"ATen CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"dasp_kernels CPU build {dasp_kernels.cpu_isa()}, "
          f"backends {dasp_kernels.available_backends()}, before each call: {before}")
    copy_row(args.repeat, args.copy_mb)
    cases = [
        ("stage1 1x3x1024x1024 K7 s2", lambda: dw_case("stage1 1x3x1024x1024 K7 s2", 1, 3, 1024,
                                                         1024, 7, 2, False, args.repeat,
                                                         args.backward)),
        ("stage1 CL 1x3x1024x1024 K7 s2", lambda: dw_case("stage1 CL 1x3x1024x1024 K7 s2", 1, 3,
                                                            1024, 1024, 7, 2, True, args.repeat,
                                                            args.backward)),
        ("stage2 1x64x512x512 K3 s2", lambda: dw_case("stage2 1x64x512x512 K3 s2", 1, 64, 512, 512,
                                                        3, 2, False, args.repeat, args.backward)),
        ("stage2 CL 1x64x512x512 K3 s2", lambda: dw_case("stage2 CL 1x64x512x512 K3 s2", 1, 64,
                                                           512, 512, 3, 2, True, args.repeat,
                                                           args.backward)),
        ("ppm 1x64x512x512->64", lambda: ppm_case("1x64x512x512->64", 1, 64, 64, 512, 512, False,
                                                  args.repeat, args.backward)),
        ("ppm CL 1x64x512x512->64", lambda: ppm_case("CL 1x64x512x512->64", 1, 64, 64, 512, 512,
                                                     True, args.repeat, args.backward)),
    ]
    for name, fn in cases:
        if args.only in name:
            fn()


if __name__ == "__main__":
    main()
