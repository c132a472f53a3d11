"""How results leave the service: NPY and NPZ arrays, PNG tiles, base64, JSON-safe numbers.

A JSON answer is a dict of plain values (:func:`finite` keeps NaN and infinities out, as JSON
has none); a binary one is a :class:`BinaryResult`: the bytes, their media type and the facts
that describe them, which the router sends as ``X-`` headers.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from xception_core import render


@dataclass(frozen=True)
class BinaryResult:
    """A non-JSON answer (PNG, NPY, NPZ).

    ``image_id`` and ``model`` say what it was computed from; ``facts`` add what a client needs
    to read it (``{"shape": "4,10,10", "cache": "hit"}``); ``filename``, when set, offers the
    bytes as a download. :func:`api.routers.common.binary` turns them into headers.
    """

    body: bytes
    media_type: str
    image_id: str
    model: str
    facts: Mapping[str, str] = field(default_factory=dict)
    filename: str | None = None


def b64png(data: bytes) -> str:
    """PNG bytes as the base64 text JSON answers carry."""
    return base64.b64encode(data).decode("ascii")


def finite(value: Any) -> Any:
    """JSON-safe number: non-finite floats become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def npy_bytes(array: np.ndarray) -> bytes:
    """One array as an ``.npy`` file (no pickles)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    """Named arrays as an (uncompressed) ``.npz`` file."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def tile_png(array2d: np.ndarray, tile_px: int, colormap: str, vmin: float | None, vmax: float | None) -> bytes:
    """One map as a PNG ``tile_px`` wide (nearest-neighbour, so each activation is a block)."""
    h, w = array2d.shape
    th = max(1, round(tile_px * h / w))
    rows = np.minimum(np.arange(th) * h // th, h - 1)
    cols = np.minimum(np.arange(tile_px) * w // tile_px, w - 1)
    return render.to_png(array2d[rows][:, cols], colormap, vmin, vmax)


def rgb_png(pixels: np.ndarray, side: int | None = None) -> bytes:
    """An RGB image ``[H, W, 3]`` uint8 as PNG bytes, its longer side scaled to ``side`` when given
    (nearest-neighbour when enlarging, so that small crops stay sharp)."""
    image = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8), "RGB")
    if side is not None and max(image.size) != side:
        scale = side / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        resample = Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS
        image = image.resize(size, resample)
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def joined(values: Any) -> str:
    """A list of numbers (channel indices, a shape) as a header value: ``0,5,17``."""
    return ",".join(map(str, values))
