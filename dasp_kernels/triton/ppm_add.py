"""2x2 ceil-mode max pool + 1x1 conv + residual, in Triton.

Forward: one program per [Cout x pooled pixels] tile; the pool is computed on the fly for each
[Cin x pixels] slab and contracted with tl.dot, so the pooled map never goes to memory.
Backward: grad_pooled = W^T grad_out (tl.dot) lands on the element each 2x2 window took (windows do
not overlap, so every element of x is written exactly once, no atomics); grad_W = grad_out pooled^T
is reduced over pixels in a fixed split and summed on the host side (deterministic).
"""
import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from dasp_kernels import _checks
from dasp_kernels.triton._common import (acc_dtype, check_device, dot16, index64,
                                         keep_opaque_when_interpreted, num_programs_target,
                                         on_interpreter, out_like, pixel_tile, pool2x2_tile, pow2,
                                         register_autograd, should_launch)

OP = "ppm_add"


@triton.jit
def _ppm_fwd_kernel(x_ptr, w_ptr, r_ptr, y_ptr, CIN, COUT, H, W, OH, OW, Q,
                    sxn, sxc, sxh, sxw, swo, swi, srn, src, srh, srw, syn, syc, syh, syw,
                    ACC64: tl.constexpr, DOT16: tl.constexpr, IDX64: tl.constexpr,
                    BLOCK_CO: tl.constexpr, BLOCK_CI: tl.constexpr, BLOCK_Q: tl.constexpr):
    ACC: tl.constexpr = tl.float64 if ACC64 else tl.float32
    DOT: tl.constexpr = x_ptr.dtype.element_ty if DOT16 else ACC
    IDX: tl.constexpr = tl.int64 if IDX64 else tl.int32
    mq, n, oh, ow = pixel_tile(Q, OH, OW, IDX, BLOCK_Q)
    co = tl.program_id(1) * BLOCK_CO + tl.arange(0, BLOCK_CO)
    mco = co < COUT
    cout = co.to(IDX)[:, None]
    acc = tl.zeros([BLOCK_CO, BLOCK_Q], dtype=ACC)
    for ci0 in range(0, CIN, BLOCK_CI):
        ci = ci0 + tl.arange(0, BLOCK_CI)
        mci = ci < CIN
        cin = ci.to(IDX)
        pooled, _ = pool2x2_tile(x_ptr, cin[:, None] * sxc + n * sxn, oh * 2, ow * 2, H, W,
                                 sxh, sxw, mci[:, None] & mq[None, :], ACC)
        wt = tl.load(w_ptr + cout * swo + cin[None, :] * swi,
                     mask=mco[:, None] & mci[None, :], other=0.0)
        # The pool only selects elements: casting back to x's dtype is exact.
        acc = tl.dot(wt.to(DOT), pooled.to(DOT), acc, input_precision="ieee")
    mask = mco[:, None] & mq[None, :]
    res = tl.load(r_ptr + cout * src + n * srn + oh * srh + ow * srw, mask=mask, other=0.0)
    y = acc + res.to(ACC)
    tl.store(y_ptr + cout * syc + n * syn + oh * syh + ow * syw, y.to(y_ptr.dtype.element_ty),
             mask=mask)


@triton.jit
def _ppm_bwd_x_kernel(x_ptr, w_ptr, go_ptr, gx_ptr, CIN, COUT, H, W, OH, OW, Q,
                      sxn, sxc, sxh, sxw, swo, swi, sgn, sgc, sgh, sgw, sdn, sdc, sdh, sdw,
                      USE_DOT: tl.constexpr, ACC64: tl.constexpr, DOT16: tl.constexpr,
                      IDX64: tl.constexpr, BLOCK_CO: tl.constexpr, BLOCK_CI: tl.constexpr,
                      BLOCK_Q: tl.constexpr):
    ACC: tl.constexpr = tl.float64 if ACC64 else tl.float32
    DOT: tl.constexpr = x_ptr.dtype.element_ty if DOT16 else ACC
    IDX: tl.constexpr = tl.int64 if IDX64 else tl.int32
    mq, n, oh, ow = pixel_tile(Q, OH, OW, IDX, BLOCK_Q)
    ci = tl.program_id(1) * BLOCK_CI + tl.arange(0, BLOCK_CI)
    mci = ci < CIN
    cin = ci.to(IDX)[:, None]
    gp = tl.zeros([BLOCK_CI, BLOCK_Q], dtype=ACC)
    for co0 in range(0, COUT, BLOCK_CO):
        co = co0 + tl.arange(0, BLOCK_CO)
        mco = co < COUT
        cout = co.to(IDX)
        wt = tl.load(w_ptr + cin * swi + cout[None, :] * swo, mask=mci[:, None] & mco[None, :],
                     other=0.0)
        g = tl.load(go_ptr + cout[:, None] * sgc + n * sgn + oh * sgh + ow * sgw,
                    mask=mco[:, None] & mq[None, :], other=0.0)
        if USE_DOT:
            gp = tl.dot(wt.to(DOT), g.to(DOT), gp, input_precision="ieee")
        else:  # BLOCK_CO == 1: an outer product
            gp += wt.to(ACC) * g.to(ACC)
    mask = mci[:, None] & mq[None, :]
    _, idx = pool2x2_tile(x_ptr, cin * sxc + n * sxn, oh * 2, ow * 2, H, W, sxh, sxw, mask, ACC)
    gp = gp.to(gx_ptr.dtype.element_ty)
    zero = tl.zeros_like(gp)
    base = gx_ptr + cin * sdc + n * sdn + (oh * 2) * sdh + (ow * 2) * sdw
    in_w = (ow * 2 + 1) < W
    in_h = (oh * 2 + 1) < H
    tl.store(base, tl.where(idx == 0, gp, zero), mask=mask)
    tl.store(base + sdw, tl.where(idx == 1, gp, zero), mask=mask & in_w)
    tl.store(base + sdh, tl.where(idx == 2, gp, zero), mask=mask & in_h)
    tl.store(base + sdh + sdw, tl.where(idx == 3, gp, zero), mask=mask & in_h & in_w)


@triton.jit
def _ppm_bwd_w_kernel(x_ptr, go_ptr, part_ptr, CIN, COUT, H, W, OH, OW, Q, SPLIT,
                      sxn, sxc, sxh, sxw, sgn, sgc, sgh, sgw,
                      ACC64: tl.constexpr, DOT16: tl.constexpr, IDX64: tl.constexpr,
                      BLOCK_CO: tl.constexpr, BLOCK_CI: tl.constexpr, BLOCK_Q: tl.constexpr):
    ACC: tl.constexpr = tl.float64 if ACC64 else tl.float32
    DOT: tl.constexpr = x_ptr.dtype.element_ty if DOT16 else ACC
    IDX: tl.constexpr = tl.int64 if IDX64 else tl.int32
    co = tl.program_id(0) * BLOCK_CO + tl.arange(0, BLOCK_CO)
    ci = tl.program_id(1) * BLOCK_CI + tl.arange(0, BLOCK_CI)
    split = tl.program_id(2)
    mco = co < COUT
    mci = ci < CIN
    cout = co.to(IDX)[:, None]
    cin = ci.to(IDX)[None, :]
    acc = tl.zeros([BLOCK_CO, BLOCK_CI], dtype=ACC)
    # Pixel blocks split, SPLIT + split, ...: a fixed order, so the sums are deterministic.
    for q0 in range(split.to(IDX) * BLOCK_Q, Q, SPLIT * BLOCK_Q):
        q = q0 + tl.arange(0, BLOCK_Q)
        mq = q < Q
        n = q // (OH * OW)
        r = q % (OH * OW)
        oh = r // OW
        ow = r % OW
        g = tl.load(go_ptr + cout * sgc + (n * sgn + oh * sgh + ow * sgw)[None, :],
                    mask=mco[:, None] & mq[None, :], other=0.0)
        # pooled^T as a [pixels x Cin] tile, so the dot needs no transpose.
        pooled_t, _ = pool2x2_tile(x_ptr, cin * sxc + n[:, None] * sxn, (oh * 2)[:, None],
                                   (ow * 2)[:, None], H, W, sxh, sxw, mq[:, None] & mci[None, :],
                                   ACC)
        acc = tl.dot(g.to(DOT), pooled_t.to(DOT), acc, input_precision="ieee")
    off = (split * COUT + co[:, None]) * CIN + ci[None, :]
    tl.store(part_ptr + off, acc, mask=mco[:, None] & mci[None, :])


def _dot_tiles(x, rows, inner, pixels):
    """(BLOCK_rows, BLOCK_inner, BLOCK_Q, num_warps); tl.dot needs every side >= 16.

    Launches use num_stages=1: with software pipelining the pool's four masked loads per element
    are staged in shared memory and the kernels spill registers on sm_90 (ptxas -v).
    """
    if on_interpreter(x):
        return pow2(rows, 16, 128), pow2(inner, 16, 64), pow2(pixels, 16, 4096), 4
    return pow2(rows, 16, 64), pow2(inner, 16, 32), 64, 4


def ppm_forward(x, weight, residual):
    n, cin, h, w = x.shape
    cout = weight.shape[0]
    oh, ow = (h + 1) // 2, (w + 1) // 2
    y = out_like(x, (n, cout, oh, ow))
    q = n * oh * ow
    if y.numel() == 0 or not should_launch(x, weight, residual):
        return y
    if cin == 0:
        return y.copy_(residual)
    bco, bci, bq, nw = _dot_tiles(x, cout, cin, q)
    wrap_triton(_ppm_fwd_kernel)[(triton.cdiv(q, bq), triton.cdiv(cout, bco))](
        x, weight, residual, y, cin, cout, h, w, oh, ow, q,
        x.stride(0), x.stride(1), x.stride(2), x.stride(3), weight.stride(0), weight.stride(1),
        residual.stride(0), residual.stride(1), residual.stride(2), residual.stride(3),
        y.stride(0), y.stride(1), y.stride(2), y.stride(3),
        ACC64=x.dtype == torch.float64, DOT16=dot16(x), IDX64=index64(x, y, residual),
        BLOCK_CO=bco, BLOCK_CI=bci, BLOCK_Q=bq, num_warps=nw, num_stages=1)
    return y


def ppm_backward(grad_out, x, weight, gx_dtype=None):
    """(grad_x, grad_weight); grad_x in gx_dtype (default x.dtype), x's memory format."""
    n, cin, h, w = x.shape
    cout = weight.shape[0]
    oh, ow = (h + 1) // 2, (w + 1) // 2
    q = n * oh * ow
    acc = acc_dtype(x.dtype)
    gx = out_like(x, x.shape, gx_dtype)
    bco, bci, bq, nw = _dot_tiles(x, cout, cin, q)
    n_qblocks = triton.cdiv(q, bq)
    tiles = triton.cdiv(cout, bco) * triton.cdiv(cin, bci)
    split = max(1, min(n_qblocks, num_programs_target(x) // tiles))
    part = torch.zeros((split, cout, cin), dtype=acc, device=x.device)
    if gx.numel() > 0 and should_launch(grad_out, x, weight):
        use_dot = cout >= 16
        bco_x = bco if use_dot else 1
        wrap_triton(_ppm_bwd_x_kernel)[(triton.cdiv(q, bq), triton.cdiv(cin, bci))](
            x, weight, grad_out, gx, cin, cout, h, w, oh, ow, q,
            x.stride(0), x.stride(1), x.stride(2), x.stride(3),
            weight.stride(0), weight.stride(1),
            grad_out.stride(0), grad_out.stride(1), grad_out.stride(2), grad_out.stride(3),
            gx.stride(0), gx.stride(1), gx.stride(2), gx.stride(3),
            USE_DOT=use_dot, ACC64=acc == torch.float64, DOT16=dot16(x),
            IDX64=index64(x, grad_out, gx), BLOCK_CO=bco_x, BLOCK_CI=bci,
            BLOCK_Q=bq, num_warps=nw, num_stages=1)
        if cout > 0:
            wrap_triton(_ppm_bwd_w_kernel)[(triton.cdiv(cout, bco), triton.cdiv(cin, bci), split)](
                x, grad_out, part, cin, cout, h, w, oh, ow, q, split,
                x.stride(0), x.stride(1), x.stride(2), x.stride(3),
                grad_out.stride(0), grad_out.stride(1), grad_out.stride(2), grad_out.stride(3),
                ACC64=acc == torch.float64, DOT16=dot16(x), IDX64=index64(x, grad_out),
                BLOCK_CO=bco, BLOCK_CI=bci,
                BLOCK_Q=bq, num_warps=nw, num_stages=1)
    grad_weight = part.sum(0).to(x.dtype).view(cout, cin, 1, 1)
    return gx, grad_weight


@triton_op("dasp_kernels::ppm_add_triton", mutates_args=())
def ppm_add_triton(x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    _checks.check_ppm_add(x, weight, residual, torch._check)
    check_device(OP, x)
    return ppm_forward(x, weight, residual)


@triton_op("dasp_kernels::_ppm_add_backward_triton", mutates_args=())
def _ppm_add_backward_triton(grad_out: torch.Tensor, x: torch.Tensor,
                             weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if x.dim() == 4 and weight.dim() == 4:
        expected = [x.shape[0], weight.shape[0], (x.shape[2] + 1) // 2, (x.shape[3] + 1) // 2]
        torch._check(list(grad_out.shape) == expected,
                     lambda: f"_ppm_add_backward: expected grad_out of shape "
                             f"{_checks.shape_str(expected)}, got "
                             f"{_checks.shape_str(grad_out.shape)}")
    torch._check(grad_out.device == x.device and grad_out.dtype == x.dtype,
                 lambda: f"_ppm_add_backward: expected grad_out on {x.device} with dtype "
                         f"{_checks.dtype_str(x.dtype)}, got {grad_out.device} and "
                         f"{_checks.dtype_str(grad_out.dtype)}")
    # grad_out has the residual's shape, dtype and device: the forward checks cover the rest.
    _checks.check_ppm_add(x, weight, grad_out, torch._check)
    check_device(OP, x)
    return ppm_backward(grad_out, x, weight)


register_autograd(ppm_add_triton, "ppm_add")
keep_opaque_when_interpreted(ppm_add_triton)
keep_opaque_when_interpreted(_ppm_add_backward_triton)
