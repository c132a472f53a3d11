"""The networks a feature visualisation runs (:mod:`xception_core.featurevis`), cached per model.

A copy of the model with BatchNorm folded into the convolutions (:mod:`xception_core.fuse`),
``requires_grad=False`` (the backward computes input gradients only) and channels_last, per
dtype; in bf16 its 1x1 convolutions on small maps run as matrix products. Each copy has a twin
whose ReLUs pass Lucid's "redirected" gradient. The visualised layer itself is spliced in with
the model's unfolded weights, so its parts are read before its BatchNorm (atlas units).
"""

from __future__ import annotations

import copy
import threading
import weakref

import torch
import torch.nn.functional as F
from torch import nn

from .fuse import fuse_for_inference
from .introspect import resolve_layer
from .model import SeparableConv2d, Xception

__all__ = ["MATMUL_ROWS", "ModelCopies", "Pointwise", "RedirectedReLU", "model_copies", "visualisation_nets"]


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


#: Batch x height x width up to which a bf16 1x1 convolution runs as a matrix product.
MATMUL_ROWS = 512


def _is_pointwise(m: nn.Module) -> bool:
    return (
        type(m) is nn.Conv2d and m.kernel_size == (1, 1) and m.stride == (1, 1)
        and m.padding == (0, 0) and m.dilation == (1, 1) and m.groups == 1
    )


def _frozen(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    for p in module.parameters():
        p.requires_grad_(False)
    module = module.to(dtype, memory_format=torch.channels_last)
    if dtype == torch.bfloat16:
        for parent in list(module.modules()):
            for name, child in parent.named_children():
                if _is_pointwise(child):
                    setattr(parent, name, Pointwise(child))
    return module


def _signature(model: Xception) -> tuple:
    """Changes when a parameter or buffer of ``model`` is replaced, moved or written in place."""
    return tuple((id(t), t._version, t.device, t.dtype) for t in (*model.parameters(), *model.buffers()))


class ModelCopies:
    """The visualisation copies of one model: per dtype, BatchNorm folded into the convolutions
    (:func:`~xception_core.fuse.fuse_for_inference`), ``requires_grad=False`` (the backward
    computes input gradients only), channels_last; each with its redirected twin. Per visualised
    layer and dtype, the pair with that layer spliced in (:func:`visualisation_nets`). Plus the
    precision ``auto`` chose per (layer, part, size, batch, threads)."""

    def __init__(self, model: Xception) -> None:
        self.signature = _signature(model)
        self.nets: dict[torch.dtype, tuple[nn.Module, nn.Module]] = {}
        self.spliced: dict[tuple[str, torch.dtype], tuple[nn.Module, nn.Module]] = {}
        self.choices: dict[tuple, str] = {}

    def nets_for(self, model: Xception, dtype: torch.dtype) -> tuple[nn.Module, nn.Module]:
        if dtype not in self.nets:
            try:
                folded = fuse_for_inference(model)
            except (TypeError, ValueError):  # a BatchNorm that cannot be folded: keep them all
                folded = copy.deepcopy(model).eval()
            plain = _frozen(folded, dtype)
            self.nets[dtype] = (plain, _redirected(plain))
        return self.nets[dtype]


_COPIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_COPIES_LOCK = threading.Lock()


def model_copies(model: Xception) -> ModelCopies:
    """``model``'s :class:`ModelCopies`, cached; built again when its weights changed (in place too)."""
    with _COPIES_LOCK:
        copies = _COPIES.get(model)
        if copies is None or copies.signature != _signature(model):
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
        target = _frozen(copy.deepcopy(resolve_layer(model, layer)), dtype)
        copies.spliced[key] = (_splice(plain, layer, target), _splice(redirected, layer, _redirected(target)))
    return copies.spliced[key]
