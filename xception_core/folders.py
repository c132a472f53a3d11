"""Image folders laid out one sub-folder per class (sorted names = class indices).

The layout of ``torchvision.datasets.ImageFolder``, of the ``eval`` command and of the
generated dataset (:func:`xception_core.synthetic.write_folder`): the class is the
position of the sub-folder among the sorted names of the (non-hidden) sub-folders;
images are files with an image extension, sorted by name within each class; hidden
files, ``*.mask.png`` object masks and files at the top level (``masks.npz``,
``manifest.json``) are not samples.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["IMAGE_EXTENSIONS", "is_image_file", "list_class_folder"]

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif")


def is_image_file(name: str) -> bool:
    """A sample of an image folder: an image extension, not hidden, not a ``*.mask.png`` object mask."""
    low = name.lower()
    return (
        not name.startswith(".")
        and low.endswith(IMAGE_EXTENSIONS)
        and not low.endswith(".mask.png")  # tolerate masks written next to images by other tools
    )


def list_class_folder(root: str | os.PathLike) -> tuple[list[str], list[tuple[Path, int]]]:
    """Class names (sorted sub-folder names) and ``[(image path, class index)]`` of ``root``.

    Raises ``FileNotFoundError`` with what to fix when ``root`` is not a folder, has no
    class sub-folders or no images in them.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder; expected one sub-folder per class")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise FileNotFoundError(f"{root} has no class sub-folders")
    samples: list[tuple[Path, int]] = []
    for index, name in enumerate(classes):
        for entry in sorted(os.listdir(root / name)):
            path = root / name / entry
            if is_image_file(entry) and path.is_file():
                samples.append((path, index))
    if not samples:
        raise FileNotFoundError(f"{root} has class folders but no images")
    return classes, samples
