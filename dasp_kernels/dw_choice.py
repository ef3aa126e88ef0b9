"""Which kernel a fused depthwise layer runs on the CPU: ours, or oneDNN's convolution with the
norm folded into its weights and the activation as a post-op.

fuse() promises a model that is never slower than the one it was given, eager or compiled. Our
`dwconv_bn_act` kernel is the faster one at some shapes (NCHW inputs, where PyTorch's eager
depthwise path is slow; large channels-last images) and oneDNN's depthwise convolution with a
fused post-op, what inductor runs with freezing, at others (channels-last ImageNet sizes:
benchmarks/bench_dwconv_layers.py). So a fused layer runs whichever is faster at its shape,
measured once per shape, memory format, activation and thread count in this process (a few ms,
at the layer's first call, or at trace time under torch.compile, where the choice is a constant
of the graph), as cudnn.benchmark does on GPUs.

DASP_KERNELS_DW_IMPL=dasp or =onednn forces one (=auto, the default, measures); `chosen()` lists
what was measured and picked.
"""
import os

import torch

from dasp_kernels import timing

IMPLS = ("auto", "dasp", "onednn")

# dwconv_bn_act's activation -> oneDNN's post-op (attr, scalars from (alpha, beta), algorithm).
_POST_OPS = {
    "none": ("none", lambda a, b: [], None),
    "relu": ("relu", lambda a, b: [], None),
    "hardtanh": ("hardtanh", lambda a, b: [a, b], None),
    "hardswish": ("hardswish", lambda a, b: [], None),
    "silu": ("swish", lambda a, b: [], None),
    "gelu": ("gelu", lambda a, b: [], "none"),
    "gelu_tanh": ("gelu", lambda a, b: [], "tanh"),
    "leaky_relu": ("leaky_relu", lambda a, b: [a], None),
}

# layer key (see layer_key) + thread count -> ("dasp" or "onednn", our ms, oneDNN's ms)
_CHOSEN = {}


# The functions marked assume_constant_result run at trace time under torch.compile, their results
# constants of the graph (dynamo does not trace environment reads or timing loops).
@torch._dynamo.assume_constant_result
def forced():
    """DASP_KERNELS_DW_IMPL: "auto", "dasp" or "onednn"."""
    return env_mode("DASP_KERNELS_DW_IMPL", IMPLS)


def env_mode(variable, modes):
    """The environment variable's value, one of `modes` (the first, "auto", when unset)."""
    value = os.environ.get(variable, modes[0])
    if value not in modes:
        raise ValueError(f"{variable}: expected {', '.join(modes[:-1])} or {modes[-1]}, got "
                         f"{value!r}")
    return value


def run_dtype(x):
    """The dtype the layer's convolution runs in: autocast's where autocast is on (F.conv2d and
    our op, dasp_kernels/autocast.py, both cast to it), else x's."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def onednn_can_run(x, padding, act):
    """Whether oneDNN's path applies: float32, or bfloat16 (autocast's), on the CPU, symmetric
    padding (its padding argument is one value per side pair), static shapes (the choice is keyed
    on them). Under float16 autocast our op runs in float32 and oneDNN's would in float16: ours."""
    return (x.device.type == "cpu" and run_dtype(x) in (torch.float32, torch.bfloat16)
            and act in _POST_OPS
            and _mkldnn_available()
            and padding[0] == padding[1] and padding[2] == padding[3]
            and all(isinstance(d, int) for d in x.shape))


@torch._dynamo.assume_constant_result
def _mkldnn_available():
    return torch.backends.mkldnn.is_available()


def onednn_conv_act(x, w_folded, shift, stride, padding, dilation, act, alpha, beta):
    """act(depthwise_conv2d(x, w_folded) + shift) as one oneDNN call (padding [t, b, l, r],
    symmetric)."""
    attr, scalars, algorithm = _POST_OPS[act]
    return torch.ops.mkldnn._convolution_pointwise(
        x, w_folded, shift, [padding[0], padding[2]], [stride, stride], [dilation, dilation],
        x.shape[1], attr, scalars(float(alpha), float(beta)), algorithm)


def layer_key(x, k, stride, padding, dilation, act, alpha, beta):
    """What the choice depends on, as constants (dynamo passes them to `choose` as such). Under
    torch.compile the traced input is NCHW, but inductor runs a graph with convolutions in
    channels_last and hands our op that layout (it is flexible_layout): measured so."""
    channels_last = torch.compiler.is_compiling() or (
        not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last))
    return (tuple(x.shape), channels_last, k, stride, tuple(padding), dilation, act,
            float(alpha), float(beta), str(run_dtype(x)).removeprefix("torch."))


def use_onednn(x, k, stride, padding, dilation, act, alpha, beta):
    """Whether the layer should run on oneDNN's path (see the module docstring)."""
    mode = forced()
    if mode == "dasp" or not onednn_can_run(x, padding, act):
        return False
    if mode == "onednn":
        return True
    return choose(layer_key(x, k, stride, padding, dilation, act, alpha, beta)) == "onednn"


@torch._dynamo.assume_constant_result
def choose(key):
    """'dasp' or 'onednn' for a layer key, measured at the first request. Under torch.compile
    dynamo runs this at trace time and keeps the result as a constant of the graph."""
    key = key + (torch.get_num_threads(),)
    if key not in _CHOSEN:
        _CHOSEN[key] = _measure(key)
    return _CHOSEN[key][0]


def chosen():
    """{layer key: (the choice, our ms, oneDNN's ms)} measured so far in this process (20%
    quantiles of the calls timed)."""
    return dict(_CHOSEN)


def _measure(key):
    shape, channels_last, k, stride, padding, dilation, act, alpha, beta, dtype, _ = key
    dtype = getattr(torch, dtype)  # bfloat16 under autocast: both sides measured in it
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    with unset_fake_temporarily(), torch.no_grad():
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(shape, generator=gen)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        c = shape[1]
        w = torch.randn(c, 1, k, k, generator=gen)
        scale, shift = torch.rand(c, generator=gen) + 0.5, torch.randn(c, generator=gen)
        x, w, scale, shift = (t.to(dtype) for t in (x, w, scale, shift))
        # oneDNN's weight in its own layout for this input, as the fused layer and inductor's
        # frozen graph hand it over.
        w_packed = torch.ops.mkldnn._reorder_convolution_weight(
            w * scale.view(-1, 1, 1, 1), [padding[0], padding[2]], [stride, stride],
            [dilation, dilation], c, list(shape))
        fns = {
            "dasp": lambda: torch.ops.dasp_kernels.dwconv_bn_act(
                x, w, scale, shift, stride, list(padding), dilation, act, alpha, beta),
            "onednn": lambda: onednn_conv_act(x, w_packed, shift, stride, padding, dilation, act,
                                              alpha, beta),
        }
        # Back to back, as the layers of a model run (no pause for the worker threads to
        # sleep); compared on the 20% quantile, which other work on the machine moves least.
        t = timing.measure_interleaved(fns, warmup=3, min_reps=10, max_reps=400,
                                       min_time_s=0.05, gap_s=0.0)
    ours, onednn = t["dasp"].p20_ms, t["onednn"].p20_ms
    return ("dasp" if ours <= onednn else "onednn"), ours, onednn
