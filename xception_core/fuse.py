"""Inference-only copy of an :class:`~xception_core.model.Xception` with BatchNorm folded away.

In eval mode a BatchNorm is an affine map per channel, ``y = (x - mean) / sqrt(var + eps) * gamma + beta``;
when it directly follows a convolution it folds into that convolution's weights (scaled per
output channel) plus a bias. :func:`fuse_for_inference` does this for every BatchNorm of the
network (``torch.nn.utils.fusion.fuse_conv_bn_eval`` does the arithmetic):

* the stem's ``conv1``/``bn1`` and ``conv2``/``bn2``;
* each separable convolution's last part (``pointwise`` in Xception's order; the ``depthwise`` /
  ``grouped`` 3x3 or the regular ``conv`` at other points of the spectrum) with the block's ``bnK``
  that follows it (the intermediate activation, if any, sits between the parts, so it is untouched);
* each residual ``skip`` with its ``skip_bn``.

The folded BatchNorms become :class:`torch.nn.Identity`, so the module tree (and the layer names)
stay as they are. The result is a NEW model, in eval mode, channels_last, with
``requires_grad=False`` everywhere, for predictions only: a captured last-part output of the
fused model already includes the BatchNorm, and fine-tuning it would lose the BatchNorm
statistics. Attributions and activation captures keep the original model.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .model import ExitTail, Stem, Xception, XceptionBlock

__all__ = ["fuse_for_inference", "is_fused"]


def _fold(owner: nn.Module, bn_name: str, conv_owner: nn.Module, conv_name: str) -> None:
    bn = getattr(owner, bn_name)
    conv = getattr(conv_owner, conv_name)
    if bn is None or conv is None or isinstance(bn, nn.Identity):
        return
    if not isinstance(bn, nn.BatchNorm2d) or not isinstance(conv, nn.Conv2d):
        raise TypeError(f"cannot fold {type(bn).__name__} into {type(conv).__name__}")
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("BatchNorm without running statistics (track_running_stats=False) cannot be folded")
    setattr(conv_owner, conv_name, fuse_conv_bn_eval(conv, bn))
    setattr(owner, bn_name, nn.Identity())


def fuse_for_inference(model: Xception) -> Xception:
    """A new eval-mode, channels_last copy of ``model`` with every BatchNorm folded into its conv.

    ``model`` itself is left untouched (mode, weights, memory format). The copy computes the
    same function as ``model.eval()`` up to float rounding.
    """
    if not isinstance(model, Xception):
        raise TypeError(f"fuse_for_inference expects an Xception, got {type(model).__name__}")
    fused = copy.deepcopy(model)
    fused.eval()
    for module in list(fused.modules()):
        if isinstance(module, Stem):
            _fold(module, "bn1", module, "conv1")
            _fold(module, "bn2", module, "conv2")
        elif isinstance(module, XceptionBlock):
            for k in range(1, module.num_separable + 1):
                sep = getattr(module, f"sep{k}")
                _fold(module, f"bn{k}", sep, sep.parts[-1])
            if module.skip is not None:
                _fold(module, "skip_bn", module, "skip")
        elif isinstance(module, ExitTail):
            _fold(module, "bn1", module.sep1, module.sep1.parts[-1])
            _fold(module, "bn2", module.sep2, module.sep2.parts[-1])
    left = [name for name, m in fused.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if left:
        raise ValueError(f"BatchNorm layers not preceded by a foldable convolution: {left}")
    for p in fused.parameters():
        p.requires_grad_(False)
    fused.is_fused = True
    return fused.to(memory_format=torch.channels_last)


def is_fused(model: nn.Module) -> bool:
    """True for a model returned by :func:`fuse_for_inference`."""
    return bool(getattr(model, "is_fused", False))
