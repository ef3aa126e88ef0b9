"""Every test of inverted_residual: its cases against reference.inverted_residual, forward and
every gradient, on every backend (cpu, triton, cuda and the CUDA emulator), thread counts, empty
batch, gradcheck, opcheck, the error messages of wrapper, fake and TORCH_CHECK alike, and the
narrower CPU builds."""
import re

import pytest
import torch

import dasp_kernels
from dasp_kernels import _checks, cases, functional, reference
from inputs import case_inputs
from op_harness import BACKENDS, LAYOUTS, check_all, check_format, close_rel_max, make_runner
from op_harness import emu_ops  # noqa: F401 (the emulator fixture)
from op_harness import backends, make_target, narrower_build_check, skip_unless

OP = "inverted_residual"
ops = torch.ops.dasp_kernels
cpu_only = skip_unless("cpu")


@pytest.fixture(params=BACKENDS)
def run(request):
    return make_runner(request, OP)


@pytest.fixture(params=BACKENDS)
def tgt(request):
    return make_target(request)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_matches_reference(run, layout):
    check_all(run, layout)


def op_args(case, layout="contiguous", dtype=torch.float32, device="cpu"):
    x, params = case_inputs(case, layout, dtype, device)
    return list(cases.op_args(case, x, params))


TENSORS = [0, 1, 2, 3, 7, 8, 9, 16, 17, 18, 23, 24, 25, 26]  # the op's tensor arguments


def with_grad(args):
    return [a.requires_grad_() if i in TENSORS and a is not None else a
            for i, a in enumerate(args)]


MV2 = cases.ir_case(2, 8, 48, 8, 13, 21)  # MobileNetV2's block: ReLU6, linear, residual
STRIDED = cases.ir_case(1, 8, 24, 12, 9, 10, 5, 2, (2, 1, 2, 1), 1,
                        ("hardswish", "relu", "none"))
NO_EXPAND = cases.ir_case(2, 16, None, 16, 6, 7, 3, 1, 2, 2, ("none", "silu", "none"))
# Squeeze-and-excitation: MobileNetV3's (relu, hardsigmoid), EfficientNet's (silu, sigmoid).
SE_V3 = cases.se_case(2, 8, 24, 8, 9, 11, 5, 1, None, 1, ("hardswish", "hardswish", "none"),
                      se=(8, "relu", "hardsigmoid"))
SE_EFF = cases.se_case(2, 8, 32, 12, 9, 10, 3, 2, "same", 1, ("silu", "silu", "none"),
                       se=(2, "silu", "sigmoid"))
BLOCKS = [MV2, STRIDED, NO_EXPAND, SE_V3, SE_EFF]
BLOCK_IDS = ["mv2", "strided", "no_expand", "se_v3", "se_eff"]


@cpu_only
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("case", BLOCKS, ids=BLOCK_IDS)
def test_cpu_any_thread_count_same_bits(case, threads):
    args = op_args(case, "channels_last")
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ops.inverted_residual(*args)
        torch.set_num_threads(threads)
        assert torch.equal(ops.inverted_residual(*args), one)
    finally:
        torch.set_num_threads(old)
    close_rel_max(one, reference.inverted_residual(*args), 1e-5)


@cpu_only
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "sliced"])
def test_cpu_mobilenet_sizes(layout):
    """Channel counts of MobileNetV2 and V3 (tails of the vector width: 24, 40, 72, 120)."""
    for case in [cases.ir_case(1, 24, 144, 24, 17, 33), cases.ir_case(1, 40, 120, 40, 9, 12, 5),
                 cases.ir_case(1, 16, 72, 24, 20, 19, 3, 2)]:
        args = op_args(case, layout)
        out = ops.inverted_residual(*args)
        check_format(out, args[0])
        close_rel_max(out, reference.inverted_residual(*[
            a.double() if isinstance(a, torch.Tensor) else a for a in args]), 1e-5)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_empty_batch(tgt, layout):
    args = with_grad(op_args(cases.ir_case(0, 4, 12, 4, 5, 5), layout, device=tgt.device))
    out = tgt.inverted_residual(*args)
    assert out.shape == (0, 4, 5, 5)
    if tgt.backend == "emu":
        return  # the emulator's ops have no autograd
    out.sum().backward()
    assert not args[1].grad.any()


@pytest.mark.parametrize("case", BLOCKS, ids=BLOCK_IDS)
def test_gradcheck_registered_op(tgt, case):
    """Finite differences, float64 (the Triton interpreter: fast mode)."""
    if tgt.backend == "emu":
        pytest.skip("the emulator's ops have no autograd")
    small = dict(case, shape=(1, case["shape"][1], 5, 6))
    args = with_grad(op_args(small, "channels_last", torch.float64, tgt.device))
    assert torch.autograd.gradcheck(lambda *a: tgt.inverted_residual(*a), args,
                                    fast_mode=tgt.backend == "triton")


@pytest.mark.parametrize("case", BLOCKS, ids=BLOCK_IDS)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_opcheck_registered_op(tgt, case, layout):
    if tgt.backend in ("triton", "emu"):  # the interpreters: one image
        case = dict(case, shape=(1, *case["shape"][1:]))
    args = op_args(case, layout, device=tgt.device)
    torch.library.opcheck(tgt.inverted_residual, args if tgt.backend == "emu" else with_grad(args))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "sliced"])
def test_direct_op_matches_reference(tgt, layout):
    for case in BLOCKS:
        args = op_args(case, layout, device=tgt.device)
        out = tgt.inverted_residual(*args)
        check_format(out, args[0])
        close_rel_max(out, reference.inverted_residual(*[
            a.double() if isinstance(a, torch.Tensor) else a for a in args]), 1e-5)


@pytest.mark.parametrize("case", [MV2, SE_V3], ids=["mv2", "se_v3"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend", backends("triton", "cuda", "emu"))
def test_half_dtypes(backend, dtype, request, case):
    """float16 and bfloat16 in and out, float32 inside (the CPU kernels take float32/float64)."""
    tgt = make_target(request, backend)
    if backend == "triton" and tgt.device.type == "cpu":
        pytest.skip("the Triton interpreter keeps half types as raw bits")
    args = [a.to(dtype) if isinstance(a, torch.Tensor) else a
            for a in op_args(case, "channels_last", device=tgt.device)]
    out = tgt.inverted_residual(*args)
    assert out.dtype == dtype
    ref = reference.inverted_residual(*[a.double() if isinstance(a, torch.Tensor) else a
                                        for a in args])
    close_rel_max(out, ref, 2e-2 if dtype == torch.float16 else 6e-2)


def test_direct_op_errors(tgt):
    """The registered op (no wrapper) checks its input with the wrapper's words."""
    for name in ("residual shape", "dw act", "expand half given", "se half given",
                 "se expand weight shape", "se gate"):
        args = [a.to(tgt.device) if isinstance(a, torch.Tensor) else a for a in bad_args(name)]
        pos, kw = wrapper_kwargs(args)
        with pytest.raises(ValueError) as py_err:
            dasp_kernels.inverted_residual(*pos, **kw, backend="reference")
        with pytest.raises(RuntimeError, match=re.escape(str(py_err.value))):
            tgt.inverted_residual(*args)


@cpu_only
def test_compiles_in_one_graph():
    args = op_args(MV2, "channels_last")
    f = torch.compile(lambda *a: ops.inverted_residual(*a), fullgraph=True)
    close_rel_max(f(*args), ops.inverted_residual(*args), 1e-6)


def _ok():
    """A block with SE (E = 12, S = 3): the errors of every stage have their arguments."""
    case = cases.se_case(2, 4, 12, 4, 7, 6, se=(3, "relu", "hardsigmoid"))
    return op_args(case)


# name: {position in the op's arguments: bad value}
BAD = {
    "rank": {0: torch.randn(4, 7, 6)},
    "dtype mismatch": {9: torch.randn(12, dtype=torch.float64)},
    "expand half given": {2: None},
    "expand weight shape": {1: torch.randn(12, 3, 1, 1)},
    "expand scale shape": {2: torch.randn(11)},
    "dw weight shape": {7: torch.randn(12, 2, 3, 3)},
    "kernel size": {7: torch.randn(12, 1, 11, 11)},
    "stride": {10: 3},
    "padding": {11: [1, 1, 1, 3]},
    "dilation": {12: 0},
    "dw act": {13: "relu7"},
    "project weight shape": {16: torch.randn(4, 11, 1, 1)},
    "project shift shape": {18: torch.randn(5)},
    "project act": {19: "tanh"},
    "residual shape": {10: 2},
    "float16 on cpu": "half",
    "se half given": {25: None},
    "se dtype mismatch": {26: torch.randn(12, dtype=torch.float64)},
    "se reduce weight shape": {23: torch.randn(3, 11, 1, 1)},
    "se reduce bias shape": {24: torch.randn(4)},
    "se expand weight shape": {25: torch.randn(12, 2, 1, 1)},
    "se expand bias shape": {26: torch.randn(11)},
    "se act": {27: "tanh"},
    "se gate": {30: "sigmoid6"},
}


def bad_args(name):
    args = _ok()
    if BAD[name] == "half":
        return [a.half() if isinstance(a, torch.Tensor) else a for a in args]
    for i, v in BAD[name].items():
        args[i] = v
    return args


def wrapper_kwargs(args):
    (x, ew, es, esh, eact, ea, eb, dw, ds, dsh, stride, pad, dil, dact, da, db, pw, ps, psh,
     pact, pa, pb, residual) = args[:23]
    se = dict(zip(_checks.SE_ARG_NAMES, args[23:]))
    return (x, dw, ds, dsh, pw, ps, psh), dict(
        expand_weight=ew, expand_scale=es, expand_shift=esh, expand_act=eact, stride=stride,
        padding=pad, dilation=dil, dw_act=dact, project_act=pact, residual=residual, **se)


@cpu_only
@pytest.mark.parametrize("name", BAD)
def test_errors_say_the_same_everywhere(name):
    """The wrapper's ValueError, the fake's and the C++ kernel's errors say the same words."""
    args = bad_args(name)
    pos, kw = wrapper_kwargs(args)
    with pytest.raises(ValueError) as py_err:
        dasp_kernels.inverted_residual(*pos, **kw, backend="cpu")
    msg = str(py_err.value)
    assert msg.startswith("inverted_residual: ")
    with pytest.raises(RuntimeError, match=re.escape(msg)):
        ops.inverted_residual(*args)
    if "backend 'cpu' supports" in msg:
        return  # a backend's limit: the fake (any backend) accepts float16
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode, pytest.raises(Exception, match=re.escape(msg)):
        ops.inverted_residual(*[mode.from_tensor(a) if isinstance(a, torch.Tensor) else a
                                for a in args])


def test_wrapper_errors_without_the_extension():
    """The Python checks alone (what the reference backend and the fake run)."""
    args = bad_args("residual shape")
    with pytest.raises(ValueError, match=re.escape(
            "inverted_residual: expected an output of x's shape [2, 4, 7, 6] with "
            "residual=True, got [2, 4, 4, 3]")):
        _checks.check_inverted_residual_args(args, _checks.raise_value_error)
    pos, kw = wrapper_kwargs(_ok())
    with pytest.raises(ValueError, match=re.escape(
            "inverted_residual: expected backend 'auto', 'reference', 'cpu', 'cuda' or 'triton', "
            "got 'tpu'")):
        dasp_kernels.inverted_residual(*pos, **kw, backend="tpu")


def test_reference_is_the_blocks_of_torchvision():
    """reference.inverted_residual against torchvision's own InvertedResidual (MobileNetV2),
    the BatchNorms folded with fold_bn: the oracle is the model people run."""
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    block = tv.models.mobilenetv2.InvertedResidual(16, 16, 1, 6).eval()
    for m in block.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2)
    expand, dw, project, bn = block.conv
    x = torch.randn(2, 16, 11, 9)
    e_scale, e_shift = reference.fold_bn(expand[1])
    d_scale, d_shift = reference.fold_bn(dw[1])
    p_scale, p_shift = reference.fold_bn(bn)
    got = functional.inverted_residual(
        x, dw[0].weight, d_scale, d_shift, project.weight, p_scale, p_shift,
        expand_weight=expand[0].weight, expand_scale=e_scale, expand_shift=e_shift,
        expand_act="hardtanh", expand_beta=6.0, dw_act="hardtanh", dw_beta=6.0, residual=True,
        backend="reference")
    with torch.no_grad():
        close_rel_max(got.detach(), block(x), 1e-5)


@pytest.mark.parametrize("isa", ["avx2", "default"])
def test_narrower_isa_builds(isa):
    narrower_build_check(OP, isa)


@cpu_only
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_cpu_se_large_any_thread_count_same_bits(threads):
    """SE's two passes over bands: the channel sums go row by row in order, so the gate, and
    the output, do not depend on the band split (MobileNetV3's 40 > 120 > 40 block, S = 32)."""
    test_cpu_any_thread_count_same_bits(cases.inverted_residual_cases("full")[-2], threads)


def test_old_callers_without_se_arguments():
    """The op's 23 arguments of the block without SE still call it (the SE ones default), and
    the wrapper passes none of them for a block without SE."""
    args = op_args(MV2)
    assert len(args) == 23
    if dasp_kernels.available_backends().count("cpu"):
        close_rel_max(ops.inverted_residual(*args), reference.inverted_residual(*args), 1e-5)


def test_reference_se_is_torchvisions_mobilenet_v3_block():
    """reference.inverted_residual with SE against torchvision's MobileNetV3 InvertedResidual
    (hardswish, SE with ReLU and Hardsigmoid) and EfficientNet's MBConv (SiLU, Sigmoid)."""
    tv = pytest.importorskip("torchvision")
    from torchvision.models import efficientnet, mobilenetv3

    torch.manual_seed(0)
    v3 = mobilenetv3.InvertedResidual(mobilenetv3.InvertedResidualConfig(
        16, 5, 48, 16, True, "HS", 1, 1, 1.0), torch.nn.BatchNorm2d).eval()
    mb = efficientnet.MBConv(efficientnet.MBConvConfig(4, 3, 1, 16, 16, 1), 0.2,
                             torch.nn.BatchNorm2d).eval()
    for block, acts, gate in ((v3, ("hardswish", "relu"), "hardsigmoid"),
                              (mb, ("silu", "silu"), "sigmoid")):
        for m in block.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2)
        expand, dw, se, project = block.block
        (e_scale, e_shift), (d_scale, d_shift), (p_scale, p_shift) = (
            reference.fold_bn(m[1]) for m in (expand, dw, project))
        x = torch.randn(2, 16, 11, 9)
        got = functional.inverted_residual(
            x, dw[0].weight, d_scale, d_shift, project[0].weight, p_scale, p_shift,
            expand_weight=expand[0].weight, expand_scale=e_scale, expand_shift=e_shift,
            expand_act=acts[0], dw_act=acts[0], project_act="none", residual=True,
            se_reduce_weight=se.fc1.weight, se_reduce_bias=se.fc1.bias,
            se_expand_weight=se.fc2.weight, se_expand_bias=se.fc2.bias, se_act=acts[1],
            se_gate=gate, backend="reference")
        with torch.no_grad():
            close_rel_max(got.detach(), block(x), 1e-5)
