"""MobileNetV2's inverted-residual block in one Triton kernel: the op inverted_residual_triton
(1x1 expansion, depthwise KxK, 1x1 projection, each with scale/shift and activation, + x).

Each program owns a [Cout x output pixels] tile. For every slab of BLOCK_E expanded channels it
computes the depthwise output of its pixels and contracts it with the projection weights (tl.dot):
neither the expanded tensor nor the depthwise output goes to memory. The expanded values a tap
needs are recomputed at that tap (tl.dot of the expansion weights with the tap's input pixels):
K*K expansions per depthwise output instead of one, the price of keeping no tile of the expanded
tensor (Triton cannot gather shifted windows from registers). Taps outside the input read zeros of
the expanded tensor (its zero padding), not act(shift). Backward: the block is recomputed in
PyTorch (dasp_kernels/ops.py, as for the CPU op).

With squeeze-and-excitation the op is a composition, not one kernel (the gate needs the mean of
the whole depthwise output before any projection): the expansion in PyTorch (1x1 conv, scale/
shift, activation), the depthwise by dwconv_bn_act's Triton kernel, the gate in PyTorch (mean,
two tiny FCs), folded into each image's projection weights, proj(s * d) = (W diag(s)) d, the
projection a batched matmul, then shift, activation and residual in PyTorch. The expanded and
depthwise tensors go to memory there.
"""
import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from dasp_kernels import _checks, reference
from dasp_kernels.triton._activation import ACT_CODES, act_forward, act_scalar, split_scalar
from dasp_kernels.triton.dwconv_bn_act import dw_forward
from dasp_kernels.triton._common import (check_device, index64, keep_opaque_when_interpreted,
                                         on_interpreter, out_like, pixel_tile, pow2,
                                         register_autograd, should_launch)

OP = "inverted_residual"


@triton.jit
def _expanded_at(x_ptr, ew_ptr, es_ptr, eb_ptr, xrow, ih, iw, valid, e, me, C, sxc, sxh, sxw,
                 seo, sei, ealpha, ebeta, EXPAND: tl.constexpr, EACT: tl.constexpr,
                 ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_E: tl.constexpr):
    """The expanded tensor's [BLOCK_E, pixels] tile at input pixels (ih, iw): zero where not
    `valid` (outside the input: the depthwise conv's padding)."""
    ecol = e[:, None]
    if EXPAND:
        z = tl.zeros([BLOCK_E, valid.shape[1]], dtype=ACC)
        for c0 in range(0, C, BLOCK_C):
            c = c0 + tl.arange(0, BLOCK_C)
            mc = c < C
            xt = tl.load(x_ptr + xrow + c.to(xrow.dtype)[:, None] * sxc + ih * sxh + iw * sxw,
                         mask=mc[:, None] & valid, other=0.0).to(ACC)
            wt = tl.load(ew_ptr + ecol * seo + c[None, :] * sei, mask=me[:, None] & mc[None, :],
                         other=0.0).to(ACC)
            z = tl.dot(wt, xt, z, input_precision="ieee")
        es = tl.load(es_ptr + e, mask=me, other=0.0).to(ACC)[:, None]
        eb = tl.load(eb_ptr + e, mask=me, other=0.0).to(ACC)[:, None]
        z = act_forward(z * es + eb, EACT, ealpha, ebeta)
    else:
        z = tl.load(x_ptr + xrow + ecol.to(xrow.dtype) * sxc + ih * sxh + iw * sxw,
                    mask=me[:, None] & valid, other=0.0).to(ACC)
    return tl.where(me[:, None] & valid, z, 0.0)


@triton.jit
def _ir_fwd_kernel(x_ptr, ew_ptr, es_ptr, eb_ptr, dw_ptr, ds_ptr, db_ptr, pw_ptr, ps_ptr, pb_ptr,
                   y_ptr, C, E, CO, H, W, OH, OW, Q,
                   sxn, sxc, sxh, sxw, seo, sei, sdc, sdh, sdw, spo, spi, syn, syc, syh, syw,
                   EA_HI, EA_LO, EB_HI, EB_LO, DA_HI, DA_LO, DB_HI, DB_LO,
                   PA_HI, PA_LO, PB_HI, PB_LO,
                   K: tl.constexpr, STRIDE: tl.constexpr, PAD_T: tl.constexpr,
                   PAD_L: tl.constexpr, DIL: tl.constexpr, EXPAND: tl.constexpr,
                   EACT: tl.constexpr, DACT: tl.constexpr, PACT: tl.constexpr,
                   RESIDUAL: tl.constexpr, ACC64: tl.constexpr, IDX64: tl.constexpr,
                   BLOCK_CO: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_C: tl.constexpr,
                   BLOCK_Q: tl.constexpr):
    ACC: tl.constexpr = tl.float64 if ACC64 else tl.float32
    IDX: tl.constexpr = tl.int64 if IDX64 else tl.int32
    mq, n, oh, ow = pixel_tile(Q, OH, OW, IDX, BLOCK_Q)
    co = tl.program_id(1) * BLOCK_CO + tl.arange(0, BLOCK_CO)
    mco = co < CO
    xrow = n * sxn
    acc = tl.zeros([BLOCK_CO, BLOCK_Q], dtype=ACC)
    for e0 in range(0, E, BLOCK_E):
        e = e0 + tl.arange(0, BLOCK_E)
        me = e < E
        d = tl.zeros([BLOCK_E, BLOCK_Q], dtype=ACC)
        for kh in tl.static_range(K):
            ih = oh * STRIDE - PAD_T + kh * DIL
            for kw in tl.static_range(K):
                iw = ow * STRIDE - PAD_L + kw * DIL
                valid = mq[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
                z = _expanded_at(x_ptr, ew_ptr, es_ptr, eb_ptr, xrow, ih, iw, valid, e, me, C,
                                 sxc, sxh, sxw, seo, sei, act_scalar(EA_HI, EA_LO, ACC),
                                 act_scalar(EB_HI, EB_LO, ACC), EXPAND, EACT, ACC, BLOCK_C,
                                 BLOCK_E)
                wv = tl.load(dw_ptr + e * sdc + kh * sdh + kw * sdw, mask=me, other=0.0)
                d += z * wv.to(ACC)[:, None]
        ds = tl.load(ds_ptr + e, mask=me, other=0.0).to(ACC)[:, None]
        db = tl.load(db_ptr + e, mask=me, other=0.0).to(ACC)[:, None]
        d = act_forward(d * ds + db, DACT, act_scalar(DA_HI, DA_LO, ACC),
                        act_scalar(DB_HI, DB_LO, ACC))
        d = tl.where(me[:, None] & mq[None, :], d, 0.0)
        wp = tl.load(pw_ptr + co[:, None] * spo + e[None, :] * spi,
                     mask=mco[:, None] & me[None, :], other=0.0).to(ACC)
        acc = tl.dot(wp, d, acc, input_precision="ieee")
    ps = tl.load(ps_ptr + co, mask=mco, other=0.0).to(ACC)[:, None]
    pb = tl.load(pb_ptr + co, mask=mco, other=0.0).to(ACC)[:, None]
    y = act_forward(acc * ps + pb, PACT, act_scalar(PA_HI, PA_LO, ACC),
                    act_scalar(PB_HI, PB_LO, ACC))
    cout = co.to(IDX)[:, None]
    mask = mco[:, None] & mq[None, :]
    if RESIDUAL:  # the output has x's shape: pixel (oh, ow) of channel co is x's
        y += tl.load(x_ptr + xrow + cout * sxc + oh * sxh + ow * sxw, mask=mask,
                     other=0.0).to(ACC)
    tl.store(y_ptr + n * syn + cout * syc + oh * syh + ow * syw, y.to(y_ptr.dtype.element_ty),
             mask=mask)


def _tiles(x, e, cout, pixels):
    """(BLOCK_CO, BLOCK_E, BLOCK_Q, num_warps); tl.dot needs 16 or more in every dimension."""
    if on_interpreter(x):  # ~24 ms per program: few, large ones
        return pow2(cout, 16, 128), pow2(e, 16, 64), pow2(pixels, 16, 1024), 4
    return pow2(cout, 16, 64), 16, 64, 4


def ir_forward(x, ew, es, esh, eact, ealpha, ebeta, dw, ds, dsh, stride, padding, dilation,
               dact, dalpha, dbeta, pw, ps, psh, pact, palpha, pbeta, residual):
    n, c, h, w = x.shape
    e, k, cout = dw.shape[0], dw.shape[2], pw.shape[0]
    _, _, oh, ow = _checks.dwconv_bn_act_out_shape(x, dw, stride, padding, dilation)
    y = out_like(x, (n, cout, oh, ow))
    q = n * oh * ow
    expand = ew is not None
    if not expand:  # unused pointers
        ew, es, esh = dw, ds, dsh
    tensors = (x, ew, es, esh, dw, ds, dsh, pw, ps, psh)
    if y.numel() == 0 or not should_launch(*tensors):
        return y
    bco, be, bq, nw = _tiles(x, e, cout, q)
    scalars = [v for a in (ealpha, ebeta, dalpha, dbeta, palpha, pbeta) for v in split_scalar(a)]
    wrap_triton(_ir_fwd_kernel)[(triton.cdiv(q, bq), triton.cdiv(cout, bco))](
        x, ew, es.contiguous(), esh.contiguous(), dw, ds.contiguous(), dsh.contiguous(), pw,
        ps.contiguous(), psh.contiguous(), y, c, e, cout, h, w, oh, ow, q,
        x.stride(0), x.stride(1), x.stride(2), x.stride(3), ew.stride(0), ew.stride(1),
        dw.stride(0), dw.stride(2), dw.stride(3), pw.stride(0), pw.stride(1),
        y.stride(0), y.stride(1), y.stride(2), y.stride(3), *scalars,
        K=k, STRIDE=stride, PAD_T=padding[0], PAD_L=padding[2], DIL=dilation, EXPAND=expand,
        EACT=ACT_CODES[eact], DACT=ACT_CODES[dact], PACT=ACT_CODES[pact], RESIDUAL=residual,
        ACC64=x.dtype == torch.float64, IDX64=index64(x, y),
        BLOCK_CO=bco, BLOCK_E=be, BLOCK_C=pow2(c, 16, 64), BLOCK_Q=bq, num_warps=nw,
        num_stages=1)
    return y


def ir_se_forward(x, ew, es, esh, eact, ealpha, ebeta, dw, ds, dsh, stride, padding, dilation,
                  dact, dalpha, dbeta, pw, ps, psh, pact, palpha, pbeta, residual, se_rw, se_rb,
                  se_ew, se_eb, se_act, se_alpha, se_beta, se_gate):
    """The block with SE as the composition the module's docstring describes."""
    y = x
    if ew is not None:
        y = reference.pointwise_bn_act(x, ew, es, esh, eact, ealpha, ebeta)
    d = dw_forward(y, dw, ds, dsh, stride, padding, dilation, dact, dalpha, dbeta)
    gate = reference.squeeze_excitation(d, se_rw, se_rb, se_ew, se_eb, se_act, se_alpha,
                                        se_beta, se_gate).flatten(1)
    n, e, oh, ow = d.shape
    w = pw.reshape(1, -1, e) * gate[:, None, :]
    z = torch.bmm(w, d.reshape(n, e, oh * ow)).reshape(n, pw.shape[0], oh, ow)
    out = reference.activation(z * ps.view(1, -1, 1, 1) + psh.view(1, -1, 1, 1), pact, palpha,
                               pbeta)
    if residual:
        out = out + x
    return out.contiguous(memory_format=_checks.output_memory_format(x))


@triton_op("dasp_kernels::inverted_residual_triton", mutates_args=())
def inverted_residual_triton(
        x: torch.Tensor, expand_weight: torch.Tensor | None, expand_scale: torch.Tensor | None,
        expand_shift: torch.Tensor | None, expand_act: str, expand_alpha: float,
        expand_beta: float, dw_weight: torch.Tensor, dw_scale: torch.Tensor,
        dw_shift: torch.Tensor, stride: int, padding: list[int], dilation: int, dw_act: str,
        dw_alpha: float, dw_beta: float, project_weight: torch.Tensor,
        project_scale: torch.Tensor, project_shift: torch.Tensor, project_act: str,
        project_alpha: float, project_beta: float, residual: bool,
        se_reduce_weight: torch.Tensor | None = None, se_reduce_bias: torch.Tensor | None = None,
        se_expand_weight: torch.Tensor | None = None, se_expand_bias: torch.Tensor | None = None,
        se_act: str = "relu", se_alpha: float = 0.0, se_beta: float = 0.0,
        se_gate: str = "sigmoid") -> torch.Tensor:
    args = (x, expand_weight, expand_scale, expand_shift, expand_act, expand_alpha, expand_beta,
            dw_weight, dw_scale, dw_shift, stride, padding, dilation, dw_act, dw_alpha, dw_beta,
            project_weight, project_scale, project_shift, project_act, project_alpha,
            project_beta, residual)
    se = (se_reduce_weight, se_reduce_bias, se_expand_weight, se_expand_bias, se_act, se_alpha,
          se_beta, se_gate)
    _checks.check_inverted_residual_args(args + se, torch._check)
    check_device(OP, x)
    if se_reduce_weight is not None:
        return ir_se_forward(*args, *se)
    return ir_forward(*args)


register_autograd(inverted_residual_triton, OP)
keep_opaque_when_interpreted(inverted_residual_triton)
