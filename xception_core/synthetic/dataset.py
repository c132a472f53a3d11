"""The generated data as PyTorch tensors and datasets, and as image folders with their object masks."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .classes import CLASS_NAMES, NUM_CLASSES, folder_name
from .draw import check_args, make_sample


def to_tensor(image: np.ndarray):
    """uint8 [H, W, 3] -> float32 torch tensor [3, H, W] in [-1, 1] (mean = std = 0.5)."""
    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).to(torch.float32)
    return t.div_(127.5).sub_(1.0)


class SyntheticDataset(Dataset):
    """Lazy torch ``Dataset`` over :func:`make_sample`.

    ``ds[i]`` is ``(image float32 [3, size, size] in [-1, 1], label int)``; if
    ``transform`` is given it is applied to that tensor (so tensor transforms
    such as ``torchvision.transforms.v2.RandomHorizontalFlip`` work; geometric
    transforms do not move :meth:`mask`).  Safe with ``DataLoader`` workers:
    nothing is cached and every sample is derived from ``(seed, offset + i)``.
    ``offset`` lets two datasets of one seed be disjoint slices.
    """

    def __init__(
        self,
        n: int,
        seed: int,
        size: int = 128,
        transform: Callable | None = None,
        offset: int = 0,
    ) -> None:
        if n < 0 or offset < 0:
            raise ValueError("n and offset must be >= 0")
        check_args(0, seed, size)
        self.n, self.seed, self.size = int(n), int(seed), int(size)
        self.offset = int(offset)
        self.transform = transform
        self.classes = list(CLASS_NAMES)

    def __len__(self) -> int:
        return self.n

    def _index(self, i: int) -> int:
        i = int(i)
        if i < 0:
            i += self.n
        if not 0 <= i < self.n:
            raise IndexError(f"index {i} out of range for dataset of {self.n}")
        return self.offset + i

    def sample(self, i: int) -> tuple[np.ndarray, int, np.ndarray]:
        """Raw ``(image uint8 [H,W,3], label, mask bool [H,W])`` of item ``i``."""
        return make_sample(self._index(i), self.seed, self.size)

    def __getitem__(self, i: int):
        img, label, _ = self.sample(i)
        x = to_tensor(img)
        if self.transform is not None:
            x = self.transform(x)
        return x, label

    def mask(self, i: int) -> np.ndarray:
        """Bool [H, W] object mask of item ``i`` (before any transform)."""
        return self.sample(i)[2]

    def label(self, i: int) -> int:
        return (self._index(i)) % NUM_CLASSES

    @property
    def targets(self) -> list[int]:
        return [(self.offset + i) % NUM_CLASSES for i in range(self.n)]


MASKS_FILE = "masks.npz"
MANIFEST_FILE = "manifest.json"


def write_folder(out_dir: str | os.PathLike, n: int, seed: int, size: int = 128, start: int = 0) -> Path:
    """Write samples ``start .. start+n-1`` as ``out_dir/<NN-class-name>/<index:06d>.png``.

    Masks go to ``out_dir/masks.npz`` (key ``"<class dir>/<index:06d>"``, bool
    [H, W]) and a ``manifest.json`` describes the set; the class folders hold
    only images, so ``out_dir`` reads as "one sub-folder per class, sorted
    names = class indices".  All class folders are created, even empty ones,
    so folder order always equals class order.  Returns ``Path(out_dir)``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for label in range(NUM_CLASSES):
        (out / folder_name(label)).mkdir(exist_ok=True)
    masks: dict[str, np.ndarray] = {}
    for i in range(start, start + int(n)):
        img, label, mask = make_sample(i, seed, size)
        key = f"{folder_name(label)}/{i:06d}"
        Image.fromarray(img).save(out / f"{key}.png", optimize=False, compress_level=1)
        masks[key] = mask
    np.savez_compressed(out / MASKS_FILE, **masks)
    manifest = {
        "generator": "xception_core.synthetic",
        "seed": int(seed),
        "size": int(size),
        "start": int(start),
        "n": int(n),
        "classes": list(CLASS_NAMES),
        "folders": [folder_name(c) for c in range(NUM_CLASSES)],
        "layout": "images: <folder>/<index:06d>.png; masks: masks.npz key '<folder>/<index:06d>' (bool HxW)",
    }
    (out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
    return out


def read_folder_masks(directory: str | os.PathLike) -> dict[str, np.ndarray]:
    """Masks written by :func:`write_folder`: ``{"<class dir>/<stem>": bool [H, W]}``.

    Look up an image's mask with ``f"{path.parent.name}/{path.stem}"``.
    Returns ``{}`` when the folder has no ``masks.npz``.
    """
    f = Path(directory) / MASKS_FILE
    if not f.is_file():
        return {}
    with np.load(f) as z:
        return {k: z[k].astype(bool) for k in z.files}
