"""fuse()'s in-place depthwise conv + norm (+ activation) fusion (dasp_kernels/fuse_depthwise.py):
every activation, dilation, "same" padding, timm's BatchNormAct2d, state_dict keys kept, train
mode and frozen BatchNorm, torch.compile without graph breaks, ONNX export of standard ops."""
import copy

import pytest
import torch
import torch.nn as nn

from dasp_kernels import fuse, fuse_report
from dasp_kernels.fuse_depthwise import FusedDWConv2d, is_fused_away

from conftest import backend_skip

BACKENDS = [pytest.param("reference"), pytest.param("cpu", marks=backend_skip("cpu"))]
ACTS = [nn.Identity(), nn.ReLU(inplace=True), nn.ReLU6(), nn.Hardtanh(-1.5, 2.0), nn.Hardswish(),
        nn.SiLU(), nn.GELU(), nn.GELU(approximate="tanh"), nn.LeakyReLU(0.2)]


def randomise_bn(model):
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return model


def block(act, k=3, stride=1, dilation=1, padding=None, bias=False, c=8):
    pad = dilation * (k // 2) if padding is None else padding
    return nn.Sequential(nn.Conv2d(c, c, k, stride, pad, dilation, groups=c, bias=bias),
                         nn.BatchNorm2d(c), copy.deepcopy(act), nn.Conv2d(c, 4, 1))


def close(a, b, tol=1e-5):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("act", ACTS, ids=lambda a: repr(a))
def test_each_activation_is_fused(backend, act):
    model = randomise_bn(block(act, k=5, stride=2, bias=True)).eval()
    fused = fuse(model, backend=backend)
    assert isinstance(fused[0], FusedDWConv2d) and is_fused_away(fused[1])
    assert fused.dasp_fused["dwconv_bn_act"] == 1
    assert list(fused.state_dict()) == list(model.state_dict())
    x = torch.randn(2, 8, 13, 11)
    with torch.no_grad():
        close(fused(x), model(x))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("k,stride,dilation,padding", [
    (3, 1, 2, None), (3, 1, 4, 4), (5, 2, 2, None), (9, 1, 1, None), (7, 2, 1, 2), (3, 1, 1, "same"),
    (4, 1, 1, "same"), (3, 2, 1, (0, 1))])
def test_geometries(backend, k, stride, dilation, padding):
    model = randomise_bn(block(nn.ReLU(), k, stride, dilation, padding)).eval()
    fused = fuse(model, backend=backend)
    assert isinstance(fused[0], FusedDWConv2d), fuse_report(fused)
    x = torch.randn(1, 8, 17, 20).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        close(fused(x), model(x))


def test_what_is_left_says_why():
    model = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.GroupNorm(2, 4),
                          nn.Conv2d(4, 4, 3, padding=1, groups=4, padding_mode="reflect"),
                          nn.BatchNorm2d(4), nn.Conv2d(4, 4, (3, 5), padding=1, groups=4),
                          nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3, padding=1, groups=4)).eval()
    rows = dict(fuse_report(fuse(model)))
    assert rows == {"0": "left: followed by GroupNorm, not nn.BatchNorm2d",
                    "2": "left: padding_mode 'reflect', not zeros",
                    "4": "left: kernel (3, 5) is not square with 1 <= K <= 9",
                    "6": "left: the last child of its nn.Sequential: no BatchNorm2d follows"}


@pytest.mark.parametrize("backend", BACKENDS)
def test_train_mode_and_frozen_batchnorm(backend):
    """Train mode runs batch statistics as nn.BatchNorm2d does; with the norm frozen (bn.eval()
    in a training model, as fine-tuning does) the fusion is on and gradients still flow."""
    torch.manual_seed(0)
    model = randomise_bn(block(nn.Hardswish(), k=3, stride=2))
    fused = fuse(model, backend=backend)
    x = torch.randn(2, 8, 12, 10)
    for freeze in (False, True):
        for m in (model, fused):
            m.train()
            if freeze:
                m[1].eval()
        xs = [x.clone().requires_grad_() for _ in range(2)]
        outs = [m(xi) for m, xi in zip((model, fused), xs)]
        close(outs[1], outs[0])
        grads = [torch.autograd.grad(o.square().sum(), [xi, m[0].weight])
                 for o, xi, m in zip(outs, xs, (model, fused))]
        for a, b in zip(*grads):
            close(b, a, 1e-4)
        close(fused[1].running_mean, model[1].running_mean)


def test_timm_blocks_and_batchnormact():
    timm = pytest.importorskip("timm")
    for name in ("efficientnet_lite0", "mobilenetv4_conv_small", "tf_efficientnet_b0"):
        model = randomise_bn(timm.create_model(name)).eval()
        fused = fuse(model)
        rows = [(q, w) for q, w in fuse_report(fused) if "inverted_residual" not in w
                and not w.startswith("left as layers")]  # the blocks: tests/test_fuse_blocks.py
        assert rows and all(w.startswith("fused: dwconv_bn_act") for _, w in rows), rows
        assert list(fused.state_dict()) == list(model.state_dict())
        x = torch.randn(1, 3, 64, 80)
        with torch.no_grad():
            want = model(x)
            close(fused(x) / want.abs().max(), want / want.abs().max())


@pytest.mark.parametrize("backend", [pytest.param("cpu", marks=backend_skip("cpu"))])
def test_compile_fullgraph(backend, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_COMPILE_THREADS", "1")
    torch._dynamo.reset()
    model = randomise_bn(nn.Sequential(block(nn.SiLU()), block(nn.ReLU6(), c=4))).eval()
    compiled = torch.compile(fuse(model, backend=backend), fullgraph=True)
    x = torch.randn(1, 8, 20, 18)
    with torch.no_grad():
        close(compiled(x), model(x))


@pytest.mark.parametrize("backend", BACKENDS)
def test_onnx_export_writes_standard_ops(backend, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    model = randomise_bn(nn.Sequential(block(nn.Hardswish(), padding="same"),
                                       block(nn.ReLU6(), k=5, stride=2, dilation=1, c=4))).eval()
    fused = fuse(model, backend=backend)
    x = torch.randn(1, 8, 21, 19)
    path = str(tmp_path / "m.onnx")
    torch.onnx.export(fused, (x,), path, dynamo=False)
    assert all(not n.domain.startswith("dasp") for n in onnx.load(path).graph.node)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        assert abs(got - model(x).numpy()).max() < 1e-4


@pytest.mark.parametrize("backend", [pytest.param("cpu", marks=backend_skip("cpu"))])
def test_folded_norm_cache_follows_changes(backend):
    """Eager inference caches the folded norm: any change to the norm or conv shows at once."""
    model = randomise_bn(block(nn.SiLU(), bias=True)).eval()
    fused = fuse(model, backend=backend)
    x = torch.randn(1, 8, 9, 9)
    with torch.no_grad():
        close(fused(x), model(x))
        for m in (model, fused):
            m[1].running_var.mul_(2.0)
            m[1].weight.add_(0.5)
            m[0].bias.sub_(1.0)
        close(fused(x), model(x))
        for m in (model, fused):
            m[1].eps = 0.5
        close(fused(x), model(x))
    model.load_state_dict({k: v * 1.25 if v.is_floating_point() else v
                           for k, v in model.state_dict().items()})
    fused.load_state_dict(model.state_dict())
    with torch.no_grad():
        close(fused(x), model(x))


def test_fused_model_pickles_and_exports(tmp_path):
    """torch.save of the whole model, loaded in a fresh process, and torch.export."""
    import subprocess
    import sys

    model = randomise_bn(nn.Sequential(block(nn.SiLU()), block(nn.ReLU6(), c=4))).eval()
    fused = fuse(model, backend="reference")
    x = torch.randn(1, 8, 11, 10)
    torch.save({"model": fused, "x": x, "want": model(x).detach()}, tmp_path / "m.pt")
    code = ("import sys, torch; d = torch.load(sys.argv[1], weights_only=False); m = d['model'];"
            "assert type(m[0][0]).__name__ == 'FusedDWConv2d', type(m[0][0]);"
            "assert type(m[0][1]).__name__ == 'FusedAwayBatchNorm2d', type(m[0][1]);"
            "torch.testing.assert_close(m(d['x']), d['want'], rtol=1e-5, atol=1e-5); print('ok')")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m.pt")],
                         capture_output=True, text=True, timeout=300)
    assert out.stdout.strip().endswith("ok"), out.stdout + out.stderr
    ep = torch.export.export(fused, (x,))
    with torch.no_grad():
        close(ep.module()(x), model(x))
