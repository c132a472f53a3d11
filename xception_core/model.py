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
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

import torch
from torch import nn

IntermediateActivation = Literal["none", "relu", "elu"]
FLOWS = ("entry", "middle", "exit")


@dataclass(frozen=True)
class XceptionConfig:
    """Architecture hyper-parameters; the defaults are the paper's ImageNet model.

    ``entry_channels`` are the widths of entry blocks 2-4 (the last is also the
    middle-flow width), ``exit_channels`` the widths of exit block 13 and of the
    two separable convolutions of block 14.
    """

    num_classes: int = 1000
    in_chans: int = 3
    stem_channels: tuple[int, int] = (32, 64)
    entry_channels: tuple[int, int, int] = (128, 256, 728)
    middle_repeats: int = 8
    exit_channels: tuple[int, int, int] = (1024, 1536, 2048)
    intermediate_activation: IntermediateActivation = "none"
    residual: bool = True

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
        )


MIN_INPUT_SIZE = 71


@dataclass
class CaptureRequest:
    """What one forward pass should keep, and where it puts it (per thread/task)."""

    layers: frozenset[str]
    parts: frozenset[str] = frozenset({"depthwise", "pointwise"})
    detach: bool = True
    outputs: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)


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


class SeparableConv2d(nn.Module):
    """Depthwise 3x3 (spatial) then pointwise 1x1 (cross-channel), no bias.

    ``intermediate`` is the paper's ablation knob: identity (paper), ReLU or ELU
    between the two halves. The module records its outputs when a
    :class:`CaptureRequest` naming ``layer_name`` is active.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        layer_name: str,
        intermediate: IntermediateActivation = "none",
    ) -> None:
        super().__init__()
        self.layer_name = layer_name
        self.depthwise = nn.Conv2d(
            in_channels, in_channels, 3, padding=1, groups=in_channels, bias=False
        )
        self.intermediate = _intermediate(intermediate)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        request = _capture.get()
        spatial = self.depthwise(x)
        mixed = self.pointwise(self.intermediate(spatial))
        if request is not None and self.layer_name in request.layers:
            kept = request.outputs.setdefault(self.layer_name, {})
            if "input" in request.parts:
                kept["input"] = x.detach() if request.detach else x
            if "depthwise" in request.parts:
                kept["depthwise"] = spatial.detach() if request.detach else spatial
            if "pointwise" in request.parts:
                kept["pointwise"] = mixed.detach() if request.detach else mixed
        return mixed


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
        intermediate: IntermediateActivation,
        residual: bool,
    ) -> None:
        super().__init__()
        self.num_separable = len(widths)
        channels = in_channels
        for k, width in enumerate(widths, start=1):
            if k > 1 or start_with_relu:
                self.add_module(f"relu{k}", nn.ReLU())
            self.add_module(
                f"sep{k}", SeparableConv2d(channels, width, f"{name}.sep{k}", intermediate)
            )
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
        self, name: str, in_channels: int, widths: tuple[int, int], intermediate: IntermediateActivation
    ) -> None:
        super().__init__()
        self.sep1 = SeparableConv2d(in_channels, widths[0], f"{name}.sep1", intermediate)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu1 = nn.ReLU()
        self.sep2 = SeparableConv2d(widths[0], widths[1], f"{name}.sep2", intermediate)
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
        act = cfg.intermediate_activation
        e1, e2, e3 = cfg.entry_channels
        x1, x2, x3 = cfg.exit_channels
        self.entry = nn.ModuleDict({"block1": Stem(cfg.in_chans, cfg.stem_channels)})
        channels = cfg.stem_channels[1]
        for i, width in enumerate((e1, e2, e3)):
            n = i + 2
            self.entry[f"block{n}"] = XceptionBlock(
                f"entry.block{n}", channels, (width, width), 2, n != 2, act, cfg.residual
            )
            channels = width
        self.middle = nn.ModuleDict()
        for r in range(cfg.middle_repeats):
            n = 5 + r
            self.middle[f"block{n}"] = XceptionBlock(
                f"middle.block{n}", channels, (e3, e3, e3), 1, True, act, cfg.residual
            )
        n = 5 + cfg.middle_repeats
        self.exit = nn.ModuleDict(
            {
                f"block{n}": XceptionBlock(
                    f"exit.block{n}", e3, (e3, x1), 2, True, act, cfg.residual
                ),
                f"block{n + 1}": ExitTail(f"exit.block{n + 1}", x1, (x2, x3), act),
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
