"""Checkpoint files: atomic saving, and loading a BiSeNetV1 from either a plain state_dict (as
CoinCheung/BiSeNet publishes its weights) or one of this project's training checkpoints."""
import os
import tempfile

import torch

from dasp.models.bisenetv1 import BiSeNetV1

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


def infer_spatial_path(state):
    if any(k.startswith("sp.stage1.") for k in state):
        return "dasp"
    if any(k.startswith("sp.conv1.") for k in state):
        return "original"
    return None


def load_model(path, spatial_path=None, device="cpu"):
    """Builds a BiSeNetV1 and loads the weights in `path` (strict). The spatial path, the number of
    classes and whether aux heads exist are read from the weights; a `spatial_path` that
    disagrees with them is an error. Returns the model in eval mode."""
    obj = read_checkpoint(path)
    state = model_state(obj, path)
    found = infer_spatial_path(state)
    if found is None:
        raise ValueError(f"{path!r} holds no BiSeNetV1 spatial path weights (no 'sp.*' keys)")
    if spatial_path is not None and spatial_path != found:
        raise ValueError(f"{path!r} holds a model with spatial_path={found!r}, but "
                         f"spatial_path={spatial_path!r} was asked for")
    if "conv_out.conv_out.weight" not in state:
        raise ValueError(f"{path!r} holds no BiSeNetV1 classifier (no 'conv_out.conv_out.weight')")
    num_classes = state["conv_out.conv_out.weight"].shape[0] // 64  # PixelShuffle(8) head
    aux = any(k.startswith("conv_out16.") for k in state)
    model = BiSeNetV1(num_classes=num_classes, spatial_path=found, aux=aux)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{path!r} does not fit BiSeNetV1(spatial_path={found!r}): {e}") from e
    return model.to(device).eval()
