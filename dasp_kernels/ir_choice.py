"""Whether a fused inverted-residual block runs our one-pass `inverted_residual` op or its layers.

fuse() promises a model never slower than the one it was given. The one-pass op saves the wide
tensors' trips to memory, which is what counts on large images; on small ones oneDNN's
convolutions with their post-ops (what inductor runs with freezing) can be faster. So, as for the
depthwise layers (dw_choice.py), a block runs whichever is faster at its shape, measured once:
- eagerly, per block and input shape, against the block's own layers (its forward as fuse left
  it: the depthwise layer fused, the 1x1 convs and norms as they were), at its first call;
- under torch.compile, at trace time (a constant of the graph), against what inductor makes of
  the layers: the three convolutions on oneDNN with folded weights, activations as post-ops and
  the residual as a binary post-op, on channels_last inputs (onednn_block).

DASP_KERNELS_IR_IMPL=dasp or =layers forces one (=auto, the default, measures); `chosen()` lists
what was measured.
"""
import torch

from dasp_kernels import dw_choice, reference, timing

IMPLS = ("auto", "dasp", "layers")
# key -> ("dasp" or "layers", our ms, the layers' ms)
_CHOSEN = {}


@torch._dynamo.assume_constant_result
def forced():
    """DASP_KERNELS_IR_IMPL: "auto", "dasp" or "layers"."""
    return dw_choice.env_mode("DASP_KERNELS_IR_IMPL", IMPLS)


def chosen():
    """{key: (the choice, our ms, the layers' ms)} measured so far in this process (20% quantiles
    of the calls timed)."""
    return dict(_CHOSEN)


def _time(fns):
    # Back to back, as the blocks of a model run; the 20% quantile, which other work moves least.
    t = timing.measure_interleaved(fns, warmup=2, min_reps=5, max_reps=200, min_time_s=0.05,
                                   gap_s=0.0)
    return t["dasp"].p20_ms, t["layers"].p20_ms


def choose_eager(key, op, layers):
    """'dasp' or 'layers' for an eager block: op() and layers() timed at the first request."""
    key = ("eager",) + key + (torch.get_num_threads(),)
    if key not in _CHOSEN:
        with torch.no_grad():
            ours, theirs = _time({"dasp": op, "layers": layers})
        _CHOSEN[key] = ("dasp" if ours <= theirs else "layers", ours, theirs)
    return _CHOSEN[key][0]


def compiled_key(args):
    """What the choice under torch.compile depends on, from the op's arguments, as constants."""
    x, ew, dw, pw = args[0], args[1], args[7], args[16]
    se = None if len(args) == 23 or args[23] is None else (args[23].shape[0], *args[27:31])
    return (tuple(x.shape), None if ew is None else ew.shape[0], tuple(dw.shape), pw.shape[0],
            tuple(args[4:7]), args[10], tuple(args[11]), *args[12:16], *args[19:23], se)


@torch._dynamo.assume_constant_result
def choose_compiled(key):
    """'dasp' or 'layers' for a block under torch.compile (run by dynamo at trace time)."""
    key = ("compiled",) + key + (torch.get_num_threads(),)
    if key not in _CHOSEN:
        from torch._subclasses.fake_tensor import unset_fake_temporarily

        with unset_fake_temporarily(), torch.no_grad():
            args = _random_args(key)
            ours, theirs = _time({"dasp": lambda: torch.ops.dasp_kernels.inverted_residual(*args),
                                  "layers": onednn_block(args)})
        _CHOSEN[key] = ("dasp" if ours <= theirs else "layers", ours, theirs)
    return _CHOSEN[key][0]


def _random_args(key):
    """The op's arguments for a compiled_key (plus its prefix and thread count), channels_last,
    random values."""
    (_, shape, e, dw_shape, co, eact, stride, padding, dilation, dact, da, db, pact, pa, pb,
     residual, se, _) = key
    gen = torch.Generator().manual_seed(0)
    c = shape[1]

    def rand(*s):
        return torch.rand(*s, generator=gen) + 0.5

    x = torch.randn(shape, generator=gen).contiguous(memory_format=torch.channels_last)
    expand = (rand(e, c, 1, 1), rand(e), rand(e)) if e is not None else (None,) * 3
    width = dw_shape[0]
    squeeze = () if se is None else (rand(se[0], width, 1, 1), rand(se[0]),
                                     rand(width, se[0], 1, 1), rand(width), *se[1:])
    return (x, *expand, *eact, rand(*dw_shape), rand(width), rand(width), stride, list(padding),
            dilation, dact, da, db, rand(co, width, 1, 1), rand(co), rand(co), pact, pa, pb,
            residual, *squeeze)


def _conv_post_op(x, w, shift, stride, padding, dilation, groups, act, alpha, beta):
    """A callable: act(conv2d(input, w) + shift) on oneDNN, the weight packed for x's shape as
    inductor's frozen graph holds it (packing is outside the timed call there, so here too)."""
    packed = torch.ops.mkldnn._reorder_convolution_weight(
        w, [padding[0], padding[2]], [stride, stride], [dilation, dilation], groups,
        list(x.shape))
    attr, scalars, algorithm = dw_choice._POST_OPS[act]
    return lambda inp: torch.ops.mkldnn._convolution_pointwise(
        inp, packed, shift, [padding[0], padding[2]], [stride, stride], [dilation, dilation],
        groups, attr, scalars(float(alpha), float(beta)), algorithm)


def onednn_block(args):
    """A callable running the block of the op's arguments `args` (float32, channels_last) as
    inductor with freezing does: three oneDNN convolutions with post-ops (and SE between the
    last two in ATen: the mean, two tiny FCs, the gate, the product)."""
    (x, ew, es, esh, eact, ea, eb, dw, ds, dsh, stride, pad, dil, dact, da, db, pw, ps, psh,
     pact, pa, pb, residual) = args[:23]
    steps = []
    y = x
    if ew is not None:
        f = _conv_post_op(y, ew * es.view(-1, 1, 1, 1), esh, 1, [0] * 4, 1, 1, eact, ea, eb)
        steps.append(f)
        y = f(y)
    f = _conv_post_op(y, dw * ds.view(-1, 1, 1, 1), dsh, stride, pad, dil, dw.shape[0], dact, da,
                      db)
    steps.append(f)
    y = f(y)
    if len(args) > 23 and args[23] is not None:
        steps.append(lambda inp: inp * reference.squeeze_excitation(inp, *args[23:]))
    wp = pw * ps.view(-1, 1, 1, 1)
    if residual and pact == "none":
        packed = torch.ops.mkldnn._reorder_convolution_weight(wp, [0, 0], [1, 1], [1, 1], 1,
                                                              list(y.shape))
        steps.append(lambda inp: torch.ops.mkldnn._convolution_pointwise.binary(
            inp, x, packed, psh, [0, 0], [1, 1], [1, 1], 1, "add", None, None, [], None))
    else:
        f = _conv_post_op(y, wp, psh, 1, [0] * 4, 1, 1, pact, pa, pb)
        steps.append(f if not residual else (lambda inp, f=f: f(inp) + x))

    def run():
        out = x
        for step in steps:
            out = step(out)
        return out
    return run


def use_op(args, layers):
    """Whether a fused block with the op's arguments `args` runs the op (see the module
    docstring); layers: the block's own forward on args[0], run eagerly in its stead."""
    mode = forced()
    if mode != "auto":
        return mode == "dasp"
    x, pad = args[0], args[11]
    if not (x.dtype == torch.float32 and pad[0] == pad[1] and pad[2] == pad[3]
            and all(isinstance(d, int) for d in x.shape) and dw_choice._mkldnn_available()):
        return True  # nothing to measure against (oneDNN takes symmetric padding only)
    key = compiled_key(args)
    if torch.compiler.is_compiling():
        return choose_compiled(key) == "dasp"
    channels_last = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    return choose_eager(key + (channels_last,),
                        lambda: torch.ops.dasp_kernels.inverted_residual(*args), layers) == "dasp"
