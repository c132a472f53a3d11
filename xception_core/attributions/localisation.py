"""Localisation: how well a map points at the object, on images whose object is known (masks).

All functions take an attribution map ``[H, W]`` (numpy array or torch tensor,
any float dtype; a leading singleton batch/channel dimension such as
``[1, H, W]`` or ``[1, 1, H, W]`` is accepted and squeezed) and a boolean
object mask ``[H, W]`` of the *same* shape.

Resolution: a coarse map (Grad-CAM at the last convolution of Xception is
only a few pixels wide, e.g. 4x4 for a 128-pixel input) must be brought to the
mask's resolution first, with :func:`upsample_to` (bilinear, as Captum's
``LayerAttribution.interpolate`` does).  The metrics refuse maps whose shape
differs from the mask's instead of resizing silently.

Channel attributions ``[3, H, W]`` (Saliency, Integrated Gradients ...) must
be reduced to one map first -- e.g. ``attr.sum(0)`` (signed evidence) or
``attr.abs().sum(0)`` (magnitude) -- which choice is the caller's.

Metrics
-------
* :func:`positive_mass_in_mask` -- share of the positive attribution that
  falls inside the object ("energy-based pointing game", Score-CAM paper).
* :func:`pointing_game_hit` -- whether the maximum of the map lies on the
  object (Zhang et al., "Top-down neural attention by excitation backprop").
* :func:`mask_area_fraction` -- the object's share of the image: the expected
  value of both metrics above for a map that carries no information
  (uniform positive mass; an argmax at a uniformly random pixel).

Over a model: :func:`attribution_quality` averages them over generated images
(:mod:`xception_core.synthetic`), and compares with a :func:`randomized_copy`
of the model (the model-randomisation sanity check).
"""

from __future__ import annotations

import copy
from typing import Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..synthetic import make_sample, to_tensor
from .attributor import Attributor

ArrayLike = Union[np.ndarray, torch.Tensor]


def _to_numpy(x: ArrayLike, dtype=np.float64) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu")
        if x.dtype == torch.bfloat16 or x.dtype == torch.float16:
            x = x.float()
        x = x.numpy()
    return np.asarray(x, dtype=dtype)


def _squeeze_2d(x: np.ndarray, what: str) -> np.ndarray:
    while x.ndim > 2 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 2:
        raise ValueError(
            f"{what} must be a 2-D map [H, W] (got shape {tuple(x.shape)}); "
            "reduce channel attributions first, e.g. attr.sum(0)"
        )
    return x


def _prepare(attribution: ArrayLike, mask: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    a = _squeeze_2d(_to_numpy(attribution), "attribution")
    m = _squeeze_2d(_to_numpy(mask, dtype=bool), "mask")
    if a.shape != m.shape:
        raise ValueError(
            f"attribution shape {a.shape} differs from mask shape {m.shape}; "
            "upsample the attribution first with upsample_to(attribution, mask.shape)"
        )
    if not np.all(np.isfinite(a)):
        raise ValueError("attribution contains NaN or infinite values")
    return a, m


def positive_mass_in_mask(attribution: ArrayLike, mask: ArrayLike) -> float:
    """Share of the positive attribution mass that lies inside the mask, in [0, 1].

    ``sum(max(a, 0)[mask]) / sum(max(a, 0))``.  Negative values are ignored
    (they are evidence *against* the class).  If the map has no positive value
    at all (all zero or all negative) there is no positive mass to place and
    the function returns ``0.0`` -- such a map pointed at nothing, which
    scores as a miss, never as a success.
    """
    a, m = _prepare(attribution, mask)
    pos = np.maximum(a, 0.0)
    total = float(pos.sum())
    if total <= 0.0:
        return 0.0
    return float(min(1.0, max(0.0, pos[m].sum() / total)))


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation of ``mask`` by a disc of ``radius`` pixels (Euclidean)."""
    if radius <= 0 or not mask.any():
        return mask
    h, w = mask.shape
    out = mask.copy()
    r = int(radius)
    for dy in range(-r, r + 1):
        span = int(np.floor(np.sqrt(r * r - dy * dy)))
        for dx in range(-span, span + 1):
            if dy == 0 and dx == 0:
                continue
            # out[y, x] |= mask[y - dy, x - dx]
            ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
            xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
            out[yd, xd] |= mask[ys, xs]
    return out


def pointing_game_hit(attribution: ArrayLike, mask: ArrayLike, tolerance_px: int = 0) -> bool:
    """Whether the maximum of the map lies inside the mask dilated by ``tolerance_px``.

    Ties: the map counts as a hit when *any* of its maximal pixels is inside
    (so a constant map hits whenever the mask is not empty -- compare against
    :func:`mask_area_fraction`, and prefer maps without plateaus).  The
    original pointing game uses a 15-pixel tolerance at ImageNet resolution;
    the default here is exact.
    """
    if tolerance_px < 0:
        raise ValueError("tolerance_px must be >= 0")
    a, m = _prepare(attribution, mask)
    if not m.any():
        return False
    region = _dilate(m, int(tolerance_px))
    peak = a == a.max()
    return bool(np.any(peak & region))


def mask_area_fraction(mask: ArrayLike) -> float:
    """Fraction of pixels inside the mask: the random baseline of both metrics."""
    m = _squeeze_2d(_to_numpy(mask, dtype=bool), "mask")
    return float(m.mean()) if m.size else 0.0


def upsample_to(attribution: ArrayLike, shape: tuple[int, int]) -> ArrayLike:
    """Bilinearly resize a map ``[h, w]`` (or ``[1, h, w]``, ``[1, 1, h, w]``) to ``shape``.

    Uses ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)``,
    the resize Captum applies to layer attributions.  Returns the same kind
    of object it was given (numpy array -- float32 -- or tensor, on its
    device), always 2-D ``shape``; maps already at ``shape`` are only squeezed,
    not resampled.
    """
    is_tensor = isinstance(attribution, torch.Tensor)
    t = attribution if is_tensor else torch.from_numpy(np.asarray(attribution, dtype=np.float32))
    t = t.detach()
    while t.dim() > 2 and t.shape[0] == 1:
        t = t[0]
    if t.dim() != 2:
        raise ValueError(f"attribution must be a 2-D map, got shape {tuple(t.shape)}")
    shape = (int(shape[0]), int(shape[1]))
    if tuple(t.shape) != shape:
        src_dtype = t.dtype
        t = F.interpolate(t[None, None].float(), size=shape, mode="bilinear", align_corners=False)[0, 0]
        t = t.to(src_dtype) if src_dtype.is_floating_point else t
    if is_tensor:
        return t
    return t.cpu().numpy()


def quality_report(attribution: ArrayLike, mask: ArrayLike, tolerance_px: int = 0) -> dict[str, float | bool]:
    """All figures at once (the map is upsampled to the mask first if it is coarser).

    ``{"positive_mass_in_mask", "pointing_game_hit", "mask_area_fraction"}``.
    """
    m = _squeeze_2d(_to_numpy(mask, dtype=bool), "mask")
    a = attribution
    a_shape = _squeeze_2d(_to_numpy(a), "attribution").shape
    if a_shape != m.shape:
        a = upsample_to(a, m.shape)
    return {
        "positive_mass_in_mask": positive_mass_in_mask(a, m),
        "pointing_game_hit": pointing_game_hit(a, m, tolerance_px),
        "mask_area_fraction": mask_area_fraction(m),
    }


# --------------------------------------------------------------------------
# Attribution quality of a model over generated images with known objects
# --------------------------------------------------------------------------


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two maps (any shape, same size), ties given their mean rank."""
    ra, rb = _ranks(a.detach().flatten().double()), _ranks(b.detach().flatten().double())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = float(ra.norm() * rb.norm())
    if denominator == 0.0:  # a constant map: agreement only with another constant map
        return 1.0 if float(ra.norm()) == float(rb.norm()) else 0.0
    return float((ra * rb).sum()) / denominator


def _ranks(v: torch.Tensor) -> torch.Tensor:
    order = torch.argsort(v, stable=True)
    _, inverse, counts = torch.unique_consecutive(v[order], return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    mean_rank = ends - (counts.double() - 1) / 2  # 1-based mean rank of each run of ties
    ranks = torch.empty_like(v)
    ranks[order] = mean_rank[inverse]
    return ranks


def randomized_copy(model: nn.Module, top_fraction: float = 0.5, seed: int = 0) -> nn.Module:
    """The model-randomisation sanity check (Adebayo et al., 2018), cascading from the top.

    Returns a copy whose last ``top_fraction`` of parameterised modules (the
    classifier first, then backwards through the exit and middle flows) are
    re-initialised; a faithful attribution changes when they do.
    """
    clone = copy.deepcopy(model)
    modules = [m for m in clone.modules() if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d))]
    count = max(1, int(round(len(modules) * top_fraction)))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for m in modules[-count:]:
            m.reset_parameters()
    return clone.eval()


def attribution_quality(
    model,
    methods: dict[str, dict],
    n: int = 100,
    seed: int = 10_000,
    size: int | None = None,
    randomized=None,
) -> dict[str, dict[str, float]]:
    """Mask metrics of each attribution method over ``n`` generated images.

    ``methods`` maps a label to ``Attributor.attribute`` keyword arguments
    (``method``, ``layer``, ``part``, parameters). The target is the true class.
    Reports, per method, the mean share of positive attribution inside the
    object, the pointing-game hit rate, the mean object area fraction (the
    random baseline of both), and -- with a ``randomized`` model -- the mean
    Spearman correlation between the trained and the randomised model's maps.
    """
    size = size or 96
    attributors = [Attributor(model)] + ([Attributor(randomized)] if randomized is not None else [])
    sums: dict[str, dict[str, float]] = {
        label: {"mass_in_object": 0.0, "pointing_game": 0.0, "area_fraction": 0.0, "rank_correlation": 0.0}
        for label in methods
    }
    for i in range(n):
        image, label, mask = make_sample(i, seed, size)
        x = to_tensor(image)[None]
        for name, kwargs in methods.items():
            result = attributors[0].attribute(x, target=label, auc_steps=0, **kwargs)
            heat = result.heatmap
            s = sums[name]
            s["mass_in_object"] += positive_mass_in_mask(heat, mask)
            s["pointing_game"] += float(pointing_game_hit(heat, mask))
            s["area_fraction"] += mask_area_fraction(mask)
            if randomized is not None:
                other = attributors[1].attribute(x, target=label, auc_steps=0, **kwargs).heatmap
                s["rank_correlation"] += spearman(torch.as_tensor(heat), torch.as_tensor(other))
    report = {}
    for name, s in sums.items():
        report[name] = {k: v / n for k, v in s.items() if randomized is not None or k != "rank_correlation"}
    return report
