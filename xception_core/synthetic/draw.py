"""Drawing one generated sample: the object with its class pattern and colours on a cluttered
background, as a function of ``(seed, index)`` alone."""

from __future__ import annotations

import functools
import math

import numpy as np
from PIL import Image, ImageDraw

from .classes import NUM_CLASSES, PALETTE, PATTERNS

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


_PALETTE_LIST = PALETTE.tolist()
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
    colours = PALETTE[2 * scheme : 2 * scheme + 2] + rng.normal(0.0, 6.0, (2, 3)).astype(np.float32)
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



def check_args(index: int, seed: int, size: int) -> None:
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
    check_args(index, seed, size)
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
