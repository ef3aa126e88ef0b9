"""BiSeNetV1(spatial_path="original") is CoinCheung/BiSeNet's current model: the same keys and
shapes, and the same function of those weights.

The oracle below is written from the published description of that model (lib/models/bisenetv1.py
and resnet.py since commit c0422a1, 2021-07), one formula per module, straight from a state_dict
with torch.nn.functional; it shares no code with dasp.models. The 2020 layout and the DASP layout
must be refused with a message that names what was found and what was expected.
"""
import pytest
import torch
import torch.nn.functional as F

from dasp.checkpoint import load_model
from dasp.models import BiSeNetV1

# Every key kind of CoinCheung's BiSeNetV1(19) built for training (aux_mode="train"), with shapes.
REFERENCE_KEYS = {
    "cp.resnet.conv1.weight": (64, 3, 7, 7),
    "cp.resnet.bn1.running_var": (64,),
    "cp.resnet.layer1.0.conv1.weight": (64, 64, 3, 3),
    "cp.resnet.layer2.0.downsample.0.weight": (128, 64, 1, 1),
    "cp.resnet.layer2.0.downsample.1.num_batches_tracked": (),
    "cp.resnet.layer4.1.bn2.bias": (512,),
    "cp.arm16.conv.conv.weight": (128, 256, 3, 3),
    "cp.arm16.conv_atten.weight": (128, 128, 1, 1),
    "cp.arm32.bn_atten.weight": (128,),
    "cp.conv_head32.conv.weight": (128, 128, 3, 3),
    "cp.conv_head16.bn.running_mean": (128,),
    "cp.conv_avg.conv.weight": (128, 512, 1, 1),
    "sp.conv1.conv.weight": (64, 3, 7, 7),
    "sp.conv2.conv.weight": (64, 64, 3, 3),
    "sp.conv3.conv.weight": (64, 64, 3, 3),
    "sp.conv_out.conv.weight": (128, 64, 1, 1),
    "sp.conv_out.bn.weight": (128,),
    "ffm.convblk.conv.weight": (256, 256, 1, 1),
    "ffm.conv.weight": (256, 256, 1, 1),
    "ffm.bn.weight": (256,),
    "ffm.bn.running_var": (256,),
    "ffm.bn.num_batches_tracked": (),
    "conv_out.conv.conv.weight": (256, 256, 3, 3),
    "conv_out.conv_out.weight": (19, 256, 1, 1),
    "conv_out.conv_out.bias": (19,),
    "conv_out16.conv.conv.weight": (64, 128, 3, 3),
    "conv_out16.conv_out.weight": (19, 64, 1, 1),
    "conv_out32.conv_out.weight": (19, 64, 1, 1),
    "conv_out32.conv_out.bias": (19,),
}
# ResNet18: 20 convs + 20 BNs (5 tensors each). BiSeNet: ARMs 2 x (ConvBNReLU 6 + conv 1 + BN 5),
# conv_head32/16 and conv_avg 3 x 6, sp 4 x 6, ffm 6 + 1 + 5, 3 heads x (6 + 2).
EXPECTED_KEY_COUNT = 120 + 24 + 18 + 24 + 12 + 24


def _bn(sd, p, x, train):
    # Clones: the reference must not move the running statistics the model is compared with.
    return F.batch_norm(x, sd[p + ".running_mean"].clone(), sd[p + ".running_var"].clone(),
                        sd[p + ".weight"], sd[p + ".bias"], training=train, momentum=0.1, eps=1e-5)


def _cbr(sd, p, x, train, stride=1, groups=1):
    w = sd[p + ".conv.weight"]
    x = F.conv2d(x, w, stride=stride, padding=w.shape[-1] // 2, groups=groups)
    return F.relu(_bn(sd, p + ".bn", x, train))


def _basic_block(sd, p, x, train, stride):
    r = F.relu(_bn(sd, p + ".bn1", F.conv2d(x, sd[p + ".conv1.weight"], stride=stride, padding=1), train))
    r = _bn(sd, p + ".bn2", F.conv2d(r, sd[p + ".conv2.weight"], padding=1), train)
    s = x
    if p + ".downsample.0.weight" in sd:
        s = _bn(sd, p + ".downsample.1", F.conv2d(x, sd[p + ".downsample.0.weight"], stride=stride), train)
    return F.relu(s + r)


def _resnet18(sd, x, train):
    p = "cp.resnet"
    x = F.relu(_bn(sd, p + ".bn1", F.conv2d(x, sd[p + ".conv1.weight"], stride=2, padding=3), train))
    x = F.max_pool2d(x, 3, 2, 1)
    feats = []
    for i, stride in zip(range(1, 5), (1, 2, 2, 2)):
        x = _basic_block(sd, f"{p}.layer{i}.0", x, train, stride)
        x = _basic_block(sd, f"{p}.layer{i}.1", x, train, 1)
        feats.append(x)
    return feats[1:]  # 1/8, 1/16, 1/32


def _attention(sd, conv, bn, feat, train):
    """sigmoid(BN(1x1 conv(mean over H, W)))."""
    return torch.sigmoid(_bn(sd, bn, F.conv2d(feat.mean((2, 3), keepdim=True), sd[conv]), train))


def _arm(sd, p, x, train):
    feat = _cbr(sd, p + ".conv", x, train)
    return feat * _attention(sd, p + ".conv_atten.weight", p + ".bn_atten", feat, train)


def _context_path(sd, x, train):
    feat8, feat16, feat32 = _resnet18(sd, x, train)
    avg = _cbr(sd, "cp.conv_avg", feat32.mean((2, 3), keepdim=True), train)
    up32 = F.interpolate(_arm(sd, "cp.arm32", feat32, train) + avg, scale_factor=2.0, mode="nearest")
    up32 = _cbr(sd, "cp.conv_head32", up32, train)
    up16 = F.interpolate(_arm(sd, "cp.arm16", feat16, train) + up32, scale_factor=2.0, mode="nearest")
    return _cbr(sd, "cp.conv_head16", up16, train), up32


def _original_spatial_path(sd, x, train):
    for name, stride in (("conv1", 2), ("conv2", 2), ("conv3", 2), ("conv_out", 1)):
        x = _cbr(sd, "sp." + name, x, train, stride)
    return x


def _dasp_spatial_path(sd, x, train):
    """Eq. (5): F[i+1] = conv1x1(maxpool2x2(F[i])) + CBR1x1(CBR_dw(F[i]))."""
    for i in (1, 2, 3):
        p = f"sp.stage{i}"
        ppm = F.conv2d(F.max_pool2d(x, 2, 2, ceil_mode=True), sd[p + ".ppm.conv.weight"])
        x = ppm + _cbr(sd, p + ".pw", _cbr(sd, p + ".dw", x, train, 2, groups=x.shape[1]), train)
    return x


def _head(sd, p, x, up, train):
    x = F.conv2d(_cbr(sd, p + ".conv", x, train), sd[p + ".conv_out.weight"], sd[p + ".conv_out.bias"])
    return F.interpolate(x, scale_factor=up, mode="bilinear", align_corners=False)


def reference_forward(sd, x, train, spatial_path="original"):
    """Eval: the logits; train: (logits, aux16, aux32) as CoinCheung's aux_mode='train'."""
    cp8, cp16 = _context_path(sd, x, train)
    sp = (_original_spatial_path if spatial_path == "original" else _dasp_spatial_path)(sd, x, train)
    feat = _cbr(sd, "ffm.convblk", torch.cat([sp, cp8], 1), train)
    feat = feat * _attention(sd, "ffm.conv.weight", "ffm.bn", feat, train) + feat
    logits = _head(sd, "conv_out", feat, 8, train)
    if not train:
        return logits
    return logits, _head(sd, "conv_out16", cp8, 8, train), _head(sd, "conv_out32", cp16, 16, train)


def _randomised(model, seed=0):
    """Non-trivial BN statistics and affine terms, so that every formula shows in the output."""
    g = torch.Generator().manual_seed(seed)
    for name, t in model.state_dict().items():
        if t.ndim == 1 and name.endswith(("running_var", ".weight")):  # BN scale and variance
            t.copy_(torch.rand(t.shape, generator=g) + 0.5)
        elif t.ndim == 1 and name.endswith(("running_mean", ".bias")):
            t.copy_(torch.rand(t.shape, generator=g) - 0.5)
    return model


def test_original_has_every_key_and_shape_of_the_reference():
    sd = BiSeNetV1(19, "original").state_dict()
    for k, shape in REFERENCE_KEYS.items():
        assert k in sd, k
        assert tuple(sd[k].shape) == shape, k
    assert sum(k.startswith("cp.resnet.") for k in sd) == 120
    assert len(sd) == EXPECTED_KEY_COUNT
    assert not any(k.startswith(("ffm.conv1", "ffm.conv2")) for k in sd)


@pytest.mark.parametrize("spatial_path", ["original", "dasp"])
@pytest.mark.parametrize("train", [False, True])
def test_same_function_as_the_reference(spatial_path, train):
    torch.manual_seed(0)
    model = _randomised(BiSeNetV1(19, spatial_path).double()).train(train)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 96, 128, dtype=torch.float64)
    with torch.no_grad():
        ours, ref = model(x), reference_forward(sd, x, train, spatial_path)
    if not train:
        ours, ref = (ours,), (ref,)
    assert len(ours) == len(ref)
    for o, r in zip(ours, ref):
        assert o.shape == (2, 19, 96, 128)
        torch.testing.assert_close(o, r, rtol=1e-10, atol=1e-10)


def _old_2020_state(num_classes=19):
    """The 2020 layout: the current keys with the fusion MLP and PixelShuffle classifiers."""
    sd = BiSeNetV1(num_classes, "original").state_dict()
    for k in [k for k in sd if k.startswith(("ffm.conv.", "ffm.bn."))]:
        del sd[k]
    sd["ffm.conv1.weight"] = torch.zeros(64, 256, 1, 1)
    sd["ffm.conv2.weight"] = torch.zeros(256, 64, 1, 1)
    for head, up in (("conv_out", 8), ("conv_out16", 8), ("conv_out32", 16)):
        w = sd[f"{head}.conv_out.weight"]
        sd[f"{head}.conv_out.weight"] = torch.zeros(num_classes * up * up, *w.shape[1:])
        sd[f"{head}.conv_out.bias"] = torch.zeros(num_classes * up * up)
    return sd


def test_2020_layout_is_refused_by_name():
    with pytest.raises(RuntimeError) as e:
        BiSeNetV1(19, "original").load_state_dict(_old_2020_state())
    msg = str(e.value)
    assert "holds the 2020 CoinCheung/BiSeNet layout" in msg
    assert "expected the current CoinCheung/BiSeNet layout" in msg
    assert "model_final_v1_city_new.pth" in msg
    assert len(msg) < 600  # a sentence, not a key list


@pytest.mark.parametrize("src,dst", [("dasp", "original"), ("original", "dasp")])
def test_other_spatial_path_is_refused_by_name(src, dst):
    with pytest.raises(RuntimeError, match=rf"holds .*spatial_path='{src}'.*; expected spatial_path='{dst}'$"):
        BiSeNetV1(19, dst).load_state_dict(BiSeNetV1(19, src).state_dict())


def test_other_classes_or_aux_are_refused_by_name():
    with pytest.raises(RuntimeError, match=r"holds .*, 5 classes, aux heads; expected 19 classes$"):
        BiSeNetV1(19).load_state_dict(BiSeNetV1(5).state_dict())
    with pytest.raises(RuntimeError, match=r"holds .*, aux heads; expected no aux heads$"):
        BiSeNetV1(19, aux=False).load_state_dict(BiSeNetV1(19).state_dict())


def test_non_strict_load_is_left_to_torch():
    partial = {k: v for k, v in BiSeNetV1(19).state_dict().items() if k.startswith("cp.")}
    missing, unexpected = BiSeNetV1(19).load_state_dict(partial, strict=False)
    assert not unexpected and all(not k.startswith("cp.") for k in missing)


def test_load_model_names_the_2020_layout(tmp_path):
    path = tmp_path / "old.pth"
    torch.save(_old_2020_state(), path)
    with pytest.raises(ValueError, match=r"old.pth' holds the 2020 CoinCheung/BiSeNet layout"):
        load_model(str(path))


def test_load_model_reads_classes_and_aux_from_the_current_layout(tmp_path):
    path = tmp_path / "cur.pth"
    torch.save(BiSeNetV1(7, "dasp", aux=False).state_dict(), path)
    model = load_model(str(path))
    assert (model.num_classes, model.spatial_path, hasattr(model, "conv_out16")) == (7, "dasp", False)
    with pytest.raises(ValueError, match=r"spatial_path='dasp'.*; expected spatial_path='original'$"):
        load_model(str(path), "original")


def test_load_model_refuses_weights_that_are_not_bisenet(tmp_path):
    path = tmp_path / "conv.pth"
    torch.save(torch.nn.Conv2d(3, 8, 3).state_dict(), path)
    with pytest.raises(ValueError, match=r"conv.pth' holds no BiSeNetV1 weights: expected keys ffm"):
        load_model(str(path))
