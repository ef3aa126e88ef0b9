"""Drop-in fused modules, fuse(), and torch.compile / torch.export / ONNX interop."""
import copy
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

import dasp_kernels
from dasp_kernels.nn import (FusedDASPSpatialPath, FusedDASPStage, FusedDWConv2d,
                             FusedDWConvBNReLU, FusedPoolingPointwise, fuse)
from dasp.models import BiSeNetV1, ConvBNReLU, DASPStage, DepthwiseAttentionSpatialPath, PoolingPointwise

from conftest import backend_skip

BACKENDS = [pytest.param("reference"), pytest.param("cpu", marks=backend_skip("cpu"))]


def randomise_bn(model):
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    return model


def close(a, b, tol=1e-5):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


class MobileNetish(nn.Module):
    """A model fuse() has never seen: anonymous Sequential runs and a named conv/bn/relu block."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.blocks = nn.Sequential(
            nn.Conv2d(16, 16, 3, 1, 1, groups=16, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True),
            nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 32, 5, 2, 2, groups=32, bias=True), nn.BatchNorm2d(32),  # no ReLU, with bias
            nn.Conv2d(32, 32, 3, 1, 1, dilation=1, groups=1), nn.BatchNorm2d(32),  # not depthwise
        )
        self.named = ConvBNReLU(32, 32, 3, 1, 1, groups=32)
        self.head = nn.Conv2d(32, 10, 1)

    def forward(self, x):
        return self.head(self.named(self.blocks(self.stem(x))))


@pytest.mark.parametrize("backend", BACKENDS)
def test_fuse_mobilenet_style_model(backend):
    model = randomise_bn(MobileNetish()).eval()
    before = copy.deepcopy(model.state_dict())
    fused = fuse(model, backend=backend)
    assert fused.dasp_fused == {"dasp_stage": 0, "dwconv_bn_relu": 1, "dwconv_bn_act": 2,
                                "inverted_residual": 0}
    assert isinstance(fused.named, FusedDWConvBNReLU)
    assert isinstance(fused.blocks[0], FusedDWConv2d) and fused.blocks[0].act_spec[0] == "relu"
    assert fused.blocks[6].act_spec[0] == "none" and type(fused.blocks[8]) is nn.Conv2d
    assert list(fused.state_dict()) == list(model.state_dict())
    x = torch.randn(2, 3, 33, 30)
    with torch.no_grad():
        close(fused(x), model(x))
    # The model given is untouched.
    assert all(type(m) is not FusedDWConvBNReLU for m in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spatial_path", ["original", "dasp"])
def test_fuse_bisenet(spatial_path, backend):
    model = randomise_bn(BiSeNetV1(19, spatial_path)).eval()
    fused = fuse(model, backend=backend)
    assert fused.dasp_fused["dasp_stage"] == (3 if spatial_path == "dasp" else 0)
    if spatial_path == "dasp":
        assert isinstance(fused.sp, FusedDASPSpatialPath)
    assert set(fused.state_dict()) == set(model.state_dict())
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        close(fused(x), model(x))


@pytest.mark.parametrize("backend", BACKENDS)
def test_state_dict_loads_both_ways(backend):
    unfused = randomise_bn(DASPStage(16, 32, 3))
    fused = FusedDASPStage.from_unfused(DASPStage(16, 32, 3), backend=backend)
    fused.load_state_dict(unfused.state_dict(), strict=True)
    unfused2 = DASPStage(16, 32, 3)
    unfused2.load_state_dict(fused.state_dict(), strict=True)
    x = torch.randn(2, 16, 9, 10)
    with torch.no_grad():
        close(fused.eval()(x), unfused.eval()(x))
        close(unfused2.eval()(x), unfused(x))

    block = randomise_bn(ConvBNReLU(8, 8, 5, 2, 2, groups=8))
    fblock = FusedDWConvBNReLU.from_unfused(ConvBNReLU(8, 8, 5, 2, 2, groups=8), backend=backend)
    fblock.load_state_dict(block.state_dict(), strict=True)
    assert set(fblock.state_dict()) == {"conv.weight", "bn.weight", "bn.bias", "bn.running_mean",
                                        "bn.running_var", "bn.num_batches_tracked"}
    with torch.no_grad():
        close(fblock.eval()(x[:, :8]), block.eval()(x[:, :8]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_fold_follows_current_parameters(backend):
    ref = randomise_bn(DASPStage(8, 16, 3)).eval()
    fused = FusedDASPStage.from_unfused(ref, backend=backend).eval()
    x = torch.randn(1, 8, 11, 12)
    with torch.no_grad():
        fused(x)  # a first call must not freeze anything
        randomise_bn(ref)
        fused.load_state_dict(ref.state_dict())
        close(fused(x), ref(x))
    opt = torch.optim.SGD(fused.parameters(), lr=0.5)
    fused(x).sum().backward()
    opt.step()
    ref.load_state_dict(fused.state_dict())
    with torch.no_grad():
        close(fused(x), ref(x))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("momentum", [0.1, None])
def test_train_mode_matches_unfused(backend, momentum):
    ref = randomise_bn(DASPStage(8, 16, 3))
    for m in ref.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = momentum
    fused = FusedDASPStage.from_unfused(ref, backend=backend)
    ref.train(), fused.train()
    for step in range(2):
        x = torch.randn(3, 8, 13, 10, requires_grad=True)
        xf = x.detach().clone().requires_grad_()
        out_r, out_f = ref(x), fused(xf)
        close(out_f, out_r)
        g = torch.randn_like(out_r)
        out_r.backward(g)
        out_f.backward(g)
        close(xf.grad, x.grad)
    for (k, v), (k2, v2) in zip(ref.state_dict().items(), fused.state_dict().items()):
        assert k == k2
        close(v2.double(), v.double())
    assert int(fused.dw.bn.num_batches_tracked) == 2
    for (n, p), (n2, p2) in zip(ref.named_parameters(), fused.named_parameters()):
        assert n == n2
        close(p2.grad, p.grad, 1e-4)


def test_fused_ppm_module():
    ppm = PoolingPointwise(5, 7)
    fused = FusedPoolingPointwise.from_unfused(ppm)
    x = torch.randn(2, 5, 9, 8)
    r = torch.randn(2, 7, 5, 4)
    with torch.no_grad():
        close(fused(x), ppm(x))
        close(fused(x, r), ppm(x) + r)


def test_bad_modules_are_refused():
    with pytest.raises(ValueError, match="expected a depthwise conv, got Conv2d.*not depthwise"):
        FusedDWConvBNReLU(nn.Conv2d(4, 8, 3, groups=4), nn.BatchNorm2d(8))
    with pytest.raises(ValueError, match=r"kernel \(11, 11\) is not square with 1 <= K <= 9"):
        FusedDWConvBNReLU(nn.Conv2d(4, 4, 11, groups=4), nn.BatchNorm2d(4))
    with pytest.raises(ValueError, match=r"expected MaxPool2d\(2, 2, ceil_mode=True\)"):
        FusedPoolingPointwise(nn.MaxPool2d(2, 2), nn.Conv2d(4, 4, 1, bias=False))


def test_dasp_kernels_does_not_import_dasp():
    code = "import sys, dasp_kernels; assert 'dasp' not in sys.modules and 'dasp.models' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_export(backend):
    model = fuse(randomise_bn(DepthwiseAttentionSpatialPath()).eval(), backend=backend)
    x = torch.randn(1, 3, 32, 48)
    ep = torch.export.export(model, (x,))
    if backend == "cpu":
        targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
        assert "dasp_kernels.dasp_spatial_path.default" in targets
    with torch.no_grad():
        close(ep.module()(x), model(x))
    stage = model.stage2
    y = torch.randn(1, 64, 15, 16)
    ep = torch.export.export(stage, (y,))
    if backend == "cpu":
        assert "dasp_kernels.dasp_stage.default" in {str(n.target) for n in ep.graph.nodes}
    with torch.no_grad():
        close(ep.module()(y), stage(y))


@pytest.mark.parametrize("backend", [pytest.param("cpu", marks=backend_skip("cpu"))])
def test_torch_compile_fullgraph(backend, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_COMPILE_THREADS", "1")
    torch._dynamo.reset()
    model = randomise_bn(DepthwiseAttentionSpatialPath()).eval()
    fused = fuse(model, backend=backend)
    compiled = torch.compile(fused, fullgraph=True)
    x = torch.randn(1, 3, 40, 36)
    with torch.no_grad():
        close(compiled(x), model(x))


@pytest.mark.parametrize("backend", [pytest.param("cpu", marks=backend_skip("cpu"))])
def test_compile_keeps_channels_last_around_the_fused_op(backend, monkeypatch):
    """Inductor runs convs in channels_last; the ops are flexible_layout, so it hands them that
    layout rather than copying to the traced NCHW and back around every call."""
    from torch._inductor.utils import run_and_get_code

    monkeypatch.setenv("TORCHINDUCTOR_COMPILE_THREADS", "1")
    torch._dynamo.reset()
    for op in ("dwconv_bn_act", "ppm_add", "dasp_stage", "dasp_spatial_path"):
        assert torch.Tag.flexible_layout in getattr(torch.ops.dasp_kernels, op).default.tags, op
    model = randomise_bn(MobileNetish()).eval()
    compiled = torch.compile(fuse(model, backend=backend))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        out, code = run_and_get_code(compiled, x)
        close(out, model(x))
    assert code[0].count("torch.ops.dasp_kernels.dwconv_bn_act.default(") == 3
    # A copy kernel feeding our op is named after it by inductor (cpp_fused_dwconv_bn_act_N).
    assert "cpp_fused_dwconv_bn_act" not in code[0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_onnx_export_runs_in_onnxruntime(backend, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from dasp.export_onnx import export

    model = fuse(randomise_bn(BiSeNetV1(19, "dasp", aux=False)).eval(), backend=backend)
    path = export(model, str(tmp_path / "m.onnx"), height=64, width=64, batch=2)
    ops = {n.op_type for n in onnx.load(path).graph.node}
    assert {"Conv", "Relu", "MaxPool", "Add"} <= ops
    assert all(not n.domain.startswith("dasp") for n in onnx.load(path).graph.node)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for batch in (1, 3):  # dynamic batch
        x = torch.randn(batch, 3, 64, 64)
        got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
        with torch.no_grad():
            want = model(x).numpy()
        assert abs(got - want).max() < 1e-4


def test_export_onnx_command(tmp_path):
    out = tmp_path / "orig.onnx"
    subprocess.run([sys.executable, "-m", "dasp.export_onnx", "--spatial-path", "original", "--out",
                    str(out), "--height", "64", "--width", "64"], check=True, capture_output=True)
    assert out.stat().st_size > 1_000_000


def test_export_onnx_from_a_checkpoint(tmp_path):
    ckpt = tmp_path / "w.pth"
    torch.save(BiSeNetV1(5, "dasp").state_dict(), ckpt)
    out = tmp_path / "dasp.onnx"
    from dasp.cli import main

    assert main(["export-onnx", "--checkpoint", str(ckpt), "--out", str(out), "--height", "64",
                 "--width", "64"]) == 0
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"image": torch.randn(2, 3, 64, 64).numpy()})[0].shape == (2, 5, 64, 64)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_dasp_path_takes_bf16_input(backend):
    """A bf16 input (a layer after an autocast conv) runs in the weights' fp32 and comes back bf16."""
    torch.manual_seed(0)
    path = randomise_bn(DepthwiseAttentionSpatialPath()).eval()
    fused = fuse(path, backend=backend)
    x = torch.randn(1, 3, 64, 64).to(torch.bfloat16)
    with torch.no_grad():
        out, ref = fused(x), path(x.float())
    assert out.dtype == torch.bfloat16
    # fp32 results a rounding apart may round to neighbouring bf16 values: one bf16 ulp (2^-7).
    torch.testing.assert_close(out.float(), ref.to(torch.bfloat16).float(), rtol=2 ** -7, atol=1e-4)
