"""Xception (Chollet, CVPR 2017) with every separable convolution laid open.

The module tree follows the paper's figure 5 and the Keras layer names:
``entry.block1`` is the stem (``conv1``/``conv2``), ``entry.block2``..``block4``
the strided residual blocks, ``middle.block5``..``block12`` the identity-residual
blocks and ``exit.block13`` (728 -> 1024, strided) / ``exit.block14`` (the
1536 and 2048 separable convolutions). Each separable convolution is a
:class:`SeparableConv2d` named ``<flow>.block<N>.sep<K>`` with ``depthwise``
(spatial, one 3x3 filter per channel) and ``pointwise`` (cross-channel 1x1)
sub-modules, so a layer name like ``middle.block7.sep2`` addresses both halves.

Every ReLU is its own ``nn.ReLU`` module used exactly once and nothing runs
in place: Captum's DeepLift / GuidedBackprop rules and the capture mechanism
in :mod:`xception_core.introspect` depend on that.

The paper's spectrum (section 2) is a configuration knob: ``segments`` k and
``order`` say how every one of those convolutions is built (see
:class:`SeparableConv2d`); the default, one segment per channel with the
depthwise convolution first, is Xception itself.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

import torch
from torch import nn

IntermediateActivation = Literal["none", "relu", "elu"]
Order = Literal["depthwise-first", "pointwise-first"]
FLOWS = ("entry", "middle", "exit")
ORDERS: tuple[Order, ...] = ("depthwise-first", "pointwise-first")
#: ``segments`` symbol for one segment per channel (the separable end of the spectrum).
PER_CHANNEL = "C"
#: Every part name a separable convolution can have (``SeparableConv2d.parts``).
PART_NAMES = ("conv", "depthwise", "grouped", "pointwise")


@dataclass(frozen=True)
class XceptionConfig:
    """Architecture hyper-parameters; the defaults are the paper's ImageNet model.

    ``entry_channels`` are the widths of entry blocks 2-4 (the last is also the
    middle-flow width), ``exit_channels`` the widths of exit block 13 and of the
    two separable convolutions of block 14.

    ``segments`` and ``order`` place every separable convolution on the paper's
    spectrum (:class:`SeparableConv2d`): k = 1 a regular 3x3 convolution (its
    order is stored as the default); an integer k > 1 must divide the channels
    each grouped 3x3 convolution acts on, in every layer -- C_in with the
    depthwise-first order, C_out with the 1x1 first; ``"C"`` is one segment per
    channel whatever the widths. The defaults (``"C"``, depthwise-first) are
    Xception.
    """

    num_classes: int = 1000
    in_chans: int = 3
    stem_channels: tuple[int, int] = (32, 64)
    entry_channels: tuple[int, int, int] = (128, 256, 728)
    middle_repeats: int = 8
    exit_channels: tuple[int, int, int] = (1024, 1536, 2048)
    intermediate_activation: IntermediateActivation = "none"
    residual: bool = True
    segments: int | str = PER_CHANNEL
    order: Order = "depthwise-first"

    def __post_init__(self) -> None:
        for name in ("stem_channels", "entry_channels", "exit_channels"):
            value = tuple(int(v) for v in getattr(self, name))
            object.__setattr__(self, name, value)
        expected = {"stem_channels": 2, "entry_channels": 3, "exit_channels": 3}
        for name, n in expected.items():
            value = getattr(self, name)
            if len(value) != n or any(v < 1 for v in value):
                raise ValueError(f"{name} must be {n} positive integers, got {value}")
        if self.num_classes < 1 or self.in_chans < 1:
            raise ValueError("num_classes and in_chans must be positive")
        if self.middle_repeats < 0:
            raise ValueError("middle_repeats must be >= 0")
        if self.intermediate_activation not in ("none", "relu", "elu"):
            raise ValueError(
                f"intermediate_activation must be one of none, relu, elu; got {self.intermediate_activation!r}"
            )
        self._check_spectrum()

    def _check_spectrum(self) -> None:
        k = self.segments
        if k != PER_CHANNEL and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ValueError(f"segments must be a positive integer or {PER_CHANNEL!r} (one per channel); got {k!r}")
        if self.order not in ORDERS:
            raise ValueError(f"order must be one of {', '.join(ORDERS)}; got {self.order!r}")
        if k == 1 and self.intermediate_activation != "none":
            raise ValueError("segments=1 is one regular convolution: there is no intermediate activation to set")
        if k == 1:  # a regular convolution has no order: equal models get equal configs
            object.__setattr__(self, "order", "depthwise-first")
        if k == PER_CHANNEL:
            return
        for name, c_in, c_out in self.separable_channels():
            c = c_in if self.order == "depthwise-first" else c_out
            if k > 1 and c % k:
                raise ValueError(
                    f"segments={k} must divide the channels every grouped 3x3 convolution acts on "
                    f"({'C_in' if self.order == 'depthwise-first' else 'C_out'} for {self.order}); "
                    f"{name} has {c}"
                )

    def separable_channels(self) -> list[tuple[str, int, int]]:
        """(layer name, C_in, C_out) of every separable convolution, in forward order."""
        s2 = self.stem_channels[1]
        e1, e2, e3 = self.entry_channels
        x1, x2, x3 = self.exit_channels
        rows = []
        for n, (c_in, width) in enumerate(((s2, e1), (e1, e2), (e2, e3)), start=2):
            rows += [(f"entry.block{n}.sep1", c_in, width), (f"entry.block{n}.sep2", width, width)]
        for n in range(5, 5 + self.middle_repeats):
            rows += [(f"middle.block{n}.sep{k}", e3, e3) for k in (1, 2, 3)]
        n = 5 + self.middle_repeats
        rows += [(f"exit.block{n}.sep1", e3, e3), (f"exit.block{n}.sep2", e3, x1)]
        return rows + [(f"exit.block{n + 1}.sep1", x1, x2), (f"exit.block{n + 1}.sep2", x2, x3)]

    @property
    def separable(self) -> SeparableSpec:
        """How each separable convolution is built (the spectrum point and the activation)."""
        return SeparableSpec(self.intermediate_activation, self.segments, self.order)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> XceptionConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown Xception config keys: {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    @property
    def is_paper(self) -> bool:
        """True for the paper's layout (any class count / input channels)."""
        return (
            self.stem_channels == (32, 64)
            and self.entry_channels == (128, 256, 728)
            and self.middle_repeats == 8
            and self.exit_channels == (1024, 1536, 2048)
            and self.intermediate_activation == "none"
            and self.residual
            and self.segments == PER_CHANNEL
            and self.order == "depthwise-first"
        )


MIN_INPUT_SIZE = 71


@dataclass
class CaptureRequest:
    """What one forward pass should keep, and where it puts it (per thread/task)."""

    layers: frozenset[str]
    parts: frozenset[str] = frozenset(PART_NAMES)
    detach: bool = True
    outputs: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    #: Raise :class:`CaptureComplete` once every requested layer is kept (the rest of the
    #: forward is not computed: feature visualisation truncates the model this way).
    stop_after: bool = False

    def keep(self, layer: str, values: tuple[tuple[str, torch.Tensor | None], ...]) -> None:
        kept = self.outputs.setdefault(layer, {})
        for part, value in values:
            if value is not None and part in self.parts:
                kept[part] = value.detach() if self.detach else value
        if self.stop_after and len(self.outputs) == len(self.layers):
            raise CaptureComplete(self.outputs)


class CaptureComplete(Exception):
    """Raised inside a forward run with ``CaptureRequest.stop_after`` once everything is kept."""


# A ContextVar is private to each thread and asyncio task, so two concurrent
# requests capturing different layers of one shared model never see each
# other's request -- unlike forward hooks registered on the shared modules.
_capture: contextvars.ContextVar[CaptureRequest | None] = contextvars.ContextVar(
    "xception_capture", default=None
)


def _intermediate(kind: IntermediateActivation) -> nn.Module:
    if kind == "relu":
        return nn.ReLU()
    if kind == "elu":
        return nn.ELU()
    return nn.Identity()


@dataclass(frozen=True)
class SeparableSpec:
    """The intermediate activation and the spectrum point shared by every separable convolution."""

    intermediate: IntermediateActivation = "none"
    segments: int | str = PER_CHANNEL
    order: Order = "depthwise-first"

    def build(self, in_channels: int, out_channels: int, layer_name: str) -> SeparableConv2d:
        return SeparableConv2d(in_channels, out_channels, layer_name, self.intermediate, self.segments, self.order)


class SeparableConv2d(nn.Module):
    """One point of the paper's spectrum; by default depthwise 3x3 then pointwise 1x1, no bias.

    ``segments`` k is the number of groups of the 3x3 convolution and ``order``
    says which half runs first. The 3x3 convolution acts on C_in channels
    when it comes first (``depthwise-first``) and on C_out channels after the
    1x1 (``pointwise-first``); ``"C"`` means one segment per channel of those.
    ``parts`` names the sub-modules in forward order:

    * k = 1: ``("conv",)``, one regular 3x3 convolution C_in -> C_out (no order);
    * depthwise-first: ``("depthwise", "pointwise")`` at one segment per channel
      (Xception; today's layout, exact against timm), ``("grouped", "pointwise")``
      with fewer segments;
    * pointwise-first: ``("pointwise", "grouped")`` -- the Inception-like module
      (a 1x1, then a 3x3 per segment of C_out / k channels) -- or
      ``("pointwise", "depthwise")`` at one segment per channel ("extreme Inception").

    ``intermediate`` is the paper's ablation knob: identity (paper), ReLU or ELU
    between the two parts. The module records its outputs (each part's, before
    the intermediate activation and before the block's BatchNorm) when a
    :class:`CaptureRequest` naming ``layer_name`` is active.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        layer_name: str,
        intermediate: IntermediateActivation = "none",
        segments: int | str = PER_CHANNEL,
        order: Order = "depthwise-first",
    ) -> None:
        super().__init__()
        self.layer_name = layer_name
        self.in_channels, self.out_channels = in_channels, out_channels
        self.order = order
        if segments == 1:
            if intermediate != "none":
                raise ValueError(f"{layer_name}: a regular convolution has no intermediate activation")
            self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
            self.intermediate = nn.Identity()
            self.groups, self.parts = 1, ("conv",)
            return
        if order not in ORDERS:
            raise ValueError(f"order must be one of {', '.join(ORDERS)}; got {order!r}")
        c = in_channels if order == "depthwise-first" else out_channels
        groups = c if segments == PER_CHANNEL else int(segments)
        if groups < 1 or c % groups:
            raise ValueError(f"{layer_name}: {segments} segments do not divide its {c} channels")
        spatial_name = "depthwise" if groups == c else "grouped"
        spatial = nn.Conv2d(c, c, 3, padding=1, groups=groups, bias=False)
        pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.groups = groups
        if order == "depthwise-first":  # registration order = state-dict order
            self.add_module(spatial_name, spatial)
            self.intermediate = _intermediate(intermediate)
            self.pointwise = pointwise
            self.parts = (spatial_name, "pointwise")
        else:
            self.pointwise = pointwise
            self.intermediate = _intermediate(intermediate)
            self.add_module(spatial_name, spatial)
            self.parts = ("pointwise", spatial_name)

    @property
    def segments(self) -> int:
        """Groups of this layer's 3x3 convolution (1: a regular one)."""
        return self.groups

    @property
    def is_separable(self) -> bool:
        """One segment per channel, depthwise first: Xception's own convolution."""
        return self.parts == ("depthwise", "pointwise")

    def describe(self) -> str:
        """The point in words, e.g. "k = 4 segments, pointwise first (Inception-like)"."""
        if self.parts == ("conv",):
            return "k = 1: a regular 3x3 convolution"
        kind = {
            ("depthwise", "pointwise"): "depthwise separable",
            ("pointwise", "depthwise"): "extreme Inception",
            ("pointwise", "grouped"): "Inception-like",
        }.get(self.parts, "grouped 3x3 before the 1x1")
        return f"k = {self.groups} segments, {self.order} ({kind})"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        request = _capture.get()
        wanted = request is not None and self.layer_name in request.layers
        first = getattr(self, self.parts[0])(x)
        if wanted and request.stop_after and self.parts[-1] not in request.parts:
            request.keep(self.layer_name, (("input", x), (self.parts[0], first)))  # may stop here
        out = first if len(self.parts) == 1 else getattr(self, self.parts[1])(self.intermediate(first))
        if wanted:
            request.keep(self.layer_name, (("input", x), (self.parts[0], first), (self.parts[-1], out)))
        return out


class Stem(nn.Module):
    """Entry block 1: two regular 3x3 convolutions (the only non-separable ones)."""

    def __init__(self, in_chans: int, channels: tuple[int, int]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, channels[0], 3, stride=2, bias=False)
        self.bn1 = nn.BatchNorm2d(channels[0])
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(channels[0], channels[1], 3, bias=False)
        self.bn2 = nn.BatchNorm2d(channels[1])
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        return self.relu2(self.bn2(self.conv2(x)))


class XceptionBlock(nn.Module):
    """A residual block of separable convolutions: ``[relu] sepK bnK`` repeated.

    ``widths`` lists each separable convolution's output width. The first ReLU
    is absent in entry block 2 (``start_with_relu=False``). The residual takes
    the block's pre-ReLU input through a strided 1x1 conv + BN when the shape
    changes, identity otherwise; ``residual=False`` drops it (paper ablation).
    """

    def __init__(
        self,
        name: str,
        in_channels: int,
        widths: tuple[int, ...],
        stride: int,
        start_with_relu: bool,
        spec: SeparableSpec,
        residual: bool,
    ) -> None:
        super().__init__()
        self.num_separable = len(widths)
        channels = in_channels
        for k, width in enumerate(widths, start=1):
            if k > 1 or start_with_relu:
                self.add_module(f"relu{k}", nn.ReLU())
            self.add_module(f"sep{k}", spec.build(channels, width, f"{name}.sep{k}"))
            self.add_module(f"bn{k}", nn.BatchNorm2d(width))
            channels = width
        self.pool = nn.MaxPool2d(3, stride, padding=1) if stride != 1 else None
        if residual and (channels != in_channels or stride != 1):
            self.skip = nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False)
            self.skip_bn = nn.BatchNorm2d(channels)
        else:
            self.skip = None
            self.skip_bn = None
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The first ReLU gets its own view of ``x``: ``x`` also feeds the residual,
        # and Captum's DeepLift / GuidedBackprop hook the gradient of a ReLU's
        # *input tensor*, which would otherwise rescale the residual's share too.
        h = x.view_as(x)
        for k in range(1, self.num_separable + 1):
            relu = getattr(self, f"relu{k}", None)
            if relu is not None:
                h = relu(h)
            h = getattr(self, f"bn{k}")(getattr(self, f"sep{k}")(h))
        if self.pool is not None:
            h = self.pool(h)
        if not self.residual:
            return h
        shortcut = x if self.skip is None else self.skip_bn(self.skip(x))
        return h + shortcut


class ExitTail(nn.Module):
    """Exit block 14: two separable convolutions each followed by BN and ReLU."""

    def __init__(
        self, name: str, in_channels: int, widths: tuple[int, int], spec: SeparableSpec
    ) -> None:
        super().__init__()
        self.sep1 = spec.build(in_channels, widths[0], f"{name}.sep1")
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu1 = nn.ReLU()
        self.sep2 = spec.build(widths[0], widths[1], f"{name}.sep2")
        self.bn2 = nn.BatchNorm2d(widths[1])
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.sep1(x)))
        return self.relu2(self.bn2(self.sep2(x)))


class Xception(nn.Module):
    """The Xception network: ``forward_features`` (the three flows) then ``forward_head``."""

    def __init__(self, config: XceptionConfig | None = None) -> None:
        super().__init__()
        cfg = config or XceptionConfig()
        self.config = cfg
        spec = cfg.separable
        e1, e2, e3 = cfg.entry_channels
        x1, x2, x3 = cfg.exit_channels
        self.entry = nn.ModuleDict({"block1": Stem(cfg.in_chans, cfg.stem_channels)})
        channels = cfg.stem_channels[1]
        for i, width in enumerate((e1, e2, e3)):
            n = i + 2
            self.entry[f"block{n}"] = XceptionBlock(
                f"entry.block{n}", channels, (width, width), 2, n != 2, spec, cfg.residual
            )
            channels = width
        self.middle = nn.ModuleDict()
        for r in range(cfg.middle_repeats):
            n = 5 + r
            self.middle[f"block{n}"] = XceptionBlock(
                f"middle.block{n}", channels, (e3, e3, e3), 1, True, spec, cfg.residual
            )
        n = 5 + cfg.middle_repeats
        self.exit = nn.ModuleDict(
            {
                f"block{n}": XceptionBlock(
                    f"exit.block{n}", e3, (e3, x1), 2, True, spec, cfg.residual
                ),
                f"block{n + 1}": ExitTail(f"exit.block{n + 1}", x1, (x2, x3), spec),
            }
        )
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(x3, cfg.num_classes)
        self.num_features = x3
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def blocks(self) -> Iterator[tuple[str, nn.Module]]:
        """All blocks in forward order with their dotted names (``entry.block2``...)."""
        for flow in FLOWS:
            for name, block in getattr(self, flow).items():
                yield f"{flow}.{name}", block

    def separable_layers(self) -> dict[str, SeparableConv2d]:
        """The separable convolutions in forward order, keyed by layer name."""
        return {m.layer_name: m for m in self.modules() if isinstance(m, SeparableConv2d)}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] < MIN_INPUT_SIZE or x.shape[-2] < MIN_INPUT_SIZE:
            raise ValueError(
                f"input is {tuple(x.shape[-2:])}; Xception needs at least {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE}"
            )
        for _, block in self.blocks():
            x = block(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.flatten(self.global_pool(x))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def xception(**overrides: Any) -> Xception:
    """Build an Xception; keyword arguments override :class:`XceptionConfig` fields."""
    return Xception(XceptionConfig(**overrides))


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s parameters (the CPU for a module without any)."""
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")
