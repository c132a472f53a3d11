"""Per-layer output shapes, parameters and multiply-accumulates, for any config and size.

The profile runs a forward pass on PyTorch's ``meta`` device: shapes propagate
exactly as in the real model but no memory is allocated and nothing is computed,
so profiling the 299-px paper model costs milliseconds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache

import torch
from torch import nn

from .model import MIN_INPUT_SIZE, ORDERS, PER_CHANNEL, Xception, XceptionConfig


@dataclass(frozen=True)
class LayerProfile:
    name: str  # e.g. "entry.block2.sep1.depthwise"
    flow: str  # entry / middle / exit / head
    kind: str  # conv, depthwise, grouped, pointwise, skip, pool, global_pool, fc
    in_channels: int
    out_channels: int
    output_size: tuple[int, int]  # (H, W); (1, 1) for the classifier
    params: int
    macs: int

    def to_dict(self) -> dict:
        d = asdict(self)
        d["output_size"] = list(self.output_size)
        return d


@dataclass(frozen=True)
class SeparableProfile:
    """One separable convolution: its parts, and its regular-convolution equivalent.

    ``depthwise_*`` count the 3x3 part (the depthwise convolution in Xception; the grouped
    one, or the regular ``conv``, at other points of the spectrum) and ``pointwise_*`` the
    1x1 part (0 for a regular convolution); ``parts`` names them in forward order,
    ``segments`` is the 3x3 part's number of groups, ``order`` which part runs first (None for
    a regular convolution), ``spectrum_point`` says the point in words
    (``SeparableConv2d.describe``) and ``decomposable`` whether the pointwise decomposition
    applies (``SeparableConv2d.is_separable``: depthwise, then pointwise).
    """

    name: str
    flow: str
    in_channels: int
    out_channels: int
    output_size: tuple[int, int]
    depthwise_params: int
    pointwise_params: int
    depthwise_macs: int
    pointwise_macs: int
    regular_params: int  # a regular 3x3 convolution with the same channels (the spectrum's k = 1)
    parts: tuple[str, ...]  # e.g. ("depthwise", "pointwise"), ("pointwise", "grouped"), ("conv",)
    segments: int  # groups of the 3x3 part: 1 regular ... C one per channel
    order: str | None = None  # "depthwise-first" / "pointwise-first"; None for a regular convolution
    spectrum_point: str = ""  # e.g. "k = 4 segments, pointwise-first (Inception-like)"
    decomposable: bool = True  # the pointwise decomposition applies (SeparableConv2d.is_separable)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["output_size"] = list(self.output_size)
        d["parts"] = list(self.parts)
        return d


@dataclass(frozen=True)
class ModelProfile:
    config: XceptionConfig
    input_size: int
    layers: tuple[LayerProfile, ...]
    separable: tuple[SeparableProfile, ...]
    total_params: int  # every parameter of the model, BatchNorm included
    total_macs: int  # convolutions and the classifier

    def to_dict(self) -> dict:
        return {
            "input_size": self.input_size,
            "config": self.config.to_dict(),
            "total_params": self.total_params,
            "total_macs": self.total_macs,
            "layers": [layer.to_dict() for layer in self.layers],
            "separable_layers": [s.to_dict() for s in self.separable],
        }


def segment_spectrum(
    in_channels: int,
    out_channels: int,
    segments: int | str,
    kernel: int = 3,
    output_hw: int = 1,
    order: str | None = None,
) -> tuple[int, int]:
    """Parameters and MACs of one point of the paper's spectrum for one layer (no bias, no BatchNorm).

    Chollet (2017), section 2. ``segments`` k = 1 is a regular ``kernel x kernel``
    convolution, ``C_in * C_out * kernel^2``, whatever the order. Otherwise a 1x1
    convolution (``C_in * C_out``) and a ``kernel x kernel`` convolution with k groups
    over C channels (``C * (C / k) * kernel^2``), where C is what that convolution acts
    on: ``C_in`` when it comes first (``order="depthwise-first"``, Xception's order),
    ``C_out`` after the 1x1 (``"pointwise-first"``, the Inception-like module);
    ``segments="C"`` is one segment per channel of those. ``order=None`` is the paper's
    figure: the Inception-like module for 1 < k < C_in (k must divide ``C_out``), and
    Xception's depthwise separable convolution at k = C_in. MACs = parameters x
    ``output_hw`` (the number of output positions, H x W, at stride 1).
    """
    if in_channels < 1 or out_channels < 1:
        raise ValueError("channel counts must be positive")
    k2 = kernel * kernel
    if order is None:
        if segments == PER_CHANNEL:
            segments = in_channels
        if not isinstance(segments, int) or not 1 <= segments <= in_channels:
            raise ValueError(f"segments must be in 1..{in_channels}")
        if 1 < segments < in_channels and out_channels % segments:
            raise ValueError(f"segments must divide the {out_channels} output channels")
        order = "depthwise-first" if segments == in_channels else "pointwise-first"
    if order not in ORDERS:
        raise ValueError(f"order must be one of {', '.join(ORDERS)} (or None for the paper's points)")
    if segments == 1:
        params = in_channels * out_channels * k2
    else:
        c = in_channels if order == "depthwise-first" else out_channels
        groups = c if segments == PER_CHANNEL else segments
        if isinstance(groups, bool) or not isinstance(groups, int) or not 1 <= groups <= c or c % groups:
            raise ValueError(
                f"segments must divide the {c} channels the {kernel}x{kernel} convolution acts on "
                f"({'C_in' if order == 'depthwise-first' else 'C_out'} for {order}); got {segments!r}"
            )
        params = in_channels * out_channels + c * (c // groups) * k2
    return params, params * output_hw


@dataclass(frozen=True)
class SpectrumPoint:
    """One point of a layer's spectrum: ``segments`` = k, its kind, parameters and MACs."""

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

    def to_dict(self) -> dict:
        return {**asdict(self), "label": self.label}


#: Inception-like segment counts a spectrum shows, in order of preference (3 and 4 as in
#: Inception V3, then powers of two).
SEGMENT_CANDIDATES = (3, 4, 8, 16, 32, 64, 128, 256)


def spectrum_segments(in_channels: int, out_channels: int, count: int = 4) -> list[int]:
    """k = 1, up to ``count`` Inception-like segment counts (each divides ``out_channels`` and is
    below ``in_channels``), and k = ``in_channels``."""
    middle = [k for k in SEGMENT_CANDIDATES if 1 < k < in_channels and out_channels % k == 0][:count]
    return sorted({1, *middle, in_channels})


def layer_spectrum(
    in_channels: int, out_channels: int, output_size: tuple[int, int] | list[int], count: int = 4
) -> list[SpectrumPoint]:
    """The paper's spectrum for one 3x3 layer at an ``(H, W)`` output, from a regular convolution
    to a depthwise separable one (:func:`spectrum_segments` chooses the points)."""
    h, w = (int(v) for v in output_size)
    points = []
    for k in spectrum_segments(in_channels, out_channels, count):
        params, macs = segment_spectrum(in_channels, out_channels, k, output_hw=h * w)
        kind = "regular" if k == 1 else "depthwise separable" if k == in_channels else "inception-like"
        points.append(SpectrumPoint(k, kind, params, macs))
    return points


def _flow(name: str) -> str:
    return name.split(".", 1)[0] if name.split(".", 1)[0] in ("entry", "middle", "exit") else "head"


def profile_model(config: XceptionConfig | None = None, input_size: int = 299) -> ModelProfile:
    """Shapes, parameters and MACs of every layer of an Xception with ``config`` (cached)."""
    return _profile(config or XceptionConfig(), int(input_size))


@lru_cache(maxsize=64)
def _profile(config: XceptionConfig, input_size: int) -> ModelProfile:
    if input_size < MIN_INPUT_SIZE:
        raise ValueError(f"input size must be at least {MIN_INPUT_SIZE}, got {input_size}")
    with torch.device("meta"):
        model = Xception(config)
    names = {m: n for n, m in model.named_modules()}
    rows: list[LayerProfile] = []

    def record(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        name = names[module]
        x = inputs[0]
        params = sum(p.numel() for p in module.parameters(recurse=False))
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            per_output = (module.in_channels // module.groups) * kh * kw
            macs = output[0].numel() * per_output
            if name.endswith((".depthwise", ".grouped", ".pointwise")):
                kind = name.rsplit(".", 1)[1]
            elif name.endswith(".skip"):
                kind = "skip"
            else:
                kind = "conv"
        elif isinstance(module, nn.Linear):
            kind, macs = "fc", module.in_features * module.out_features
        elif isinstance(module, nn.MaxPool2d):
            kind, macs = "pool", 0
        else:
            kind, macs = "global_pool", 0
        out_hw = tuple(output.shape[-2:]) if output.dim() == 4 else (1, 1)
        rows.append(
            LayerProfile(name, _flow(name), kind, int(x.shape[1]), int(output.shape[1]), out_hw, params, macs)
        )

    handles = [
        m.register_forward_hook(record)
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.MaxPool2d, nn.AdaptiveAvgPool2d))
    ]
    try:
        model(torch.empty(1, config.in_chans, input_size, input_size, device="meta"))
    finally:
        for h in handles:
            h.remove()

    by_name = {r.name: r for r in rows}
    separable = []
    for name, module in model.separable_layers().items():
        spatial = by_name[f"{name}.{next(p for p in module.parts if p != 'pointwise')}"]
        pw = by_name.get(f"{name}.pointwise")
        last = by_name[f"{name}.{module.parts[-1]}"]
        separable.append(
            SeparableProfile(
                name, spatial.flow, module.in_channels, module.out_channels, last.output_size,
                spatial.params, pw.params if pw else 0, spatial.macs, pw.macs if pw else 0,
                segment_spectrum(module.in_channels, module.out_channels, 1)[0], module.parts, module.groups,
                None if module.parts == ("conv",) else module.order, module.describe(), module.is_separable,
            )
        )
    return ModelProfile(
        config=config,
        input_size=input_size,
        layers=tuple(rows),
        separable=tuple(separable),
        total_params=sum(p.numel() for p in model.parameters()),
        total_macs=sum(r.macs for r in rows),
    )
