import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from dasp.checkpoint import atomic_save
from dasp.cli import main
from dasp.data import PALETTE
from dasp.models import BiSeNetV1
from dasp.synthetic import write_synthetic

# The checkout's root (on PYTHONPATH for `python -m dasp` when the package is not installed). Not
# derived from dasp.__file__: for an installed package that is site-packages, which must not go
# before the standard library (a `typing` backport there breaks numpy).
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# Small models on 2 shared cores: one thread is faster and steadier (conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_synthetic(str(tmp_path_factory.mktemp("cs")), n_train=1, n_val=2, height=64, width=96, seed=2)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    path = str(tmp_path_factory.mktemp("w") / "original.pth")
    torch.save(BiSeNetV1(19, "original").state_dict(), path)
    return path


def _eval(root, ckpt, *extra):
    return main(["eval", "--data-root", root, "--checkpoint", ckpt, "--workers", "0", "--device", "cpu",
                 "--no-progress", *extra])


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "train" in out and "eval" in out and "segment" in out
    for cmd, flag in (("eval", "--save-predictions"), ("train", "--sync-bn"), ("segment", "--alpha")):
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        assert flag in capsys.readouterr().out


def test_python_dash_m_dasp():
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-m", "dasp", "eval", "--help"], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and "--spatial-path" in out.stdout


def test_eval_bad_paths_are_named(root, ckpt, tmp_path, capsys):
    assert _eval(str(tmp_path / "nope"), ckpt) == 1
    assert "dasp eval: error: Cityscapes root folder does not exist" in capsys.readouterr().err
    assert _eval(root, ckpt, "--split", "test") == 1
    assert "missing folder" in capsys.readouterr().err
    assert _eval(root, str(tmp_path / "missing.pth")) == 1
    assert "checkpoint file does not exist" in capsys.readouterr().err
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    assert _eval(root, str(junk)) == 1
    assert "cannot read checkpoint" in capsys.readouterr().err


def test_eval_spatial_path_mismatch(root, ckpt, capsys):
    assert _eval(root, ckpt, "--spatial-path", "dasp") == 1
    assert "spatial_path='original', 19 classes, aux heads; expected spatial_path='dasp'" in capsys.readouterr().err


def test_eval_corrupt_image_is_named(root, ckpt, tmp_path, capsys):
    import shutil
    bad_root = str(tmp_path / "bad")
    shutil.copytree(root, bad_root)
    victim = os.path.join(bad_root, "leftImg8bit", "val", "gamma", "gamma_000001_000019_leftImg8bit.png")
    with open(victim, "r+b") as f:
        f.truncate(200)
    assert _eval(bad_root, ckpt) == 1
    err = capsys.readouterr().err
    assert "corrupt or unreadable image file" in err and "gamma_000001_000019_leftImg8bit.png" in err


def test_eval_training_checkpoint_and_table(root, ckpt, tmp_path, capsys):
    state = torch.load(ckpt, weights_only=True)
    train_ckpt = str(tmp_path / "checkpoint_last.pth")
    atomic_save({"format": "dasp-train-v1", "step": 1, "config": {},
                 "model": {"module." + k: v for k, v in state.items()}}, train_ckpt)
    assert _eval(root, train_ckpt, "--mode", "ss", "--json") == 0
    a = json.loads(capsys.readouterr().out)
    assert _eval(root, ckpt, "--mode", "ss", "--json") == 0
    b = json.loads(capsys.readouterr().out)
    assert a["results"] == b["results"] and a["spatial_path"] == "original" and a["num_images"] == 2
    assert _eval(root, ckpt, "--mode", "ss", "ssc", "--crop-size", "64") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "BiSeNetV1 (original spatial path), Cityscapes val, 2 images"
    assert out[1].split() == ["SS", "SSC"] and out[-1].startswith("mIoU")


def test_eval_save_predictions_per_mode(root, ckpt, tmp_path):
    d = str(tmp_path / "p")
    assert _eval(root, ckpt, "--mode", "ss", "ssc", "--crop-size", "64", "--save-predictions", d) == 0
    for m in ("ss", "ssc"):
        assert sorted(os.listdir(os.path.join(d, m, "gamma"))) == [
            "gamma_000000_000019_labelIds.png", "gamma_000001_000019_labelIds.png"]


def test_segment_any_size_and_folders(ckpt, tmp_path, capsys):
    rng = np.random.default_rng(0)
    src = tmp_path / "in"
    os.makedirs(src / "sub")
    Image.fromarray(rng.integers(0, 255, (50, 77, 3), dtype=np.uint8)).save(src / "odd.jpg")
    Image.fromarray(rng.integers(0, 255, (33, 40, 3), dtype=np.uint8)).save(src / "sub" / "b.png")
    single = tmp_path / "single.png"
    Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(single)  # greyscale input
    out = str(tmp_path / "out")
    assert main(["segment", str(src), str(single), "--checkpoint", ckpt, "-o", out, "--device", "cpu",
                 "--label-ids", "--no-progress"]) == 0
    assert "wrote 3 mask(s)" in capsys.readouterr().out
    for stem, (w, h) in (("odd", (77, 50)), ("sub/b", (40, 33)), ("single", (64, 64))):
        color = Image.open(os.path.join(out, stem + "_color.png"))
        overlay = Image.open(os.path.join(out, stem + "_overlay.png"))
        ids = np.array(Image.open(os.path.join(out, stem + "_labelIds.png")))
        assert color.size == overlay.size == (w, h) and ids.shape == (h, w)
        colours = {tuple(c) for c in np.array(color).reshape(-1, 3)}
        assert colours <= {tuple(c) for c in PALETTE}
    assert main(["segment", str(tmp_path / "nothing.png"), "--checkpoint", ckpt, "-o", out]) == 1
    assert "no such image file or folder" in capsys.readouterr().err
    os.makedirs(tmp_path / "empty")
    assert main(["segment", str(tmp_path / "empty"), "--checkpoint", ckpt, "-o", out]) == 1
    assert "no images" in capsys.readouterr().err


def test_train_cli_errors(root, tmp_path, capsys):
    assert main(["train", "--data-root", str(tmp_path / "nope"), "--out-dir", str(tmp_path / "o"),
                 "--iters", "1", "--device", "cpu", "--workers", "0", "--no-progress"]) == 1
    assert "Cityscapes root folder does not exist" in capsys.readouterr().err
    assert main(["train", "--data-root", root, "--crop", "48", "--device", "cpu"]) == 1
    assert "crop must be multiples of 32" in capsys.readouterr().err
    assert main(["train", "--data-root", root, "--resume", str(tmp_path / "none.pth"), "--device", "cpu"]) == 1
    assert "checkpoint file does not exist" in capsys.readouterr().err
