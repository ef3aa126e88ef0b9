"""Cityscapes data: the dataset, label-id mapping, training augmentation and padding helpers.

The label tables come from the official `cityscapesscripts` package, not from a hand-typed copy.
Images are read with Pillow. Training augmentation is driven by a per-sample generator seeded from
(run seed, position of the sample in the training stream), so a run resumed from a checkpoint sees
exactly the batches and augmentations of an uninterrupted run, whatever the number of loader workers.
"""
import glob
import math
import os

import numpy as np
import torch
import torch.nn.functional as F
from cityscapesscripts.helpers.labels import labels as _CS_LABELS
from PIL import Image

IGNORE_INDEX = 255
NUM_CLASSES = 19

# Normalisation of CoinCheung/BiSeNet for Cityscapes (RGB, on [0, 1] pixels): its published
# checkpoints expect it, so ours use it too.
MEAN = (0.3257, 0.3690, 0.3223)
STD = (0.2112, 0.2148, 0.2115)


def _build_tables():
    id_to_train = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    train_to_id = {}
    for lab in _CS_LABELS:
        if lab.id < 0:
            continue
        if 0 <= lab.trainId < IGNORE_INDEX:
            id_to_train[lab.id] = lab.trainId
            # The first label listed for a train id is its canonical label id (as cityscapesscripts).
            train_to_id.setdefault(lab.trainId, lab)
    n = len(train_to_id)
    if sorted(train_to_id) != list(range(n)):
        raise RuntimeError(f"cityscapesscripts train ids are not 0..{n - 1}: {sorted(train_to_id)}")
    ordered = [train_to_id[i] for i in range(n)]
    return (id_to_train,
            np.array([lab.id for lab in ordered], dtype=np.uint8),
            tuple(lab.name for lab in ordered),
            np.array([lab.color for lab in ordered], dtype=np.uint8))


#: label id (0..255) -> train id (0..18) or 255
ID_TO_TRAINID, TRAINID_TO_ID, CLASS_NAMES, PALETTE = _build_tables()
assert len(CLASS_NAMES) == NUM_CLASSES


class ImageReadError(OSError):
    """An image file exists but cannot be decoded (truncated, corrupt, not an image)."""


def read_image(path, mode="RGB"):
    """Reads an image file into a uint8 array (H, W, 3) for mode RGB, (H, W) for mode L."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such image file: {path!r}")
    try:
        with Image.open(path) as im:
            im.load()  # decode now, so truncation is caught here with the file's name
            if mode == "L" and im.mode not in ("L", "P", "I", "I;16"):
                raise ImageReadError(f"label image {path!r} must be single-channel, got mode {im.mode}")
            arr = np.asarray(im.convert(mode) if im.mode != mode else im)
    except ImageReadError:
        raise
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(f"corrupt or unreadable image file {path!r}: {e}") from e
    return arr


def cityscapes_ids_to_train_ids(label_ids):
    """Maps an array of Cityscapes label ids to train ids (255 for ignored labels)."""
    return ID_TO_TRAINID[np.asarray(label_ids, dtype=np.uint8)]


def train_ids_to_cityscapes_ids(train_ids):
    """Maps train ids 0..18 back to the Cityscapes label ids the official evaluation expects."""
    train_ids = np.asarray(train_ids)
    if train_ids.size and (train_ids.min() < 0 or train_ids.max() >= NUM_CLASSES):
        raise ValueError(f"train ids must be in [0, {NUM_CLASSES - 1}], got range "
                         f"[{train_ids.min()}, {train_ids.max()}]")
    return TRAINID_TO_ID[train_ids]


def colorize(train_ids):
    """Cityscapes palette colours (H, W, 3) uint8 for a map of train ids; ignore is black."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[:NUM_CLASSES] = PALETTE
    return lut[np.asarray(train_ids, dtype=np.uint8)]


def to_tensor(img):
    """uint8 (H, W, 3) RGB -> normalised float32 (3, H, W)."""
    x = torch.from_numpy(np.array(img, dtype=np.float32)).permute(2, 0, 1).div_(255.0)
    mean = torch.tensor(MEAN).view(3, 1, 1)
    std = torch.tensor(STD).view(3, 1, 1)
    return x.sub_(mean).div_(std)


def pad_to_multiple(x, multiple=32, value=0.0):
    """Pads the last two dims of x at the bottom and right up to multiples of `multiple`.

    Returns (padded, (H, W)); `unpad(y, (H, W))` crops an output back. With the default value 0 a
    normalised image is padded with the mean colour.
    """
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1, got {multiple}")
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), value=value)
    return x, (h, w)


def unpad(y, size):
    """Crops the last two dims of y back to size = (H, W) (inverse of pad_to_multiple)."""
    h, w = size
    return y[..., :h, :w]


class CityscapesDataset(torch.utils.data.Dataset):
    """Cityscapes in its standard layout under `root`:

        leftImg8bit/<split>/<city>/<name>_leftImg8bit.png
        gtFine/<split>/<city>/<name>_gtFine_labelIds.png

    Items are (image, label, index): image float32 (3, H, W) normalised, label int64 (H, W) train
    ids with 255 for ignore. A `transform(img_uint8, label_uint8, rng)` replaces the default
    conversion; the dataset then also accepts (index, sample_seed) pairs as keys and hands the
    transform a numpy Generator seeded from them (see `StreamBatchSampler`).
    With labels=False (e.g. the test split) no gtFine folder is needed and label is None.
    """

    def __init__(self, root, split="train", transform=None, labels=True):
        self.root, self.split, self.transform, self.has_labels = root, split, transform, labels
        if not os.path.isdir(root):
            raise FileNotFoundError(f"Cityscapes root folder does not exist: {root!r}")
        img_dir = os.path.join(root, "leftImg8bit", split)
        gt_dir = os.path.join(root, "gtFine", split)
        needed = [img_dir] + ([gt_dir] if labels else [])
        for d in needed:
            if not os.path.isdir(d):
                raise FileNotFoundError(
                    f"missing folder {d!r}: expected the Cityscapes layout "
                    f"<root>/leftImg8bit/<split>/<city>/*_leftImg8bit.png and "
                    f"<root>/gtFine/<split>/<city>/*_gtFine_labelIds.png")
        self.images = sorted(glob.glob(os.path.join(img_dir, "*", "*_leftImg8bit.png")))
        if not self.images:
            raise FileNotFoundError(f"no images matching {os.path.join(img_dir, '*', '*_leftImg8bit.png')!r}")
        self.labels = []
        if labels:
            for p in self.images:
                city = os.path.basename(os.path.dirname(p))
                stem = os.path.basename(p)[: -len("_leftImg8bit.png")]
                gt = os.path.join(gt_dir, city, stem + "_gtFine_labelIds.png")
                if not os.path.isfile(gt):
                    raise FileNotFoundError(f"missing ground-truth file {gt!r} for image {p!r}")
                self.labels.append(gt)

    def __len__(self):
        return len(self.images)

    def name(self, index):
        """'<city>/<city>_<seq>_<frame>' of an item, for naming outputs."""
        p = self.images[index]
        return os.path.join(os.path.basename(os.path.dirname(p)),
                            os.path.basename(p)[: -len("_leftImg8bit.png")])

    def load(self, index):
        """(uint8 RGB image (H, W, 3), uint8 train-id label (H, W) or None)."""
        img = read_image(self.images[index], "RGB")
        if not self.has_labels:
            return img, None
        lab = read_image(self.labels[index], "L")
        if lab.shape != img.shape[:2]:
            raise ValueError(f"label {self.labels[index]!r} is {lab.shape[1]}x{lab.shape[0]} but image "
                             f"{self.images[index]!r} is {img.shape[1]}x{img.shape[0]}")
        return img, cityscapes_ids_to_train_ids(lab)

    def __getitem__(self, key):
        index, seed = key if isinstance(key, tuple) else (key, None)
        img, lab = self.load(index)
        if self.transform is not None:
            rng = np.random.default_rng(seed if seed is not None else index)
            x, y = self.transform(img, lab, rng)
        else:
            x = to_tensor(img)
            y = None if lab is None else torch.from_numpy(lab.astype(np.int64))
        if y is None:
            y = torch.empty(0, dtype=torch.int64)
        return x, y, index


class TrainTransform:
    """Random scale, random crop (padding with ignore where the image is smaller), horizontal flip,
    colour jitter (brightness, contrast, saturation), then normalisation.

    As in CoinCheung/BiSeNet's Cityscapes recipe: scale uniform in `scales`, crop `crop` (H, W),
    flip with p=0.5, jitter factors uniform in [1-j, 1+j]. Differences: images are resized with
    Pillow's bilinear filter (it antialiases when shrinking; OpenCV's does not), contrast and
    saturation blend with the image's mean grey and its grey image (torchvision's definitions),
    and the crop is padded at the bottom/right rather than centred.
    """

    def __init__(self, scales=(0.75, 2.0), crop=(1024, 1024), jitter=0.4, flip_p=0.5):
        self.scales, self.crop, self.jitter, self.flip_p = tuple(scales), tuple(crop), jitter, flip_p

    def __call__(self, img, lab, rng):
        s = rng.uniform(min(self.scales), max(self.scales))
        h, w = img.shape[:2]
        nh, nw = max(1, math.ceil(h * s)), max(1, math.ceil(w * s))
        ch, cw = self.crop
        # The crop is placed in the scaled (and, where smaller than the crop, bottom/right padded)
        # image, but only the part of the source under it is resized: the pixels of a full resize
        # then crop (within rounding), at a fraction of the cost for large images and scales.
        top = int(rng.integers(0, max(nh, ch) - ch + 1))
        left = int(rng.integers(0, max(nw, cw) - cw + 1))
        vh, vw = min(top + ch, nh) - top, min(left + cw, nw) - left
        sy, sx = h / nh, w / nw
        box = (left * sx, top * sy, (left + vw) * sx, (top + vh) * sy)
        part = np.asarray(Image.fromarray(img).resize((vw, vh), Image.BILINEAR, box=box))
        rows = np.minimum(((top + np.arange(vh) + 0.5) * sy).astype(np.int64), h - 1)
        cols = np.minimum(((left + np.arange(vw) + 0.5) * sx).astype(np.int64), w - 1)
        part_lab = lab[rows[:, None], cols[None, :]]
        img = np.zeros((ch, cw, 3), dtype=np.uint8)
        lab = np.full((ch, cw), IGNORE_INDEX, dtype=np.uint8)
        img[:vh, :vw] = part
        lab[:vh, :vw] = part_lab
        if rng.random() < self.flip_p:
            img, lab = img[:, ::-1], lab[:, ::-1]
        # In-place torch ops on (H, W, 3): far fewer passes over the crop than numpy expressions.
        x = torch.from_numpy(np.ascontiguousarray(img)).float()
        if self.jitter:
            lo, hi = max(0.0, 1 - self.jitter), 1 + self.jitter
            b, c, sat = (float(v) for v in rng.uniform(lo, hi, size=3))
            luma = torch.tensor([0.299, 0.587, 0.114])
            x.mul_(b).clamp_(0, 255)
            m = float((x @ luma).mean())
            x.sub_(m).mul_(c).add_(m).clamp_(0, 255)
            grey = (x @ luma).unsqueeze(-1)
            x.sub_(grey).mul_(sat).add_(grey).clamp_(0, 255)
        std = torch.tensor(STD) * 255.0
        x = x.sub_(torch.tensor(MEAN) * 255.0).div_(std).permute(2, 0, 1).contiguous()
        y = torch.from_numpy(np.ascontiguousarray(lab).astype(np.int64))
        return x, y


class StreamBatchSampler(torch.utils.data.Sampler):
    """Batches of (index, sample_seed) keys for step `start_step` onwards of an endless shuffled
    stream, this process's share of each global batch.

    Epoch e of the stream is a permutation drawn from seed (seed, e); global batch t is stream items
    [t*B*world, (t+1)*B*world) and rank r takes B consecutive ones of them. Everything is a function
    of (seed, step), which is what makes resuming exact.
    """

    def __init__(self, n, batch_size, steps, seed=0, start_step=0, rank=0, world_size=1):
        if n < 1:
            raise ValueError("dataset is empty")
        self.n, self.bs, self.steps, self.seed = n, batch_size, steps, seed
        self.start, self.rank, self.world = start_step, rank, world_size

    def __len__(self):
        return max(0, self.steps - self.start)

    def _perm(self, epoch):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def __iter__(self):
        gb = self.bs * self.world
        cache = {}
        for step in range(self.start, self.steps):
            first = step * gb + self.rank * self.bs
            batch = []
            for pos in range(first, first + self.bs):
                epoch, i = divmod(pos, self.n)
                if epoch not in cache:
                    cache.clear()
                    cache[epoch] = self._perm(epoch)
                batch.append((cache[epoch][i], (self.seed, pos)))
            yield batch


def collate(batch):
    xs, ys, idx = zip(*batch)
    return torch.stack(xs), torch.stack(ys), torch.tensor(idx)
