"""fuse()'s inverted-residual blocks: 1x1 expand, depthwise, 1x1 project (+ x) as one op.

A block is recognised by its structure, not only its class: a module with a residual flag
(`use_res_connect`: torchvision's MobileNetV2/V3 InvertedResidual and EfficientNet's MBConv;
`apply_residual`: MNASNet's _InvertedResidual) whose body (`conv`, `block` or `layers`, an
nn.Sequential, nested Sequentials such as Conv2dNormActivation flattened) is exactly
[1x1 conv, BatchNorm2d, activation,] depthwise conv, BatchNorm2d[, activation], 1x1 conv,
BatchNorm2d[, activation], with a squeeze-and-excitation module (fuse_se.py) allowed right after
the depthwise stage. Those forwards compute body(x) (+ x when the flag is set; MBConv's
stochastic depth is the identity in eval). timm's blocks name their layers in their forward
(TIMM_BLOCKS: InvertedResidual, DepthwiseSeparableConv with their `se`, MobileNetV4's
UniversalInvertedResidual without its extra depthwise convs).

The block keeps its children, parameters and state_dict keys; only its class is swapped for a
subclass (swapped_class) whose forward runs inverted_residual while every norm of the block is in
eval mode, and the block's own forward otherwise. On the CPU the op runs only where it is faster
than the block's layers, measured once per shape (ir_choice.py). The children inside are fused as
any others (fuse_depthwise), so that the block's own forward, where it runs, is the per-layer fused
one.
"""
import weakref

import torch
import torch.nn as nn

from dasp_kernels import _loader, functional, fuse_se, ir_choice
from dasp_kernels.fuse_depthwise import (_conv_padding, _qualname, activation_spec,
                                         conv_problem, folded, norm_problem, swapped_class)

RESIDUAL_FLAGS = ("use_res_connect", "apply_residual")
BODY_NAMES = ("conv", "block", "layers")

# timm's blocks, whose forward names its layers: (module, class) -> ((conv, norm) paths in the
# order the forward applies them, the children that must be absent or nn.Identity). Each norm is
# a BatchNormAct2d carrying the stage's activation; `has_skip` says whether x is added (after
# drop_path, the identity in eval). Where "se" is not among the absent children, an SE module
# there (fuse_se) runs between the depthwise and the projection, as their forwards apply it.
_EFB = "timm.models._efficientnet_blocks"
TIMM_BLOCKS = {
    (_EFB, "InvertedResidual"): ([("conv_pw", "bn1"), ("conv_dw", "bn2"), ("conv_pwl", "bn3")],
                                 ("conv_s2d", "aa")),
    (_EFB, "DepthwiseSeparableConv"): ([("conv_dw", "bn1"), ("conv_pw", "bn2")],
                                       ("conv_s2d", "aa")),
    (_EFB, "UniversalInvertedResidual"): (
        [("pw_exp.conv", "pw_exp.bn"), ("dw_mid.conv", "dw_mid.bn"),
         ("pw_proj.conv", "pw_proj.bn")],
        ("dw_start", "dw_end", "se", "layer_scale", "pw_exp.aa", "dw_mid.aa", "pw_proj.aa")),
}


def _leaves(seq, prefix):
    """[(path from the block, module)] of seq's modules in order, nested Sequentials flattened."""
    out = []
    for name, m in seq.named_children():
        if isinstance(m, nn.Sequential):
            out += _leaves(m, f"{prefix}{name}.")
        else:
            out.append((f"{prefix}{name}", m))
    return out


def _is_1x1(conv):
    return (type(conv) is nn.Conv2d and conv.kernel_size == (1, 1) and conv.stride == (1, 1)
            and conv.groups == 1 and conv.padding in ((0, 0), "valid"))


def _unfused_layer(path, m):
    return f"{type(m).__name__} ({path}) in the block"


def _se_item(path, m, stages, block):
    """("se", plan) for an SE module at `path` after `stages`, or why it cannot be fused (a
    string), or None if m is no SE module."""
    if not stages:
        return None
    width = block.get_submodule(stages[-1][0]).out_channels
    plan = fuse_se.se_plan(m, path, width)
    return plan if plan is None or isinstance(plan, str) else ("se", plan)


def _stages(leaves, block):
    """[(conv path, norm path, (act, alpha, beta))] of conv, BatchNorm2d[, activation] runs, and
    ("se", plan) for a squeeze-and-excitation module between them, or why the leaves are not
    such runs."""
    stages, i = [], 0
    while i < len(leaves):
        (cp, conv), nxt = leaves[i], leaves[i + 1] if i + 1 < len(leaves) else (None, None)
        if not isinstance(conv, nn.Conv2d):
            se = _se_item(cp, conv, [s for s in stages if s[0] != "se"], block)
            if se is None or isinstance(se, str):
                return se or _unfused_layer(cp, conv)
            stages.append(se)
            i += 1
            continue
        if type(nxt[1]) is not nn.BatchNorm2d or nxt[1].num_features != conv.out_channels:
            return f"{cp} is not followed by its BatchNorm2d"
        spec = activation_spec(leaves[i + 2][1]) if i + 2 < len(leaves) else None
        if spec is None and i + 2 < len(leaves) and not isinstance(leaves[i + 2][1], nn.Conv2d) \
                and fuse_se.se_plan(leaves[i + 2][1], "", conv.out_channels) is None:
            return _unfused_layer(*leaves[i + 2])
        stages.append((cp, nxt[0], spec or ("none", 0.0, 0.0)))
        i += 3 if spec is not None else 2
    return stages


def _timm_stages(block):
    """_stages for a block of TIMM_BLOCKS, or why it cannot run as one op."""
    pairs, absent = TIMM_BLOCKS[_qualname(block)]
    for path in absent:
        m = _child(block, path)
        if m is not None and type(m) is not nn.Identity:
            what = "squeeze-and-excitation" if path == "se" else type(m).__name__
            return f"{what} ({path}) is not fused into the block yet"
    se = _child(block, "se") if "se" not in absent else None
    if type(getattr(block, "drop_path", nn.Identity())).__name__ not in ("Identity", "DropPath"):
        return f"drop_path {type(block.drop_path).__name__}"
    stages = []
    for conv_path, norm_path in pairs:
        conv, bn = _child(block, conv_path), _child(block, norm_path)
        if not isinstance(conv, nn.Conv2d):
            return f"no conv at {conv_path}"
        why = norm_problem(bn, conv.out_channels)
        if why:
            return why
        stages.append((conv_path, norm_path, activation_spec(getattr(bn, "act", nn.Identity()))))
        if conv_path == "conv_dw" and se is not None and type(se) is not nn.Identity:
            item = _se_item("se", se, stages, block)  # the forward applies it after the depthwise
            if item is None or isinstance(item, str):
                return item or f"{type(se).__name__} (se) is no squeeze-and-excitation fuse knows"
            stages.append(item)
    return stages


def _child(block, path):
    """The module at `path` (dotted) under block, None where any part is missing."""
    m = block
    for part in path.split("."):
        m = getattr(m, part, None)
        if m is None:
            return None
    return m


def block_plan(block):
    """(plan, None) if `block` is an inverted-residual block fuse can run as one op, else
    (None, why not) (why is None when it is no such block at all). plan: (expand stage or None,
    depthwise stage, project stage, residual, the depthwise padding as functional takes it, SE
    plan or None), each stage (conv path, norm path, act spec), the SE plan fuse_se.se_plan's.
    The padding is read now: fuse then replaces the depthwise conv (timm's Conv2dSame among
    them) by a FusedDWConv2d."""
    if _qualname(block) in TIMM_BLOCKS:
        flag, stages = "has_skip", _timm_stages(block)
    else:
        flag = next((f for f in RESIDUAL_FLAGS if isinstance(getattr(block, f, None), bool)),
                    None)
        body = next((n for n in BODY_NAMES if isinstance(block._modules.get(n), nn.Sequential)),
                    None)
        if flag is None or body is None:
            return None, None
        stages = _stages(_leaves(block._modules[body], f"{body}."), block)
    if isinstance(stages, str):
        return None, stages
    ses = [i for i, st in enumerate(stages) if st[0] == "se"]
    if ses and (len(ses) > 1 or ses[0] != len(stages) - 2 or len(stages) < 3):
        return None, "squeeze-and-excitation elsewhere than between the depthwise and projection"
    se = stages.pop(ses[0])[1] if ses else None
    if len(stages) not in (2, 3):
        return None, f"{len(stages)} conv stages, not 2 or 3"
    convs = [block.get_submodule(s[0]) for s in stages]
    if len(stages) == 3 and not _is_1x1(convs[0]):
        return None, "its first conv is not a 1x1 expansion"
    if conv_problem(convs[-2]) or not _is_1x1(convs[-1]):
        return None, "not expansion, depthwise, projection"
    expand = stages[0] if len(stages) == 3 else None
    return (expand, stages[-2], stages[-1], bool(getattr(block, flag)),
            _conv_padding(convs[-2]), se), None


def _folded_stage(block, stage):
    conv, bn = block.get_submodule(stage[0]), block.get_submodule(stage[1])
    return (conv.weight, *folded(conv, bn))


def op_args(block, plan, x):
    """inverted_residual's arguments for `block` on input x, its norms folded."""
    expand, dw, project, residual, padding, se = plan
    ew, es, esh = _folded_stage(block, expand) if expand else (None, None, None)
    eact = expand[2] if expand else ("none", 0.0, 0.0)
    dconv = block.get_submodule(dw[0])
    dwt, ds, dsh = _folded_stage(block, dw)
    pw, ps, psh = _folded_stage(block, project)
    return functional.inverted_residual_op_args(
        x, dwt, ds, dsh, pw, ps, psh, expand_weight=ew, expand_scale=es, expand_shift=esh,
        expand_act=eact[0], expand_alpha=eact[1], expand_beta=eact[2],
        stride=dconv.stride[0], padding=padding, dilation=dconv.dilation[0],
        dw_act=dw[2][0], dw_alpha=dw[2][1], dw_beta=dw[2][2], project_act=project[2][0],
        project_alpha=project[2][1], project_beta=project[2][2], residual=residual,
        **_se_kwargs(block, se))


def _se_kwargs(block, se):
    """inverted_residual's SE keywords for an SE plan (none without SE)."""
    if se is None:
        return {}
    reduce, expand = block.get_submodule(se[0]), block.get_submodule(se[1])
    return dict(se_reduce_weight=reduce.weight, se_reduce_bias=reduce.bias,
                se_expand_weight=expand.weight, se_expand_bias=expand.bias, se_act=se[2][0],
                se_alpha=se[2][1], se_beta=se[2][2], se_gate=se[3])


# Per fused block: (key of the tensors folded, the op's arguments without x). Outside the module
# so that copies and pickles of it carry none of it.
_ARGS_CACHE = weakref.WeakKeyDictionary()


def _cached_op_args(block, plan, x):
    """op_args for eager inference, the folded norms kept until a parameter or buffer of the
    block's stages changes (their version counters say so): folding three norms per call costs
    about as much as the op itself on small images."""
    paths = [p for s in plan[:3] if s is not None for p in s[:2]] + list(plan[5] or ())[:2]
    tensors = [t for m in map(block.get_submodule, paths)
               for t in (*m.parameters(recurse=False), *m.buffers(recurse=False))
               if t.is_floating_point()]
    key = tuple((id(t), t.data_ptr(), t._version) for t in tensors)
    if plan[4] == "same":  # the padding depends on x's size
        key += (tuple(x.shape[2:]),)
    cached = _ARGS_CACHE.get(block)
    if cached is None or cached[0] != key:
        with torch.no_grad():
            cached = _ARGS_CACHE[block] = (key, op_args(block, plan, x)[1:])
    return (x, *cached[1])


def _fused_forward(cls):
    def forward(self, x):
        plan, backend = self._dasp_ir
        norms = [self.get_submodule(s[1]) for s in plan[:3] if s is not None]
        if any(bn.training for bn in norms) or torch.onnx.is_in_onnx_export():
            return cls.forward(self, x)
        if (x.dtype != self.get_submodule(plan[1][0]).weight.dtype
                or torch.is_autocast_enabled(x.device.type)):
            # autocast: the layers (oneDNN's bf16 convs, our bf16 depthwise op) run in bf16; the
            # block's op has no bf16 kernel yet (it would compute in float32).
            return cls.forward(self, x)
        # Our CPU kernel can run (else the wrapper picks the reference, with nothing to choose).
        ours_cpu = (x.device.type == "cpu" and backend in ("auto", "cpu")
                    and _loader.has_cpu_extension())
        fast = ours_cpu and not torch.compiler.is_compiling() and not torch.is_grad_enabled()
        args = _cached_op_args(self, plan, x) if fast else op_args(self, plan, x)
        if ours_cpu and not ir_choice.use_op(args, lambda: cls.forward(self, x)):
            return cls.forward(self, x)
        return run_op(args, backend, fast)
    return forward


def run_op(args, backend, fast):
    """The op on its arguments: straight to the CPU kernel in eager inference (`fast`: its own
    checks say what the wrapper's would), else through the wrapper."""
    if fast:
        return torch.ops.dasp_kernels.inverted_residual(*args)
    return functional.inverted_residual_of_op_args(args, backend)


def fuse_block(block, backend):
    """Make `block` run inverted_residual if it is such a block; returns whether it did."""
    plan, why = block_plan(block)
    if plan is None:
        if why is not None:
            block._dasp_ir_left = why  # for fuse_report
        return False
    block.__class__ = swapped_class(type(block), "FusedInvertedResidual", _fused_forward)
    block._dasp_ir = (plan, backend)
    return True


def is_fused_block(module):
    return hasattr(module, "_dasp_ir")


def describe(module):
    """fuse_report's words for a fused block."""
    se = module._dasp_ir[0][5]
    return "inverted_residual" + (f" with squeeze-and-excitation ({se[3]} gate)" if se else "")


def why_block_left(module):
    """Why fuse left an inverted-residual block as layers; None if it fused it or it is none."""
    return getattr(module, "_dasp_ir_left", None)
