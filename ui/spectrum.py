"""The paper's spectrum for one layer: regular convolution, Inception-like segments, depthwise separable.

Chollet (2017), section 2: a regular convolution (one segment), Inception modules
(a 1x1 convolution, then a spatial convolution per segment of ``C_out / k``
channels) and the depthwise separable convolution (one segment per channel) lie
on one discrete spectrum. Parameters and multiply-accumulates of a 3x3 layer
with ``C_in`` input and ``C_out`` output channels at an ``H x W`` output:

* k = 1 (regular): ``C_in * C_out * 9``
* 1 < k < C_in (k segments): ``C_in * C_out + k * (C_out / k)^2 * 9``
* k = C_in (depthwise separable): ``C_in * 9 + C_in * C_out``

and MACs = parameters x H x W. Plain arithmetic: no model is involved.
"""

from __future__ import annotations

from dataclasses import dataclass

KERNEL = 3


@dataclass(frozen=True)
class SpectrumPoint:
    segments: int
    kind: str  # "regular", "inception-like" or "depthwise separable"
    params: int
    macs: int

    @property
    def label(self) -> str:
        if self.kind == "regular":
            return "k = 1 (regular conv)"
        if self.kind == "depthwise separable":
            return f"k = {self.segments} (separable)"
        return f"k = {self.segments}"


def spectrum_params(in_channels: int, out_channels: int, segments: int, kernel: int = KERNEL) -> int:
    """Parameters of the spectrum point with ``segments`` segments (no bias, no BatchNorm)."""
    if in_channels < 1 or out_channels < 1:
        raise ValueError("channel counts must be positive")
    if not 1 <= segments <= in_channels:
        raise ValueError(f"segments must be in 1..{in_channels}")
    k2 = kernel * kernel
    if segments == 1:
        return in_channels * out_channels * k2
    if segments == in_channels:
        return in_channels * k2 + in_channels * out_channels
    if out_channels % segments:
        raise ValueError(f"segments must divide the {out_channels} output channels")
    per = out_channels // segments
    return in_channels * out_channels + segments * per * per * k2


def segment_choices(in_channels: int, out_channels: int, count: int = 4) -> list[int]:
    """k = 1, up to ``count`` Inception-like segment counts (3, 4 as in Inception V3, then powers
    of two; each divides ``out_channels`` and is below ``in_channels``), and k = ``in_channels``."""
    middle: list[int] = []
    for k in (3, 4, 8, 16, 32, 64, 128, 256):
        if len(middle) >= count:
            break
        if 1 < k < in_channels and out_channels % k == 0:
            middle.append(k)
    return sorted({1, *middle, in_channels})


def layer_spectrum(in_channels: int, out_channels: int, output_hw: tuple[int, int] | list[int], count: int = 4) -> list[SpectrumPoint]:
    """The spectrum points of one separable layer, from regular to depthwise separable."""
    h, w = (int(v) for v in output_hw)
    points = []
    for k in segment_choices(in_channels, out_channels, count):
        params = spectrum_params(in_channels, out_channels, k)
        kind = "regular" if k == 1 else "depthwise separable" if k == in_channels else "inception-like"
        points.append(SpectrumPoint(k, kind, params, params * h * w))
    return points
