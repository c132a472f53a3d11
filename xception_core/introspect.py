"""One forward pass that returns the logits plus the requested separable layers.

Capturing uses a context variable read by each :class:`SeparableConv2d`
instead of forward hooks, so concurrent requests on one shared model (threads
or asyncio tasks) each get exactly the layers they asked for, and a layer that
nobody asked for is never kept.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from .locks import model_lock
from .model import CaptureRequest, SeparableConv2d, Xception, _capture

PARTS = ("depthwise", "pointwise")


class UnknownLayerError(KeyError):
    """A layer or part name the model does not have; ``str()`` lists the valid ones."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def resolve_layer(model: Xception, name: str) -> SeparableConv2d:
    layers = model.separable_layers()
    if name not in layers:
        raise UnknownLayerError(
            f"unknown layer {name!r}; separable layers are {', '.join(layers)}"
        )
    return layers[name]


def _check_parts(parts: Iterable[str]) -> frozenset[str]:
    parts = frozenset(parts)
    bad = parts - {*PARTS, "input"}
    if bad:
        raise UnknownLayerError(f"unknown part(s) {sorted(bad)}; parts are depthwise, pointwise")
    return parts


@contextmanager
def capture(
    model: Xception,
    layers: Iterable[str],
    parts: Iterable[str] = PARTS,
    detach: bool = True,
) -> Iterator[dict[str, dict[str, torch.Tensor]]]:
    """Within the block, forwards of ``model`` record the named layers' outputs.

    Yields ``{layer: {part: tensor}}``, filled in as the forward runs. The
    pointwise output is taken before its BatchNorm. ``detach=False`` keeps the
    autograd graph (for gradients with respect to an intermediate map).
    """
    names = frozenset(layers)
    for name in names:
        resolve_layer(model, name)
    request = CaptureRequest(layers=names, parts=_check_parts(parts), detach=detach)
    token = _capture.set(request)
    try:
        yield request.outputs
    finally:
        _capture.reset(token)


def forward_with_capture(
    model: Xception,
    x: torch.Tensor,
    layers: Iterable[str],
    parts: Iterable[str] = PARTS,
) -> tuple[torch.Tensor, dict[str, dict[str, torch.Tensor]]]:
    """Logits and ``{layer: {part: [N, C, H, W]}}`` for the requested layers, in one pass.

    Holds the model's shared lock so that a hook-based attribution running at
    the same time (exclusive) neither sees nor disturbs this pass.
    """
    with model_lock(model).shared(), capture(model, layers, parts) as kept:
        logits = model(x)
    return logits, kept


@dataclass
class Decomposition:
    """How pointwise output channel ``channel`` is built from the depthwise channels.

    ``weights[i]`` is the 1x1 weight ``W[channel, i]``; ``contributions[k]`` is
    the map ``W[channel, order[k]] * a_order[k]`` where ``a`` is the pointwise
    input (the depthwise output after the intermediate activation, identical to
    it in the paper configuration); ``energy`` ranks them: the sum of squares
    of each map, largest first, equal energies (dead channels, say) in channel
    order.
    ``total`` is the sum over *all* channels and equals the pointwise output;
    ``rest`` is what the channels outside the top contribute.
    """

    layer: str
    channel: int
    weights: torch.Tensor  # [C_in]
    order: torch.Tensor  # [top] depthwise channel indices, by energy
    energy: torch.Tensor  # [top]
    contributions: torch.Tensor  # [top, H, W]
    total: torch.Tensor  # [H, W]
    rest: torch.Tensor  # [H, W]


def decompose(
    layer: SeparableConv2d, depthwise: torch.Tensor, channel: int, top: int = 8
) -> Decomposition:
    """Split pointwise channel ``channel`` of ``layer`` into per-depthwise-channel maps.

    ``depthwise`` is one image's depthwise output ``[C, H, W]``.
    """
    if depthwise.dim() != 3:
        raise ValueError("depthwise must be one image's [C, H, W] output")
    out_channels, in_channels = layer.pointwise.weight.shape[:2]
    if not 0 <= channel < out_channels:
        raise ValueError(f"channel must be in 0..{out_channels - 1}, got {channel}")
    if top < 1:
        raise ValueError("top must be >= 1")
    with torch.no_grad():
        a = layer.intermediate(depthwise.float())
        weights = layer.pointwise.weight[channel, :, 0, 0].detach().float().to(a.device)
        maps = weights[:, None, None] * a
        energy = maps.pow(2).sum(dim=(1, 2))
        k = min(top, in_channels)
        # topk's order among equal values is unspecified; a stable sort is not
        order = torch.argsort(energy, descending=True, stable=True)[:k]
        top_energy = energy[order]
        total = maps.sum(dim=0)
        contributions = maps[order]
        rest = total - contributions.sum(dim=0)
    return Decomposition(
        layer=layer.layer_name,
        channel=channel,
        weights=weights,
        order=order,
        energy=top_energy,
        contributions=contributions,
        total=total,
        rest=rest,
    )
