"""Input attributions in bfloat16: a BatchNorm-folded net whose entry flow stays float32.

bfloat16 autocast around an attribution casts every weight on every call and keeps all of the
network in bf16. :class:`ReducedNet` instead runs the entry flow (:data:`FLOAT32_FLOWS`) in
float32 and a frozen bf16 copy of the middle and exit flows
(:func:`~xception_core.frozen.frozen`: no weight gradients, channels_last, 1x1 convolutions on
small maps as matrix products), and returns float32 logits; the gradient reaches the float32
image in float32. The entry flow has the largest maps, and there bf16's rounding reaches every
pixel's gradient. On the paper model (random weights, the precision check's two generated
images at 299 px, class 0), the smaller Spearman agreement of the two bf16 heat maps with
float32's, by the blocks kept in float32 from the stem on:

=================================  ======  ======  ======  ======  ===========  ======
blocks in float32                  0       1       2       3       4 (entry)    6
=================================  ======  ======  ======  ======  ===========  ======
saliency                           0.980   0.983   0.988   0.994   0.996        0.997
Integrated Gradients, 8 points     0.966   0.971   0.983   0.988   0.991        0.990
=================================  ======  ======  ======  ======  ===========  ======

Integrated Gradients' signed maps stop gaining after the entry flow, so that is where bf16
starts; they pass the 0.99 check by little, and a model or images slightly different can keep
them in float32.

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
from ..model import FLOWS, Xception

__all__ = ["FLOAT32_FLOWS", "ReducedNet", "reduced_net"]

#: The flows of :meth:`~xception_core.model.Xception.blocks` kept in float32.
FLOAT32_FLOWS = ("entry",)


class ReducedNet(nn.Module):
    """``model``'s function with the blocks of ``float32_flows`` in float32 and the rest, head
    included, in ``dtype``; float32 logits.

    The float32 blocks are ``model``'s own modules when ``model`` is already folded
    (``is_fused``, e.g. a served replica), else those of a folded copy; the rest is a frozen copy.
    """

    def __init__(
        self, model: Xception, float32_flows: tuple[str, ...] = FLOAT32_FLOWS, dtype: torch.dtype = torch.bfloat16,
    ) -> None:
        super().__init__()
        if tuple(float32_flows) != FLOWS[: len(float32_flows)]:
            raise ValueError(f"float32_flows must be the first of {FLOWS}, in order; got {tuple(float32_flows)}")
        folded = model if getattr(model, "is_fused", False) else fuse_for_inference(model)
        blocks = [(name.split(".")[0], block) for name, block in folded.blocks()]
        self.dtype = dtype
        self.float32 = nn.ModuleList(block for flow, block in blocks if flow in float32_flows)
        rest = [block for flow, block in blocks if flow not in float32_flows]
        rest = nn.Sequential(*rest, folded.global_pool, folded.flatten, folded.fc)
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
