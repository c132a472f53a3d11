"""The networks a feature visualisation runs (:mod:`xception_core.featurevis`), cached per model.

A copy of the model with BatchNorm folded into the convolutions (:mod:`xception_core.fuse`),
``requires_grad=False`` (the backward computes input gradients only) and channels_last, per
dtype (:func:`~xception_core.frozen.frozen`: in bf16 its 1x1 convolutions on small maps run as
matrix products). Each copy has a twin whose ReLUs pass Lucid's "redirected" gradient. The visualised layer itself is spliced in with
the model's unfolded weights, so its parts are read before its BatchNorm (atlas units).
"""

from __future__ import annotations

import copy
import threading
import weakref

import torch
from torch import nn

from .frozen import frozen, weights_signature
from .fuse import fuse_for_inference
from .introspect import resolve_layer
from .model import SeparableConv2d, Xception

__all__ = ["ModelCopies", "RedirectedReLU", "model_copies", "visualisation_nets"]


class _RedirectedReLUFunction(torch.autograd.Function):
    """ReLU forward; backward as Lucid's "redirected ReLU": where the true gradient of a batch
    element is zero everywhere (a dead channel for this image), let the gradient through where
    it would raise the input, so the optimisation can leave the dead region."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        relu_grad = torch.ops.aten.threshold_backward(grad, x, 0)  # grad where x > 0, else 0
        alive = torch.count_nonzero(relu_grad, dim=tuple(range(1, grad.dim()))) > 0  # no flatten: a copy in channels_last
        if bool(alive.all()):
            return relu_grad
        # grad is d(loss)/dx; loss = -objective, so grad < 0 raises the input: keep grad where
        # x > 0 or grad <= 0, i.e. the smaller of grad and relu_grad
        redirected = torch.minimum(grad, relu_grad)
        return torch.where(alive.view(-1, *([1] * (grad.dim() - 1))), relu_grad, redirected)


class RedirectedReLU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _RedirectedReLUFunction.apply(x)


def _redirected(module: nn.Module) -> nn.Module:
    """``module`` with every ReLU redirected, sharing its parameters and buffers.

    A twin rather than hooks: hooks on a shared model would reach every concurrent forward
    (and Captum's DeepLift rules key on the exact ``nn.ReLU`` type, so the model keeps it)."""
    twin = copy.copy(module)
    twin._modules = copy.deepcopy(module._modules, memo={id(t): t for t in (*module.parameters(), *module.buffers())})
    for parent in list(twin.modules()):
        for name, child in parent.named_children():
            if type(child) is nn.ReLU:
                setattr(parent, name, RedirectedReLU())
    return twin


class ModelCopies:
    """The visualisation copies of one model: per dtype, BatchNorm folded into the convolutions
    (:func:`~xception_core.fuse.fuse_for_inference`), ``requires_grad=False`` (the backward
    computes input gradients only), channels_last; each with its redirected twin. Per visualised
    layer and dtype, the pair with that layer spliced in (:func:`visualisation_nets`). Plus the
    precision ``auto`` chose per (layer, part, size, batch, threads)."""

    def __init__(self, model: Xception) -> None:
        self.signature = weights_signature(model)
        self.nets: dict[torch.dtype, tuple[nn.Module, nn.Module]] = {}
        self.spliced: dict[tuple[str, torch.dtype], tuple[nn.Module, nn.Module]] = {}
        self.choices: dict[tuple, str] = {}

    def nets_for(self, model: Xception, dtype: torch.dtype) -> tuple[nn.Module, nn.Module]:
        if dtype not in self.nets:
            try:
                folded = fuse_for_inference(model)
            except (TypeError, ValueError):  # a BatchNorm that cannot be folded: keep them all
                folded = copy.deepcopy(model).eval()
            plain = frozen(folded, dtype)
            self.nets[dtype] = (plain, _redirected(plain))
        return self.nets[dtype]


_COPIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_COPIES_LOCK = threading.Lock()


def model_copies(model: Xception) -> ModelCopies:
    """``model``'s :class:`ModelCopies`, cached; built again when its weights changed (in place too)."""
    with _COPIES_LOCK:
        copies = _COPIES.get(model)
        if copies is None or copies.signature != weights_signature(model):
            copies = _COPIES[model] = ModelCopies(model)
        return copies


def _splice(root: nn.Module, layer: str, new: nn.Module) -> nn.Module:
    """A shallow copy of ``root`` whose separable layer ``layer`` is ``new`` (the rest shared)."""
    path = next(name for name, m in root.named_modules() if isinstance(m, SeparableConv2d) and m.layer_name == layer)
    top = copy.copy(root)
    top._modules = dict(root._modules)
    parent, *names = (top, *path.split("."))
    for name in names[:-1]:
        child = copy.copy(parent._modules[name])
        child._modules = dict(child._modules)
        parent._modules[name] = child
        parent = child
    parent._modules[names[-1]] = new
    return top


def visualisation_nets(model: Xception, layer: str, dtype: torch.dtype = torch.float32) -> tuple[nn.Module, nn.Module]:
    """The networks a visualisation of ``layer`` runs: (plain, redirected ReLUs), in ``dtype``.

    The folded copy of ``model`` (cached), except ``layer`` itself, which keeps ``model``'s
    unfolded weights: its captured parts are read before the BatchNorm that follows (atlas
    units), and the forward stops there, so nothing after it runs. Cached with the copies. The caller holds
    ``model_lock(model).shared()`` (a copy taken under Captum's hooks would keep them)."""
    copies = model_copies(model)
    key = (layer, dtype)
    if key not in copies.spliced:
        plain, redirected = copies.nets_for(model, dtype)
        target = frozen(copy.deepcopy(resolve_layer(model, layer)), dtype)
        copies.spliced[key] = (_splice(plain, layer, target), _splice(redirected, layer, _redirected(target)))
    return copies.spliced[key]
