"""Frozen copies of a network for input gradients: shared by feature visualisation
(:mod:`xception_core.visnets`) and the reduced-precision attributions
(:mod:`xception_core.attributions.reduced`).

:func:`frozen` turns a module (a folded model, or some of its blocks) into one that computes
input gradients only: ``requires_grad=False`` on every parameter, channels_last, a given dtype;
in bf16 its 1x1 convolutions on small maps run as matrix products (:class:`Pointwise`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MATMUL_ROWS", "Pointwise", "frozen", "weights_signature"]

#: Batch x height x width up to which a bf16 1x1 convolution runs as a matrix product.
MATMUL_ROWS = 512


class Pointwise(nn.Module):
    """A 1x1 convolution (stride 1, no padding, one group) that runs as a matrix product over the
    channels of a channels_last map (a view, no copy) when the map has at most
    :data:`MATMUL_ROWS` pixels in all: in bf16, PyTorch's matmul beats its 1x1 convolution there
    (about 2x at 8x8 and below); on larger maps the convolution is as fast or faster."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.weight, self.bias = conv.weight, conv.bias
        self.out_channels = conv.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        if n * h * w > MATMUL_ROWS or not x.is_contiguous(memory_format=torch.channels_last):
            return F.conv2d(x, self.weight, self.bias)
        out = F.linear(x.permute(0, 2, 3, 1), self.weight.view(self.out_channels, c), self.bias)
        return out.permute(0, 3, 1, 2)


def _is_pointwise(m: nn.Module) -> bool:
    return (
        type(m) is nn.Conv2d and m.kernel_size == (1, 1) and m.stride == (1, 1)
        and m.padding == (0, 0) and m.dilation == (1, 1) and m.groups == 1
    )


def frozen(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """``module`` itself, changed in place: frozen, channels_last, in ``dtype``; in bf16 its
    1x1 convolutions replaced by :class:`Pointwise` (same weights)."""
    for p in module.parameters():
        p.requires_grad_(False)
    module = module.to(dtype, memory_format=torch.channels_last)
    if dtype == torch.bfloat16:
        for parent in list(module.modules()):
            for name, child in parent.named_children():
                if _is_pointwise(child):
                    setattr(parent, name, Pointwise(child))
    return module


def weights_signature(model: nn.Module) -> tuple:
    """Changes when a parameter or buffer of ``model`` is replaced, moved or written in place:
    the key that tells a cached copy of ``model`` is stale."""
    return tuple((id(t), t._version, t.device, t.dtype) for t in (*model.parameters(), *model.buffers()))
