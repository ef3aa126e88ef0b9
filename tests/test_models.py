import pytest
import torch
import torch.nn.functional as F

from dasp.models import BiSeNetV1, DASPStage, DepthwiseAttentionSpatialPath, SpatialPath


@pytest.fixture(scope="module", params=["original", "dasp"])
def net(request):
    torch.manual_seed(0)
    return BiSeNetV1(num_classes=19, spatial_path=request.param)


def test_train_mode_returns_main_and_aux_logits(net):
    net.train()
    out = net(torch.randn(2, 3, 64, 96))
    assert isinstance(out, tuple) and len(out) == 3
    for o in out:
        assert o.shape == (2, 19, 64, 96)


def test_eval_mode_returns_logits_at_input_resolution(net):
    net.eval()
    with torch.no_grad():
        out = net(torch.randn(1, 3, 96, 64))
    assert isinstance(out, torch.Tensor) and out.shape == (1, 19, 96, 64)


def test_no_aux_heads():
    net = BiSeNetV1(num_classes=5, spatial_path="dasp", aux=False).train()
    assert not any(k.startswith(("conv_out16", "conv_out32")) for k in net.state_dict())
    assert net(torch.randn(2, 3, 64, 64)).shape == (2, 5, 64, 64)


@pytest.mark.parametrize("h,w", [(64, 70), (33, 64)])
def test_sizes_not_multiple_of_32_give_a_clear_error(net, h, w):
    with pytest.raises(ValueError, match=rf"multiples of 32, got H={h}, W={w}"):
        net(torch.randn(1, 3, h, w))


def test_bad_channels_error(net):
    with pytest.raises(ValueError, match=r"expects input of shape \(N, 3, H, W\), got \(1, 4, 64, 64\)"):
        net(torch.randn(1, 4, 64, 64))


def test_bad_spatial_path_name():
    with pytest.raises(ValueError, match="spatial_path must be 'original' or 'dasp', got 'fast'"):
        BiSeNetV1(spatial_path="fast")


def test_checkpoint_round_trip_strict(tmp_path):
    a, b = BiSeNetV1(19, "original"), BiSeNetV1(19, "original")
    torch.save(a.state_dict(), tmp_path / "ckpt.pth")
    b.load_state_dict(torch.load(tmp_path / "ckpt.pth", weights_only=True), strict=True)
    a.eval(), b.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x))


def test_dasp_differs_only_under_sp():
    o, d = BiSeNetV1(19, "original").state_dict(), BiSeNetV1(19, "dasp").state_dict()
    strip = lambda sd: {k: tuple(v.shape) for k, v in sd.items() if not k.startswith("sp.")}
    assert strip(o) == strip(d)
    assert {k for k in d if k.startswith("sp.")} == {
        f"sp.stage{i}.{p}" for i in (1, 2, 3) for p in (
            "dw.conv.weight", "pw.conv.weight", "ppm.conv.weight",
            *(f"{m}.bn.{t}" for m in ("dw", "pw")
              for t in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")))}


def test_dasp_structure_follows_the_paper():
    sp = DepthwiseAttentionSpatialPath()
    for stage, (cin, cout, k) in zip((sp.stage1, sp.stage2, sp.stage3), [(3, 64, 7), (64, 64, 3), (64, 128, 3)]):
        dw, pw, ppm = stage.dw.conv, stage.pw.conv, stage.ppm.conv
        assert (dw.in_channels, dw.out_channels, dw.groups, dw.kernel_size, dw.stride, dw.padding) == (
            cin, cin, cin, (k, k), (2, 2), (k // 2, k // 2))
        assert (pw.in_channels, pw.out_channels, pw.kernel_size) == (cin, cout, (1, 1))
        assert (ppm.in_channels, ppm.out_channels, ppm.kernel_size) == (cin, cout, (1, 1))
        assert stage.ppm.pool.ceil_mode and stage.ppm.pool.kernel_size == 2
        for conv in (dw, pw, ppm):
            assert conv.bias is None


def _randomise_bn(module):
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)


@pytest.mark.parametrize("train", [False, True])
def test_dasp_stage_equals_eq5_from_plain_ops(train):
    torch.manual_seed(0)
    stage = DASPStage(3, 8, 7)
    _randomise_bn(stage)
    stage.train(train)
    x = torch.randn(2, 3, 19, 22)

    def bn(y, m):
        if train:
            mean, var = y.mean((0, 2, 3)), y.var((0, 2, 3), unbiased=False)
        else:
            mean, var = m.running_mean, m.running_var
        v = lambda t: t.view(1, -1, 1, 1)
        return (y - v(mean)) / torch.sqrt(v(var) + m.eps) * v(m.weight) + v(m.bias)

    dw = F.relu(bn(F.conv2d(x, stage.dw.conv.weight, stride=2, padding=3, groups=3), stage.dw.bn))
    f_o = F.relu(bn(F.conv2d(dw, stage.pw.conv.weight), stage.pw.bn))
    ppm = F.conv2d(F.max_pool2d(x, 2, 2, ceil_mode=True), stage.ppm.conv.weight)
    with torch.no_grad():
        torch.testing.assert_close(stage(x), ppm + f_o, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("h,w", [(1, 1), (7, 13), (33, 65), (64, 64), (100, 3)])
@pytest.mark.parametrize("cls", [SpatialPath, DepthwiseAttentionSpatialPath])
def test_spatial_paths_accept_any_size(cls, h, w):
    out = cls().eval()(torch.randn(2, 3, h, w))
    assert out.shape == (2, 128, -(-h // 8), -(-w // 8))


def test_pretrained_backbone_loader(tmp_path):
    from dasp.models.resnet import ResNet18

    src = ResNet18()
    for p in src.parameters():
        p.data.normal_()
    sd = dict(src.state_dict())
    sd["fc.weight"], sd["fc.bias"] = torch.randn(1000, 512), torch.randn(1000)  # torchvision layout
    torch.save(sd, tmp_path / "r18.pth")
    net = BiSeNetV1(19, "dasp", pretrained=str(tmp_path / "r18.pth"))
    for k, v in src.state_dict().items():
        torch.testing.assert_close(net.cp.resnet.state_dict()[k], v)

    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, tmp_path / "bad.pth")
    with pytest.raises(RuntimeError, match="not a torchvision-layout ResNet18 state_dict: missing keys"):
        BiSeNetV1(19, "dasp", pretrained=str(tmp_path / "bad.pth"))
    with pytest.raises(FileNotFoundError, match="no such file"):
        BiSeNetV1(19, "dasp", pretrained=str(tmp_path / "nope.pth"))
