import os

import numpy as np
import pytest
import torch
from PIL import Image

from dasp.data import (CLASS_NAMES, ID_TO_TRAINID, IGNORE_INDEX, MEAN, PALETTE, STD, TRAINID_TO_ID,
                       CityscapesDataset, ImageReadError, StreamBatchSampler, TrainTransform, colorize,
                       cityscapes_ids_to_train_ids, pad_to_multiple, read_image,
                       train_ids_to_cityscapes_ids, unpad)
from dasp.models import BiSeNetV1
from dasp.synthetic import main as synthetic_main
from dasp.synthetic import write_synthetic


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_synthetic(str(tmp_path_factory.mktemp("cs")), n_train=4, n_val=2, height=64, width=96)


def test_label_tables_follow_cityscapesscripts():
    # A few values from the Cityscapes label definition, spelled out here as the oracle.
    assert CLASS_NAMES[0] == "road" and CLASS_NAMES[13] == "car" and CLASS_NAMES[18] == "bicycle"
    assert len(CLASS_NAMES) == 19
    assert ID_TO_TRAINID[7] == 0 and ID_TO_TRAINID[26] == 13 and ID_TO_TRAINID[33] == 18
    for ignored in (0, 1, 4, 9, 10, 14, 29, 30, 255):  # unlabeled, ego vehicle, static, parking, ...
        assert ID_TO_TRAINID[ignored] == IGNORE_INDEX
    assert list(TRAINID_TO_ID[:4]) == [7, 8, 11, 12]
    assert tuple(PALETTE[0]) == (128, 64, 128) and tuple(PALETTE[10]) == (70, 130, 180)
    t = np.arange(19)
    assert (cityscapes_ids_to_train_ids(train_ids_to_cityscapes_ids(t)) == t).all()
    with pytest.raises(ValueError, match=r"train ids must be in \[0, 18\]"):
        train_ids_to_cityscapes_ids(np.array([0, 19]))
    assert tuple(colorize(np.array([[255]]))[0, 0]) == (0, 0, 0)


def test_dataset_reads_layout_and_maps_labels(root):
    ds = CityscapesDataset(root, "train")
    assert len(ds) == 4
    x, y, i = ds[1]
    assert x.shape == (3, 64, 96) and x.dtype == torch.float32
    assert y.shape == (64, 96) and y.dtype == torch.int64
    raw = np.array(Image.open(ds.labels[1]))
    expected = np.full(raw.shape, 255)
    for label_id, train_id in ((7, 0), (11, 2), (21, 8), (23, 10), (26, 13), (24, 11), (20, 7)):
        expected[raw == label_id] = train_id
    assert (y.numpy() == expected).all()
    img = np.array(Image.open(ds.images[1]), dtype=np.float32) / 255
    ref = (img - np.array(MEAN)) / np.array(STD)
    np.testing.assert_allclose(x.permute(1, 2, 0).numpy(), ref, atol=1e-5)
    assert ds.name(1).count(os.sep) == 1 and ds.name(1).endswith("_000019")


def test_dataset_without_labels(root, tmp_path):
    ds = CityscapesDataset(root, "val", labels=False)
    x, y, _ = ds[0]
    assert x.shape == (3, 64, 96) and y.numel() == 0


def test_missing_folders_and_files_are_named(root, tmp_path):
    with pytest.raises(FileNotFoundError, match="root folder does not exist: .*nowhere"):
        CityscapesDataset(str(tmp_path / "nowhere"), "val")
    with pytest.raises(FileNotFoundError, match=r"missing folder .*leftImg8bit.test.*expected the Cityscapes"):
        CityscapesDataset(root, "test")
    os.makedirs(tmp_path / "leftImg8bit" / "val" / "x")
    os.makedirs(tmp_path / "gtFine" / "val" / "x")
    with pytest.raises(FileNotFoundError, match="no images matching"):
        CityscapesDataset(str(tmp_path), "val")
    Image.new("RGB", (32, 32)).save(tmp_path / "leftImg8bit" / "val" / "x" / "x_000000_000001_leftImg8bit.png")
    with pytest.raises(FileNotFoundError, match=r"missing ground-truth file .*x_000000_000001_gtFine_labelIds\.png"):
        CityscapesDataset(str(tmp_path), "val")


def test_corrupt_and_mismatched_images_give_clear_errors(tmp_path):
    d = tmp_path / "leftImg8bit" / "val" / "c"
    g = tmp_path / "gtFine" / "val" / "c"
    os.makedirs(d)
    os.makedirs(g)
    bad = d / "c_000000_000001_leftImg8bit.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    Image.new("L", (32, 32)).save(g / "c_000000_000001_gtFine_labelIds.png")
    ds = CityscapesDataset(str(tmp_path), "val")
    with pytest.raises(ImageReadError, match=r"corrupt or unreadable image file .*c_000000_000001_leftImg8bit\.png"):
        ds[0]
    # A truncated file: the header is fine, decoding fails.
    good = tmp_path / "full.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(good)
    bad.write_bytes(good.read_bytes()[:300])
    with pytest.raises(ImageReadError, match="c_000000_000001_leftImg8bit.png"):
        ds[0]
    Image.new("RGB", (40, 32)).save(bad)
    with pytest.raises(ValueError, match=r"label .* is 32x32 but image .* is 40x32"):
        ds[0]
    Image.new("RGB", (32, 32)).save(g / "c_000000_000001_gtFine_labelIds.png")
    with pytest.raises(ImageReadError, match="must be single-channel, got mode RGB"):
        ds[0]
    with pytest.raises(FileNotFoundError, match="no such image file"):
        read_image(str(tmp_path / "missing.png"))


@pytest.mark.parametrize("h, w", [(1, 1), (31, 33), (64, 96), (50, 77)])
def test_pad_to_multiple_and_unpad(h, w):
    x = torch.randn(2, 3, h, w)
    p, size = pad_to_multiple(x, 32)
    assert p.shape[-2] % 32 == 0 and p.shape[-1] % 32 == 0
    assert p.shape[-2] - h < 32 and p.shape[-1] - w < 32
    assert size == (h, w) and torch.equal(unpad(p, size), x)
    assert (p[..., h:, :] == 0).all() and (p[..., :, w:] == 0).all()


def test_padded_input_runs_through_bisenet():
    net = BiSeNetV1(19, "dasp").eval()
    x = torch.randn(1, 3, 50, 77)
    with pytest.raises(ValueError, match="dasp.data.pad_to_multiple"):
        net(x)
    p, size = pad_to_multiple(x, 32)
    with torch.no_grad():
        assert unpad(net(p), size).shape == (1, 19, 50, 77)


def test_train_transform_keeps_image_and_label_aligned():
    # Encode the label in the red channel, then check it survives crop / pad / flip unchanged.
    rng = np.random.default_rng(0)
    lab = rng.integers(0, 19, (40, 60)).astype(np.uint8)
    img = np.stack([lab * 10, np.zeros_like(lab), np.zeros_like(lab)], -1).astype(np.uint8)
    t = TrainTransform(scales=(1.0, 1.0), crop=(32, 64), jitter=0.0)
    flips = 0
    for seed in range(8):
        x, y = t(img, lab, np.random.default_rng(seed))
        assert x.shape == (3, 32, 64) and y.shape == (32, 64)
        red = (x[0] * STD[0] + MEAN[0]) * 255
        valid = y != IGNORE_INDEX
        assert (valid.sum(1) > 0).all() and (~valid).any()  # crop wider than the image: padded
        torch.testing.assert_close(red[valid], y[valid].float() * 10, atol=1e-3, rtol=0)
        flips += int(not valid[:, 0].any())  # the right-hand padding lands on the left when flipped
    assert 0 < flips < 8
    x1, y1 = t(img, lab, np.random.default_rng(3))
    x2, y2 = t(img, lab, np.random.default_rng(3))
    assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_train_transform_scales_and_jitters():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)
    lab = rng.integers(0, 19, (64, 96)).astype(np.uint8)
    t = TrainTransform(scales=(0.5, 2.0), crop=(64, 64), jitter=0.4)
    for seed in range(4):
        x, y = t(img, lab, np.random.default_rng(seed))
        assert x.shape == (3, 64, 64) and torch.isfinite(x).all()
        assert set(y.unique().tolist()) <= set(range(19)) | {IGNORE_INDEX}


def test_stream_sampler_resumes_and_splits_across_ranks():
    full = list(StreamBatchSampler(7, 3, steps=10, seed=5))
    assert len(full) == 10 and all(len(b) == 3 for b in full)
    assert list(StreamBatchSampler(7, 3, steps=10, seed=5, start_step=6)) == full[6:]
    flat = [i for b in full for i, _ in b]
    for e in range(4):  # every epoch is a permutation of the dataset
        assert sorted(flat[7 * e:7 * e + 7]) == list(range(7))
    keys = [k for b in full for _, k in b]
    assert len(set(keys)) == len(keys)  # each sample gets its own augmentation seed
    r0 = list(StreamBatchSampler(7, 2, steps=5, seed=5, rank=0, world_size=2))
    r1 = list(StreamBatchSampler(7, 2, steps=5, seed=5, rank=1, world_size=2))
    one = list(StreamBatchSampler(7, 4, steps=5, seed=5))
    assert [a + b for a, b in zip(r0, r1)] == one
    assert list(StreamBatchSampler(7, 3, steps=10, seed=6)) != full


def test_synthetic_writer_cli(tmp_path, capsys):
    assert synthetic_main([str(tmp_path), "--train", "2", "--val", "1", "--height", "32", "--width", "48"]) == 0
    assert "wrote 2 train, 1 val" in capsys.readouterr().out
    ds = CityscapesDataset(str(tmp_path), "train")
    assert len(ds) == 2 and ds[0][0].shape == (3, 32, 48)
    from cityscapesscripts.helpers.csHelpers import getCoreImageFileName
    for p in ds.images + ds.labels:
        assert getCoreImageFileName(p) == os.path.basename(p).rsplit("_", 2 if "gtFine" in p else 1)[0]
    with pytest.raises(ValueError, match="must be >= 24"):
        write_synthetic(str(tmp_path / "small"), height=16)


def test_train_transform_matches_full_resize_then_crop():
    """Only the crop's source region is resized; the result must be that of resizing the whole
    image, padding and cropping (the plain recipe), up to rounding."""
    import math
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (61, 90, 3), dtype=np.uint8)
    lab = rng.integers(0, 19, (61, 90)).astype(np.uint8)
    t = TrainTransform(scales=(0.6, 2.2), crop=(64, 64), jitter=0.0, flip_p=0.0)
    for seed in range(12):
        x, y = t(img, lab, np.random.default_rng(seed))
        r = np.random.default_rng(seed)
        s = r.uniform(0.6, 2.2)
        nh, nw = math.ceil(61 * s), math.ceil(90 * s)
        top, left = int(r.integers(0, max(nh, 64) - 63)), int(r.integers(0, max(nw, 64) - 63))
        full = np.asarray(Image.fromarray(img).resize((nw, nh), Image.BILINEAR)).astype(np.float32)
        full_lab = np.asarray(Image.fromarray(lab).resize((nw, nh), Image.NEAREST))
        pad = ((0, max(0, 64 - nh)), (0, max(0, 64 - nw)))
        ref = np.pad(full, pad + ((0, 0),))[top:top + 64, left:left + 64]
        ref_lab = np.pad(full_lab, pad, constant_values=IGNORE_INDEX)[top:top + 64, left:left + 64]
        got = (x.permute(1, 2, 0).numpy() * np.array(STD) + np.array(MEAN)) * 255
        assert np.abs(got - ref).max() <= 2.01
        assert (y.numpy() == ref_lab).mean() >= 0.95
