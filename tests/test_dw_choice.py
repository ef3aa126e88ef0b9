"""fuse()'s choice per depthwise layer between our kernel and oneDNN's conv with a post-op
(dasp_kernels/dw_choice.py): each mode gives the unfused model's output, eager and compiled, the
choice is measured once per layer shape, and layers oneDNN cannot run stay on ours."""
import pytest
import torch
import torch.nn as nn

import dasp_kernels
from dasp_kernels import dw_choice
from conftest import needs_cpu_ext
from test_fuse_depthwise import randomise_bn

pytestmark = needs_cpu_ext


def _model():
    """Depthwise layers with the activations of the real models, strides 1 and 2, K 3 and 5."""
    def block(c, k, s, act):
        return [nn.Conv2d(c, c, k, s, k // 2, groups=c, bias=False), nn.BatchNorm2d(c), act]
    layers = (block(16, 3, 1, nn.ReLU6()) + block(16, 5, 2, nn.Hardswish())
              + block(16, 3, 1, nn.SiLU()) + block(16, 3, 2, nn.Identity()))
    return randomise_bn(nn.Sequential(*layers).eval())


def _count_onednn_calls(monkeypatch):
    calls = []
    real = dw_choice.onednn_conv_act
    monkeypatch.setattr(dw_choice, "onednn_conv_act", lambda *a: calls.append(1) or real(*a))
    return calls


@pytest.mark.parametrize("mode", ["auto", "dasp", "onednn"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_each_mode_matches_the_unfused_model(mode, channels_last, monkeypatch):
    monkeypatch.setenv("DASP_KERNELS_DW_IMPL", mode)
    calls = _count_onednn_calls(monkeypatch)
    model = _model()
    x = torch.randn(2, 16, 19, 23)
    fused = dasp_kernels.fuse(model)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
        fused = fused.to(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), rtol=1e-5, atol=1e-5)
    if mode == "dasp":
        assert not calls
    if mode == "onednn":
        assert len(calls) == 4


def test_the_choice_is_measured_once_per_layer_shape(monkeypatch):
    monkeypatch.setenv("DASP_KERNELS_DW_IMPL", "auto")
    measured = []
    monkeypatch.setattr(dw_choice, "_CHOSEN", {})
    monkeypatch.setattr(dw_choice, "_measure", lambda key: measured.append(key) or ("onednn", 2.0, 1.0))
    fused = dasp_kernels.fuse(_model())
    with torch.no_grad():
        for _ in range(3):
            fused(torch.randn(1, 16, 12, 12))
        fused(torch.randn(1, 16, 13, 12))
    assert len(measured) == 8 and len(set(measured)) == 8
    assert {c for c, _, _ in dw_choice.chosen().values()} == {"onednn"}


def test_measuring_picks_one_of_the_two():
    key = dw_choice.layer_key(torch.randn(1, 32, 14, 14), 3, 1, [1, 1, 1, 1], 1, "relu", 0.0, 0.0)
    assert dw_choice.choose(key) in ("dasp", "onednn")


def test_layers_onednn_cannot_run_stay_on_ours(monkeypatch):
    """float64, and the asymmetric padding of timm's Conv2dSame, take our kernel."""
    monkeypatch.setenv("DASP_KERNELS_DW_IMPL", "onednn")
    calls = _count_onednn_calls(monkeypatch)
    model = _model().double()
    x = torch.randn(1, 16, 10, 10, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(dasp_kernels.fuse(model)(x), model(x))
    assert not calls
    assert not dw_choice.onednn_can_run(torch.randn(1, 4, 8, 8), [0, 1, 0, 1], "relu")


@pytest.mark.parametrize("mode", ["dasp", "onednn"])
def test_compiled_graph_holds_the_chosen_kernel(mode, monkeypatch):
    """Under torch.compile (freezing) the choice is a constant of one graph: our op, or the conv
    inductor runs as oneDNN with the activation as a post-op."""
    from torch._inductor.utils import run_and_get_code

    monkeypatch.setenv("DASP_KERNELS_DW_IMPL", mode)
    monkeypatch.setenv("TORCHINDUCTOR_COMPILE_THREADS", "1")
    torch._dynamo.reset()
    model = _model()
    compiled = torch.compile(dasp_kernels.fuse(model), fullgraph=True)
    x = torch.randn(1, 16, 16, 16)
    with torch.no_grad(), torch._inductor.config.patch(freezing=True):
        out, code = run_and_get_code(compiled, x)
        torch.testing.assert_close(out, model(x), rtol=1e-5, atol=1e-5)
    ours = "\n".join(code).count("torch.ops.dasp_kernels.dwconv_bn_act.default(")
    assert ours == (4 if mode == "dasp" else 0)


def test_under_compile_the_choice_is_measured_in_channels_last(monkeypatch):
    """The traced input is NCHW; inductor hands the op channels_last, so that is what counts."""
    monkeypatch.setenv("DASP_KERNELS_DW_IMPL", "auto")
    monkeypatch.setenv("TORCHINDUCTOR_COMPILE_THREADS", "1")
    monkeypatch.setattr(dw_choice, "_CHOSEN", {})
    torch._dynamo.reset()
    compiled = torch.compile(dasp_kernels.fuse(_model()), fullgraph=True)
    with torch.no_grad():
        compiled(torch.randn(1, 16, 16, 16))
    layouts = [key[1] for key in dw_choice.chosen()]
    assert len(layouts) == 4 and all(layouts)


def test_a_bad_mode_says_what_it_takes(monkeypatch):
    monkeypatch.setenv("DASP_KERNELS_DW_IMPL", "fastest")
    with pytest.raises(ValueError, match="DASP_KERNELS_DW_IMPL: expected auto, dasp or onednn, "
                                         "got 'fastest'"):
        dasp_kernels.fuse(_model())(torch.randn(1, 16, 8, 8))
