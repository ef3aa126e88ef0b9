"""Helpers shared by the Triton ops: device rules, launch gating, tile sizes, the 2x2 pool tile.

On a GPU the ops are ordinary `triton_op`s: torch.compile traces into their bodies and sees the
kernels. Under TRITON_INTERPRET=1 `@triton.jit` makes interpreter functions, which `wrap_triton`
returns unwrapped and which can only run on real CPU tensors; there the ops stay opaque to tracing
(see `keep_opaque_when_interpreted`) and their bodies skip the launches when given fake tensors,
so the same body still serves as the fake kernel.
"""
import torch
import triton
import triton.language as tl
from torch._subclasses.fake_tensor import is_fake

LIB = "dasp_kernels"


@triton.jit
def _probe():
    pass


# What `triton.jit` did when this package was imported: TRITON_INTERPRET is read at decoration time.
try:
    from triton.runtime.interpreter import InterpretedFunction as _Interpreted

    INTERPRET = isinstance(_probe, _Interpreted)
except ImportError:  # pragma: no cover - every triton with an interpreter has this class
    INTERPRET = False


def check_device(op, x):
    """GPU tensors, CPU tensors when the kernels were built for the interpreter, or meta."""
    if x.device.type == "meta":  # shapes only: the body then launches nothing
        return
    if x.device.type == "cpu":
        torch._check(INTERPRET, lambda: (
            f"{op}: got cpu tensors, but the Triton kernels run on the CPU only under the "
            "interpreter: set TRITON_INTERPRET=1 before triton is imported"))
    else:
        torch._check(x.device.type == "cuda",
                     lambda: f"{op}: expected tensors on a cuda device or on cpu, got {x.device}")


def should_launch(*tensors):
    """False for meta tensors, and for fake ones under the interpreter: nothing to run on."""
    if any(t.device.type == "meta" for t in tensors):
        return False
    return not (INTERPRET and any(is_fake(t) for t in tensors))


def keep_opaque_when_interpreted(op):
    """Under the interpreter, keep `op` as one opaque node when torch.compile / AOT functionalizes.

    The default rule of `triton_op` decomposes the op into its body so that compile sees the
    kernels, which needs `wrap_triton` capture; interpreter kernels cannot be captured.
    """
    if not INTERPRET:
        return
    from torch._subclasses.functional_tensor import FunctionalTensorMode

    def opaque(mode, func, types, args, kwargs):
        return mode.__torch_dispatch__(func, types, args, kwargs)

    op.register_torch_dispatch(FunctionalTensorMode, opaque)


class _TritonBackwards:
    """The Triton ops' backward ops under the names the autograd of dasp_kernels/ops.py calls:
    _<op>_backward is torch.ops.dasp_kernels._<op>_backward_triton."""

    def __getattr__(self, name):
        return getattr(torch.ops.dasp_kernels, name + "_triton")


def register_autograd(op, name):
    """Autograd of the Triton op `op`: the C++ op `name`'s (dasp_kernels/ops.py, one description
    for both), calling the Triton backward op."""
    from dasp_kernels import ops

    backward, setup = ops.autograd_of(name, _TritonBackwards())
    op.register_autograd(backward, setup_context=setup)


def on_interpreter(x):
    return x.device.type == "cpu"


def pow2(n, lo=1, hi=None):
    """Next power of two of n, clamped to [lo, hi]."""
    p = triton.next_power_of_2(max(int(n), 1))
    p = max(p, lo)
    return min(p, hi) if hi is not None else p


def acc_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def dot16(x):
    """Whether tl.dot takes x's half dtype (tensor cores) rather than the accumulator's.

    Both give the same products (exact in float32) accumulated in float32; the interpreter stores
    bfloat16 as raw bits and cannot multiply it, so there the operands go up to float32.
    """
    return x.dtype in (torch.float16, torch.bfloat16) and not on_interpreter(x)


def out_like(x, shape, dtype=None):
    """Uninitialised output of `shape` in x's suggested memory format (as the C++ kernels do)."""
    from dasp_kernels._checks import output_memory_format

    return torch.empty(shape, dtype=dtype or x.dtype, device=x.device,
                       memory_format=output_memory_format(x))


def num_programs_target(x):
    """Programs worth launching for the split reductions: the interpreter pays per program."""
    if x.device.type != "cuda":  # the interpreter, or meta tensors when only compiling
        return 1
    return 4 * torch.cuda.get_device_properties(x.device).multi_processor_count


def max_offset(t):
    """Largest element offset a kernel can address in t (its strides may be anything)."""
    return sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()) if size > 0)


# Offsets are int32 unless some tensor reaches this far; the margin covers masked lanes that
# compute offsets a tile or a few rows past the end.
INT32_LIMIT = 2**30
FORCE_INT64_INDEX = False  # tests set this to run the int64 path on small tensors


def index64(*tensors):
    """IDX64 for a launch: offsets in int64 when any tensor (or pixel count) is too large."""
    return FORCE_INT64_INDEX or any(max_offset(t) >= INT32_LIMIT or t.numel() >= INT32_LIMIT
                                    for t in tensors)


@triton.jit
def pixel_tile(Q, OH, OW, IDX: tl.constexpr, BLOCK_Q: tl.constexpr):
    """This program's output pixels (grid axis 0): their mask and n, oh, ow as [1, BLOCK_Q] rows,
    to pair with a [BLOCK, 1] column of channels."""
    q = tl.program_id(0).to(IDX) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    r = q % (OH * OW)
    return q < Q, (q // (OH * OW))[None, :], (r // OW)[None, :], (r % OW)[None, :]


@triton.jit
def pool2x2_tile(x_ptr, base, ih0, iw0, H, W, sxh, sxw, mask, ACC: tl.constexpr):
    """2x2 window max starting at (ih0, iw0), with PyTorch's scan order, ties and NaN rule.

    Scans (0,0), (0,1), (1,0), (1,1) and takes an element when it is greater than the best so far
    or NaN, as ATen's max_pool2d does; returns (max, index 0..3 of the chosen element). `base` is
    the offset of (n, c) for each element of the tile; `mask` the valid elements. (0,0) is
    always inside x in ceil mode. Invalid elements give 0 so they add nothing to a dot. Values are
    compared in ACC (exact for every input dtype; the interpreter keeps bfloat16 as raw bits).
    """
    in_w = (iw0 + 1) < W
    in_h = (ih0 + 1) < H
    p = x_ptr + base + ih0 * sxh + iw0 * sxw
    best = tl.load(p, mask=mask, other=0.0).to(ACC)
    idx = tl.zeros(best.shape, dtype=tl.int32)
    m = mask & in_w
    v = tl.load(p + sxw, mask=m, other=0.0).to(ACC)
    take = m & ((v > best) | (v != v))
    best = tl.where(take, v, best)
    idx = tl.where(take, 1, idx)
    m = mask & in_h
    v = tl.load(p + sxh, mask=m, other=0.0).to(ACC)
    take = m & ((v > best) | (v != v))
    best = tl.where(take, v, best)
    idx = tl.where(take, 2, idx)
    m = mask & in_h & in_w
    v = tl.load(p + sxh + sxw, mask=m, other=0.0).to(ACC)
    take = m & ((v > best) | (v != v))
    best = tl.where(take, v, best)
    idx = tl.where(take, 3, idx)
    return best, idx


@triton.jit
def dw_tile(x_ptr, w_ptr, xbase, wbase, oh, ow, mask, wmask, H, W, sxh, sxw, swh, sww,
            K: tl.constexpr, STRIDE: tl.constexpr, PAD_T: tl.constexpr, PAD_L: tl.constexpr,
            DIL: tl.constexpr, ACC: tl.constexpr):
    """Depthwise KxK correlation at output pixels (oh, ow), in the ACC dtype: tap (kh, kw) of
    output (oh, ow) reads x[oh * STRIDE - PAD_T + kh * DIL, ow * STRIDE - PAD_L + kw * DIL].

    Tiles are [channels, pixels]: `xbase` the offsets of (n, c) in x and `mask` the valid
    elements, both [C, P]; `oh`, `ow` [1, P]; `wbase` the offsets of c in the weight and `wmask`,
    both [C, 1], so each weight is loaded once per channel.
    """
    acc = tl.zeros(mask.shape, dtype=ACC)
    for kh in tl.static_range(K):
        ih = oh * STRIDE - PAD_T + kh * DIL
        mh = mask & (ih >= 0) & (ih < H)
        for kw in tl.static_range(K):
            iw = ow * STRIDE - PAD_L + kw * DIL
            m = mh & (iw >= 0) & (iw < W)
            xv = tl.load(x_ptr + xbase + ih * sxh + iw * sxw, mask=m, other=0.0)
            wv = tl.load(w_ptr + wbase + kh * swh + kw * sww, mask=wmask, other=0.0)
            acc += xv.to(ACC) * wv.to(ACC)
    return acc
