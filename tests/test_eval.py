import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from dasp.cli import main as cli_main
from dasp.data import CLASS_NAMES, CityscapesDataset
from dasp.evaluate import (MODES, confusion_matrix, evaluate, format_table, iou_from_confusion,
                           predict_probs)
from dasp.models import BiSeNetV1
from dasp.synthetic import write_synthetic


# Small models on 2 shared cores: one thread is faster and steadier (conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_synthetic(str(tmp_path_factory.mktemp("cs")), n_train=1, n_val=2, height=64, width=128, seed=1)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    net = BiSeNetV1(19, "dasp")
    # Non-trivial BN statistics so that the random model predicts a mix of classes.
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 2.0)
            m.running_mean.normal_(0, 0.2)
    path = str(tmp_path_factory.mktemp("ckpt") / "plain_state_dict.pth")
    torch.save(net.state_dict(), path)
    return path


def test_confusion_and_iou_by_hand():
    label = torch.tensor([0, 0, 0, 1, 1, 2, 255, 255])
    pred = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1])
    hist = confusion_matrix(pred, label, 4)
    assert hist.tolist() == [[2, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    iou, miou = iou_from_confusion(hist)
    # class 0: tp 2, fn 1, fp 0; class 1: tp 1, fn 1, fp 1; class 2: tp 1, fp 1; class 3 absent
    assert iou[:3] == pytest.approx([2 / 3, 1 / 3, 1 / 2]) and math.isnan(iou[3])
    assert miou == pytest.approx((2 / 3 + 1 / 3 + 1 / 2) / 3)
    # A class predicted but absent from the ground truth counts, with IoU 0.
    iou, miou = iou_from_confusion(confusion_matrix(torch.tensor([3, 0]), torch.tensor([0, 0]), 4))
    assert iou[3] == 0.0 and miou == pytest.approx(0.25)


class _Uniform(nn.Module):
    """Equal logits everywhere: the softmax is 1/C, so summed scores count the windows."""

    def forward(self, x):
        assert x.shape[-2] % 32 == 0 and x.shape[-1] % 32 == 0
        return x.new_zeros(x.shape[0], 4, *x.shape[-2:])


def test_sliding_window_geometry():
    img = torch.zeros(1, 3, 64, 128)
    cover = predict_probs(_Uniform(), img, "ssc", 4, crop_size=64).sum(1)[0]
    # crop 64, stride ceil(64 * 2/3) = 43: windows at columns 0, 43 and (clamped) 64.
    expected = torch.ones(128)
    expected[43:107] = 2
    assert torch.equal(cover, expected.expand(64, 128))
    # An image smaller than the crop is padded (centred) to the crop and cut back.
    small = predict_probs(_Uniform(), torch.zeros(1, 3, 40, 50), "ssc", 4, crop_size=64)
    assert small.shape == (1, 4, 40, 50) and torch.allclose(small.sum(1), torch.ones(1, 40, 50))
    with pytest.raises(ValueError, match="crop size must be a positive multiple of 32, got 48x48"):
        predict_probs(_Uniform(), img, "ssc", 4, crop_size=48)
    with pytest.raises(ValueError, match="mode must be one of"):
        predict_probs(_Uniform(), img, "bogus", 4)


def test_multiscale_flip_sums_scales():
    img = torch.zeros(1, 3, 64, 128)
    total = predict_probs(_Uniform(), img, "msf", 4).sum(1)
    assert torch.allclose(total, torch.full_like(total, 2 * len(MODES["msf"]["scales"])))


@pytest.mark.parametrize("mode", ["ss", "ssc", "msf", "mscf"])
def test_every_mode_runs(mode, root, ckpt):
    from dasp.checkpoint import load_model
    model = load_model(ckpt)
    ds = CityscapesDataset(root, "val")
    # mscf slides 128-crops only over the larger scales, to stay fast; ssc slides 64-crops.
    res = evaluate(model, ds, [mode], crop_size=128 if mode == "mscf" else 64, progress=False)[mode]
    assert 0.0 <= res["miou"] <= 1.0 and set(res["iou"]) == set(CLASS_NAMES)
    assert sum(map(sum, res["confusion"])) == sum(int((ds[i][1] != 255).sum()) for i in range(len(ds)))
    if mode == "ss":  # ss is the plain argmax of the model on the full image
        x, y, _ = ds[0]
        with torch.no_grad():
            pred = model(x[None]).argmax(1)[0]
        assert torch.equal(predict_probs(model, x[None], "ss", 19).argmax(1)[0], pred)


def _official(gt_root, pred_dir, tmp_path):
    """The official cityscapesscripts pixel-level evaluation, configured by its environment
    variables. Its instance-level (nIoU) part uses np.in1d, gone in numpy 2, so it is turned off."""
    env = dict(os.environ, CITYSCAPES_DATASET=gt_root, CITYSCAPES_RESULTS=pred_dir,
               CITYSCAPES_EXPORT_DIR=str(tmp_path))
    code = ("import cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling as E\n"
            "E.args.evalInstLevelScore = False\nE.args.quiet = True\nE.main()\n")
    subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, timeout=120)
    with open(tmp_path / "resultPixelLevelSemanticLabeling.json") as f:
        return json.load(f)


def test_miou_equals_official_evaluation(root, ckpt, tmp_path, capsys):
    pred_dir = str(tmp_path / "preds")
    rc = cli_main(["eval", "--data-root", root, "--split", "val", "--checkpoint", ckpt, "--spatial-path",
                   "dasp", "--mode", "ss", "--save-predictions", pred_dir, "--json", "--workers", "0",
                   "--device", "cpu", "--no-progress"])
    assert rc == 0
    ours = json.loads(capsys.readouterr().out)["results"]["ss"]
    saved = sorted(os.listdir(os.path.join(pred_dir, "gamma")))
    assert saved == ["gamma_000000_000019_labelIds.png", "gamma_000001_000019_labelIds.png"]
    ids = np.unique(np.array(Image.open(os.path.join(pred_dir, "gamma", saved[0]))))
    assert set(ids.tolist()) <= {7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33}
    official = _official(root, pred_dir, tmp_path)
    defined = {k: v for k, v in ours["iou"].items() if v is not None}
    assert len(defined) >= 3  # a real comparison: several classes in play
    for name, v in official["classScores"].items():
        if name in CLASS_NAMES:
            if v is None or (isinstance(v, float) and math.isnan(v)):
                assert ours["iou"][name] is None
            else:
                assert ours["iou"][name] == pytest.approx(v, abs=1e-12)
    assert ours["miou"] == pytest.approx(official["averageScoreClasses"], abs=1e-12)


def test_table_layout():
    res = {m: {"miou": 0.5, "iou": {n: (0.25 if i else float("nan")) for i, n in enumerate(CLASS_NAMES)}}
           for m in ("mscf", "ss")}
    lines = format_table(res, "title").splitlines()
    assert lines[0] == "title"
    assert lines[1].split() == ["SS", "MSCF"]
    assert lines[2].split() == ["IoU", "Road", "-", "-"]
    assert lines[2 + 13].split() == ["Car", "25.0", "25.0"]
    assert lines[-1].split() == ["mIoU", "50.0", "50.0"]
    assert len(lines) == 2 + 19 + 1
