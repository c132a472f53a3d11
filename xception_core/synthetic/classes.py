"""The 20 classes of the generated data set: 5 spatial patterns x 4 luminance-matched colour schemes."""

from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

import numpy as np

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
#: The schemes' colours, dark and light in turn: ``[2 * n_schemes, 3]`` float32.
PALETTE = np.array(
    [c for pair in COLOUR_SCHEMES.values() for c in pair], dtype=np.float32
)

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
