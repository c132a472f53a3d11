"""Lossless state-dict conversion between timm's ``legacy_xception`` layout and ours.

timm (and Cadene's ``pretrainedmodels`` before it) numbers the residual blocks
``block1..block12`` and keeps each block's layers in a ``rep`` Sequential
(``[ReLU,] SeparableConv2d, BatchNorm2d, ReLU, ...``); the stem is
``conv1/bn1/conv2/bn2`` and the exit tail ``conv3/bn3/conv4/bn4``. Ours uses the
paper's block numbers (timm ``block1`` = ``entry.block2``) and names every layer.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .model import PER_CHANNEL, XceptionConfig

BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


class StateDictMismatch(ValueError):
    """A checkpoint that does not fit the architecture; the message lists why."""


def _bn(ours: str, theirs: str) -> list[tuple[str, str]]:
    return [(f"{ours}.{k}", f"{theirs}.{k}") for k in BN_KEYS]


def key_map(config: XceptionConfig) -> list[tuple[str, str]]:
    """(our key, timm key) pairs for every tensor of a model with ``config``, in timm's order."""
    if not config.residual:
        raise ValueError("timm's legacy_xception layout has residual connections; residual=False has no timm form")
    if config.intermediate_activation != "none":
        raise ValueError("timm's legacy_xception has no activation between depthwise and pointwise")
    if config.segments != PER_CHANNEL or config.order != "depthwise-first":
        raise ValueError(
            "timm's legacy_xception is the depthwise separable point (segments C, depthwise-first); "
            f"segments={config.segments}, {config.order} has no timm form"
        )
    pairs: list[tuple[str, str]] = []
    pairs += [("entry.block1.conv1.weight", "conv1.weight"), *_bn("entry.block1.bn1", "bn1")]
    pairs += [("entry.block1.conv2.weight", "conv2.weight"), *_bn("entry.block1.bn2", "bn2")]
    ours_blocks = [("entry", n, 2) for n in (2, 3, 4)]
    ours_blocks += [("middle", 5 + r, 3) for r in range(config.middle_repeats)]
    ours_blocks.append(("exit", 5 + config.middle_repeats, 2))
    for timm_index, (flow, n, num_sep) in enumerate(ours_blocks, start=1):
        ours, theirs = f"{flow}.block{n}", f"block{timm_index}"
        if flow != "middle":  # strided blocks; the middle flow's residual is identity
            pairs.append((f"{ours}.skip.weight", f"{theirs}.skip.weight"))
            pairs += _bn(f"{ours}.skip_bn", f"{theirs}.skipbn")
        offset = 0 if timm_index == 1 else 1  # timm's first block has no leading ReLU
        for k in range(1, num_sep + 1):
            sep = 3 * (k - 1) + offset
            pairs.append((f"{ours}.sep{k}.depthwise.weight", f"{theirs}.rep.{sep}.conv1.weight"))
            pairs.append((f"{ours}.sep{k}.pointwise.weight", f"{theirs}.rep.{sep}.pointwise.weight"))
            pairs += _bn(f"{ours}.bn{k}", f"{theirs}.rep.{sep + 1}")
    tail = f"exit.block{6 + config.middle_repeats}"
    for k, (conv, bn) in enumerate((("conv3", "bn3"), ("conv4", "bn4")), start=1):
        pairs.append((f"{tail}.sep{k}.depthwise.weight", f"{conv}.conv1.weight"))
        pairs.append((f"{tail}.sep{k}.pointwise.weight", f"{conv}.pointwise.weight"))
        pairs += _bn(f"{tail}.bn{k}", bn)
    pairs += [("fc.weight", "fc.weight"), ("fc.bias", "fc.bias")]
    return pairs


def _describe(missing: list[str], unexpected: list[str], limit: int = 8) -> str:
    parts = []
    if missing:
        more = f" (+{len(missing) - limit} more)" if len(missing) > limit else ""
        parts.append(f"missing keys: {', '.join(missing[:limit])}{more}")
    if unexpected:
        more = f" (+{len(unexpected) - limit} more)" if len(unexpected) > limit else ""
        parts.append(f"unexpected keys: {', '.join(unexpected[:limit])}{more}")
    return "; ".join(parts)


def _rename(
    state: Mapping[str, torch.Tensor], pairs: list[tuple[str, str]], optional_suffix: str
) -> dict[str, torch.Tensor]:
    """Rename ``src -> dst`` for each pair, failing on anything missing or left over.

    Keys ending in ``optional_suffix`` (BN's ``num_batches_tracked``, absent from
    checkpoints saved by old PyTorch) may be missing and are then filled with 0.
    """
    out: dict[str, torch.Tensor] = {}
    missing = []
    for dst, src in pairs:
        if src in state:
            out[dst] = state[src]
        elif src.endswith(optional_suffix):
            out[dst] = torch.tensor(0, dtype=torch.long)
        else:
            missing.append(src)
    used = {src for _, src in pairs}
    unexpected = [k for k in state if k not in used]
    if missing or unexpected:
        raise StateDictMismatch(_describe(missing, unexpected))
    return out


def timm_to_ours(state: Mapping[str, torch.Tensor], config: XceptionConfig) -> dict[str, torch.Tensor]:
    """Rename a timm / Cadene ``legacy_xception`` state dict to our layout."""
    return _rename(state, [(o, t) for o, t in key_map(config)], "num_batches_tracked")


def ours_to_timm(state: Mapping[str, torch.Tensor], config: XceptionConfig) -> dict[str, torch.Tensor]:
    """Rename our state dict to timm's ``legacy_xception`` layout (exact inverse)."""
    return _rename(state, [(t, o) for o, t in key_map(config)], "num_batches_tracked")


def infer_timm_config(state: Mapping[str, torch.Tensor]) -> XceptionConfig:
    """Read class count, input channels, widths and middle repeats off a timm state dict."""
    try:
        conv1, conv2 = state["conv1.weight"], state["conv2.weight"]
        fc = state["fc.weight"]
        blocks = sorted(
            {int(k.split(".")[0][5:]) for k in state if k.startswith("block") and k.split(".")[0][5:].isdigit()}
        )
        entry = tuple(int(state[f"block{i}.skip.weight"].shape[0]) for i in (1, 2, 3))
        exit_block = blocks[-1]
        exit_channels = (
            int(state[f"block{exit_block}.skip.weight"].shape[0]),
            int(state["conv3.pointwise.weight"].shape[0]),
            int(state["conv4.pointwise.weight"].shape[0]),
        )
    except (KeyError, IndexError, AttributeError) as exc:
        raise StateDictMismatch(
            f"not a legacy_xception state dict (could not find {exc}); expected keys like conv1.weight, block1.rep.0.conv1.weight, fc.weight"
        ) from None
    return XceptionConfig(
        num_classes=int(fc.shape[0]),
        in_chans=int(conv1.shape[1]),
        stem_channels=(int(conv1.shape[0]), int(conv2.shape[0])),
        entry_channels=entry,
        middle_repeats=len(blocks) - 4,
        exit_channels=exit_channels,
    )


def check_shapes(state: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor]) -> None:
    """Raise :class:`StateDictMismatch` naming every key whose shape differs."""
    missing = [k for k in reference if k not in state]
    unexpected = [k for k in state if k not in reference]
    if missing or unexpected:
        raise StateDictMismatch(_describe(missing, unexpected))
    bad = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in reference.items()
        if tuple(state[k].shape) != tuple(v.shape)
    ]
    if bad:
        more = f" (+{len(bad) - 8} more)" if len(bad) > 8 else ""
        raise StateDictMismatch("shape mismatch: " + "; ".join(bad[:8]) + more)
