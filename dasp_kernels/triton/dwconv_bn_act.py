"""Depthwise KxK conv + per-channel scale/shift (folded BN) + activation, in Triton: the op
dwconv_bn_act_triton (padding [top, bottom, left, right], dilation, the activations of
_activation.py).

Forward: one program per [channels x output pixels] tile, pixels counted over N * OH * OW so that
small maps still fill a tile. Backward: one kernel recomputes the pre-activation z for act'(z),
writes grad_y = grad_out * act'(z) (the gradient before the scale) and reduces, per channel,
sum(grad_y) and S[c, tap] = sum(grad_y * x[tap]) in a fixed split (deterministic, no atomics); then
grad_weight = scale * S, grad_scale = sum_tap(weight * S), grad_shift = sum(grad_y). A second kernel
gathers grad_x from grad_y. Offsets are int32, or int64 (IDX64) when a tensor is that large.
PAD_T/PAD_L (top, left) place the windows; bottom and right only set the output size.
"""
import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from dasp_kernels import _checks
from dasp_kernels.triton._activation import (ACT_CODES, act_backward, act_forward, act_scalar,
                                             split_scalar)
from dasp_kernels.triton._common import (acc_dtype, check_device, dw_tile, index64,
                                         keep_opaque_when_interpreted, num_programs_target,
                                         on_interpreter, out_like, pixel_tile, pow2,
                                         register_autograd, should_launch)

OP = "dwconv_bn_act"


@triton.jit
def _dw_fwd_kernel(x_ptr, w_ptr, scale_ptr, shift_ptr, y_ptr, C, H, W, OH, OW, Q,
                   sxn, sxc, sxh, sxw, swc, swh, sww, syn, syc, syh, syw,
                   ALPHA_HI, ALPHA_LO, BETA_HI, BETA_LO,
                   K: tl.constexpr, STRIDE: tl.constexpr, PAD_T: tl.constexpr,
                   PAD_L: tl.constexpr, DIL: tl.constexpr, ACT: tl.constexpr,
                   ACC64: tl.constexpr, IDX64: tl.constexpr, BLOCK_C: tl.constexpr,
                   BLOCK_Q: tl.constexpr):
    ACC: tl.constexpr = tl.float64 if ACC64 else tl.float32
    IDX: tl.constexpr = tl.int64 if IDX64 else tl.int32
    mq, n, oh, ow = pixel_tile(Q, OH, OW, IDX, BLOCK_Q)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mc = c < C
    ci = c.to(IDX)[:, None]
    mask = mc[:, None] & mq[None, :]
    acc = dw_tile(x_ptr, w_ptr, ci * sxc + n * sxn, ci * swc, oh, ow, mask, mc[:, None],
                  H, W, sxh, sxw, swh, sww, K, STRIDE, PAD_T, PAD_L, DIL, ACC)
    sc = tl.load(scale_ptr + c, mask=mc, other=0.0).to(ACC)
    sh = tl.load(shift_ptr + c, mask=mc, other=0.0).to(ACC)
    y = act_forward(acc * sc[:, None] + sh[:, None], ACT, act_scalar(ALPHA_HI, ALPHA_LO, ACC),
                    act_scalar(BETA_HI, BETA_LO, ACC))
    off = ci * syc + n * syn + oh * syh + ow * syw
    tl.store(y_ptr + off, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _dw_bwd_param_kernel(x_ptr, w_ptr, scale_ptr, shift_ptr, go_ptr, gy_ptr, part_s_ptr,
                         part_b_ptr, C, H, W, OH, OW, Q, SPLIT,
                         sxn, sxc, sxh, sxw, swc, swh, sww, sgn, sgc, sgh, sgw, syc, syq,
                         ALPHA_HI, ALPHA_LO, BETA_HI, BETA_LO,
                         K: tl.constexpr, STRIDE: tl.constexpr, PAD_T: tl.constexpr,
                         PAD_L: tl.constexpr, DIL: tl.constexpr, ACT: tl.constexpr,
                         ACC64: tl.constexpr, IDX64: tl.constexpr, KK_PAD: tl.constexpr,
                         BLOCK_C: tl.constexpr, BLOCK_Q: tl.constexpr):
    ACC: tl.constexpr = tl.float64 if ACC64 else tl.float32
    IDX: tl.constexpr = tl.int64 if IDX64 else tl.int32
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    split = tl.program_id(1)
    mc = c < C
    ci = c.to(IDX)[:, None]
    taps = tl.arange(0, KK_PAD)[None, :]
    s_acc = tl.zeros([BLOCK_C, KK_PAD], dtype=ACC)
    b_acc = tl.zeros([BLOCK_C], dtype=ACC)
    sc = tl.load(scale_ptr + c, mask=mc, other=0.0).to(ACC)[:, None]
    sh = tl.load(shift_ptr + c, mask=mc, other=0.0).to(ACC)[:, None]
    alpha = act_scalar(ALPHA_HI, ALPHA_LO, ACC)
    beta = act_scalar(BETA_HI, BETA_LO, ACC)
    # Pixel blocks split, SPLIT + split, ...: a fixed order, so the sums are deterministic.
    for q0 in range(split.to(IDX) * BLOCK_Q, Q, SPLIT * BLOCK_Q):
        q = q0 + tl.arange(0, BLOCK_Q)
        mq = q < Q
        n = (q // (OH * OW))[None, :]
        r = q % (OH * OW)
        oh = (r // OW)[None, :]
        ow = (r % OW)[None, :]
        mask = mc[:, None] & mq[None, :]
        gy = tl.load(go_ptr + ci * sgc + n * sgn + oh * sgh + ow * sgw, mask=mask,
                     other=0.0).to(ACC)
        xbase = ci * sxc + n * sxn
        if ACT != 0:  # every activation but "none" needs z for act'(z)
            conv = dw_tile(x_ptr, w_ptr, xbase, ci * swc, oh, ow, mask, mc[:, None],
                           H, W, sxh, sxw, swh, sww, K, STRIDE, PAD_T, PAD_L, DIL, ACC)
            gy = tl.where(mask, act_backward(gy, conv * sc + sh, ACT, alpha, beta), 0.0)
        tl.store(gy_ptr + ci * syc + q[None, :] * syq, gy, mask=mask)
        b_acc += tl.sum(gy, axis=1)
        for kh in tl.static_range(K):
            ih = oh * STRIDE - PAD_T + kh * DIL
            mh = mask & (ih >= 0) & (ih < H)
            for kw in tl.static_range(K):
                iw = ow * STRIDE - PAD_L + kw * DIL
                m = mh & (iw >= 0) & (iw < W)
                xv = tl.load(x_ptr + xbase + ih * sxh + iw * sxw, mask=m, other=0.0).to(ACC)
                s = tl.sum(gy * xv, axis=1)
                # KK_PAD columns, one per tap: a select is cheap next to the [C, Q] product.
                s_acc += tl.where(taps == kh * K + kw, s[:, None], 0.0)
    row = split * C + c
    tl.store(part_s_ptr + row[:, None] * (K * K) + taps, s_acc,
             mask=mc[:, None] & (taps < K * K))
    tl.store(part_b_ptr + row, b_acc, mask=mc)


@triton.jit
def _dw_bwd_x_kernel(gy_ptr, w_ptr, scale_ptr, gx_ptr, C, H, W, OH, OW, P,
                     swc, swh, sww, syc, syq, sxn, sxc, sxh, sxw,
                     K: tl.constexpr, STRIDE: tl.constexpr, PAD_T: tl.constexpr,
                     PAD_L: tl.constexpr, DIL: tl.constexpr, ACC64: tl.constexpr,
                     IDX64: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_Q: tl.constexpr):
    ACC: tl.constexpr = tl.float64 if ACC64 else tl.float32
    IDX: tl.constexpr = tl.int64 if IDX64 else tl.int32
    p = tl.program_id(0).to(IDX) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mp = p < P
    mc = c < C
    n = p // (H * W)
    r = p % (H * W)
    ih = r // W
    iw = r % W
    ci = c.to(IDX)[:, None]
    mask = mc[:, None] & mp[None, :]
    acc = tl.zeros([BLOCK_C, BLOCK_Q], dtype=ACC)
    for kh in tl.static_range(K):
        # Output row oh reads input row ih through tap kh when oh * STRIDE = ih + PAD_T - kh * DIL.
        th = ih + PAD_T - kh * DIL
        thc = tl.where(th >= 0, th, 0)  # keep // and % on non-negative operands
        oh = thc // STRIDE
        vh = (th >= 0) & (thc % STRIDE == 0) & (oh < OH)
        for kw in tl.static_range(K):
            tw = iw + PAD_L - kw * DIL
            twc = tl.where(tw >= 0, tw, 0)
            ow = twc // STRIDE
            v = vh & (tw >= 0) & (twc % STRIDE == 0) & (ow < OW)
            q = (n * OH + oh) * OW + ow
            g = tl.load(gy_ptr + ci * syc + q[None, :] * syq, mask=mask & v[None, :], other=0.0)
            wv = tl.load(w_ptr + ci * swc + kh * swh + kw * sww, mask=mc[:, None], other=0.0)
            acc += g.to(ACC) * wv.to(ACC)
    sc = tl.load(scale_ptr + c, mask=mc, other=0.0).to(ACC)
    acc = acc * sc[:, None]
    off = ci * sxc + (n * sxn + ih * sxh + iw * sxw)[None, :]
    tl.store(gx_ptr + off, acc.to(gx_ptr.dtype.element_ty), mask=mask)


def _tile(x, channels, pixels):
    """(BLOCK_C, BLOCK_Q, num_warps) for a [channels x pixels] problem."""
    if on_interpreter(x):
        # The interpreter costs per program and per op, not per element: few, large tiles.
        bc = pow2(channels, hi=64)
        return bc, pow2(pixels, lo=16, hi=max(16, 2**15 // bc)), 4
    # About 1024 elements per tile along x's contiguous axis: channels for channels_last.
    if x.stride(1) == 1 and channels > 1:
        bc = pow2(channels, hi=32)
    else:
        bc = pow2(channels, hi=4)
    return bc, pow2(pixels, lo=16, hi=1024 // bc), 4


def _out_hw(x, k, stride, padding, dilation):
    top, bottom, left, right = padding
    return (_checks.dwconv_bn_act_out_size(x.shape[2], k, stride, top, bottom, dilation),
            _checks.dwconv_bn_act_out_size(x.shape[3], k, stride, left, right, dilation))


def _conf(k, stride, padding, dilation, act, alpha, beta):
    """The launch arguments every kernel of the op shares: geometry and activation."""
    scalars = (*split_scalar(alpha), *split_scalar(beta))
    consts = dict(K=k, STRIDE=stride, PAD_T=int(padding[0]), PAD_L=int(padding[2]),
                  DIL=dilation)
    return scalars, consts, ACT_CODES[act]


def dw_forward(x, weight, scale, shift, stride, padding, dilation, act, alpha=0.0, beta=0.0):
    """act(conv(x) * scale + shift); padding = [top, bottom, left, right]."""
    n, c, h, w = x.shape
    k = weight.shape[2]
    oh, ow = _out_hw(x, k, stride, padding, dilation)
    y = out_like(x, (n, c, oh, ow))
    q = n * oh * ow
    if y.numel() == 0 or not should_launch(x, weight, scale, shift):
        return y
    scale, shift = scale.contiguous(), shift.contiguous()
    scalars, consts, code = _conf(k, stride, padding, dilation, act, alpha, beta)
    bc, bq, nw = _tile(x, c, q)
    grid = (triton.cdiv(q, bq), triton.cdiv(c, bc))
    wrap_triton(_dw_fwd_kernel)[grid](
        x, weight, scale, shift, y, c, h, w, oh, ow, q,
        x.stride(0), x.stride(1), x.stride(2), x.stride(3),
        weight.stride(0), weight.stride(2), weight.stride(3),
        y.stride(0), y.stride(1), y.stride(2), y.stride(3), *scalars,
        ACT=code, ACC64=x.dtype == torch.float64, IDX64=index64(x, y), BLOCK_C=bc, BLOCK_Q=bq,
        num_warps=nw, num_stages=1, **consts)
    return y


def dw_backward(grad_out, x, weight, scale, shift, stride, padding, dilation, act, alpha=0.0,
                beta=0.0, gx_dtype=None):
    """(grad_x, grad_weight, grad_scale, grad_shift); grad_x in gx_dtype (default x.dtype)."""
    n, c, h, w = x.shape
    k = weight.shape[2]
    oh, ow = _out_hw(x, k, stride, padding, dilation)
    q = n * oh * ow
    acc = acc_dtype(x.dtype)
    gx = out_like(x, x.shape, gx_dtype)
    channels_last = x.dim() == 4 and gx.stride(1) == 1 and c > 1
    # grad_y in the pixel order of x, so both kernels read it along x's contiguous axis.
    gy = torch.empty((q, c) if channels_last else (c, q), dtype=acc, device=x.device)
    syc, syq = (1, c) if channels_last else (q, 1)
    bc, bq, nw = _tile(x, c, q)
    n_qblocks = triton.cdiv(q, bq)
    split = max(1, min(n_qblocks, num_programs_target(x) // triton.cdiv(c, bc)))
    part_s = torch.zeros((split, c, k * k), dtype=acc, device=x.device)
    part_b = torch.zeros((split, c), dtype=acc, device=x.device)
    if q > 0 and c > 0 and should_launch(grad_out, x, weight, scale, shift):
        scale, shift = scale.contiguous(), shift.contiguous()
        scalars, consts, code = _conf(k, stride, padding, dilation, act, alpha, beta)
        wrap_triton(_dw_bwd_param_kernel)[(triton.cdiv(c, bc), split)](
            x, weight, scale, shift, grad_out, gy, part_s, part_b,
            c, h, w, oh, ow, q, split,
            x.stride(0), x.stride(1), x.stride(2), x.stride(3),
            weight.stride(0), weight.stride(2), weight.stride(3),
            grad_out.stride(0), grad_out.stride(1), grad_out.stride(2), grad_out.stride(3),
            syc, syq, *scalars,
            ACT=code, ACC64=acc == torch.float64, IDX64=index64(x, grad_out, gy),
            KK_PAD=pow2(k * k), BLOCK_C=bc, BLOCK_Q=bq, num_warps=nw, num_stages=1, **consts)
        p = n * h * w
        bcx, bqx, nwx = _tile(x, c, p)
        wrap_triton(_dw_bwd_x_kernel)[(triton.cdiv(p, bqx), triton.cdiv(c, bcx))](
            gy, weight, scale, gx, c, h, w, oh, ow, p,
            weight.stride(0), weight.stride(2), weight.stride(3), syc, syq,
            gx.stride(0), gx.stride(1), gx.stride(2), gx.stride(3),
            ACC64=acc == torch.float64, IDX64=index64(gx, gy), BLOCK_C=bcx, BLOCK_Q=bqx,
            num_warps=nwx, num_stages=1, **consts)
    s = part_s.sum(0)
    grad_weight = (s * scale.to(acc)[:, None]).to(x.dtype).view(c, 1, k, k)
    grad_scale = (s * weight.reshape(c, k * k).to(acc)).sum(1).to(x.dtype)
    grad_shift = part_b.sum(0).to(x.dtype)
    return gx, grad_weight, grad_scale, grad_shift


def _check_grad_out(op, grad_out, x, expected):
    torch._check(list(grad_out.shape) == list(expected),
                 lambda: f"{op}: expected grad_out of shape {_checks.shape_str(expected)}, got "
                         f"{_checks.shape_str(grad_out.shape)}")
    torch._check(grad_out.device == x.device and grad_out.dtype == x.dtype,
                 lambda: f"{op}: expected grad_out on {x.device} with dtype "
                         f"{_checks.dtype_str(x.dtype)}, got {grad_out.device} and "
                         f"{_checks.dtype_str(grad_out.dtype)}")


@triton_op("dasp_kernels::dwconv_bn_act_triton", mutates_args=())
def dwconv_bn_act_triton(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor,
                         shift: torch.Tensor, stride: int, padding: list[int], dilation: int,
                         act: str, alpha: float, beta: float) -> torch.Tensor:
    _checks.check_dwconv_bn_act(x, weight, scale, shift, stride, padding, dilation, act,
                                torch._check)
    check_device(OP, x)
    return dw_forward(x, weight, scale, shift, stride, padding, dilation, act, alpha, beta)


@triton_op("dasp_kernels::_dwconv_bn_act_backward_triton", mutates_args=())
def _dwconv_bn_act_backward_triton(
        grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor,
        shift: torch.Tensor, stride: int, padding: list[int], dilation: int, act: str,
        alpha: float, beta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    _checks.check_dwconv_bn_act(x, weight, scale, shift, stride, padding, dilation, act,
                                torch._check)
    check_device(OP, x)
    _check_grad_out("_dwconv_bn_act_backward", grad_out, x,
                    _checks.dwconv_bn_act_out_shape(x, weight, stride, padding, dilation))
    return dw_backward(grad_out, x, weight, scale, shift, stride, padding, dilation, act, alpha,
                       beta)


register_autograd(dwconv_bn_act_triton, "dwconv_bn_act")
keep_opaque_when_interpreted(dwconv_bn_act_triton)
keep_opaque_when_interpreted(_dwconv_bn_act_backward_triton)
