"""Generated "pattern x colour" dataset for testing the Xception hypothesis.

Every class is a pair (spatial pattern, colour scheme).  The classes can only be
told apart by using *both*

* spatial structure -- the pattern (horizontal stripes, vertical stripes,
  checkerboard, rings, dots), which a per-channel (depthwise) 3x3 filter bank
  sees, and
* colour relations across channels -- the scheme, a pair of colours, which a
  1x1 (pointwise) cross-channel mix sees.

Design choices that make the two cues necessary
-----------------------------------------------
* Full cross product: every pattern occurs with every colour scheme, so the
  colours say nothing about the pattern and vice versa.
* All patterns cover 50 % of the object with each of the two colours, so the
  mean colour of an object depends only on its scheme, never on its pattern.
* Luminance-matched palettes: the first ("dark") colour of every scheme has the
  same Rec.601 luma (``0.299 R + 0.587 G + 0.114 B`` = 80, what
  ``PIL.Image.convert("L")`` computes) and the second ("light") colour has luma
  185.  A greyscale image therefore shows the pattern (dark/light alternation)
  but cannot tell the schemes apart.
* Clutter: a smooth random-colour background, solid shapes and lines whose
  colours are drawn independently of the class (a third of them use palette
  colours of *any* scheme, so "there is red in the image" is no evidence), and
  -- in half of the images -- a smaller grey-toned patch carrying one of the
  five patterns.  Solid clutter never forms a pattern, and the patterned
  distractor is grey (no palette colour is grey), so the class is defined only
  by the conjunction "this pattern drawn in these two colours".

Each image holds one object: a region (ellipse, rotated rectangle or convex
polygon with 4-8 corners, aspect ratio 0.6-1) whose circumscribing circle has
a diameter of 30-70 % of the image side, entirely inside the image at a random
position, filled with the class pattern at random phase, period and
orientation (within the class range: horizontal stripes stay within +-20
degrees of horizontal, vertical stripes within +-20 degrees of vertical;
checkerboards and dot grids take any orientation; rings are centred near the
object's centre).  The pattern period (one dark + one light band) is 12-22 %
of the object's diameter and at least ``size / 18`` pixels (7 px at 128 px).
Edges of the pattern are anti-aliased over about one pixel.  The object is
drawn last, so its boolean mask is exactly the pixels carrying the pattern.
A per-image jitter of the two colours (sigma 6 per channel) and mild noise
(sigma 2-6) finish the image.

Geometry scales with ``size``; at 64 px the smallest periods are 3.6 px, too
fine to survive Xception's stem, so generate at 128 px (the default) -- or at
least 96 px -- and train at that size.

Augmentation note for trainers: horizontal and vertical flips preserve every
label; 90-degree rotations and transposes do NOT (they swap horizontal and
vertical stripes); rotations of more than ~20 degrees blur that distinction;
crops may cut the object away (it is never cut by the image border here);
heavy colour jitter / hue shifts / greyscale conversion destroy the colour cue.

Measured figures (128 px; tests/test_synthetic.py, benchmarks/bench_synthetic.py)
--------------------------------------------------------------------------------
Chance is 1/20.  Trained on 1200 images, tested on 600 fresh ones (best of
logistic regression and nearest centroid): mean RGB 7 %, mean + std RGB 12 %,
a 64-bin RGB histogram 16 % (it finds the scheme 89 % of the time, the
pattern at chance); greyscale luma + gradient-orientation histograms 17 %
(pattern 68 %, scheme at chance).  Generation: about 700-1000 images per
second on one core of the 2-core development machine.

Determinism
-----------
Sample ``i`` of seed ``s`` depends only on ``(s, i)`` (its random generator is
``numpy.random.default_rng(SeedSequence([s, i]))``); its label is
``i % NUM_CLASSES`` so any contiguous range of indices is balanced.  Use
different seeds for training and test data.  Bit-exact images across machines
assume the same numpy and Pillow versions (shapes are rasterised by Pillow,
float32 ``sin`` may differ by an ulp between CPU kernels); the class content
of an index never changes.

Folder layout written by :func:`write_folder`
---------------------------------------------
::

    out_dir/
      00-red-cyan-horizontal-stripes/000000.png   (RGB images only)
      01-red-cyan-vertical-stripes/000001.png
      ...
      masks.npz        one bool [H, W] array per image, key "<class dir>/<stem>"
      manifest.json    seed, size, n, class names, layout description

The class folders hold only images, so any "one sub-folder per class, sorted
names = class indices" reader (``torchvision.datasets.ImageFolder``, the
``eval`` command via :func:`xception_core.folders.list_class_folder`) reads the folder correctly;
the masks and the manifest are plain files at the top level, which such
readers ignore.  :func:`read_folder_masks` loads the masks back.
"""

from __future__ import annotations

import functools
import json
import math
import os
from pathlib import Path
from types import MappingProxyType
from typing import Callable, Mapping

import numpy as np

__all__ = [
    "PATTERNS",
    "COLOUR_SCHEMES",
    "CLASS_NAMES",
    "NUM_CLASSES",
    "DARK_LUMA",
    "LIGHT_LUMA",
    "class_name",
    "class_factors",
    "class_index",
    "folder_name",
    "make_sample",
    "generate",
    "SyntheticDataset",
    "write_folder",
    "read_folder_masks",
    "to_tensor",
    "MASKS_FILE",
    "MANIFEST_FILE",
]

# --------------------------------------------------------------------------
# Classes
# --------------------------------------------------------------------------

PATTERNS: tuple[str, ...] = (
    "horizontal stripes",
    "vertical stripes",
    "checkerboard",
    "rings",
    "dots",
)

#: Rec.601 luma of the first and second colour of every scheme.
DARK_LUMA = 80.0
LIGHT_LUMA = 185.0

_LUMA = np.array([0.299, 0.587, 0.114])


#: Palette colours keep every channel inside this range, so that colour jitter
#: and noise are (almost) never clipped -- clipping would shift the mean luma
#: of a colour by a scheme-dependent amount and leak the scheme into greyscale.
_CHANNEL_RANGE = (24.0, 231.0)


def _at_luma(rgb: tuple[float, float, float], luma: float) -> tuple[int, int, int]:
    """A colour of (about) the hue of ``rgb`` with the given Rec.601 luma.

    The hue is first squeezed into ``_CHANNEL_RANGE``, then scaled towards the
    low end of the range or mixed towards the high end, whichever reaches
    ``luma``.
    """
    lo, hi = _CHANNEL_RANGE
    c = np.asarray(rgb, dtype=np.float64) / 255.0  # 0..1
    target = (luma - lo) / (hi - lo)  # luma of c in 0..1 units (the weights sum to 1)
    y = float(_LUMA @ c)
    if y >= target:
        c = c * (target / y)
    else:
        t = (target - y) / (1.0 - y)
        c = c + t * (1.0 - c)
    out = np.round(lo + (hi - lo) * c).astype(int)
    return int(out[0]), int(out[1]), int(out[2])


#: name -> (dark colour, light colour); dark colours all have luma DARK_LUMA,
#: light colours all have luma LIGHT_LUMA (to within rounding, +-0.5); every
#: channel lies in 24..231.
COLOUR_SCHEMES: Mapping[str, tuple[tuple[int, int, int], tuple[int, int, int]]] = MappingProxyType({
    "red-cyan": (_at_luma((255, 0, 0), DARK_LUMA), _at_luma((0, 255, 255), LIGHT_LUMA)),
    "blue-yellow": (_at_luma((0, 0, 255), DARK_LUMA), _at_luma((255, 255, 0), LIGHT_LUMA)),
    "magenta-green": (_at_luma((255, 0, 255), DARK_LUMA), _at_luma((0, 255, 0), LIGHT_LUMA)),
    "teal-pink": (_at_luma((0, 255, 255), DARK_LUMA), _at_luma((255, 0, 160), LIGHT_LUMA)),
})
_SCHEME_NAMES: tuple[str, ...] = tuple(COLOUR_SCHEMES)
_PALETTE = np.array(
    [c for pair in COLOUR_SCHEMES.values() for c in pair], dtype=np.float32
)  # [2 * n_schemes, 3]

#: Class index = scheme_index * len(PATTERNS) + pattern_index.
CLASS_NAMES: tuple[str, ...] = tuple(
    f"{scheme} {pattern}" for scheme in _SCHEME_NAMES for pattern in PATTERNS
)
NUM_CLASSES: int = len(CLASS_NAMES)


def class_factors(label: int) -> tuple[str, str]:
    """``(pattern, colour scheme)`` of a class index."""
    if not 0 <= label < NUM_CLASSES:
        raise IndexError(f"class index {label} out of range [0, {NUM_CLASSES})")
    scheme, pattern = divmod(int(label), len(PATTERNS))
    return PATTERNS[pattern], _SCHEME_NAMES[scheme]


def class_index(pattern: str, scheme: str) -> int:
    """Inverse of :func:`class_factors`."""
    return _SCHEME_NAMES.index(scheme) * len(PATTERNS) + PATTERNS.index(pattern)


def class_name(label: int) -> str:
    return CLASS_NAMES[label]


def folder_name(label: int) -> str:
    """Sub-folder name of a class, e.g. ``"03-red-cyan-rings"`` (sorted = index)."""
    return f"{label:02d}-" + CLASS_NAMES[label].replace(" ", "-")


# --------------------------------------------------------------------------
# Rendering helpers (all vectorised over pixels; float32 images in 0..255)
# --------------------------------------------------------------------------

_STRIPE_JITTER = math.radians(20.0)  # stripes stay within +-20 deg of their axis
_DISTRACTOR_P = 0.5
_PALETTE_CLUTTER_P = 1.0 / 3.0


@functools.lru_cache(maxsize=8)
def _noise_bank(size: int) -> np.ndarray:
    """Fixed standard-normal field [2*size, 2*size, 3]; samples crop it at a random offset.

    Drawing 50k normals per image would cost more than the rest of the image;
    a random crop (plus flips) of a fixed field is as good for "mild noise".
    """
    rng = np.random.default_rng(np.random.SeedSequence([0x5EED, size]))
    bank = rng.standard_normal((2 * size, 2 * size, 3), dtype=np.float32)
    bank.setflags(write=False)
    return bank


@functools.lru_cache(maxsize=8)
def _coords(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates: ys [size, 1], xs [1, size] (float32)."""
    r = np.arange(size, dtype=np.float32)
    ys, xs = r[:, None].copy(), r[None, :].copy()
    ys.setflags(write=False)
    xs.setflags(write=False)
    return ys, xs


@functools.lru_cache(maxsize=64)
def _interp(size: int, nodes: int) -> tuple[tuple[int, ...], np.ndarray]:
    """Smoothstep interpolation from ``nodes`` evenly spread nodes to ``size`` pixels.

    Returns (pixel index where each of the ``nodes - 1`` intervals starts, plus
    ``size`` at the end; weight of the right node at every pixel, float32 [size]).
    """
    pos = np.linspace(0.0, nodes - 1.0, size)
    left = np.minimum(np.floor(pos).astype(np.intp), nodes - 2)
    t = (pos - left).astype(np.float32)
    t = t * t * (3.0 - 2.0 * t)  # smoothstep: no visible creases at the nodes
    t.setflags(write=False)
    starts = tuple(int(np.searchsorted(left, j)) for j in range(nodes - 1)) + (size,)
    return starts, t


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth random colour field: a coarse random colour grid, smoothly interpolated.

    Element-wise numpy only (no BLAS: a threaded BLAS on a busy machine costs
    more than the whole image).
    """
    gh, gw = (int(v) for v in rng.integers(2, 6, size=2))
    grid = rng.uniform(0.0, 255.0, size=(gh, gw, 3)).astype(np.float32)
    # desaturate a little at random so backgrounds vary in colourfulness
    grey = grid.mean(axis=2, keepdims=True)
    grid = grey + (grid - grey) * np.float32(rng.uniform(0.4, 1.0))
    xs, tx = _interp(size, gw)
    ys, ty = _interp(size, gh)
    cols = np.empty((gh, size, 3), dtype=np.float32)  # interpolate along x on the coarse rows
    for j in range(gw - 1):
        a, b = xs[j], xs[j + 1]
        cols[:, a:b] = grid[:, j, None] + (grid[:, j + 1] - grid[:, j])[:, None] * tx[None, a:b, None]
    out = np.empty((size, size, 3), dtype=np.float32)
    for i in range(gh - 1):
        a, b = ys[i], ys[i + 1]
        out[a:b] = cols[i] + (cols[i + 1] - cols[i]) * ty[a:b, None, None]
    return out


_PALETTE_LIST = _PALETTE.tolist()
_UNIT_CIRCLE = np.stack(
    [np.cos(np.linspace(0.0, 2.0 * math.pi, 40, endpoint=False)),
     np.sin(np.linspace(0.0, 2.0 * math.pi, 40, endpoint=False))]
)  # [2, 40]: an ellipse is drawn as a 40-gon
_RECT_U = np.array([1.0, -1.0, -1.0, 1.0])
_RECT_V = np.array([1.0, 1.0, -1.0, -1.0])
_N_SHAPE_U = 13  # uniforms consumed by one _shape_outline call


def _clutter_colour(u: np.ndarray) -> tuple[int, int, int]:
    """Class-independent clutter colour from 5 uniforms.

    A palette colour of any scheme (probability 1/3, +-10 jitter) or uniform RGB.
    """
    u0, u1, r, g, b = u.tolist()
    if u0 < _PALETTE_CLUTTER_P:
        pr, pg, pb = _PALETTE_LIST[int(u1 * len(_PALETTE_LIST))]
        r, g, b = pr + (r - 0.5) * 20.0, pg + (g - 0.5) * 20.0, pb + (b - 0.5) * 20.0
    else:
        r, g, b = r * 255.0, g * 255.0, b * 255.0
    return (min(255, max(0, int(r + 0.5))), min(255, max(0, int(g + 0.5))), min(255, max(0, int(b + 0.5))))


def _shape_outline(u: np.ndarray, cy: float, cx: float, radius: float) -> list[float]:
    """Vertices ``[x0, y0, x1, y1, ...]`` of a random shape inside the circle (cx, cy, radius).

    ``u``: ``_N_SHAPE_U`` uniforms.  Kind: ellipse, rotated rectangle or convex
    polygon (4-8 vertices), 1/3 each; aspect ratio 0.6-1; any orientation.
    """
    kind = int(u[0] * 3)
    theta = u[1] * math.pi
    aspect = 0.6 + 0.4 * u[2]
    if kind == 0:
        pu, pv = radius * _UNIT_CIRCLE[0], (radius * aspect) * _UNIT_CIRCLE[1]
    elif kind == 1:  # rectangle inscribed in the circle
        phi = math.atan(aspect)
        pu, pv = (radius * math.cos(phi)) * _RECT_U, (radius * math.sin(phi)) * _RECT_V
    else:  # convex polygon: vertices at jittered, roughly even angles on an ellipse
        k = 4 + int(u[3] * 5)
        ang = (np.arange(k) + (u[5 : 5 + k] - 0.5) * 0.6) * (2.0 * math.pi / k)
        pu, pv = radius * np.cos(ang), (radius * aspect) * np.sin(ang)
    c, s = math.cos(theta), math.sin(theta)
    out = np.empty(2 * len(pu))
    out[0::2] = cx + c * pu - s * pv
    out[1::2] = cy + s * pu + c * pv
    return out.tolist()


def _bbox(cy: float, cx: float, r: float, size: int) -> tuple[int, int, int, int]:
    y0 = max(0, int(math.floor(cy - r)) - 1)
    y1 = min(size, int(math.ceil(cy + r)) + 2)
    x0 = max(0, int(math.floor(cx - r)) - 1)
    x1 = min(size, int(math.ceil(cx + r)) + 2)
    return y0, y1, x0, x1


def _local(size: int, cy: float, cx: float, box: tuple[int, int, int, int]):
    """Offsets from (cy, cx) of the pixels of ``box``: dy [h, 1], dx [1, w] (float32)."""
    ys, xs = _coords(size)
    y0, y1, x0, x1 = box
    return ys[y0:y1] - np.float32(cy), xs[:, x0:x1] - np.float32(cx)


def _rotate(dy: np.ndarray, dx: np.ndarray, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates (u along the rotated x axis, v along the rotated y axis)."""
    c, s = np.float32(math.cos(theta)), np.float32(math.sin(theta))
    return dx * c + dy * s, dy * c - dx * s


def _pattern_alpha(rng: np.random.Generator, pattern: int, dy, dx, period: float, ring_offset: float) -> np.ndarray:
    """Share (0..1) of the first colour at every pixel; ~1 px anti-aliased edges.

    Every pattern covers half of the plane with each colour.  ``period`` is the
    full cycle in pixels (two stripes; two checker squares; the dot pitch).
    """
    p = np.float32(period)
    k = np.float32(period / (2.0 * math.pi))  # sin(2 pi d / p) * p / (2 pi) ~ d (pixels)
    w = np.float32(2.0 * math.pi / period)
    half = np.float32(0.5)
    if pattern == 0 or pattern == 1:  # horizontal / vertical stripes, +-20 degrees
        theta = rng.uniform(-_STRIPE_JITTER, _STRIPE_JITTER)
        u, v = _rotate(dy, dx, theta)
        coord = v if pattern == 0 else u
        f = np.sin(coord * w + np.float32(rng.uniform(0, 2 * math.pi)))
    elif pattern == 2:  # checkerboard, any orientation, squares of side p/2
        u, v = _rotate(dy, dx, rng.uniform(0.0, math.pi / 2))
        ph = rng.uniform(0, 2 * math.pi, 2).astype(np.float32)
        sa, sb = np.sin(u * w + ph[0]), np.sin(v * w + ph[1])
        # signed distance to the nearest edge ~ the smaller of the two stripe distances
        f = np.minimum(np.abs(sa), np.abs(sb))
        f = np.copysign(f, sa * sb, out=f)
    elif pattern == 3:  # concentric rings around a point near the object centre
        a = rng.uniform(0.0, 2.0 * math.pi)
        oy = np.float32(ring_offset * math.sin(a))
        ox = np.float32(ring_offset * math.cos(a))
        r = np.sqrt((dy - oy) ** 2 + (dx - ox) ** 2)
        f = np.sin(r * w + np.float32(rng.uniform(0, 2 * math.pi)))
    elif pattern == 4:  # square grid of discs, pitch p, radius 0.4 p (pi * 0.16 ~ 50 % cover)
        u, v = _rotate(dy, dx, rng.uniform(0.0, math.pi / 2))
        ph = rng.random(2).astype(np.float32)
        a = np.mod(u / p + ph[0], np.float32(1.0)) - half
        b = np.mod(v / p + ph[1], np.float32(1.0)) - half
        d = np.sqrt(a * a + b * b) * p
        return np.clip(np.float32(0.5 + 0.4 * period) - d, 0.0, 1.0)
    else:
        raise ValueError(pattern)
    f *= k
    f += half
    return np.clip(f, 0.0, 1.0, out=f)


def _fill_pattern(img: np.ndarray, region: np.ndarray, box, alpha: np.ndarray, ca, cb) -> None:
    """Pixels of ``img[box]`` where ``region`` holds get ``cb + (ca - cb) * alpha`` (in place)."""
    y0, y1, x0, x1 = box
    sub = img[y0:y1, x0:x1]
    # sub += region * (fill - sub): plain arithmetic beats a broadcast ``where``
    fill = alpha[..., None] * (ca - cb)
    fill += cb
    fill -= sub
    fill *= region[..., None]
    sub += fill


def _render(rng: np.random.Generator, label: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image, ImageDraw

    bg = _background(rng, size)
    bg += np.float32(0.5)  # round on the truncating cast
    canvas = Image.fromarray(bg.astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    layer = Image.new("L", (size, size), 0)  # 1 = distractor, 2 = object
    draw_layer = ImageDraw.Draw(layer)
    scale = size / 128.0

    # solid clutter shapes, then lines, painted straight onto the canvas
    n_shapes = int(rng.integers(3, 9))
    n_lines = int(rng.integers(1, 5))
    params = rng.random((n_shapes + n_lines, 9 + _N_SHAPE_U))
    for j in range(n_shapes + n_lines):
        u = params[j]
        colour = _clutter_colour(u[:5])
        if j < n_shapes:
            r = (0.05 + 0.13 * u[5]) * size
            draw.polygon(_shape_outline(u[9:], u[6] * size, u[7] * size, r), fill=colour)
        else:
            width = max(1, int(round((1.0 + 3.0 * u[5]) * scale)))
            draw.line((u[6:10] * size).tolist(), fill=colour, width=width)

    # grey patterned distractor (never a class: no palette colour is grey)
    distractor = None
    if rng.random() < _DISTRACTOR_P:
        r = rng.uniform(0.06, 0.13) * size
        cy, cx = rng.uniform(r, size - r, 2)
        draw_layer.polygon(_shape_outline(rng.random(_N_SHAPE_U), cy, cx, r), fill=1)
        distractor = (cy, cx, r)

    # the object, drawn last (on top): its pixels in the layer are the mask
    scheme, pattern = divmod(label, len(PATTERNS))
    extent = rng.uniform(0.30, 0.70) * size  # diameter of the circumscribing circle
    r_obj = extent / 2.0
    cy_obj, cx_obj = rng.uniform(r_obj, size - r_obj, 2)
    draw_layer.polygon(_shape_outline(rng.random(_N_SHAPE_U), cy_obj, cx_obj, r_obj), fill=2)

    img = np.asarray(canvas, dtype=np.float32)  # a new, writable array
    ids = np.asarray(layer)

    if distractor is not None:
        cy, cx, r = distractor
        box = _bbox(cy, cx, r, size)
        dy, dx = _local(size, cy, cx, box)
        g1 = rng.uniform(20, 235)
        g2 = float(np.clip(g1 + rng.choice([-1, 1]) * rng.uniform(60, 130), 0, 255))
        period = max(size / 18.0, 2 * r * rng.uniform(0.12, 0.22))
        alpha = _pattern_alpha(rng, int(rng.integers(len(PATTERNS))), dy, dx, period, 0.3 * r)
        greys = np.array([g1, g2], np.float32)[:, None] + rng.normal(0, 3, (2, 3)).astype(np.float32)
        y0, y1, x0, x1 = box
        _fill_pattern(img, ids[y0:y1, x0:x1] == 1, box, alpha, greys[0], greys[1])

    box = _bbox(cy_obj, cx_obj, r_obj, size)
    dy, dx = _local(size, cy_obj, cx_obj, box)
    period = max(size / 18.0, extent * rng.uniform(0.12, 0.22))
    alpha = _pattern_alpha(rng, pattern, dy, dx, period, 0.25 * r_obj)
    colours = _PALETTE[2 * scheme : 2 * scheme + 2] + rng.normal(0.0, 6.0, (2, 3)).astype(np.float32)
    if rng.random() < 0.5:  # which colour plays "foreground" (dots; stripe phase)
        colours = colours[::-1]
    y0, y1, x0, x1 = box
    mask = np.zeros((size, size), dtype=bool)  # exactly the pixels the pattern is painted on
    mask[y0:y1, x0:x1] = ids[y0:y1, x0:x1] == 2
    _fill_pattern(img, mask[y0:y1, x0:x1], box, alpha, colours[0], colours[1])

    # mild noise: a random crop of a fixed normal field, random sign/flip, sigma 2-6
    bank = _noise_bank(size)
    oy, ox = (int(v) for v in rng.integers(0, size, 2))
    noise = bank[oy : oy + size, ox : ox + size]
    if rng.random() < 0.5:
        noise = noise[::-1]
    sigma = np.float32(rng.uniform(2.0, 6.0) * (1.0 if rng.random() < 0.5 else -1.0))
    noise = noise * sigma
    noise += np.float32(0.5)  # so that the truncating cast below rounds
    img += noise
    np.clip(img, 0.0, 255.0, out=img)
    return img.astype(np.uint8), mask


# --------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------


def _check(index: int, seed: int, size: int) -> None:
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if size < 32:
        raise ValueError(f"size must be >= 32 pixels, got {size}")


def make_sample(index: int, seed: int, size: int = 128) -> tuple[np.ndarray, int, np.ndarray]:
    """Sample ``index`` of the dataset with ``seed``.

    Returns ``(image uint8 [size, size, 3] RGB, label int, mask bool [size, size])``;
    ``label == index % NUM_CLASSES``, the mask is the object region (where the
    class pattern is drawn).  Depends only on ``(seed, index, size)``.
    """
    index, seed, size = int(index), int(seed), int(size)
    _check(index, seed, size)
    rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
    label = index % NUM_CLASSES
    img, mask = _render(rng, label, size)
    return img, label, mask


def generate(n: int, seed: int, size: int = 128, start: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Samples ``start .. start + n - 1``: ``(images uint8 [n,H,W,3], labels int64 [n], masks bool [n,H,W])``.

    ``generate(n, seed, size)[k][i]`` equals ``make_sample(start + i, seed, size)``;
    labels are balanced (each class occurs ``n // NUM_CLASSES`` or one more times).
    """
    n = int(n)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    labels = np.empty(n, dtype=np.int64)
    masks = np.empty((n, size, size), dtype=bool)
    for i in range(n):
        images[i], labels[i], masks[i] = make_sample(start + i, seed, size)
    return images, labels, masks


def to_tensor(image: np.ndarray):
    """uint8 [H, W, 3] -> float32 torch tensor [3, H, W] in [-1, 1] (mean = std = 0.5)."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).to(torch.float32)
    return t.div_(127.5).sub_(1.0)


try:  # torch is a hard dependency of the package, but keep the generator importable without it
    from torch.utils.data import Dataset as _TorchDataset
except ImportError:  # pragma: no cover
    _TorchDataset = object  # type: ignore[assignment,misc]


class SyntheticDataset(_TorchDataset):
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
        _check(0, seed, size)
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


# --------------------------------------------------------------------------
# Folders
# --------------------------------------------------------------------------

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
    from PIL import Image

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
