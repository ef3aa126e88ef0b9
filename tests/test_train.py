import csv
import glob
import json
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from dasp.checkpoint import atomic_save, load_model, read_checkpoint
from dasp.data import CityscapesDataset
from dasp.evaluate import confusion_matrix, evaluate, iou_from_confusion
from dasp.models import BiSeNetV1
from dasp.synthetic import write_synthetic
from dasp.train import OhemCrossEntropy, WarmupPolyLR, build_config, param_groups, train

# The checkout's root (on PYTHONPATH for `python -m dasp` when the package is not installed). Not
# derived from dasp.__file__: for an installed package that is site-packages, which must not go
# before the standard library (a `typing` backport there breaks numpy).
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Small, fast settings for CPU runs on the synthetic data.
TINY = dict(batch_size=4, crop=[64, 64], warmup_iters=2, lr=0.05, jitter=0.1, scales=[1.0, 1.5],
            workers=0, progress=False, device="cpu", log_every=1)


# Small models on 2 shared cores: one thread is faster and steadier (conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_synthetic(str(tmp_path_factory.mktemp("cs")), n_train=8, n_val=4, height=64, width=128)


def _log(out_dir):
    with open(os.path.join(out_dir, "train_log.csv"), newline="") as f:
        return list(csv.DictReader(f))


def test_ohem_keeps_hard_pixels_or_the_hardest_sixteenth():
    crit = OhemCrossEntropy(0.7)
    # Two classes; per-pixel probability of the true class p gives loss -log p.
    p = torch.tensor([0.99, 0.9, 0.6, 0.5, 0.3] + [0.99] * 11)
    logits = torch.stack([torch.log(p), torch.log(1 - p)], 0)[None, :, None, :]  # (1, 2, 1, 16)
    target = torch.zeros(1, 1, 16, dtype=torch.long)
    # Hard pixels: p < 0.7 -> 0.6, 0.5, 0.3.
    assert crit(logits, target).item() == pytest.approx(-(math.log(0.6) + math.log(0.5) + math.log(0.3)) / 3)
    # No pixel is hard: the hardest max(1, 16 // 16) = 1 pixel is used.
    easy = torch.full((16,), 0.9)
    logits = torch.stack([torch.log(easy), torch.log(1 - easy)], 0)[None, :, None, :]
    assert crit(logits, target).item() == pytest.approx(-math.log(0.9))
    # Ignored pixels are never picked.
    logits = torch.stack([torch.log(p), torch.log(1 - p)], 0)[None, :, None, :]
    target_ign = target.clone()
    target_ign[..., 4] = 255
    assert crit(logits, target_ign).item() == pytest.approx(-(math.log(0.6) + math.log(0.5)) / 2)
    # 13 valid pixels, none hard: the minimum 13 // 16 is 0, so the loss is 0 (not NaN).
    target_ign[..., 2:5] = 255
    assert crit(logits, target_ign).item() == 0.0
    # Nothing valid: zero loss that still backpropagates.
    x = torch.randn(1, 2, 4, 4, requires_grad=True)
    loss = crit(x, torch.full((1, 4, 4), 255))
    loss.backward()
    assert loss.item() == 0.0 and x.grad is not None


def test_ohem_equals_cross_entropy_when_every_pixel_is_hard():
    x = torch.randn(2, 19, 8, 8) * 0.01  # near-uniform: every loss ~ log 19 > -log 0.7
    t = torch.randint(0, 19, (2, 8, 8))
    torch.testing.assert_close(OhemCrossEntropy(0.7)(x, t), F.cross_entropy(x, t))


def test_warmup_poly_schedule():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.01)
    s = WarmupPolyLR(opt, max_iters=100, warmup_iters=10, warmup_ratio=0.1, power=0.9)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        s.step()
    assert lrs[0] == pytest.approx(0.001)
    assert lrs[5] == pytest.approx(0.01 * 0.1 ** 0.5)  # exponential warm-up: geometric midpoint
    assert lrs[10] == pytest.approx(0.01)
    assert lrs[55] == pytest.approx(0.01 * 0.5 ** 0.9)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    lin = WarmupPolyLR(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0), 100, 10, 0.1, "linear")
    assert lin.factor(5) == pytest.approx(0.55)


def test_param_groups_match_the_reference_recipe():
    net = BiSeNetV1(19, "dasp")
    groups = param_groups(net, 0.01, 5e-4, 10.0)
    by_id = {id(p): g for g in groups for p in g["params"]}
    assert sum(len(g["params"]) for g in groups) == len(list(net.parameters()))
    assert by_id[id(net.ffm.convblk.conv.weight)]["lr"] == pytest.approx(0.1)
    assert by_id[id(net.conv_out32.conv_out.bias)]["lr"] == pytest.approx(0.1)
    assert by_id[id(net.conv_out32.conv_out.bias)]["weight_decay"] == 0.0
    assert by_id[id(net.cp.resnet.conv1.weight)] == by_id[id(net.sp.stage1.dw.conv.weight)]
    assert by_id[id(net.cp.resnet.conv1.weight)]["lr"] == pytest.approx(0.01)
    assert by_id[id(net.cp.resnet.conv1.weight)]["weight_decay"] == pytest.approx(5e-4)
    assert by_id[id(net.cp.resnet.bn1.weight)]["weight_decay"] == 0.0


def test_presets():
    paper = build_config("paper")
    assert (paper["world_size"] * paper["batch_size"], paper["iters"], paper["crop"]) == (32, 160000, [1024, 1024])
    ref = build_config("reference")
    assert (ref["world_size"] * ref["batch_size"], ref["iters"], ref["scales"]) == (16, 80000, [0.75, 2.0])
    assert (ref["lr"], ref["weight_decay"], ref["warmup_iters"], ref["ohem_thresh"]) == (0.01, 5e-4, 1000, 0.7)
    with pytest.raises(ValueError, match="crop must be multiples of 32"):
        build_config("paper", crop=[100, 100])
    with pytest.raises(ValueError, match="preset must be one of"):
        build_config("nope")


@pytest.fixture(scope="module")
def trained(root, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("run"))
    cfg = build_config("paper", data_root=root, out_dir=out, iters=30, seed=3, **TINY)
    return out, train(cfg)


def test_short_run_learns(root, trained):
    out, summary = trained
    assert summary["finished"] and summary["step"] == 30
    rows = _log(out)
    assert [int(r["step"]) for r in rows] == list(range(1, 31))
    first = sum(float(r["loss_main"]) for r in rows[:3]) / 3
    last = sum(float(r["loss_main"]) for r in rows[-3:]) / 3
    assert last < 0.75 * first, (first, last)
    # The rate each step used: warm-up from 0.1x over 2 steps, then poly decay to 0 at step 30.
    assert float(rows[0]["lr"]) == pytest.approx(0.005, rel=1e-5)
    assert float(rows[2]["lr"]) == pytest.approx(0.05, rel=1e-5)
    assert float(rows[-1]["lr"]) == pytest.approx(0.05 * (1 / 28) ** 0.9, rel=1e-5)
    ds = CityscapesDataset(root, "val")
    miou = summary["val"]["ss"]["miou"]
    with open(os.path.join(out, "val_results.json")) as f:
        assert json.load(f)["results"]["ss"]["miou"] == pytest.approx(miou)
    # Chance levels: the untrained network, and uniformly random predictions.
    torch.manual_seed(3)
    untrained = evaluate(BiSeNetV1(19, "dasp"), ds, ["ss"], progress=False)["ss"]["miou"]
    g = torch.Generator().manual_seed(0)
    hist = sum(confusion_matrix(torch.randint(0, 19, ds[i][1].shape, generator=g), ds[i][1], 19)
               for i in range(len(ds)))
    random_miou = iou_from_confusion(hist)[1]
    assert miou > 0.3 and miou > 3 * max(untrained, random_miou), (miou, untrained, random_miou)
    # The final weights load as a plain state_dict and give the same result.
    again = evaluate(load_model(summary["model"], "dasp"), ds, ["ss"], progress=False)["ss"]["miou"]
    assert again == pytest.approx(miou, abs=1e-12)


def test_resumed_run_matches_uninterrupted(root, tmp_path):
    common = dict(data_root=root, iters=6, seed=7, **TINY)
    full = str(tmp_path / "full")
    train(build_config("reference", out_dir=full, val_split="", **common))
    part = str(tmp_path / "part")
    s = train(build_config("reference", out_dir=part, stop_after=3, val_split="", **common))
    assert s["step"] == 3 and not s["finished"] and "model" not in s
    assert not os.path.exists(os.path.join(part, "model_final.pth"))
    # Resume in the same way the CLI does: the options come from the checkpoint.
    s = train(build_config("reference", data_root=root, out_dir=part, val_split="", progress=False,
                           workers=0, device="cpu"), resume=os.path.join(part, "checkpoint_last.pth"),
              explicit={"data_root": root})
    assert s["step"] == 6 and s["finished"]
    a, b = read_checkpoint(os.path.join(full, "checkpoint_last.pth")), read_checkpoint(os.path.join(part, "checkpoint_last.pth"))
    assert a["step"] == b["step"] == 6
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == 6
    la, lb = _log(full), _log(part)
    assert [r["loss"] for r in la] == [r["loss"] for r in lb] and len(la) == 6


def test_resume_refuses_changed_options(root, tmp_path):
    out = str(tmp_path / "r")
    train(build_config("paper", data_root=root, out_dir=out, iters=2, stop_after=1, val_split="", **TINY))
    cfg = build_config("paper", data_root=root, out_dir=out, iters=2, **dict(TINY, lr=0.5))
    with pytest.raises(ValueError, match=r"cannot resume .* \(lr: checkpoint 0.05 vs given 0.5\)"):
        train(cfg, resume="auto", explicit={"lr": 0.5})
    plain = str(tmp_path / "plain.pth")
    torch.save(BiSeNetV1(19, "dasp").state_dict(), plain)
    with pytest.raises(ValueError, match="not a dasp training checkpoint"):
        train(cfg, resume=plain)


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = str(tmp_path / "ckpt.pth")
    atomic_save({"a": torch.ones(3)}, path)

    def broken(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"a": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.equal(read_checkpoint(path)["a"], torch.ones(3))
    assert os.listdir(tmp_path) == ["ckpt.pth"]


@pytest.mark.slow
def test_two_process_gloo_training(root, tmp_path):
    """torchrun, two CPU processes (DDP over gloo), then the distributed evaluation at the end."""
    out = str(tmp_path / "ddp")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "dasp",
           "train", "--data-root", root, "--out-dir", out, "--preset", "reference", "--iters", "3",
           "--batch-size", "2", "--crop", "64", "--warmup-iters", "1", "--workers", "0", "--device", "cpu",
           "--log-every", "1", "--no-progress"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "2 processes x 8 = 16 images per step; this run uses 2 x 2 = 4" in res.stderr
    assert len(_log(out)) == 3
    assert sorted(os.path.basename(p) for p in glob.glob(os.path.join(out, "*"))) == [
        "checkpoint_last.pth", "model_final.pth", "train_log.csv", "val_results.json"]
    with open(os.path.join(out, "val_results.json")) as f:
        dist_miou = json.load(f)["results"]["ss"]["miou"]
    # Each process evaluated half of the images; the summed confusion gives the single-process mIoU.
    single = evaluate(load_model(os.path.join(out, "model_final.pth")), CityscapesDataset(root, "val"),
                      ["ss"], progress=False)["ss"]["miou"]
    assert dist_miou == pytest.approx(single, abs=1e-12)
