"""One whole DASP stage in one Triton kernel: PPM(x) + relu(bn(pw(relu(bn(dw(x)))))).

Each program owns a [Cout x output pixels] tile. For every slab of input channels it computes the
depthwise KxK stride-2 conv (+ scale/shift + ReLU) and the 2x2 max pool of the same x window, and
contracts both with their 1x1 weights (tl.dot, or an outer product per channel when Cin < 16, as in
the first stage where Cin = 3); neither intermediate goes to memory. Backward is composed: the
depthwise output is recomputed by the dwconv kernel, the pointwise part is two matmuls, and the
dwconv and ppm backward kernels give the rest.
"""
import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from dasp_kernels import _checks
from dasp_kernels.triton._common import (acc_dtype, check_device, dot16, dw_tile, index64,
                                         keep_opaque_when_interpreted, on_interpreter, out_like,
                                         pixel_tile, pool2x2_tile, pow2, register_autograd,
                                         should_launch)
from dasp_kernels.triton.dwconv_bn_act import dw_backward, dw_forward
from dasp_kernels.triton.ppm_add import ppm_backward

OP = "dasp_stage"


@triton.jit
def _stage_fwd_kernel(x_ptr, dww_ptr, dws_ptr, dwb_ptr, pww_ptr, pws_ptr, pwb_ptr, ppw_ptr, y_ptr,
                      CIN, COUT, H, W, OH, OW, Q,
                      sxn, sxc, sxh, sxw, sdc, sdh, sdw, spo, spi, sqo, sqi, syn, syc, syh, syw,
                      K: tl.constexpr, USE_DOT: tl.constexpr, ACC64: tl.constexpr,
                      DOT16: tl.constexpr, IDX64: tl.constexpr, BLOCK_CO: tl.constexpr,
                      BLOCK_CI: tl.constexpr, BLOCK_Q: tl.constexpr):
    ACC: tl.constexpr = tl.float64 if ACC64 else tl.float32
    DOT: tl.constexpr = x_ptr.dtype.element_ty if DOT16 else ACC
    IDX: tl.constexpr = tl.int64 if IDX64 else tl.int32
    mq, n, oh, ow = pixel_tile(Q, OH, OW, IDX, BLOCK_Q)
    co = tl.program_id(1) * BLOCK_CO + tl.arange(0, BLOCK_CO)
    mco = co < COUT
    cout = co.to(IDX)[:, None]
    acc_pw = tl.zeros([BLOCK_CO, BLOCK_Q], dtype=ACC)
    acc_pp = tl.zeros([BLOCK_CO, BLOCK_Q], dtype=ACC)
    for ci0 in range(0, CIN, BLOCK_CI):
        ci = ci0 + tl.arange(0, BLOCK_CI)
        mci = ci < CIN
        cin = ci.to(IDX)[:, None]
        mask = mci[:, None] & mq[None, :]
        xbase = cin * sxc + n * sxn
        d = dw_tile(x_ptr, dww_ptr, xbase, cin * sdc, oh, ow, mask, mci[:, None], H, W,
                    sxh, sxw, sdh, sdw, K, 2, K // 2, K // 2, 1, ACC)
        ds = tl.load(dws_ptr + ci, mask=mci, other=0.0).to(ACC)[:, None]
        db = tl.load(dwb_ptr + ci, mask=mci, other=0.0).to(ACC)[:, None]
        d = d * ds + db
        d = tl.where(mask, tl.where(d < 0, 0.0, d), 0.0)
        pooled, _ = pool2x2_tile(x_ptr, xbase, oh * 2, ow * 2, H, W, sxh, sxw, mask, ACC)
        wmask = mco[:, None] & mci[None, :]
        ci_row = ci.to(IDX)[None, :]
        wpw = tl.load(pww_ptr + cout * spo + ci_row * spi, mask=wmask, other=0.0)
        wpp = tl.load(ppw_ptr + cout * sqo + ci_row * sqi, mask=wmask, other=0.0)
        if USE_DOT:
            # d goes to x's dtype first, as the unfused stage stores it (exact for fp32 / fp64).
            acc_pw = tl.dot(wpw.to(DOT), d.to(x_ptr.dtype.element_ty).to(DOT), acc_pw,
                            input_precision="ieee")
            acc_pp = tl.dot(wpp.to(DOT), pooled.to(DOT), acc_pp, input_precision="ieee")
        else:  # BLOCK_CI == 1: an outer product per input channel
            acc_pw += wpw.to(ACC) * d.to(x_ptr.dtype.element_ty).to(ACC)
            acc_pp += wpp.to(ACC) * pooled
    ps = tl.load(pws_ptr + co, mask=mco, other=0.0).to(ACC)[:, None]
    pb = tl.load(pwb_ptr + co, mask=mco, other=0.0).to(ACC)[:, None]
    u = acc_pw * ps + pb
    y = tl.where(u < 0, 0.0, u) + acc_pp
    off = cout * syc + n * syn + oh * syh + ow * syw
    tl.store(y_ptr + off, y.to(y_ptr.dtype.element_ty), mask=mco[:, None] & mq[None, :])


def _tiles(x, cin, cout, pixels):
    """(USE_DOT, BLOCK_CO, BLOCK_CI, BLOCK_Q, num_warps)."""
    use_dot = cin >= 16
    if on_interpreter(x):
        bci = pow2(cin, 16, 64) if use_dot else 1
        return use_dot, pow2(cout, 16, 128), bci, pow2(pixels, 16, 2048), 4
    # Sizes that compile for sm_90 without register spills (checked with ptxas -v); the
    # depthwise tile is recomputed once per Cout tile.
    bco = pow2(cout, 16, 32 if x.dtype == torch.float64 else 64)
    return use_dot, bco, (16 if use_dot else 1), 64, 8


def stage_forward(x, dw_weight, dw_scale, dw_shift, pw_weight, pw_scale, pw_shift, ppm_weight):
    n, cin, h, w = x.shape
    cout = pw_weight.shape[0]
    k = dw_weight.shape[2]
    oh, ow = (h + 1) // 2, (w + 1) // 2
    y = out_like(x, (n, cout, oh, ow))
    q = n * oh * ow
    params = (dw_weight, dw_scale, dw_shift, pw_weight, pw_scale, pw_shift, ppm_weight)
    if y.numel() == 0 or not should_launch(x, *params):
        return y
    if cin == 0:  # both branches are empty sums: relu(pw_shift)
        return y.copy_(torch.relu(pw_shift).view(1, cout, 1, 1).expand_as(y))
    dw_scale, dw_shift = dw_scale.contiguous(), dw_shift.contiguous()
    pw_scale, pw_shift = pw_scale.contiguous(), pw_shift.contiguous()
    use_dot, bco, bci, bq, nw = _tiles(x, cin, cout, q)
    wrap_triton(_stage_fwd_kernel)[(triton.cdiv(q, bq), triton.cdiv(cout, bco))](
        x, dw_weight, dw_scale, dw_shift, pw_weight, pw_scale, pw_shift, ppm_weight, y,
        cin, cout, h, w, oh, ow, q,
        x.stride(0), x.stride(1), x.stride(2), x.stride(3),
        dw_weight.stride(0), dw_weight.stride(2), dw_weight.stride(3),
        pw_weight.stride(0), pw_weight.stride(1), ppm_weight.stride(0), ppm_weight.stride(1),
        y.stride(0), y.stride(1), y.stride(2), y.stride(3),
        K=k, USE_DOT=use_dot, ACC64=x.dtype == torch.float64, DOT16=dot16(x),
        IDX64=index64(x, y),
        BLOCK_CO=bco, BLOCK_CI=bci, BLOCK_Q=bq, num_warps=nw,
        # Pipelining the channel loop would stage K*K input tiles in shared memory: 248 KB
        # for fp32 K = 3, more than an H100 block can have.
        num_stages=1)
    return y


def stage_backward(grad_out, x, dw_weight, dw_scale, dw_shift, pw_weight, pw_scale, pw_shift,
                   ppm_weight):
    cout, cin = pw_weight.shape[0], pw_weight.shape[1]
    k = dw_weight.shape[2]
    acc = acc_dtype(x.dtype)
    # The depthwise output in x's dtype, as the unfused stage stores it; the rest in acc.
    d = dw_forward(x, dw_weight, dw_scale, dw_shift, 2, [k // 2] * 4, 1, "relu").to(acc)
    g = grad_out.to(acc)
    wpw = pw_weight.reshape(cout, cin).to(acc)
    ps = pw_scale.to(acc).view(1, cout, 1, 1)
    z = torch.einsum("oc,nchw->nohw", wpw, d)
    g_u = torch.where(z * ps + pw_shift.to(acc).view(1, cout, 1, 1) > 0, g, 0.0)
    grad_pw_shift = g_u.sum((0, 2, 3))
    grad_pw_scale = (g_u * z).sum((0, 2, 3))
    g_z = g_u * ps
    grad_pw_weight = torch.einsum("nohw,nchw->oc", g_z, d).reshape(cout, cin, 1, 1)
    g_d = torch.einsum("oc,nohw->nchw", wpw, g_z)
    gx_dw, grad_dw_weight, grad_dw_scale, grad_dw_shift = dw_backward(
        g_d, x, dw_weight, dw_scale, dw_shift, 2, [k // 2] * 4, 1, "relu", gx_dtype=acc)
    gx_pp, grad_ppm_weight = ppm_backward(grad_out, x, ppm_weight, gx_dtype=acc)
    grad_x = (gx_dw + gx_pp).to(x.dtype)
    dt = x.dtype
    return (grad_x, grad_dw_weight, grad_dw_scale, grad_dw_shift,
            grad_pw_weight.to(dt).contiguous(), grad_pw_scale.to(dt), grad_pw_shift.to(dt),
            grad_ppm_weight)


@triton_op("dasp_kernels::dasp_stage_triton", mutates_args=())
def dasp_stage_triton(x: torch.Tensor, dw_weight: torch.Tensor, dw_scale: torch.Tensor,
                      dw_shift: torch.Tensor, pw_weight: torch.Tensor, pw_scale: torch.Tensor,
                      pw_shift: torch.Tensor, ppm_weight: torch.Tensor) -> torch.Tensor:
    _checks.check_dasp_stage(x, dw_weight, dw_scale, dw_shift, pw_weight, pw_scale, pw_shift,
                             ppm_weight, torch._check)
    check_device(OP, x)
    return stage_forward(x, dw_weight, dw_scale, dw_shift, pw_weight, pw_scale, pw_shift,
                         ppm_weight)


@triton_op("dasp_kernels::_dasp_stage_backward_triton", mutates_args=())
def _dasp_stage_backward_triton(
        grad_out: torch.Tensor, x: torch.Tensor, dw_weight: torch.Tensor, dw_scale: torch.Tensor,
        dw_shift: torch.Tensor, pw_weight: torch.Tensor, pw_scale: torch.Tensor,
        pw_shift: torch.Tensor, ppm_weight: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
           torch.Tensor, torch.Tensor]:
    _checks.check_dasp_stage(x, dw_weight, dw_scale, dw_shift, pw_weight, pw_scale, pw_shift,
                             ppm_weight, torch._check)
    check_device(OP, x)
    expected = list(_checks.dasp_stage_out_shape(x, pw_weight))
    torch._check(list(grad_out.shape) == expected,
                 lambda: f"_dasp_stage_backward: expected grad_out of shape "
                         f"{_checks.shape_str(expected)}, got {_checks.shape_str(grad_out.shape)}")
    torch._check(grad_out.device == x.device and grad_out.dtype == x.dtype,
                 lambda: f"_dasp_stage_backward: expected grad_out on {x.device} with dtype "
                         f"{_checks.dtype_str(x.dtype)}, got {grad_out.device} and "
                         f"{_checks.dtype_str(grad_out.dtype)}")
    return stage_backward(grad_out, x, dw_weight, dw_scale, dw_shift, pw_weight, pw_scale,
                          pw_shift, ppm_weight)


register_autograd(dasp_stage_triton, "dasp_stage")
keep_opaque_when_interpreted(dasp_stage_triton)
keep_opaque_when_interpreted(_dasp_stage_backward_triton)
