"""PNG rendering of maps, heatmaps, overlays and labelled montages.

Deterministic (the same input gives the same bytes) and fast: colour maps are
256-entry lookup tables taken once from matplotlib, images are encoded with
Pillow. Only the curated colour maps of :func:`colormap_names` are allowed,
so a client-supplied name can be validated against that list.

Arrays may be NumPy arrays or torch tensors (moved to the CPU).
"""

from __future__ import annotations

import io
from functools import lru_cache
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "COLORMAPS",
    "SIGNS",
    "RenderError",
    "colorize",
    "colormap_names",
    "heatmap_png",
    "montage_png",
    "overlay_png",
    "to_png",
]

COLORMAPS: tuple[str, ...] = (
    "viridis",
    "magma",
    "inferno",
    "plasma",
    "cividis",
    "gray",
    "jet",
    "turbo",
    "RdBu_r",
    "seismic",
    "coolwarm",
)
#: Diverging maps: zero sits in the middle of the colour range.
DIVERGING: frozenset[str] = frozenset({"RdBu_r", "seismic", "coolwarm"})
SIGNS: tuple[str, ...] = ("positive", "negative", "absolute", "all")
Sign = Literal["positive", "negative", "absolute", "all"]

MAX_OUTPUT_PIXELS = 4096 * 4096


class RenderError(ValueError):
    """A bad rendering argument (unknown colour map, sign, shape, size...)."""


def colormap_names() -> list[str]:
    """The colour maps this module accepts."""
    return list(COLORMAPS)


def _check_colormap(name: str) -> str:
    if name not in COLORMAPS:
        raise RenderError(f"unknown colormap {name!r}; colormaps are {', '.join(COLORMAPS)}")
    return name


@lru_cache(maxsize=None)
def _lut(name: str) -> np.ndarray:
    """``[256, 3]`` uint8 lookup table of matplotlib colour map ``name``."""
    _check_colormap(name)
    try:
        import matplotlib
    except ImportError as e:  # pragma: no cover - matplotlib is a declared dependency
        raise RenderError("rendering needs matplotlib (pip install matplotlib)") from e
    cmap = matplotlib.colormaps[name].resampled(256)
    rgba = cmap(np.linspace(0.0, 1.0, 256))
    lut = np.round(rgba[:, :3] * 255).astype(np.uint8)
    lut.setflags(write=False)
    return lut


def _to_numpy(a: Any) -> np.ndarray:
    if hasattr(a, "detach") and hasattr(a, "cpu"):  # torch tensor, without importing torch
        a = a.detach().float().cpu().numpy()
    return np.asarray(a, dtype=np.float32)


def _as_2d(a: Any, what: str = "array") -> np.ndarray:
    arr = _to_numpy(a)
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise RenderError(f"{what} must be a non-empty 2-D array, got shape {arr.shape}")
    return arr


def _unit(arr: np.ndarray, vmin: float | None, vmax: float | None) -> np.ndarray:
    """``arr`` scaled to [0, 1] between vmin and vmax (defaults: finite min / max)."""
    finite = np.isfinite(arr)
    if vmin is None:
        vmin = float(arr[finite].min()) if finite.any() else 0.0
    if vmax is None:
        vmax = float(arr[finite].max()) if finite.any() else 1.0
    span = vmax - vmin
    out = np.where(finite, arr, vmin).astype(np.float32)
    if span <= 0 or not np.isfinite(span):
        return np.zeros_like(out)
    return np.clip((out - vmin) / span, 0.0, 1.0)


def _apply(unit: np.ndarray, colormap: str) -> np.ndarray:
    idx = np.round(unit * 255).astype(np.uint8)
    return _lut(colormap)[idx]


def colorize(array2d: Any, colormap: str = "viridis", vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """``[H, W, 3]`` uint8 RGB: ``array2d`` scaled to [vmin, vmax] through ``colormap``."""
    _check_colormap(colormap)
    return _apply(_unit(_as_2d(array2d), vmin, vmax), colormap)


def _encode(rgb: np.ndarray) -> bytes:
    if rgb.shape[0] * rgb.shape[1] > MAX_OUTPUT_PIXELS:
        raise RenderError(f"image of {rgb.shape[1]}x{rgb.shape[0]} pixels is larger than the limit")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), "RGB").save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


def to_png(array2d: Any, colormap: str = "viridis", vmin: float | None = None, vmax: float | None = None) -> bytes:
    """A 2-D array as a PNG of the same size through ``colormap`` (see :func:`colorize`)."""
    return _encode(colorize(array2d, colormap, vmin, vmax))


def _signed(heatmap: np.ndarray, sign: str, clip_percentile: float) -> tuple[np.ndarray, np.ndarray]:
    """(colour position in [0, 1], magnitude in [0, 1]) of a heatmap for ``sign``.

    The scale is the ``clip_percentile`` percentile of the selected magnitudes
    (attribution maps have a few extreme pixels; 100 = the maximum).
    """
    if sign not in SIGNS:
        raise RenderError(f"sign must be one of {', '.join(SIGNS)}; got {sign!r}")
    if not 0 < clip_percentile <= 100:
        raise RenderError("clip_percentile must be in (0, 100]")
    h = np.nan_to_num(heatmap, nan=0.0, posinf=0.0, neginf=0.0)
    if sign == "positive":
        values = np.clip(h, 0, None)
    elif sign == "negative":
        values = np.clip(-h, 0, None)
    else:
        values = np.abs(h)
    nonzero = values[values > 0]
    scale = float(np.percentile(nonzero, clip_percentile)) if nonzero.size else 0.0
    if scale <= 0:
        magnitude = np.zeros_like(values, dtype=np.float32)
    else:
        magnitude = np.clip(values / scale, 0.0, 1.0).astype(np.float32)
    if sign == "all":
        position = (np.sign(h) * magnitude + 1.0) / 2.0
    else:
        position = magnitude
    return position.astype(np.float32), magnitude


def _default_colormap(sign: str) -> str:
    return "RdBu_r" if sign == "all" else "jet"


def heatmap_png(
    heatmap: Any, colormap: str | None = None, sign: Sign = "all", clip_percentile: float = 99.5
) -> bytes:
    """An attribution heatmap ``[H, W]`` as a PNG of the same size.

    ``sign="all"`` centres zero in the colour map (default ``RdBu_r``, red =
    positive evidence), the other modes map 0..max of the positive, negative
    or absolute values (default ``jet``). Values beyond the
    ``clip_percentile`` percentile saturate.
    """
    cmap = _check_colormap(colormap or _default_colormap(sign))
    position, _ = _signed(_as_2d(heatmap, "heatmap"), sign, clip_percentile)
    return _encode(_apply(position, cmap))


def _image_rgb(image: Any) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4) or arr.dtype != np.uint8:
        raise RenderError(f"image must be a PIL image or uint8 [H, W, 3], got {arr.dtype} {arr.shape}")
    return np.ascontiguousarray(arr[:, :, :3])


def _resize_float(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float map to ``(height, width)``."""
    if a.shape == size:
        return a
    img = Image.fromarray(np.ascontiguousarray(a, dtype=np.float32))  # mode "F"
    return np.asarray(img.resize((size[1], size[0]), Image.Resampling.BILINEAR), dtype=np.float32)


def overlay_png(
    image_rgb: Any,
    heatmap: Any,
    sign: Sign = "positive",
    opacity: float = 0.5,
    colormap: str | None = None,
    clip_percentile: float = 99.5,
) -> bytes:
    """The heatmap blended over the image, as a PNG of the image's size.

    ``image_rgb`` is uint8 ``[H, W, 3]`` or a PIL image; the heatmap is resized
    bilinearly to it when its size differs. Each pixel's colour opacity is
    ``opacity`` times the heatmap's normalised magnitude for ``sign`` (see
    :func:`heatmap_png`), so pixels without attribution show the image
    unchanged. Default colour map: ``jet``, or ``RdBu_r`` for ``sign="all"``.
    """
    if not 0.0 <= float(opacity) <= 1.0:
        raise RenderError(f"opacity must be between 0 and 1, got {opacity}")
    cmap = _check_colormap(colormap or _default_colormap(sign))
    rgb = _image_rgb(image_rgb)
    heat = _resize_float(_as_2d(heatmap, "heatmap"), rgb.shape[:2])
    position, magnitude = _signed(heat, sign, clip_percentile)
    colours = _apply(position, cmap).astype(np.float32)
    alpha = (float(opacity) * magnitude)[:, :, None]
    blended = rgb.astype(np.float32) * (1.0 - alpha) + colours * alpha
    return _encode(np.clip(np.round(blended), 0, 255).astype(np.uint8))


@lru_cache(maxsize=1)
def _font() -> Any:
    return ImageFont.load_default()


def _fit(draw: ImageDraw.ImageDraw, text: str, width: int, font: Any) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "..", font=font) > width:
        text = text[:-1]
    return text + ".." if text else ""


def montage_png(
    maps: Any,
    labels: list[str] | None = None,
    colormap: str = "viridis",
    normalize: Literal["channel", "layer"] = "channel",
    tile_px: int = 64,
    columns: int | None = None,
    gap: int = 2,
) -> bytes:
    """A labelled grid of ``[k, h, w]`` maps (e.g. the channels of one layer part), as a PNG.

    ``normalize="channel"`` scales each map to its own min..max,
    ``"layer"`` all maps to their common min..max (so tiles compare). Each
    tile is ``tile_px`` wide (height keeps the aspect ratio), upsampled with
    nearest-neighbour so every activation stays a visible block; ``columns``
    defaults to ``ceil(sqrt(k))``. A label (PIL's default font, truncated to the
    tile width) sits under each tile when ``labels`` is given.
    """
    arr = _to_numpy(maps)
    if arr.ndim != 3 or 0 in arr.shape:
        raise RenderError(f"maps must be a non-empty [k, h, w] array, got shape {arr.shape}")
    k, h, w = arr.shape
    if labels is not None and len(labels) != k:
        raise RenderError(f"got {len(labels)} labels for {k} maps")
    if normalize not in ("channel", "layer"):
        raise RenderError(f"normalize must be 'channel' or 'layer', got {normalize!r}")
    if not 8 <= int(tile_px) <= 512:
        raise RenderError(f"tile_px must be between 8 and 512, got {tile_px}")
    cols = int(columns) if columns is not None else int(np.ceil(np.sqrt(k)))
    if not 1 <= cols <= 64:
        raise RenderError(f"columns must be between 1 and 64, got {columns}")
    if not 0 <= int(gap) <= 16:
        raise RenderError(f"gap must be between 0 and 16, got {gap}")
    cmap = _check_colormap(colormap)
    cols = min(cols, k)
    rows = -(-k // cols)
    tile_w = int(tile_px)
    tile_h = max(1, round(tile_px * h / w))
    font = _font()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_h = 0
    if labels is not None:
        top, bottom = probe.textbbox((0, 0), "Ag01", font=font)[1::2]
        label_h = int(bottom - top) + 4
    cell_w, cell_h = tile_w + gap, tile_h + label_h + gap
    width, height = cols * cell_w + gap, rows * cell_h + gap
    if width * height > MAX_OUTPUT_PIXELS:
        raise RenderError(f"montage of {width}x{height} pixels is larger than the limit; use fewer maps or smaller tiles")

    if normalize == "layer":
        finite = arr[np.isfinite(arr)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        units = [_unit(m, lo, hi) for m in arr]
    else:
        units = [_unit(m, None, None) for m in arr]

    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, unit in enumerate(units):
        r, c = divmod(i, cols)
        x0, y0 = gap + c * cell_w, gap + r * cell_h
        tile = Image.fromarray(_apply(unit, cmap), "RGB").resize((tile_w, tile_h), Image.Resampling.NEAREST)
        canvas.paste(tile, (x0, y0))
        if labels is not None:
            text = _fit(draw, str(labels[i]), tile_w, font)
            draw.text((x0, y0 + tile_h + 1), text, fill=(0, 0, 0), font=font)
    buf = io.BytesIO()
    canvas.save(buf, format="PNG", compress_level=3)
    return buf.getvalue()
