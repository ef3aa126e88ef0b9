"""Fake kernels and autograd for the C++/CUDA ops declared in csrc/ops.cpp.

One entry per op in OPS: its fake, the fake of its backward op, and its autograd (setup_context
and backward, which calls the namespace's `_<op>_backward`). register(ns) installs them for a
namespace: "dasp_kernels" here (imported by dasp_kernels/__init__.py right after the extension
loads; does nothing without it), and "dasp_emu", the CUDA emulator of the tests
(tests/cuda_emu), with the same code.
"""
import torch

from dasp_kernels import _checks, autocast, reference
from dasp_kernels._loader import has_cpu_extension

LIB = "dasp_kernels"


def _empty_like_format(x, shape):
    return x.new_empty(shape).contiguous(memory_format=_checks.output_memory_format(x))


def _dw_act_fake(x, weight, scale, shift, stride, padding, dilation, act, alpha, beta):
    _checks.check_dwconv_bn_act(x, weight, scale, shift, stride, padding, dilation, act,
                                torch._check)
    return _empty_like_format(x, _checks.dwconv_bn_act_out_shape(x, weight, stride, padding,
                                                                 dilation))


def _dw_act_backward_fake(grad_out, x, weight, scale, shift, stride, padding, dilation, act,
                          alpha, beta):
    _checks.check_dwconv_bn_act(x, weight, scale, shift, stride, padding, dilation, act,
                                torch._check)
    out = _checks.dwconv_bn_act_out_shape(x, weight, stride, padding, dilation)
    torch._check(list(grad_out.shape) == list(out),
                 lambda: f"_dwconv_bn_act_backward: expected grad_out of shape "
                         f"{_checks.shape_str(out)}, got {_checks.shape_str(grad_out.shape)}")
    return (_empty_like_format(x, x.shape),
            torch.empty_like(weight, memory_format=torch.contiguous_format),
            torch.empty_like(scale), torch.empty_like(shift))


def _dw_act_setup(ctx, inputs, output):
    x, weight, scale, shift, *conf = inputs
    ctx.save_for_backward(x, weight, scale, shift)
    ctx.conf = conf  # stride, padding, dilation, act, alpha, beta


def _dw_act_backward(ctx, grad):
    x, weight, scale, shift = ctx.saved_tensors
    grads = ctx.ops._dwconv_bn_act_backward(grad, x, weight, scale, shift, *ctx.conf)
    return (*grads, None, None, None, None, None, None)


def _ppm_fake(x, weight, residual):
    _checks.check_ppm_add(x, weight, residual, torch._check)
    return _empty_like_format(x, residual.shape)


def _ppm_backward_fake(grad_out, x, weight):
    return (_empty_like_format(x, x.shape),
            torch.empty_like(weight, memory_format=torch.contiguous_format))


def _stage_fake(x, dw_weight, dw_scale, dw_shift, pw_weight, pw_scale, pw_shift, ppm_weight):
    _checks.check_dasp_stage(x, dw_weight, dw_scale, dw_shift, pw_weight, pw_scale, pw_shift,
                             ppm_weight, torch._check)
    return _empty_like_format(x, _checks.dasp_stage_out_shape(x, pw_weight))


def _stage_backward_fake(grad_out, x, *params):
    return (_empty_like_format(x, x.shape),
            *(torch.empty_like(p, memory_format=torch.contiguous_format) for p in params))


def _stage_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _stage_backward(ctx, grad):
    return ctx.ops._dasp_stage_backward(grad, *ctx.saved_tensors)


def _path_fake(x, stage_params):
    _checks.check_dasp_spatial_path(x, stage_params, torch._check)
    return _empty_like_format(x, _checks.dasp_spatial_path_out_shape(x, stage_params))


def _path_setup(ctx, inputs, output):
    x, stage_params = inputs
    ctx.save_for_backward(x, *stage_params)


def _path_backward(ctx, grad):
    # Recompute each stage's input (only the last stage's output was kept: none), then
    # differentiate stage by stage from the last.
    x, *params = ctx.saved_tensors
    dtype = x.dtype
    if dtype == torch.bfloat16:  # float32 inside, each gradient rounded once (as the C++ ops')
        x, params, grad = x.float(), [p.float() for p in params], grad.float()
    stages = [params[i:i + 7] for i in range(0, len(params), 7)]
    inputs = [x]
    for p in stages[:-1]:
        inputs.append(ctx.ops.dasp_stage(inputs[-1], *p))
    grads = [None] * len(params)
    for s in reversed(range(len(stages))):
        g = ctx.ops._dasp_stage_backward(grad, inputs[s], *stages[s])
        grad = g[0]
        grads[7 * s:7 * s + 7] = g[1:]
    return grad.to(dtype), [g.to(dtype) for g in grads]


def _ppm_setup(ctx, inputs, output):
    x, weight, residual = inputs
    ctx.save_for_backward(x, weight)


def _ppm_backward(ctx, grad):
    x, weight = ctx.saved_tensors
    gx, gw = ctx.ops._ppm_add_backward(grad, x, weight)
    return gx, gw, grad


def _ir_fake(*args):
    _checks.check_inverted_residual_args(args, torch._check)
    x, dw_weight, stride, padding, dilation, project_weight = (args[i] for i in (0, 7, 10, 11, 12,
                                                                                 16))
    return _empty_like_format(x, _checks.inverted_residual_out_shape(
        x, dw_weight, stride, padding, dilation, project_weight))


# inverted_residual's tensor arguments (the others are its configuration); 23-26: SE's, which a
# call may leave off (their defaults).
_IR_TENSORS = (0, 1, 2, 3, 7, 8, 9, 16, 17, 18, 23, 24, 25, 26)


def _ir_setup(ctx, inputs, output):
    tensors = [i for i in _IR_TENSORS if i < len(inputs)]
    ctx.save_for_backward(*(inputs[i] for i in tensors))
    ctx.conf = [None if i in tensors else a for i, a in enumerate(inputs)]


def _ir_backward(ctx, grad):
    # No backward kernel yet: recompute the block in plain PyTorch and differentiate that (the
    # wide tensors live only for this call).
    args = list(ctx.conf)
    tensors = [i for i in _IR_TENSORS if i < len(args)]
    # bf16: differentiated in float32, the gradients rounded once (bf16 layers would round
    # every intermediate).
    wide = ctx.saved_tensors[0].dtype == torch.bfloat16
    for i, t in zip(tensors, ctx.saved_tensors):
        needs = t is not None and ctx.needs_input_grad[i]
        t = t.float() if wide and t is not None else t
        args[i] = t.detach().requires_grad_() if needs else t
    leaves = [i for i in tensors if args[i] is not None and args[i].requires_grad]
    grads = [None] * len(args)
    with torch.enable_grad():
        out = reference.inverted_residual(*args)
        grad = grad.float() if wide else grad
        for i, g in zip(leaves, torch.autograd.grad(out, [args[i] for i in leaves], grad)):
            grads[i] = g.to(torch.bfloat16) if wide else g
    return tuple(grads)


# op: (fake, fake of _<op>_backward or None, setup_context, backward)
OPS = {
    "dwconv_bn_act": (_dw_act_fake, _dw_act_backward_fake, _dw_act_setup, _dw_act_backward),
    "ppm_add": (_ppm_fake, _ppm_backward_fake, _ppm_setup, _ppm_backward),
    "dasp_stage": (_stage_fake, _stage_backward_fake, _stage_setup, _stage_backward),
    "dasp_spatial_path": (_path_fake, None, _path_setup, _path_backward),
    "inverted_residual": (_ir_fake, None, _ir_setup, _ir_backward),
}


def autograd_of(name, backward_ops):
    """(backward, setup_context) of op `name` (OPS) whose backward calls
    backward_ops._<name>_backward: a torch.ops namespace, or for the Triton ops an object naming
    their _<name>_backward_triton so (dasp_kernels/triton)."""
    _, _, setup, backward = OPS[name]

    def setup_with_ops(ctx, inputs, output):
        ctx.ops = backward_ops
        setup(ctx, inputs, output)

    return backward, setup_with_ops


def register(ns=LIB):
    """Fakes and autograd of every op of OPS that namespace `ns` defines."""
    if ns == LIB and not has_cpu_extension():
        return
    ops = getattr(torch.ops, ns)
    names = [name for name in OPS if hasattr(ops, name)]  # the emulator has no dasp_spatial_path
    for name in names:
        fake, backward_fake, _, _ = OPS[name]
        torch.library.register_fake(f"{ns}::{name}")(fake)
        if backward_fake is not None:
            torch.library.register_fake(f"{ns}::_{name}_backward")(backward_fake)
        backward, setup = autograd_of(name, ops)
        torch.library.register_autograd(f"{ns}::{name}", backward, setup_context=setup)
    autocast.register(ns, names)


register()
