"""Checkpoint files: atomic saving, and loading a BiSeNetV1 from either a plain state_dict (as
CoinCheung/BiSeNet publishes its weights) or one of this project's training checkpoints."""
import os
import tempfile

import torch

from dasp.models.bisenetv1 import BiSeNetV1
from dasp.models.layout import HEAD, check_layout, model_layout, read_layout

TRAIN_FORMAT = "dasp-train-v1"


def atomic_save(obj, path):
    """torch.save to a temporary file in the same folder, fsync, then os.replace: a reader (or a
    crash) never sees a half-written file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_checkpoint(path):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file does not exist: {path!r}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and unpickler errors have no common base
        raise ValueError(f"cannot read checkpoint {path!r}: {type(e).__name__}: {e}") from e


def is_train_checkpoint(obj):
    return isinstance(obj, dict) and obj.get("format") == TRAIN_FORMAT


def model_state(obj, path="<checkpoint>"):
    """The model state_dict inside a loaded checkpoint object, without DDP's 'module.' prefix."""
    if is_train_checkpoint(obj):
        state = obj["model"]
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        state = obj["state_dict"]
    elif isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state = obj
    else:
        raise ValueError(f"{path!r} is neither a state_dict nor a dasp training checkpoint")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_model(path, spatial_path=None, device="cpu"):
    """Builds a BiSeNetV1 and loads the weights in `path` (strict). The spatial path, the number of
    classes and whether aux heads exist are read from the weights; a `spatial_path` that
    disagrees with them, or weights of another layout, is an error naming both. Returns the model
    in eval mode."""
    state = model_state(read_checkpoint(path), path)
    found = read_layout(state)
    if found.fusion is None or found.spatial_path is None or found.num_classes is None:
        raise ValueError(f"{path!r} holds no BiSeNetV1 weights: expected keys ffm.*, sp.* and "
                         f"{HEAD!r}; found {found.describe()}")
    model = BiSeNetV1(num_classes=found.num_classes, spatial_path=spatial_path or found.spatial_path,
                      aux=found.aux)
    try:
        check_layout(found, model_layout(model), repr(path))
    except RuntimeError as e:
        raise ValueError(str(e)) from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{path!r} does not fit BiSeNetV1(spatial_path={model.spatial_path!r}): {e}") from e
    return model.to(device).eval()
