"""Input attributions in bfloat16: a BatchNorm-folded net whose first blocks stay float32.

bfloat16 autocast around an attribution casts every weight on every call and keeps all of the
network in bf16. :class:`ReducedNet` instead runs the stem and the first entry blocks
(:data:`FLOAT32_BLOCKS`) in float32 and a frozen bf16 copy of the rest
(:func:`~xception_core.frozen.frozen`: no weight gradients, channels_last, 1x1 convolutions on
small maps as matrix products), and returns float32 logits; the gradient reaches the float32
image in float32. The first blocks have the largest maps, and there bf16's rounding reaches
every pixel's gradient: on the paper model (random weights, generated images, 299 px) keeping
three blocks in float32 raises saliency's Spearman agreement with float32 from 0.98 to 0.994
and Integrated Gradients' from 0.989 to 0.997, for about 10 % of the time saved.

:func:`reduced_net` caches one per model (rebuilt when its weights change).
"""

from __future__ import annotations

import copy
import threading
import weakref

import torch
from torch import nn

from ..frozen import frozen, weights_signature
from ..fuse import fuse_for_inference
from ..model import Xception

__all__ = ["FLOAT32_BLOCKS", "ReducedNet", "reduced_net"]

#: Blocks of :meth:`~xception_core.model.Xception.blocks` kept in float32: the stem and the
#: first two entry blocks (maps of 147 and 74 px at 299).
FLOAT32_BLOCKS = 3


class ReducedNet(nn.Module):
    """``model``'s function with its first ``float32_blocks`` blocks in float32 and the rest,
    head included, in ``dtype``; float32 logits.

    The float32 blocks are ``model``'s own modules when ``model`` is already folded
    (``is_fused``, e.g. a served replica), else those of a folded copy; the rest is a frozen copy.
    """

    def __init__(self, model: Xception, float32_blocks: int = FLOAT32_BLOCKS, dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        folded = model if getattr(model, "is_fused", False) else fuse_for_inference(model)
        blocks = [block for _, block in folded.blocks()]
        if not 0 <= float32_blocks <= len(blocks):
            raise ValueError(f"float32_blocks must be in 0..{len(blocks)}, got {float32_blocks}")
        self.dtype = dtype
        self.float32 = nn.ModuleList(blocks[:float32_blocks])
        rest = nn.Sequential(*blocks[float32_blocks:], folded.global_pool, folded.flatten, folded.fc)
        self.reduced = frozen(copy.deepcopy(rest), dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.float32:
            x = block(x)
        return self.reduced(x.to(self.dtype)).float()


class _Cached:
    def __init__(self, model: Xception) -> None:
        self.signature = weights_signature(model)
        self.net = ReducedNet(model)


_NETS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_NETS_LOCK = threading.Lock()


def reduced_net(model: Xception) -> ReducedNet:
    """``model``'s :class:`ReducedNet` in bf16 (default split), cached while ``model`` lives and
    its weights stay as they are (changed in place too)."""
    with _NETS_LOCK:
        cached = _NETS.get(model)
        if cached is None or cached.signature != weights_signature(model):
            cached = _NETS[model] = _Cached(model)
        return cached.net
