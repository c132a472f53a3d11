"""Receptive fields of every part of every separable layer, and crops of an input to them.

Walks the main path of the network (stem convolutions, each part's convolution, the
blocks' max-pools); residual 1x1 convolutions never widen a field beyond the main path.
Coordinates are input pixels, pixel centres at integers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import nn

from .model import ExitTail, Stem, Xception, XceptionBlock

__all__ = ["ReceptiveField", "receptive_fields", "crop_to_field"]


@dataclass(frozen=True)
class ReceptiveField:
    """Unit (y, x) of the map sees input pixels ``centre ± (size - 1) / 2`` per axis,
    ``centre = start + jump * (y or x)``."""

    size: int
    jump: int
    start: float

    def box(self, y: int, x: int, image_size: int) -> tuple[int, int, int, int]:
        """``(top, left, bottom, right)`` of unit (y, x), exclusive bottom/right, clipped."""
        half = (self.size - 1) / 2

        def span(i: int) -> tuple[int, int]:
            centre = self.start + self.jump * i
            lo = int(np.floor(centre - half))
            hi = int(np.ceil(centre + half)) + 1
            return max(0, lo), min(image_size, hi)

        top, bottom = span(y)
        left, right = span(x)
        return top, left, bottom, right

    def to_dict(self) -> dict:
        return {"size": self.size, "jump": self.jump, "start": self.start}


def _step(field: ReceptiveField, kernel: int, stride: int, padding: int) -> ReceptiveField:
    return ReceptiveField(
        size=field.size + (kernel - 1) * field.jump,
        jump=field.jump * stride,
        start=field.start + ((kernel - 1) / 2 - padding) * field.jump,
    )


def _conv(field: ReceptiveField, module: nn.Module) -> ReceptiveField:
    return _step(field, _first(module.kernel_size), _first(module.stride), _first(module.padding))


def _first(value) -> int:
    return int(value[0] if isinstance(value, tuple) else value)


def receptive_fields(model: Xception) -> dict[tuple[str, str], ReceptiveField]:
    """``{(layer, part): field}`` for every part of every separable layer of ``model``."""
    field = ReceptiveField(1, 1, 0.0)
    fields: dict[tuple[str, str], ReceptiveField] = {}
    for _, block in model.blocks():
        if isinstance(block, Stem):
            field = _conv(_conv(field, block.conv1), block.conv2)
            continue
        if not isinstance(block, (XceptionBlock, ExitTail)):
            raise TypeError(f"unknown block type {type(block).__name__}")
        k = 1
        while hasattr(block, f"sep{k}"):
            sep = getattr(block, f"sep{k}")
            for part in sep.parts:
                field = _conv(field, getattr(sep, part))
                fields[(sep.layer_name, part)] = field
            k += 1
        pool = getattr(block, "pool", None)
        if pool is not None:
            field = _step(field, _first(pool.kernel_size), _first(pool.stride), _first(pool.padding))
    return fields


def crop_to_field(pixels: np.ndarray, field: ReceptiveField, y: int, x: int) -> np.ndarray:
    """The part of ``pixels`` ``[S, S, 3]`` (the model's input) that unit (y, x) sees."""
    top, left, bottom, right = field.box(y, x, pixels.shape[0])
    return np.ascontiguousarray(pixels[top:bottom, left:right])
