"""Drop-in fused modules and `fuse(model)`.

Each fused module keeps the children of the unfused module it replaces (`conv`, `bn`, `relu`;
`dw`, `pw`, `ppm`), so state_dicts load both ways with strict=True. Eval mode folds BatchNorm on
every call from the current parameters and buffers (C values: no cache to go stale) and runs the
fused kernels; train mode runs the same kernels for the convolutions and the stock BatchNorm2d for
batch statistics, so running stats, momentum, eps and num_batches_tracked behave exactly as
nn.BatchNorm2d. Under ONNX export the modules emit folded standard ops (Conv, Relu, MaxPool, Add).
"""
import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from dasp_kernels import functional, fuse_blocks, fuse_depthwise
from dasp_kernels.fuse_depthwise import FusedDWConv2d, _in_weight_dtype, conv_problem
from dasp_kernels.fuse_depthwise import folded as _folded


def _is_relu(m):
    return type(m) is nn.ReLU


def _onnx_exporting():
    return torch.onnx.is_in_onnx_export()


class FusedDWConvBNReLU(nn.Module):
    """Depthwise Conv2d + BatchNorm2d (+ ReLU) as one kernel; children `conv`, `bn` (and `relu`)."""

    def __init__(self, conv, bn, relu=True, backend="auto"):
        super().__init__()
        why = conv_problem(conv)
        if why:
            raise ValueError(f"FusedDWConvBNReLU: expected a depthwise conv, got {conv} ({why})")
        if type(bn) is not nn.BatchNorm2d or bn.num_features != conv.out_channels:
            raise ValueError(f"FusedDWConvBNReLU: expected BatchNorm2d({conv.out_channels}), got {bn}")
        if not bn.track_running_stats:
            raise ValueError("FusedDWConvBNReLU: BatchNorm2d without running stats cannot be folded")
        self.conv, self.bn = conv, bn
        if relu:
            self.relu = nn.ReLU(inplace=True)
        self.backend = backend

    @property
    def has_relu(self):
        return hasattr(self, "relu")

    @classmethod
    def from_unfused(cls, module, backend="auto"):
        """From a module with children conv, bn and optionally relu (e.g. ConvBNReLU); shares
        nothing with it (deep copy)."""
        module = copy.deepcopy(module)
        relu = getattr(module, "relu", None)
        return cls(module.conv, module.bn, relu=relu is not None, backend=backend)

    def forward(self, x):
        return _in_weight_dtype(self._forward, x, self.conv.weight)

    def _forward(self, x):
        conv = self.conv
        stride, padding = conv.stride[0], fuse_depthwise._conv_padding(conv)
        if self.training and self.bn.training:
            ones = torch.ones_like(self.bn.running_var)
            shift = conv.bias if conv.bias is not None else torch.zeros_like(ones)
            y = functional.dwconv_bn_act(x, conv.weight, ones, shift, stride=stride,
                                         padding=padding, dilation=conv.dilation[0], act="none",
                                         backend=self.backend)
            y = self.bn(y)
            return F.relu(y) if self.has_relu else y
        scale, shift = _folded(conv, self.bn)
        if _onnx_exporting():
            w = conv.weight * scale.view(-1, 1, 1, 1)
            y = F.conv2d(x, w, shift, stride, padding, conv.dilation, conv.groups)
            return F.relu(y) if self.has_relu else y
        return functional.dwconv_bn_act(x, conv.weight, scale, shift, stride=stride,
                                        padding=padding, dilation=conv.dilation[0],
                                        act="relu" if self.has_relu else "none",
                                        backend=self.backend)


class FusedPoolingPointwise(nn.Module):
    """PPM: 2x2 ceil-mode max pool + 1x1 conv, plus an optional residual, in one kernel.

    Children `pool` and `conv` as in dasp.models.PoolingPointwise. forward(x, residual=None).
    """

    def __init__(self, pool, conv, backend="auto"):
        super().__init__()
        ok_pool = (type(pool) is nn.MaxPool2d and pool.kernel_size in (2, (2, 2))
                   and pool.stride in (2, (2, 2)) and pool.padding in (0, (0, 0))
                   and pool.dilation in (1, (1, 1)) and pool.ceil_mode)
        if not ok_pool:
            raise ValueError(f"FusedPoolingPointwise: expected MaxPool2d(2, 2, ceil_mode=True), got {pool}")
        if type(conv) is not nn.Conv2d or conv.kernel_size != (1, 1) or conv.groups != 1 \
                or conv.stride != (1, 1) or conv.padding != (0, 0) or conv.bias is not None:
            raise ValueError(f"FusedPoolingPointwise: expected a 1x1 conv without bias, got {conv}")
        self.pool, self.conv, self.backend = pool, conv, backend

    @classmethod
    def from_unfused(cls, module, backend="auto"):
        module = copy.deepcopy(module)
        return cls(module.pool, module.conv, backend=backend)

    def forward(self, x, residual=None):
        def run(t):
            return self._forward(t, None if residual is None else residual.to(t.dtype))
        return _in_weight_dtype(run, x, self.conv.weight)

    def _forward(self, x, residual):
        if residual is None:
            n, _, h, w = x.shape
            residual = x.new_zeros(n, self.conv.out_channels, (h + 1) // 2, (w + 1) // 2)
        if _onnx_exporting():
            return self.conv(self.pool(x)) + residual
        return functional.ppm_add(x, self.conv.weight, residual, backend=self.backend)


class FusedDASPStage(nn.Module):
    """A whole DASP stage, PPM(x) + pw(dw(x)), with children `dw`, `pw`, `ppm` as in
    dasp.models.DASPStage. Eval mode runs the whole-stage kernel when the backend has it."""

    def __init__(self, dw, pw, ppm, backend="auto"):
        super().__init__()
        self.dw = dw if isinstance(dw, FusedDWConvBNReLU) else FusedDWConvBNReLU(
            dw.conv, dw.bn, relu=True, backend=backend)
        if self.dw.conv.stride != (2, 2) or self.dw.conv.padding[0] != self.dw.conv.kernel_size[0] // 2 \
                or self.dw.conv.kernel_size[0] % 2 == 0 or not self.dw.has_relu:
            raise ValueError("FusedDASPStage: expected dw to be an odd-K depthwise conv with stride 2, "
                             f"padding K // 2 and ReLU, got {self.dw.conv}")
        if type(pw.conv) is not nn.Conv2d or pw.conv.kernel_size != (1, 1) or pw.conv.groups != 1 \
                or pw.conv.stride != (1, 1):
            raise ValueError(f"FusedDASPStage: expected pw.conv to be a 1x1 conv, got {pw.conv}")
        self.pw = pw
        self.ppm = ppm if isinstance(ppm, FusedPoolingPointwise) else FusedPoolingPointwise(
            ppm.pool, ppm.conv, backend=backend)
        self.backend = backend

    @classmethod
    def from_unfused(cls, stage, backend="auto"):
        stage = copy.deepcopy(stage)
        return cls(stage.dw, stage.pw, stage.ppm, backend=backend)

    def op_params(self):
        """The 7 tensors the dasp_stage op takes after x, BN folded from the current statistics."""
        dw_scale, dw_shift = _folded(self.dw.conv, self.dw.bn)
        pw_scale, pw_shift = _folded(self.pw.conv, self.pw.bn)
        return [self.dw.conv.weight, dw_scale, dw_shift, self.pw.conv.weight, pw_scale, pw_shift,
                self.ppm.conv.weight]

    def forward(self, x):
        return _in_weight_dtype(self._forward, x, self.dw.conv.weight)

    def _forward(self, x):
        if self.training or _onnx_exporting():
            return self.ppm(x, self.pw(self.dw(x)))
        return functional.dasp_stage(x, *self.op_params(), backend=self.backend)


class FusedDASPSpatialPath(nn.Module):
    """A chain of DASP stages (the DASP spatial path) run as one op in eval mode: on the CPU the
    stages are interleaved row by row, so no intermediate feature map goes to memory. Keeps the
    child names of the module it replaces (stage1, stage2, ...)."""

    def __init__(self, stages, backend="auto"):
        super().__init__()
        for name, stage in stages.items():
            if not isinstance(stage, FusedDASPStage):
                stage = FusedDASPStage(stage.dw, stage.pw, stage.ppm, backend)
            self.add_module(name, stage)
        self.backend = backend

    @classmethod
    def from_unfused(cls, path, backend="auto"):
        path = copy.deepcopy(path)
        return cls(dict(path.named_children()), backend=backend)

    def forward(self, x):
        return _in_weight_dtype(self._forward, x, next(self.children()).dw.conv.weight)

    def _forward(self, x):
        stages = list(self.children())
        if self.training or _onnx_exporting():
            for stage in stages:
                x = stage(x)
            return x
        params = [t for st in stages for t in st.op_params()]
        return functional.dasp_spatial_path(x, params, backend=self.backend)


def _is_conv_bn_relu_seq(m):
    """nn.Sequential-like module whose children are exactly conv, bn[, relu] in that order."""
    names = list(m._modules)
    if not isinstance(m, nn.Sequential) or names[:2] != ["conv", "bn"] or len(names) > 3:
        return False
    if len(names) == 3 and not (names[2] == "relu" and _is_relu(m.relu)):
        return False
    return conv_problem(m.conv) is None and type(m.bn) is nn.BatchNorm2d


def _is_dasp_stage(m):
    """Modules that declare they compute PPM(x) + pw(dw(x)) (dasp.models.DASPStage does)."""
    if getattr(type(m), "dasp_kernels_pattern", None) != "dasp_stage":
        return False
    try:
        FusedDASPStage(m.dw, m.pw, m.ppm)
        return True
    except (ValueError, AttributeError):
        return False


def _is_dasp_path(m):
    """Modules that declare they apply their children, all DASP stages, in order."""
    return (getattr(type(m), "dasp_kernels_pattern", None) == "dasp_spatial_path"
            and len(m._modules) > 0 and all(_is_dasp_stage(c) for c in m.children()))


FUSED_TYPES = (FusedDASPSpatialPath, FusedDASPStage, FusedDWConvBNReLU, FusedPoolingPointwise)


def fuse_report(model):
    """[(qualified name, what)]: each fused module, and each depthwise conv fuse left, with why."""
    rows = []

    def visit(module, prefix):
        kids = list(module.named_children())
        for i, (name, child) in enumerate(kids):
            qual = f"{prefix}{name}"
            if isinstance(child, FUSED_TYPES):
                rows.append((qual, f"fused: {type(child).__name__}"))
            elif fuse_blocks.is_fused_block(child):
                rows.append((qual, f"fused: {fuse_blocks.describe(child)}"))
                visit(child, qual + ".")
            elif fuse_blocks.why_block_left(child):
                rows.append((qual, f"left as layers: {fuse_blocks.why_block_left(child)}"))
                visit(child, qual + ".")
            elif isinstance(child, FusedDWConv2d):
                rows.append((qual, f"fused: dwconv_bn_act ({child.act_spec[0]})"))
            elif (isinstance(child, nn.Conv2d) and child.groups > 1
                  and child.groups == child.in_channels):
                following = kids[i + 1][1] if i + 1 < len(kids) else None
                why = fuse_depthwise.why_left(child, module, following)
                rows.append((qual, f"left: {why}"))
            else:
                visit(child, qual + ".")

    visit(model, "")
    return rows


def fuse(model, backend="auto"):
    """Return a copy of `model` with its depthwise conv + norm (+ activation) and DASP stages
    fused. The model given is left untouched; state_dict keys stay the same. Patterns found:
    - modules marked `dasp_kernels_pattern = "dasp_stage"` (dasp.models.DASPStage) -> FusedDASPStage,
      and a module of them marked "dasp_spatial_path" -> FusedDASPSpatialPath;
    - nn.Sequential modules with children conv (depthwise), bn[, relu] (ConvBNReLU) ->
      FusedDWConvBNReLU;
    - any other depthwise nn.Conv2d (or timm Conv2dSame) followed by an nn.BatchNorm2d (or timm's
      BatchNormAct2d) and optionally an activation (ReLU, ReLU6, Hardtanh, Hardswish, SiLU, GELU,
      LeakyReLU): consecutive children of an nn.Sequential, or the conv/norm pairs of timm's
      blocks -> FusedDWConv2d in the conv's place, the norm and activation left in theirs as
      pass-throughs (dasp_kernels/fuse_depthwise.py);
    - inverted-residual blocks, with or without squeeze-and-excitation (torchvision's and timm's,
      found by their structure) -> their class swapped so that they run one `inverted_residual` op where
      it is faster than their layers (dasp_kernels/fuse_blocks.py, ir_choice.py); their layers
      are fused as above all the same.
    Everything else is left as it is. The returned model has `model.dasp_fused = {"dasp_stage": n,
    "dwconv_bn_relu": m, "dwconv_bn_act": k, "inverted_residual": b}`; `fuse_report(fused)`
    lists what was fused and each depthwise conv and block left, with the reason. In eval mode on
    the CPU each FusedDWConv2d runs the faster of our kernel and oneDNN's conv with a post-op at
    its shape (dasp_kernels/dw_choice.py). Under torch.autocast("cpu", bfloat16) the fused
    modules run our ops in bf16 and return bf16, as torch's convolutions do (policy:
    dasp_kernels/autocast.py; inverted-residual blocks then run as their layers); outside autocast
    a bf16/fp16 input runs in the weights' dtype and comes back in its own.
    """
    model = copy.deepcopy(model)
    counts = {"dasp_stage": 0, "dwconv_bn_relu": 0, "dwconv_bn_act": 0, "inverted_residual": 0}

    def replacement(child):
        if _is_dasp_path(child):
            counts["dasp_stage"] += len(child._modules)
            return FusedDASPSpatialPath(dict(child.named_children()), backend)
        if _is_dasp_stage(child):
            counts["dasp_stage"] += 1
            return FusedDASPStage(child.dw, child.pw, child.ppm, backend)
        if _is_conv_bn_relu_seq(child):
            counts["dwconv_bn_relu"] += 1
            return FusedDWConvBNReLU(child.conv, child.bn, relu=hasattr(child, "relu"),
                                     backend=backend)
        return None

    def visit(parent):
        for name, child in list(parent._modules.items()):
            if child is None or isinstance(child, (FusedDASPSpatialPath, FusedDASPStage,
                                                   FusedDWConvBNReLU)):
                continue
            fused = replacement(child)
            if fused is not None:
                parent._modules[name] = fused.train(child.training)  # new modules start in train
            else:
                if fuse_blocks.fuse_block(child, backend):  # before its children change
                    counts["inverted_residual"] += 1
                visit(child)
                fuse_depthwise.fuse_in_place(child, backend, counts)

    top = replacement(model)
    if top is not None:
        model = top.train(model.training)
    else:
        visit(model)
        fuse_depthwise.fuse_in_place(model, backend, counts)
    model.dasp_fused = counts
    return model
