"""fuse()'s depthwise conv + norm (+ activation) fusion in place, for models no one here wrote.

A depthwise Conv2d followed by a BatchNorm2d (and an activation) is fused where the modules are,
so that the model's structure and state_dict keys stay as they were:
- the conv becomes a FusedDWConv2d (an nn.Conv2d with the same parameters) that runs
  dwconv_bn_act with the norm folded and the activation fused;
- the norm and the activation stay where they are with their parameters and buffers, and pass
  their input through while the fusion is on (their class is swapped for a subclass that does so,
  see _pass_through).
The fusion is on while the norm is in eval mode (`not bn.training`): all three modules decide by
the same flag, so a model trained with frozen BatchNorm (bn.eval() inside model.train()) stays
right. In train mode the conv runs the kernel without norm and the norm and activation run as
before (batch statistics, running stats).

Where a conv is followed by its norm: consecutive children of an nn.Sequential (torchvision's
Conv2dNormActivation, MobileNet/EfficientNet/ShuffleNet/MNASNet layers), and the known blocks of
timm whose forward applies them in a row (TIMM_PAIRS).
"""
import weakref

import torch
import torch.nn as nn
import torch.nn.functional as F

from dasp_kernels import _checks, _loader, autocast, dw_choice, functional, reference
from dasp_kernels.reference import fold_bn

# timm blocks (module, class) whose forward applies conv then norm directly: (conv, norm) names.
TIMM_PAIRS = {
    ("timm.models._efficientnet_blocks", "DepthwiseSeparableConv"): [("conv_dw", "bn1")],
    ("timm.models._efficientnet_blocks", "InvertedResidual"): [("conv_dw", "bn2")],
    ("timm.layers.conv_bn_act", "ConvNormAct"): [("conv", "bn")],
    ("timm.models._efficientnet_blocks", "ConvBnAct"): [("conv", "bn1")],
}


def _qualname(m):
    """(module, class name) of m's class, or of the class fuse swapped out (swapped_class)."""
    t = getattr(type(m), "_dasp_original", type(m))
    return t.__module__, t.__name__


def activation_spec(m):
    """(act, alpha, beta) of dwconv_bn_act for an activation module, None if it has none."""
    t = type(m)
    if t is nn.Identity:
        return "none", 0.0, 0.0
    if t is nn.ReLU:
        return "relu", 0.0, 0.0
    if t is nn.ReLU6:
        return "hardtanh", 0.0, 6.0
    if t is nn.Hardtanh:
        return "hardtanh", float(m.min_val), float(m.max_val)
    if t is nn.Hardswish:
        return "hardswish", 0.0, 0.0
    if t is nn.SiLU:
        return "silu", 0.0, 0.0
    if t is nn.GELU:
        return ("gelu" if m.approximate == "none" else "gelu_tanh"), 0.0, 0.0
    if t is nn.LeakyReLU:
        return "leaky_relu", float(m.negative_slope), 0.0
    return None


def _is_timm_bn_act(bn):
    return _qualname(bn) == ("timm.layers.norm_act", "BatchNormAct2d")


def norm_problem(bn, channels):
    """None if `bn` can be folded after a conv with `channels` outputs, else why not."""
    if type(bn) is not nn.BatchNorm2d and not _is_timm_bn_act(bn):
        return f"followed by {type(bn).__name__}, not nn.BatchNorm2d"
    if bn.num_features != channels or not bn.track_running_stats:
        return "BatchNorm2d without running stats or with other channels"
    if _is_timm_bn_act(bn):
        if type(getattr(bn, "drop", nn.Identity())) is not nn.Identity:
            return f"BatchNormAct2d with drop {type(bn.drop).__name__}"
        if activation_spec(getattr(bn, "act", nn.Identity())) is None:
            return f"BatchNormAct2d with activation {type(bn.act).__name__}, which is not fused"
    return None


def conv_problem(conv):
    """None if `conv` fits dwconv_bn_act, else why not."""
    if not isinstance(conv, nn.Conv2d) or (type(conv) is not nn.Conv2d and not _is_same_conv(conv)):
        return f"{type(conv).__name__}, not an nn.Conv2d"
    k, s, d = conv.kernel_size, conv.stride, conv.dilation
    if not (conv.groups == conv.in_channels == conv.out_channels):
        return "not depthwise (groups == in == out channels)"
    if k[0] != k[1] or not 1 <= k[0] <= _checks.DW_MAX_K:
        return f"kernel {k} is not square with 1 <= K <= {_checks.DW_MAX_K}"
    if s[0] != s[1] or s[0] not in (1, 2):
        return f"stride {s} is not 1 or 2"
    if d[0] != d[1]:
        return f"dilation {d} differs between H and W"
    if conv.padding_mode != "zeros":
        return f"padding_mode {conv.padding_mode!r}, not zeros"
    span = d[0] * (k[0] - 1)
    if not isinstance(conv.padding, str) and not all(0 <= p <= span for p in conv.padding):
        return f"padding {conv.padding} beyond dilation * (K - 1) = {span}"
    return None


def folded(conv, bn):
    """(scale, shift) of an eval-mode `bn` after `conv`, the conv's bias folded into shift."""
    scale, shift = fold_bn(bn)
    if conv.bias is not None:
        shift = shift + conv.bias * scale
    return scale, shift


def _is_same_conv(conv):
    """timm's Conv2dSame: TensorFlow "same" padding computed from each input's size."""
    return _qualname(conv) == ("timm.layers.conv2d_same", "Conv2dSame")


def _conv_padding(conv):
    if _is_same_conv(conv) or conv.padding == "same":
        return "same"
    if conv.padding == "valid":
        return 0
    return tuple(conv.padding)


# (original class, kind): the subclass swapped in (swapped_class).
_SWAPPED = {}


def swapped_class(cls, kind, make_forward):
    """The subclass of `cls` named `kind` + cls's name whose forward is make_forward(cls) (one
    per (cls, kind), made on first use). Its instances pickle as `cls` plus a swap back (see
    _new_swapped): the subclass itself is made at run time, not importable."""
    if (cls, kind) not in _SWAPPED:
        def __reduce_ex__(self, protocol):
            # The state goes separately (set after construction): it may refer back to the module.
            return _new_swapped, (cls, kind, make_forward), self.__dict__

        _SWAPPED[cls, kind] = type(f"{kind}{cls.__name__}", (cls,), {
            "forward": make_forward(cls), "__reduce_ex__": __reduce_ex__, "_dasp_original": cls,
            "__doc__": f"{cls.__name__} with the forward of dasp_kernels' {kind}."})
    return _SWAPPED[cls, kind]


def _new_swapped(cls, kind, make_forward):
    module = cls.__new__(cls)
    module.__class__ = swapped_class(cls, kind, make_forward)
    return module


def _pass_through_forward(cls):
    def forward(self, x):
        if not self._dasp_fused_bn[0].training:
            return x
        return cls.forward(self, x)
    return forward


def _pass_through(module, bn):
    """`module` (the norm or the activation after a fused conv) made to return its input while
    `bn` is in eval mode, by swapping its class for a cached subclass: its parameters, buffers,
    children and state_dict keys stay."""
    module.__class__ = swapped_class(type(module), "FusedAway", _pass_through_forward)
    module._dasp_fused_bn = (bn,)  # a tuple: not registered as a child (no second state key)


def is_fused_away(module):
    return hasattr(module, "_dasp_fused_bn")


# Per FusedDWConv2d: (key of the tensors folded, scale, shift, {input shape: the folded weight in
# oneDNN's layout}). Outside the module, so that copies and pickles of it carry none of it (a
# oneDNN-packed weight cannot be copied).
_FOLD_CACHE = weakref.WeakKeyDictionary()


class FusedDWConv2d(nn.Conv2d):
    """A depthwise nn.Conv2d that also does the BatchNorm2d (and activation) after it, which stay
    in the model as pass-throughs (see the module docstring). Same parameters as the conv."""

    @classmethod
    def replacing(cls, conv, bn, act, backend="auto"):
        """The conv of conv -> bn (-> act); bn and act become pass-throughs. act None: none, or
        the activation of timm's BatchNormAct2d."""
        if act is None and _is_timm_bn_act(bn):
            act = getattr(bn, "act", nn.Identity())
            spec = activation_spec(act)
            act = None  # it stays inside bn, which passes through as a whole
        else:
            spec = activation_spec(act if act is not None else nn.Identity())
        new = cls.__new__(cls)
        new.__dict__ = conv.__dict__.copy()  # the same Parameters, hooks and hyper-parameters
        new._dasp = (bn, backend, _conv_padding(conv))
        new.act_spec = spec  # (act, alpha, beta) of dwconv_bn_act
        _pass_through(bn, bn)
        if act is not None:
            _pass_through(act, bn)
        return new

    def forward(self, x):
        return _in_weight_dtype(self._forward, x, self.weight)

    def _inference_fast(self, x):
        """Eager CPU inference without the per-call Python work (~25 us, the size of the op
        itself at 7x7 planes): the folded norm is cached until a parameter or buffer of the conv
        or norm changes (their version counters say so), and the op is called without the
        wrapper's checks (the kernel's own say the same words). None where it does not apply."""
        bn, backend, pad = self._dasp
        if (bn.training or torch.is_grad_enabled() or torch.compiler.is_compiling()
                or x.device.type != "cpu"
                or backend not in ("auto", "cpu") or not _loader.has_cpu_extension()
                or x.dtype not in (torch.float32, torch.float64)
                or torch.is_autocast_enabled("cpu")  # _forward casts as autocast does
                or torch.onnx.is_in_onnx_export()):
            return None
        tensors = [t for t in (self.weight, self.bias, bn.weight, bn.bias, bn.running_mean,
                               bn.running_var) if t is not None]
        key = (bn.eps, *((id(t), t.data_ptr(), t._version) for t in tensors))
        cache = _FOLD_CACHE.get(self)
        if cache is None or cache[0] != key:
            cache = _FOLD_CACHE[self] = (key, *folded(self, bn), {})
        k, d, s = self.kernel_size[0], self.dilation[0], self.stride[0]
        p = functional._padding4(pad, x, k, s, d)
        if dw_choice.use_onednn(x, k, s, p, d, *self.act_spec):
            return dw_choice.onednn_conv_act(x, self._packed_weight(cache, x, p), cache[2], s, p,
                                             d, *self.act_spec)
        return torch.ops.dasp_kernels.dwconv_bn_act(x, self.weight, cache[1], cache[2], s, p, d,
                                                    *self.act_spec)

    def _packed_weight(self, cache, x, p):
        """The folded weight in oneDNN's layout for this input size, made once per size."""
        packed = cache[3]
        if x.shape not in packed:
            s, d = self.stride[0], self.dilation[0]
            w = self.weight * cache[1].view(-1, 1, 1, 1)
            packed[x.shape] = torch.ops.mkldnn._reorder_convolution_weight(
                w, [p[0], p[2]], [s, s], [d, d], self.groups, list(x.shape))
        return packed[x.shape]

    def _forward(self, x):
        y = self._inference_fast(x)
        if y is not None:
            return y
        bn, backend, pad = self._dasp
        k, d, s = self.kernel_size[0], self.dilation[0], self.stride[0]
        if bn.training:
            ones = torch.ones_like(bn.running_var)
            shift = self.bias if self.bias is not None else torch.zeros_like(ones)
            return functional.dwconv_bn_act(x, self.weight, ones, shift, stride=s, padding=pad,
                                            dilation=d, act="none", backend=backend)
        scale, shift = folded(self, bn)
        act, alpha, beta = self.act_spec
        p = functional._padding4(pad, x, k, s, d)
        if torch.onnx.is_in_onnx_export():  # standard ops: Pad, Conv, the activation
            w = self.weight * scale.view(-1, 1, 1, 1)
            y = F.conv2d(F.pad(x, (p[2], p[3], p[0], p[1])), w, shift, s, 0, d, self.groups)
            return reference.activation(y, act, alpha, beta)
        if dw_choice.use_onednn(x, k, s, p, d, act, alpha, beta):
            # The conv on folded weights, then the activation: under torch.compile with freezing
            # inductor makes this the one oneDNN call with a post-op that dw_choice measured.
            w = self.weight * scale.view(-1, 1, 1, 1)
            y = F.conv2d(x, w, shift, s, (p[0], p[2]), d, self.groups)
            return reference.activation(y, act, alpha, beta)
        return functional.dwconv_bn_act(x, self.weight, scale, shift, stride=s, padding=pad,
                                        dilation=d, act=act, alpha=alpha, beta=beta,
                                        backend=backend)


def _in_weight_dtype(fn, x, weight):
    """fn(x) where x has the dtype of the weights; outside autocast, a reduced-precision input
    (bf16 or fp16) is computed in the weights' dtype and the result cast back, because the ops
    take one dtype for all their tensors. Under autocast x goes as it is: the ops cast by the
    policy of dasp_kernels/autocast.py (bf16 in, bf16 out), as torch's convolutions do."""
    if (x.dtype not in (torch.bfloat16, torch.float16) or weight.dtype == x.dtype
            or autocast.target_dtype(x.device.type) is not None):
        return fn(x)
    return fn(x.to(weight.dtype)).to(x.dtype)


def _try_fuse(parent, conv_name, bn_name, act_name, backend):
    """Fuse parent.<conv_name> with parent.<bn_name> (and parent.<act_name>) if they fit."""
    conv, bn = parent._modules.get(conv_name), parent._modules.get(bn_name)
    if conv is None or bn is None or conv_problem(conv) or norm_problem(bn, conv.out_channels):
        return False
    act = parent._modules[act_name] if act_name else None
    if act is not None and (_is_timm_bn_act(bn) or activation_spec(act) is None):
        act = None
    parent._modules[conv_name] = FusedDWConv2d.replacing(conv, bn, act, backend)
    return True


def fuse_in_place(parent, backend, counts):
    """Fuse the depthwise conv + norm (+ activation) pairs among parent's own children."""
    pairs = TIMM_PAIRS.get(_qualname(parent), [])
    for conv_name, bn_name in pairs:
        if _try_fuse(parent, conv_name, bn_name, None, backend):
            counts["dwconv_bn_act"] += 1
    if not isinstance(parent, nn.Sequential):
        return
    names = list(parent._modules)
    for i in range(len(names) - 1):
        act_name = names[i + 2] if i + 2 < len(names) else None
        if _try_fuse(parent, names[i], names[i + 1], act_name, backend):
            counts["dwconv_bn_act"] += 1


def why_left(conv, parent, following):
    """Why fuse left a depthwise conv as it is."""
    why = conv_problem(conv)
    if why:
        return why
    if not isinstance(parent, nn.Sequential) and _qualname(parent) not in TIMM_PAIRS:
        return (f"a child of {type(parent).__name__}, not of an nn.Sequential or a known block: "
                "what its forward applies after the conv is unknown")
    if following is None:
        return "the last child of its nn.Sequential: no BatchNorm2d follows"
    return norm_problem(following, conv.out_channels) or "not fused"
