"""Class names: the bundled ImageNet-1k list and user-supplied label files.

``data/imagenet_classes.txt`` holds the 1000 ImageNet-1k class names in the
standard index order (sorted WordNet ids, the order of Keras, torchvision and
timm), one per line, each the first lemma of its synset ("tench", "goldfish",
..., "toilet tissue").  It was generated once from timm's bundled
``imagenet_synsets.txt`` / ``imagenet_synset_to_lemma.txt``; runtime code does
not import timm.

Two names occur twice in that standard list -- "crane" (134, the bird; 517,
the machine) and "maillot" (638, 639) -- so the class *index* is the identity
of a class; the name is for display.
"""

from __future__ import annotations

import functools
import os
from importlib import resources

__all__ = [
    "IMAGENET_NUM_CLASSES",
    "LabelsFileError",
    "imagenet_class_names",
    "load_class_names",
    "parse_class_names",
]

IMAGENET_NUM_CLASSES = 1000
_IMAGENET_RESOURCE = "data/imagenet_classes.txt"


class LabelsFileError(ValueError):
    """A labels file is unreadable or malformed; the message says where and how to fix it."""


def parse_class_names(
    text: str, *, source: str = "labels", expected: int | None = None
) -> list[str]:
    """Parse one class name per line.

    Surrounding whitespace is stripped from each name; a single trailing newline
    at the end of the file is allowed, a UTF-8 BOM is ignored.  Blank lines are
    rejected (they would silently shift every later index by one), as is an
    empty file, and -- when ``expected`` is given -- a count other than
    ``expected``.
    """
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = text.splitlines()
    # Allow trailing blank lines only at the very end (editors add them), never inside.
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise LabelsFileError(f"{source}: no class names found; put one class name per line")
    names: list[str] = []
    for lineno, line in enumerate(lines, start=1):
        name = line.strip()
        if not name:
            raise LabelsFileError(
                f"{source}: line {lineno} is blank; every line must hold one class name "
                f"(line N is class index N-1), so remove the blank line or name the class"
            )
        names.append(name)
    if expected is not None and len(names) != expected:
        raise LabelsFileError(
            f"{source}: found {len(names)} class names but the model has {expected} classes; "
            f"give exactly one name per class, one per line"
        )
    return names


def load_class_names(path: str | os.PathLike[str], *, expected: int | None = None) -> list[str]:
    """Read a user-supplied labels file (UTF-8, one class name per line, line N = class N-1).

    Raises :class:`LabelsFileError` (a ``ValueError``) with a message that names the
    file and the problem: missing or unreadable file, not UTF-8, blank lines, no names,
    or -- with ``expected`` -- the wrong number of names.
    """
    source = os.fspath(path)
    try:
        with open(source, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        raise LabelsFileError(f"{source}: labels file not found") from None
    except IsADirectoryError:
        raise LabelsFileError(f"{source}: is a directory; give a text file with one class name per line") from None
    except OSError as exc:
        raise LabelsFileError(f"{source}: cannot read labels file ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LabelsFileError(
            f"{source}: not UTF-8 text (bad byte at offset {exc.start}); save the labels file as UTF-8"
        ) from None
    return parse_class_names(text, source=source, expected=expected)


@functools.lru_cache(maxsize=1)
def _imagenet_class_names() -> tuple[str, ...]:
    text = resources.files("xception_core").joinpath(_IMAGENET_RESOURCE).read_text(encoding="utf-8")
    names = parse_class_names(
        text, source=f"xception_core/{_IMAGENET_RESOURCE}", expected=IMAGENET_NUM_CLASSES
    )
    return tuple(names)


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names in index order (read once, then cached).

    Returns a new list on each call, so callers may modify it freely.
    """
    return list(_imagenet_class_names())
