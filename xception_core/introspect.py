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
from .model import PART_NAMES, CaptureComplete, CaptureRequest, SeparableConv2d, Xception, _capture

#: The parts of Xception's own separable convolution; other points of the spectrum have
#: other parts (``SeparableConv2d.parts``: ``conv``; ``pointwise``/``grouped``; ...).
PARTS = ("depthwise", "pointwise")


class UnknownLayerError(KeyError):
    """A layer or part name the model does not have; ``str()`` lists the valid ones."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ViewNotApplicableError(ValueError):
    """A view (e.g. the pointwise decomposition) asked of a layer whose build it does not fit."""


def resolve_layer(model: Xception, name: str) -> SeparableConv2d:
    layers = model.separable_layers()
    if name not in layers:
        raise UnknownLayerError(
            f"unknown layer {name!r}; separable layers are {', '.join(layers)}"
        )
    return layers[name]


def _check_parts(modules: Iterable[SeparableConv2d], parts: Iterable[str] | None) -> frozenset[str]:
    """The requested parts (None: every part of the layers), each one a part of every layer."""
    modules = list(modules)
    if parts is None:
        return frozenset(p for m in modules for p in m.parts)
    parts = frozenset(parts)
    for module in modules:
        bad = parts - {*module.parts, "input"}
        if bad:
            known = set(PART_NAMES) - set(module.parts)
            why = (
                f"{module.layer_name} ({module.describe()}) has no {' or '.join(sorted(bad & known))}; "
                if bad & known
                else f"unknown part(s) {sorted(bad)}; "
            )
            raise UnknownLayerError(f"{why}parts of {module.layer_name} are {', '.join(module.parts)} (and input)")
    return parts


@contextmanager
def capture(
    model: Xception,
    layers: Iterable[str],
    parts: Iterable[str] | None = None,
    detach: bool = True,
    stop_after: bool = False,
) -> Iterator[dict[str, dict[str, torch.Tensor]]]:
    """Within the block, forwards of ``model`` record the named layers' outputs.

    Yields ``{layer: {part: tensor}}``, filled in as the forward runs; ``parts``
    defaults to every part of each layer (``depthwise`` and ``pointwise`` for
    Xception, see ``SeparableConv2d.parts``), plus ``input`` on request. A part
    a layer does not have is refused. The last part's output is taken before
    the block's BatchNorm, the first part's before the intermediate activation.
    ``detach=False`` keeps the autograd graph (for gradients with respect to an
    intermediate map). ``stop_after=True`` ends the forward with
    :class:`~xception_core.model.CaptureComplete` as soon as everything asked for is kept
    (see :func:`run_until_captured`).
    """
    names = frozenset(layers)
    modules = [resolve_layer(model, name) for name in names]
    request = CaptureRequest(
        layers=names, parts=_check_parts(modules, parts), detach=detach, stop_after=stop_after
    )
    token = _capture.set(request)
    try:
        yield request.outputs
    finally:
        _capture.reset(token)


def run_until_captured(model: Xception, x: torch.Tensor) -> None:
    """Run ``model``'s feature flows on ``x`` inside ``capture(..., stop_after=True)``; the
    forward stops after the last requested layer (the truncated model, without surgery)."""
    try:
        model.forward_features(x)
    except CaptureComplete:
        return
    raise RuntimeError("the forward ended before every requested layer was captured")


def forward_with_capture(
    model: Xception,
    x: torch.Tensor,
    layers: Iterable[str],
    parts: Iterable[str] | None = None,
) -> tuple[torch.Tensor, dict[str, dict[str, torch.Tensor]]]:
    """Logits and ``{layer: {part: [N, C, H, W]}}`` for the requested layers, in one pass.

    Holds the model's shared lock so that a hook-based attribution running at
    the same time (exclusive) neither sees nor disturbs this pass.
    """
    with model_lock(model).shared(), capture(model, layers, parts) as kept:
        logits = model(x)
    return logits, kept


def check_decomposable(layer: SeparableConv2d) -> None:
    """Refuse layers where "a pointwise channel is a sum of depthwise channels" is not what happens.

    With the 1x1 first, the pointwise output mixes the layer's *input* channels, and the
    layer's output channel o is ``K_o * (sum_i W[o, i] x_i)``, which equals
    ``sum_i W[o, i] (K_o * x_i)`` only without an intermediate activation (extreme Inception) --
    a different view; a grouped 3x3 mixes C / k channels itself; a regular convolution has
    no pointwise part at all.
    """
    if not layer.is_separable:
        raise ViewNotApplicableError(
            f"the pointwise decomposition needs a depthwise separable layer (depthwise, then pointwise); "
            f"{layer.layer_name} is {layer.describe()} with parts {', '.join(layer.parts)}"
        )


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

    ``depthwise`` is one image's depthwise output ``[C, H, W]``. Only Xception's order
    (``layer.parts`` = depthwise, pointwise) fits this view; other points raise
    :class:`ViewNotApplicableError` (see :func:`check_decomposable`).
    """
    check_decomposable(layer)
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


def channel_weights(model: Xception, layer: str, part: str, channel: int) -> torch.Tensor:
    """The weights that make output channel ``channel`` of ``part``: a depthwise channel's 3x3
    kernel ``[3, 3]``; a pointwise channel's 1x1 weights over the channels it mixes ``[C_in]``
    (the depthwise channels, in Xception's order); a grouped or regular 3x3 channel's
    ``[C_in / groups, 3, 3]``. A float32 copy on the CPU."""
    module = resolve_layer(model, layer)
    _check_parts([module], [part])
    if part == "input":
        raise UnknownLayerError(f"the input of {layer} has no weights; parts are {', '.join(module.parts)}")
    weight = getattr(module, part).weight
    if isinstance(channel, bool) or not isinstance(channel, int) or not 0 <= channel < weight.shape[0]:
        raise ValueError(f"channel must be in 0..{weight.shape[0] - 1} for {layer} {part}, got {channel!r}")
    w = weight[channel].detach().float().cpu().clone()
    if part == "pointwise":
        return w[:, 0, 0]
    return w[0] if w.shape[0] == 1 else w
