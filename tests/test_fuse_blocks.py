"""fuse() on inverted-residual blocks (dasp_kernels/fuse_blocks.py) and the choice between the
one-pass op and the block's layers (dasp_kernels/ir_choice.py), on torchvision's own blocks."""
import collections
import io

import pytest
import torch

import dasp_kernels
from dasp_kernels import cases, fuse_blocks, ir_choice, reference
from conftest import needs_cpu_ext, perturbed_bn

torchvision = pytest.importorskip("torchvision")
pytestmark = pytest.mark.usefixtures("one_thread")
cpu_only = needs_cpu_ext


def close_rel_max(actual, expected, tol):
    """|a - e| <= tol * max |e| everywhere."""
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=0, atol=tol * scale)

# name: (blocks fused, blocks left as layers and why)
BLOCKS = {
    "mobilenet_v2": (17, {}),
    "mobilenet_v3_large": (15, {}),  # 8 with squeeze-and-excitation
    "mnasnet1_0": (16, {}),
    "efficientnet_b0": (16, {}),  # MBConv: SE (SiLU, sigmoid), stochastic depth
}


def _fused_rows(report):
    return sum(n for what, n in report.items() if what.startswith("fused: inverted_residual"))


def _count_op_calls(monkeypatch):
    calls = []
    real = fuse_blocks.run_op

    def counting(args, backend, fast):
        calls.append(tuple(args[0].shape))
        return real(args, backend, fast)

    monkeypatch.setattr(fuse_blocks, "run_op", counting)
    return calls


@pytest.mark.parametrize("backend", [pytest.param("cpu", marks=cpu_only), "reference"])
@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_torchvision_blocks_fuse_and_match(name, backend, monkeypatch):
    torch.manual_seed(0)
    model = perturbed_bn(getattr(torchvision.models, name)())
    fused = dasp_kernels.fuse(model, backend=backend)
    n_fused, left = BLOCKS[name]
    assert fused.dasp_fused["inverted_residual"] == n_fused
    report = collections.Counter(what for _, what in dasp_kernels.fuse_report(fused))
    assert _fused_rows(report) == n_fused
    assert {w.removeprefix("left as layers: "): n for w, n in report.items()
            if w.startswith("left as layers")} == left
    assert list(fused.state_dict()) == list(model.state_dict())
    calls = _count_op_calls(monkeypatch)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        out, ref = fused(x), model(x)
    assert len(calls) == n_fused  # every fused block ran the op (DASP_KERNELS_IR_IMPL=dasp)
    scale = ref.abs().max()
    torch.testing.assert_close(out / scale, ref / scale, rtol=1e-5, atol=1e-5)


TIMM = {  # name: (blocks fused, blocks left as layers and why)
    "efficientnet_lite0": (16, {}),
    "tf_efficientnet_lite0": (16, {}),  # Conv2dSame: "same" padding from each input's size
    "mobilenetv4_conv_small": (8, {"ConvNormAct (dw_start) is not fused into the block yet": 4}),
    "efficientnet_b0": (16, {}),  # SqueezeExcite (conv_reduce, act1, conv_expand, gate)
}


@pytest.mark.parametrize("backend", [pytest.param("cpu", marks=cpu_only), "reference"])
@pytest.mark.parametrize("name", sorted(TIMM))
def test_timm_blocks_fuse_and_match(name, backend, monkeypatch):
    """timm's InvertedResidual, DepthwiseSeparableConv and UniversalInvertedResidual, their
    activations inside BatchNormAct2d."""
    timm = pytest.importorskip("timm")
    model = perturbed_bn(timm.create_model(name))
    fused = dasp_kernels.fuse(model, backend=backend)
    n_fused, left = TIMM[name]
    report = collections.Counter(what for _, what in dasp_kernels.fuse_report(fused))
    assert _fused_rows(report) == fused.dasp_fused["inverted_residual"] == n_fused
    assert {w.removeprefix("left as layers: "): n for w, n in report.items()
            if w.startswith("left as layers")} == left
    assert list(fused.state_dict()) == list(model.state_dict())
    calls = _count_op_calls(monkeypatch)
    for size in (96, 97):  # an odd size: Conv2dSame pads bottom/right more
        x = torch.randn(1, 3, size, size + 2)
        with torch.no_grad():
            close_rel_max(fused(x), model(x), 1e-5)
    assert len(calls) == 2 * n_fused


@cpu_only
def test_fused_blocks_pickle_train_and_export():
    """A fused model pickles (its swapped classes come back), trains through the blocks' own
    layers (norms in train mode) and exports to ONNX as standard ops."""
    torch.manual_seed(0)
    model = perturbed_bn(torchvision.models.mobilenet_v2())
    fused = dasp_kernels.fuse(model)
    buf = io.BytesIO()
    torch.save(fused, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        close_rel_max(loaded(x), model(x), 1e-5)
    assert fuse_blocks.is_fused_block(loaded.features[3])
    fused.train()
    model.train()  # the features: the classifier's dropout draws differently in each
    torch.testing.assert_close(fused.features(x), model.features(x), rtol=1e-4, atol=1e-4)
    fused.eval()
    onnx = pytest.importorskip("onnx")
    f = io.BytesIO()
    torch.onnx.export(fused.features[:4], (x,), f, dynamo=False)
    nodes = onnx.load_from_string(f.getvalue()).graph.node
    assert all(n.domain in ("", "ai.onnx") for n in nodes)  # standard ops only
    assert sum(n.op_type == "Conv" for n in nodes) == 1 + 2 + 3 + 3  # each layer's own conv


@cpu_only
def test_eager_cache_follows_the_parameters():
    """The folded norms cached for eager inference are refolded when a parameter or buffer of the
    block changes: in place, through load_state_dict, or replaced."""
    torch.manual_seed(0)
    model = perturbed_bn(torchvision.models.mobilenet_v2()).features[:4]
    fused = dasp_kernels.fuse(model)
    x = torch.randn(1, 3, 40, 48)
    with torch.no_grad():
        fused(x)
        model[3].conv[0][1].running_mean.add_(0.5)  # the expansion's norm, in place
        model[3].conv[1][0].weight.mul_(1.5)         # the depthwise conv
        fused.load_state_dict(model.state_dict())
        close_rel_max(fused(x), model(x), 1e-5)
        fused[3].conv[3].running_var = torch.rand(24) + 0.5  # the projection's norm, replaced
        model[3].conv[3].running_var = fused[3].conv[3].running_var.clone()
        close_rel_max(fused(x), model(x), 1e-5)


def _compiles_in_one_graph_and_exports(name, n_blocks):
    """A fused torchvision model's features: under compile (fullgraph) one op call per block and
    the unfused model's output; exported, the same output."""
    from torch._inductor.utils import run_and_get_code

    torch.manual_seed(0)
    model = perturbed_bn(getattr(torchvision.models, name)())
    fused = dasp_kernels.fuse(model)
    x = torch.randn(1, 3, 64, 64)
    torch._dynamo.reset()
    compiled = torch.compile(fused.features, fullgraph=True)
    with torch.no_grad():
        out, code = run_and_get_code(compiled, x)
        close_rel_max(out, model.features(x), 1e-5)
    calls = "\n".join(code).count("torch.ops.dasp_kernels.inverted_residual.default(")
    assert calls == n_blocks
    with torch.no_grad():
        ep = torch.export.export(fused.features, (x,))
        close_rel_max(ep.module()(x), model.features(x), 1e-5)
    return fused


@cpu_only
def test_fused_blocks_compile_in_one_graph_and_export():
    _compiles_in_one_graph_and_exports("mobilenet_v2", 17)


def test_onednn_block_is_the_block():
    """ir_choice's stand-in for inductor's code computes the block."""
    for case in [cases.ir_case(1, 24, 144, 24, 12, 20), cases.ir_case(1, 16, 96, 24, 11, 13, 3, 2),
                 cases.ir_case(1, 8, None, 12, 9, 9, 5, 1, 2, 2, ("none", "silu", "relu")),
                 cases.se_case(1, 16, 48, 16, 9, 11, 5)]:
        x, p = cases.make_inputs(case, torch.Generator().manual_seed(0))
        x = x.float().contiguous(memory_format=torch.channels_last)
        args = cases.op_args(case, x, [t.float() for t in p])
        close_rel_max(ir_choice.onednn_block(args)(), reference.inverted_residual(*args), 1e-5)


@cpu_only
@pytest.mark.parametrize("mode", ["auto", "layers"])
def test_choice_modes(mode, monkeypatch):
    """auto measures each block once per shape (both times recorded) and runs the faster; layers
    never runs the op; the output is the block's either way."""
    monkeypatch.setenv("DASP_KERNELS_IR_IMPL", mode)
    monkeypatch.setattr(ir_choice, "_CHOSEN", {})
    torch.manual_seed(0)
    model = perturbed_bn(torchvision.models.mobilenet_v2())
    fused = dasp_kernels.fuse(model)
    calls = _count_op_calls(monkeypatch)
    answers = []
    real = ir_choice.choose_eager
    monkeypatch.setattr(ir_choice, "choose_eager",
                        lambda *a: answers.append(real(*a)) or answers[-1])
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        close_rel_max(fused(x), model(x), 1e-5)
    chosen = ir_choice.chosen()
    if mode == "layers":
        assert not calls and not chosen and not answers
        return
    assert len(answers) == 17 and len(calls) == answers.count("dasp")
    assert 5 <= len(chosen) < 17  # one measurement per distinct block shape
    assert all(c in ("dasp", "layers") and ours > 0 and theirs > 0
               for c, ours, theirs in chosen.values())


def test_bad_mode_says_what_it_expected(monkeypatch):
    monkeypatch.setenv("DASP_KERNELS_IR_IMPL", "fast")
    with pytest.raises(ValueError, match="DASP_KERNELS_IR_IMPL: expected auto, dasp or layers, "
                                         "got 'fast'"):
        ir_choice.forced()


@cpu_only
def test_se_blocks_compile_in_one_graph_and_export():
    """mobilenet_v3_large's blocks, SE among them, each one op under compile and in export."""
    fused = _compiles_in_one_graph_and_exports("mobilenet_v3_large", 15)
    rows = dict(dasp_kernels.fuse_report(fused))
    assert rows["features.4"] == ("fused: inverted_residual with squeeze-and-excitation "
                                  "(hardsigmoid gate)")


def test_se_lookalikes_are_left_with_a_reason():
    """An SE module with a layer more (timm's SEModule has a norm) is not run as the op's SE."""
    from dasp_kernels import fuse_se

    se = torchvision.ops.SqueezeExcitation(16, 4)
    assert fuse_se.se_plan(se, "se", 16) == ("se.fc1", "se.fc2", ("relu", 0.0, 0.0), "sigmoid")
    se.bn = torch.nn.BatchNorm2d(4)
    assert fuse_se.se_plan(se, "se", 16) == "squeeze-and-excitation (se) with other layers (bn)"
    assert fuse_se.se_plan(torch.nn.ReLU(), "act", 16) is None


@cpu_only
def test_se_blocks_export_to_onnx_as_standard_ops():
    """A fused SE block exports as its layers (ReduceMean or GlobalAveragePool, Conv, the gate),
    standard ops only."""
    onnx = pytest.importorskip("onnx")
    torch.manual_seed(0)
    model = perturbed_bn(torchvision.models.mobilenet_v3_large()).features[:5]
    fused = dasp_kernels.fuse(model)
    assert fuse_blocks.is_fused_block(fused[4])
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        close_rel_max(fused(x), model(x), 1e-5)
    f = io.BytesIO()
    torch.onnx.export(fused, (x,), f, dynamo=False)
    nodes = onnx.load_from_string(f.getvalue()).graph.node
    assert all(n.domain in ("", "ai.onnx") for n in nodes)
    assert any(n.op_type == "HardSigmoid" for n in nodes)  # features[4]'s SE gate
