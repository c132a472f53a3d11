"""Captum attributions for Xception, with the method catalogue kept as data.

Every algorithm is a small class with one public verb (``attribute``), in the
style of ``captum.attr``, and every one of them calls Captum itself; this
module adds what a service needs around them:

- :data:`METHODS` -- the catalogue (:class:`MethodSpec` / :class:`Param`):
  each method's parameters with kinds, defaults and ranges, so the REST API
  can validate and document them without knowing the algorithms. Every cost
  knob a client can set is bounded here.
- :class:`Attributor` -- ``attribute(x, method, target, layer, part, **params)``
  validates everything, runs the method in float32 with autograd (never under
  ``torch.inference_mode``; the input is copied into a fresh tensor), and
  returns an :class:`AttributionResult`: the raw attribution, a heatmap at
  input resolution, timings and quality figures.
- :func:`deletion_insertion_auc` -- the deletion / insertion curves of
  Petsiuk et al. (RISE, 2018) for any heatmap.

Concurrency
-----------
Captum's layer methods (LayerGradCam, GuidedGradCam, LayerGradientXActivation)
register forward hooks on the model's sub-modules, and DeepLift /
GuidedBackprop / GuidedGradCam register hooks on every ``nn.ReLU``. Hooks live
on the *shared* modules, so while they are registered they act on every
forward and backward through that model, from any thread. Each model
therefore has a readers-writer lock, :func:`model_lock` (kept in a
``WeakKeyDictionary`` keyed by the model): hook-free methods (integrated
gradients, saliency, smoothgrad, gradient SHAP, input x gradient, occlusion)
take it *shared* and run concurrently; hook methods take it *exclusive*.
Code outside this module that runs forwards on a model an :class:`Attributor`
may be using at the same time (prediction, activation capture) should hold
``model_lock(model).shared()`` around them, otherwise a hook registered for an
attribution can see (and, for layer methods, record) that foreign forward.
The lock is not reentrant.

Random methods (smoothgrad, gradient SHAP, and the infidelity and
sensitivity figures) draw from torch's and NumPy's global generators inside
Captum. They run seeded from the ``seed`` parameter inside
``torch.random.fork_rng`` with NumPy's state saved and restored, under one
process-wide lock, so results are reproducible and the caller's RNG state is
left untouched.
"""

from __future__ import annotations

import copy
import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from captum.attr import (
    DeepLift,
    GradientShap,
    GuidedBackprop,
    GuidedGradCam,
    InputXGradient,
    IntegratedGradients,
    LayerAttribution,
    LayerGradCam,
    LayerGradientXActivation,
    NoiseTunnel,
    Occlusion,
    Saliency,
)
from captum.metrics import infidelity as captum_infidelity
from captum.metrics import sensitivity_max as captum_sensitivity_max
from torch import nn

from .introspect import PARTS, UnknownLayerError, resolve_layer
from .locks import ModelLock, model_lock

__all__ = [
    "AttributionError",
    "AttributionResult",
    "Attributor",
    "COMMON_PARAMS",
    "DeletionInsertion",
    "InputError",
    "METHODS",
    "MAX_OCCLUSION_POSITIONS",
    "MethodSpec",
    "ModelLock",
    "Param",
    "ParamError",
    "UnknownLayerError",
    "UnknownMethodError",
    "deletion_insertion_auc",
    "get_method",
    "model_lock",
    "occlusion_positions",
]

# ---------------------------------------------------------------------------
# errors


class AttributionError(ValueError):
    """Base class of every attribution error (except :class:`UnknownLayerError`)."""


class UnknownMethodError(AttributionError):
    """A method name not in :data:`METHODS`; the message lists the valid ones."""


class ParamError(AttributionError):
    """A parameter that is unknown, of the wrong type, or out of range.

    ``param`` names the offending parameter (``"target"``, ``"layer"``, ...).
    """

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class InputError(AttributionError):
    """The input tensor is not one finite ``[1, 3, H, W]`` image."""


# ---------------------------------------------------------------------------
# the catalogue

ParamKind = Literal["int", "float", "bool", "choice"]
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


@dataclass(frozen=True)
class Param:
    """One method parameter: kind, default and (for numbers) inclusive range."""

    name: str
    kind: ParamKind
    default: Any
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] | None = None
    description: str = ""

    def coerce(self, value: Any) -> Any:
        """``value`` converted to this parameter's kind and checked, or :class:`ParamError`.

        Strings are accepted for every kind (query-string values: ``"32"``,
        ``"0.1"``, ``"true"``); floats are not accepted for ints.
        """
        name = self.name
        if self.kind == "int":
            if isinstance(value, (bool, np.bool_)):
                raise ParamError(f"{name} must be an integer, got {value!r}", name)
            if isinstance(value, (int, np.integer)):
                out: Any = int(value)
            elif isinstance(value, str):
                try:
                    out = int(value.strip())
                except ValueError:
                    raise ParamError(f"{name} must be an integer, got {value!r}", name) from None
            else:
                raise ParamError(f"{name} must be an integer, got {value!r}", name)
        elif self.kind == "float":
            if isinstance(value, (bool, np.bool_)):
                raise ParamError(f"{name} must be a number, got {value!r}", name)
            if isinstance(value, (int, float, np.integer, np.floating)):
                out = float(value)
            elif isinstance(value, str):
                try:
                    out = float(value.strip())
                except ValueError:
                    raise ParamError(f"{name} must be a number, got {value!r}", name) from None
            else:
                raise ParamError(f"{name} must be a number, got {value!r}", name)
            if not math.isfinite(out):
                raise ParamError(f"{name} must be a finite number, got {value!r}", name)
        elif self.kind == "bool":
            if isinstance(value, (bool, np.bool_)):
                out = bool(value)
            elif isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
                out = value.strip().lower() in _TRUE
            else:
                raise ParamError(f"{name} must be true or false, got {value!r}", name)
        else:  # choice
            if not isinstance(value, str) or value not in (self.choices or ()):
                raise ParamError(
                    f"{name} must be one of {', '.join(self.choices or ())}; got {value!r}", name
                )
            out = value
        if self.kind in ("int", "float"):
            lo, hi = self.minimum, self.maximum
            if (lo is not None and out < lo) or (hi is not None and out > hi):
                raise ParamError(
                    f"{name} must be between {_fmt(lo)} and {_fmt(hi)}, got {_fmt(out)}", name
                )
        return out

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "default": self.default,
            "description": self.description,
        }
        if self.minimum is not None:
            d["minimum"] = self.minimum
        if self.maximum is not None:
            d["maximum"] = self.maximum
        if self.choices is not None:
            d["choices"] = list(self.choices)
        return d


def _fmt(v: float | None) -> str:
    if v is None:
        return "unbounded"
    return str(v) if isinstance(v, int) else f"{v:g}"


OutputKind = Literal["input", "layer", "channels"]


@dataclass(frozen=True)
class MethodSpec:
    """A method of the catalogue.

    ``layer_method``: needs ``layer`` and ``part``. ``costly``: many forward /
    backward passes (worth a warning in a UI). ``hooks``: registers hooks on
    the shared model, so it runs under the model's exclusive lock.
    ``stochastic``: draws random numbers (seeded by ``seed``). ``output``:
    ``input`` ([3, H, W] attribution), ``layer`` ([1, h, w] at the layer's
    resolution) or ``channels`` ([C] per-channel scores).
    """

    name: str
    description: str
    layer_method: bool
    params: tuple[Param, ...]
    costly: bool
    hooks: bool = False
    stochastic: bool = False
    output: OutputKind = "input"

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params}

    def resolve(self, params: dict[str, Any]) -> dict[str, Any]:
        """Defaults overlaid with ``params``, each coerced and range-checked."""
        unknown = sorted(set(params) - set(self.param_names))
        if unknown:
            raise ParamError(
                f"unknown parameter(s) {', '.join(unknown)} for method {self.name}; "
                f"allowed: {', '.join(self.param_names)}",
                unknown[0],
            )
        return {p.name: p.coerce(params[p.name]) if p.name in params else p.default for p in self.params}

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "layer_method": self.layer_method,
            "costly": self.costly,
            "hooks": self.hooks,
            "stochastic": self.stochastic,
            "output": self.output,
            "params": [p.to_dict() for p in self.params],
        }


MAX_OCCLUSION_POSITIONS = 1024
#: Perturbations drawn for the infidelity figure (one batched forward).
INFIDELITY_SAMPLES = 16
#: Standard deviation of the infidelity perturbations, in input units ([-1, 1]).
INFIDELITY_NOISE = 0.1
#: Perturbed inputs for sensitivity_max; each one re-runs the method.
SENSITIVITY_SAMPLES = 4
SENSITIVITY_RADIUS = 0.02

BASELINES = {"zero": 0.0, "black": -1.0}

_BASELINE = Param(
    "baseline",
    "choice",
    "zero",
    choices=tuple(BASELINES),
    description="reference image: 'zero' = all zeros in the [-1, 1] input space (mid-grey), "
    "'black' = all -1",
)


def _batch(default: int, what: str) -> Param:
    return Param(
        "internal_batch_size",
        "int",
        default,
        1,
        64,
        description=f"{what} per forward/backward pass; bounds memory, not the result",
    )


COMMON_PARAMS: tuple[Param, ...] = (
    Param("seed", "int", 0, 0, 2**31 - 1, description="seed of every random draw (noise, baselines, metrics)"),
    Param(
        "auc_steps",
        "int",
        16,
        0,
        64,
        description="steps of the deletion / insertion curves (2 x (steps + 1) forward passes, "
        "batched); 0 skips them",
    ),
    Param(
        "infidelity",
        "bool",
        False,
        description=f"compute Captum's infidelity ({INFIDELITY_SAMPLES} Gaussian perturbations of "
        f"std {INFIDELITY_NOISE}, normalised attributions; one batched forward)",
    ),
    Param(
        "sensitivity",
        "bool",
        False,
        description=f"compute Captum's sensitivity_max: re-runs the method {1 + SENSITIVITY_SAMPLES} "
        f"times (the input plus {SENSITIVITY_SAMPLES} perturbations of radius {SENSITIVITY_RADIUS}) "
        "-- as costly as the method itself, times five",
    ),
)

_DELTA_NOTE = (
    " Captum's DeepLift rule for max-pooling is inexact when pooling windows overlap "
    "(captum#1276), as Xception's 3x3 stride-2 pools do, so the convergence delta "
    "(attributions' sum minus f(x) - f(baseline)) is not ~0 on this network; it is "
    "reported as a quality figure anyway."
)


def _spec(
    name: str,
    description: str,
    params: tuple[Param, ...] = (),
    *,
    layer_method: bool = False,
    costly: bool = False,
    hooks: bool = False,
    stochastic: bool = False,
    output: OutputKind = "input",
) -> MethodSpec:
    return MethodSpec(
        name=name,
        description=description,
        layer_method=layer_method,
        params=params + COMMON_PARAMS,
        costly=costly,
        hooks=hooks,
        stochastic=stochastic,
        output=output,
    )


METHODS: dict[str, MethodSpec] = {
    s.name: s
    for s in (
        _spec(
            "integrated_gradients",
            "Integrated Gradients (Sundararajan et al. 2017): gradients averaged along the "
            "straight path from the baseline to the image, times (image - baseline). "
            "Reports the convergence delta.",
            (
                Param("n_steps", "int", 32, 1, 256, description="points on the path (Gauss-Legendre)"),
                _batch(16, "path points"),
                _BASELINE,
            ),
            costly=True,
        ),
        _spec(
            "saliency",
            "Saliency (Simonyan et al. 2013): gradient of the target logit w.r.t. the input.",
            (Param("absolute", "bool", True, description="take the gradient's absolute value"),),
        ),
        _spec(
            "smoothgrad",
            "SmoothGrad (Smilkov et al. 2017): saliency averaged over noisy copies of the image "
            "(Captum NoiseTunnel over Saliency).",
            (
                Param("nt_samples", "int", 16, 1, 64, description="noisy copies"),
                Param("stdev", "float", 0.15, 0.0, 1.0, description="noise standard deviation, in input units ([-1, 1])"),
                Param(
                    "nt_type",
                    "choice",
                    "smoothgrad",
                    choices=("smoothgrad", "smoothgrad_sq", "vargrad"),
                    description="mean, mean of squares, or variance of the noisy saliencies",
                ),
                Param("absolute", "bool", True, description="absolute value of each saliency"),
                _batch(16, "noisy copies"),
            ),
            costly=True,
            stochastic=True,
        ),
        _spec(
            "gradient_shap",
            "GradientSHAP (Lundberg & Lee 2017): expected gradients at random points between the "
            "baseline and noisy copies of the image, times (image - baseline).",
            (
                Param("n_samples", "int", 16, 1, 64, description="random samples"),
                Param("stdev", "float", 0.09, 0.0, 1.0, description="noise standard deviation, in input units ([-1, 1])"),
                _BASELINE,
                _batch(16, "samples (more samples run as several Captum calls, averaged)"),
            ),
            costly=True,
            stochastic=True,
        ),
        _spec(
            "deeplift",
            "DeepLIFT (Shrikumar et al. 2017), rescale rule, against the baseline." + _DELTA_NOTE,
            (_BASELINE,),
            hooks=True,
        ),
        _spec(
            "guided_backprop",
            "Guided Backpropagation (Springenberg et al. 2014): gradients with negative values "
            "stopped at every ReLU.",
            hooks=True,
        ),
        _spec("input_x_gradient", "Input x Gradient: the input times the gradient of the target logit."),
        _spec(
            "occlusion",
            "Occlusion (Zeiler & Fergus 2014): the drop in the target logit when a square window "
            f"is replaced by the baseline, slid over the image (at most {MAX_OCCLUSION_POSITIONS} positions).",
            (
                Param("window", "int", 32, 4, 128, description="side of the occluding square, in pixels (at most the input size)"),
                Param("stride", "int", 16, 2, 128, description="step between windows, in pixels (at most window)"),
                _BASELINE,
                _batch(16, "occluded images"),
            ),
            costly=True,
        ),
        _spec(
            "layer_gradcam",
            "Grad-CAM (Selvaraju et al. 2017) at the depthwise or pointwise output of a separable "
            "layer: channel maps weighted by their mean gradient, summed; at the layer's "
            "resolution, upsampled bilinearly for the heatmap.",
            (Param("relu_attributions", "bool", True, description="keep only positive evidence (ReLU), as in the paper"),),
            layer_method=True,
            hooks=True,
            output="layer",
        ),
        _spec(
            "guided_gradcam",
            "Guided Grad-CAM: Guided Backpropagation times the (ReLU'd) Grad-CAM map of the "
            "chosen layer and part, upsampled to the input.",
            (
                Param(
                    "interpolate_mode",
                    "choice",
                    "bilinear",
                    choices=("nearest", "bilinear"),
                    description="how the Grad-CAM map is upsampled",
                ),
            ),
            layer_method=True,
            hooks=True,
        ),
        _spec(
            "channel_importance",
            "Which channels of the layer's depthwise or pointwise output drive the target: "
            "gradient x activation (Captum LayerGradientXActivation) summed over space, one "
            "signed score per channel (a first-order estimate of each channel's contribution "
            "to the target logit); ranked in channel_ranking. The heatmap is the same product "
            "summed over channels.",
            layer_method=True,
            hooks=True,
            output="channels",
        ),
    )
}


def get_method(name: str) -> MethodSpec:
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        raise UnknownMethodError(f"unknown method {name!r}; methods are {', '.join(METHODS)}") from None


def occlusion_positions(height: int, width: int, window: int, stride: int) -> int:
    """Window positions Captum's Occlusion evaluates on an ``height x width`` image."""
    per_dim = [math.ceil((size - window) / stride) + 1 for size in (height, width)]
    return per_dim[0] * per_dim[1]


# ---------------------------------------------------------------------------
# locks


# Captum draws from the global torch / NumPy generators; seeding them is only
# reproducible if no other seeded section runs at the same time.
_RNG_LOCK = threading.Lock()


@contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Global torch and NumPy generators seeded with ``seed``; restored afterwards."""
    devices = [device] if device.type == "cuda" else []
    with _RNG_LOCK, torch.random.fork_rng(devices=devices, device_type=device.type if devices else "cuda"):
        np_state = np.random.get_state()
        try:
            torch.manual_seed(seed)
            np.random.seed(seed)
            yield
        finally:
            np.random.set_state(np_state)


# ---------------------------------------------------------------------------
# the algorithms: one small class each, one public verb


def _baseline(x: torch.Tensor, name: str) -> torch.Tensor:
    return torch.full_like(x, BASELINES[name])


class _Algorithm:
    """``attribute(x, target, params, delta)`` -> (attribution with batch dim, delta or None)."""

    def __init__(self, model: nn.Module, module: nn.Module | None = None) -> None:
        self.model = model
        self.module = module

    def attribute(
        self, x: torch.Tensor, target: int, params: dict[str, Any], delta: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError


class _IntegratedGradients(_Algorithm):
    def attribute(self, x, target, params, delta=False):
        out = IntegratedGradients(self.model).attribute(
            x,
            baselines=_baseline(x, params["baseline"]),
            target=target,
            n_steps=params["n_steps"],
            internal_batch_size=params["internal_batch_size"],
            return_convergence_delta=delta,
        )
        return out if delta else (out, None)


class _Saliency(_Algorithm):
    def attribute(self, x, target, params, delta=False):
        return Saliency(self.model).attribute(x, target=target, abs=params["absolute"]), None


class _SmoothGrad(_Algorithm):
    def attribute(self, x, target, params, delta=False):
        out = NoiseTunnel(Saliency(self.model)).attribute(
            x,
            nt_type=params["nt_type"],
            nt_samples=params["nt_samples"],
            nt_samples_batch_size=params["internal_batch_size"],
            stdevs=params["stdev"],
            target=target,
            abs=params["absolute"],
        )
        return out, None


class _GradientShap(_Algorithm):
    def attribute(self, x, target, params, delta=False):
        n, chunk = params["n_samples"], params["internal_batch_size"]
        baselines = _baseline(x, params["baseline"])
        total = torch.zeros_like(x)
        done = 0
        # GradientShap evaluates all samples in one batch; run chunks of at most
        # internal_batch_size samples and average (identical to Captum when n <= chunk).
        while done < n:
            k = min(chunk, n - done)
            part = GradientShap(self.model).attribute(
                x, baselines=baselines, n_samples=k, stdevs=params["stdev"], target=target
            )
            total = total + part * k
            done += k
        return total / n, None


class _DeepLift(_Algorithm):
    def attribute(self, x, target, params, delta=False):
        out = DeepLift(self.model).attribute(
            x, baselines=_baseline(x, params["baseline"]), target=target, return_convergence_delta=delta
        )
        return out if delta else (out, None)


class _GuidedBackprop(_Algorithm):
    def attribute(self, x, target, params, delta=False):
        return GuidedBackprop(self.model).attribute(x, target=target), None


class _InputXGradient(_Algorithm):
    def attribute(self, x, target, params, delta=False):
        return InputXGradient(self.model).attribute(x, target=target), None


class _Occlusion(_Algorithm):
    def attribute(self, x, target, params, delta=False):
        w, s = params["window"], params["stride"]
        out = Occlusion(self.model).attribute(
            x,
            sliding_window_shapes=(x.shape[1], w, w),
            strides=(x.shape[1], s, s),
            baselines=BASELINES[params["baseline"]],
            target=target,
            perturbations_per_eval=params["internal_batch_size"],
        )
        return out, None


class _LayerGradCam(_Algorithm):
    def attribute(self, x, target, params, delta=False):
        out = LayerGradCam(self.model, self.module).attribute(
            x, target=target, relu_attributions=params["relu_attributions"]
        )
        return out, None


class _GuidedGradCam(_Algorithm):
    def attribute(self, x, target, params, delta=False):
        out = GuidedGradCam(self.model, self.module).attribute(
            x, target=target, interpolate_mode=params["interpolate_mode"]
        )
        return out, None


class _ChannelImportance(_Algorithm):
    def attribute(self, x, target, params, delta=False):
        # [N, C, h, w]: gradient x activation per channel and position
        return LayerGradientXActivation(self.model, self.module).attribute(x, target=target), None


_ALGORITHMS: dict[str, type[_Algorithm]] = {
    "integrated_gradients": _IntegratedGradients,
    "saliency": _Saliency,
    "smoothgrad": _SmoothGrad,
    "gradient_shap": _GradientShap,
    "deeplift": _DeepLift,
    "guided_backprop": _GuidedBackprop,
    "input_x_gradient": _InputXGradient,
    "occlusion": _Occlusion,
    "layer_gradcam": _LayerGradCam,
    "guided_gradcam": _GuidedGradCam,
    "channel_importance": _ChannelImportance,
}
assert set(_ALGORITHMS) == set(METHODS)
_DELTA_METHODS = {"integrated_gradients", "deeplift"}


# ---------------------------------------------------------------------------
# deletion / insertion


@dataclass
class DeletionInsertion:
    """Deletion and insertion curves: target probability against the fraction of pixels changed."""

    deletion_auc: float
    insertion_auc: float
    fractions: list[float]
    deletion: list[float]
    insertion: list[float]


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(3 * sigma)))
    radius = min(radius, x.shape[-1] - 1, x.shape[-2] - 1)
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def _model_device(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def deletion_insertion_auc(
    model: nn.Module,
    x: torch.Tensor,
    heatmap: torch.Tensor,
    target: int,
    steps: int = 16,
    baseline: float | torch.Tensor = 0.0,
    insertion_start: Literal["blur", "baseline"] = "blur",
    blur_sigma: float | None = None,
    batch_size: int = 16,
) -> DeletionInsertion:
    """Deletion and insertion AUC of ``heatmap`` for class ``target`` (Petsiuk et al. 2018).

    Pixels are ranked by ``heatmap`` (largest first, ties in raster order) and
    changed in ``steps`` equal chunks. Deletion starts from ``x`` and replaces
    the ranked pixels (all colour channels) by ``baseline`` (default 0, mid-grey
    in [-1, 1] space); insertion starts from a Gaussian-blurred ``x`` (sigma
    ``blur_sigma``, default 2.5 % of the image side) -- or from the baseline --
    and puts the ranked pixels of ``x`` back. At each of the ``steps + 1``
    points the softmax probability of ``target`` is measured (batched forwards
    of at most ``batch_size`` images, no autograd); the AUC is the trapezoid
    rule over the fraction of pixels changed, in [0, 1]. A good heatmap gives
    a low deletion AUC and a high insertion AUC.
    """
    if steps < 1:
        raise ValueError("steps must be >= 1")
    device = _model_device(model)
    x = x.detach().to(device=device, dtype=torch.float32)
    if x.dim() == 3:
        x = x[None]
    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f"x must be one image [1, C, H, W], got {tuple(x.shape)}")
    h, w = x.shape[-2:]
    heat = torch.as_tensor(heatmap).detach().to(device=device, dtype=torch.float32)
    if heat.shape != (h, w):
        raise ValueError(f"heatmap must be {h}x{w} like the input, got {tuple(heat.shape)}")
    n = h * w
    heat = torch.nan_to_num(heat.flatten(), nan=float("-inf"))
    order = torch.argsort(heat, descending=True, stable=True)
    rank = torch.empty(n, dtype=torch.long, device=device)
    rank[order] = torch.arange(n, device=device)
    counts = torch.tensor([round(i * n / steps) for i in range(steps + 1)], device=device)
    base = torch.as_tensor(baseline, dtype=torch.float32, device=device).expand_as(x)
    if insertion_start == "blur":
        sigma = blur_sigma if blur_sigma is not None else max(1.0, 0.025 * max(h, w))
        start = _gaussian_blur(x, sigma)
    elif insertion_start == "baseline":
        start = base
    else:
        raise ValueError("insertion_start must be 'blur' or 'baseline'")

    def curve(source: torch.Tensor, dest: torch.Tensor) -> torch.Tensor:
        probs = []
        for i in range(0, steps + 1, batch_size):
            c = counts[i : i + batch_size]
            masks = (rank[None, :] < c[:, None]).view(-1, 1, h, w).to(x.dtype)
            batch = source * (1 - masks) + dest * masks
            with torch.no_grad():
                probs.append(torch.softmax(model(batch).float(), dim=1)[:, target])
        return torch.cat(probs).cpu()

    deletion = curve(x, base)
    insertion = curve(start, x)
    fractions = counts.cpu().double() / n
    return DeletionInsertion(
        deletion_auc=float(torch.trapezoid(deletion.double(), fractions)),
        insertion_auc=float(torch.trapezoid(insertion.double(), fractions)),
        fractions=fractions.tolist(),
        deletion=deletion.tolist(),
        insertion=insertion.tolist(),
    )


# ---------------------------------------------------------------------------
# the attributor


@dataclass
class AttributionResult:
    """What :meth:`Attributor.attribute` returns; every tensor is float32 on the CPU.

    ``attribution`` is Captum's raw output without the batch dimension:
    ``[3, H, W]`` for input methods, ``[1, h, w]`` at the layer's resolution
    for Grad-CAM, ``[C]`` (per-channel scores, channel order) for
    channel_importance. ``heatmap`` is ``[H, W]`` at input resolution, signed
    (input methods: summed over colour channels; layer methods: upsampled
    bilinearly with ``LayerAttribution.interpolate``). ``channel_ranking``
    (channel_importance only) lists ``(channel, score)`` by decreasing score.
    ``timing_ms`` is the attribution itself, ``quality_ms`` the quality
    figures; ``quality`` may hold ``convergence_delta`` (absolute),
    ``deletion_auc``, ``insertion_auc``, ``infidelity``, ``sensitivity_max``;
    ``curves`` the deletion / insertion curves. ``params`` are the resolved
    parameter values (defaults filled in).
    """

    method: str
    target: int
    predicted: int
    probability: float
    layer: str | None
    part: str | None
    attribution: torch.Tensor
    heatmap: torch.Tensor
    timing_ms: float
    quality: dict[str, float]
    params: dict[str, Any]
    quality_ms: float = 0.0
    channel_ranking: list[tuple[int, float]] | None = None
    curves: dict[str, list[float]] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Everything but the tensors, JSON-ready."""
        return {
            "method": self.method,
            "target": self.target,
            "predicted": self.predicted,
            "probability": self.probability,
            "layer": self.layer,
            "part": self.part,
            "attribution_shape": list(self.attribution.shape),
            "heatmap_shape": list(self.heatmap.shape),
            "timing_ms": self.timing_ms,
            "quality_ms": self.quality_ms,
            "quality": dict(self.quality),
            "params": dict(self.params),
            "channel_ranking": (
                [{"channel": c, "score": s} for c, s in self.channel_ranking]
                if self.channel_ranking is not None
                else None
            ),
            "curves": dict(self.curves),
        }


def _num_classes(model: nn.Module) -> int | None:
    cfg = getattr(model, "config", None)
    n = getattr(cfg, "num_classes", None)
    if isinstance(n, int):
        return n
    fc = getattr(model, "fc", None)
    return getattr(fc, "out_features", None) if isinstance(fc, nn.Linear) else None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Attributor:
    """Runs catalogue methods on one model; thread-safe (see the module notes on locking).

    Methods marked ``hooks`` in :data:`METHODS` run under
    ``model_lock(model).exclusive()``, the others under ``.shared()``; do not
    call :meth:`attribute` while holding that lock yourself (it is not
    reentrant). Other forwards of the same model that may run concurrently
    (prediction, activation capture) should hold ``model_lock(model).shared()``.

    The model should be in eval mode. For the methods that attribute to the input, a
    BatchNorm-folded copy (:func:`~xception_core.fuse.fuse_for_inference`) computes the same
    attributions (it is the same function of the image) in about half the time on a CPU: no
    BatchNorm layers and no weight gradients. Layer methods need the unfolded model, whose
    ``pointwise`` outputs precede their BatchNorm. A model whose parameters are not float32
    is copied once into a float32 twin used for every attribution (attributions
    run in full precision).
    """

    def __init__(self, model: nn.Module) -> None:
        params = list(model.parameters())
        if params and any(p.dtype != torch.float32 for p in params):
            model = copy.deepcopy(model).float()
        self.model = model
        self.device = _model_device(model)
        self.lock = model_lock(model)

    # -- validation ---------------------------------------------------------

    def _prepare_input(self, x: Any) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise InputError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() == 3:
            x = x[None]
        if x.dim() != 4 or x.shape[0] != 1 or x.shape[1] != 3:
            raise InputError(f"x must be one RGB image [1, 3, H, W], got {tuple(x.shape)}")
        if not (x.is_floating_point()):
            raise InputError(f"x must be a floating-point tensor, got {x.dtype}")
        with torch.inference_mode(False):
            # A fresh, ordinary tensor: ``x`` may be an inference tensor (which
            # cannot enter autograd) or belong to a caller we must not touch.
            # channels_last like the served models: Captum's scaled / noisy copies inherit it
            fresh = x.detach().to(device=self.device, dtype=torch.float32, copy=True).contiguous(memory_format=torch.channels_last)
        if not torch.isfinite(fresh).all():
            raise InputError("x contains NaN or infinite values")
        return fresh

    def _layer_module(self, spec: MethodSpec, layer: str | None, part: str | None) -> nn.Module | None:
        if not spec.layer_method:
            for name, value in (("layer", layer), ("part", part)):
                if value is not None:
                    raise ParamError(f"{name} is only for layer methods ({', '.join(_layer_methods())}); "
                                     f"{spec.name} works on the input", name)
            return None
        if layer is None or part is None:
            missing = "layer" if layer is None else "part"
            raise ParamError(f"{spec.name} needs layer and part ({' or '.join(PARTS)})", missing)
        if part not in PARTS:
            raise ParamError(f"part must be one of {', '.join(PARTS)}; got {part!r}", "part")
        sep = resolve_layer(self.model, layer)  # UnknownLayerError
        return getattr(sep, part)

    def _check_target(self, target: Any, num_classes: int) -> int:
        if isinstance(target, str) and target.strip().lstrip("-").isdigit():
            target = int(target.strip())
        if isinstance(target, (bool, np.bool_)) or not isinstance(target, (int, np.integer)):
            raise ParamError(f"target must be an integer class index, got {target!r}", "target")
        if not 0 <= int(target) < num_classes:
            raise ParamError(f"target must be in 0..{num_classes - 1}, got {target}", "target")
        return int(target)

    # -- the verb -----------------------------------------------------------

    def attribute(
        self,
        x: torch.Tensor,
        method: str,
        target: int | None = None,
        layer: str | None = None,
        part: str | None = None,
        logits: torch.Tensor | None = None,
        **params: Any,
    ) -> AttributionResult:
        """Attribute the logit of ``target`` (default: the predicted class) to the image ``x``.

        ``x`` is one preprocessed image ``[1, 3, H, W]`` (or ``[3, H, W]``). ``logits``: the
        model's logits for ``x`` when the caller has them (a prediction's), which saves a forward
        pass; they give the reported prediction and probability.
        Raises :class:`UnknownMethodError`, :class:`ParamError`,
        :class:`InputError` or :class:`UnknownLayerError` before any
        computation when something is invalid.
        """
        spec = get_method(method)
        resolved = spec.resolve(params)
        module = self._layer_module(spec, layer, part)
        xin = self._prepare_input(x)
        h, w = xin.shape[-2:]
        if method == "occlusion":
            self._check_occlusion(resolved, h, w)
        n_classes = _num_classes(self.model)
        if target is not None and n_classes is not None:
            target = self._check_target(target, n_classes)
        if logits is not None:
            if not isinstance(logits, torch.Tensor) or logits.dim() not in (1, 2) or logits.shape[0] != 1 and logits.dim() == 2:
                raise InputError(f"logits must be one row of logits [classes] or [1, classes], got {getattr(logits, 'shape', type(logits).__name__)}")
            if n_classes is not None and logits.numel() != n_classes:
                raise InputError(f"logits has {logits.numel()} values; the model has {n_classes} classes")
            if not torch.isfinite(logits).all():
                raise InputError("logits contains NaN or infinite values")
        algorithm = _ALGORITHMS[method](self.model, module)
        guard = self.lock.exclusive() if spec.hooks else self.lock.shared()
        with torch.inference_mode(False), guard:
            return self._run(spec, algorithm, xin, target, layer, part, resolved, logits)

    def _check_occlusion(self, p: dict[str, Any], h: int, w: int) -> None:
        if p["window"] > min(h, w):
            raise ParamError(f"window must be at most the input size ({min(h, w)}), got {p['window']}", "window")
        if p["stride"] > p["window"]:
            raise ParamError(f"stride must be at most window ({p['window']}), got {p['stride']}", "stride")
        n = occlusion_positions(h, w, p["window"], p["stride"])
        if n > MAX_OCCLUSION_POSITIONS:
            raise ParamError(
                f"occlusion with window {p['window']} and stride {p['stride']} on a {h}x{w} image "
                f"needs {n} window positions; the limit is {MAX_OCCLUSION_POSITIONS} -- "
                "use a larger stride",
                "stride",
            )

    def _run(
        self,
        spec: MethodSpec,
        algorithm: _Algorithm,
        x: torch.Tensor,
        target: int | None,
        layer: str | None,
        part: str | None,
        p: dict[str, Any],
        logits: torch.Tensor | None = None,
    ) -> AttributionResult:
        model, device = self.model, self.device
        probs = None
        if logits is not None:
            probs = torch.softmax(logits.detach().float().reshape(1, -1), dim=1)[0].to(device)
        elif target is None:  # the target is the predicted class: one forward first
            with torch.no_grad():
                probs = torch.softmax(model(x).float(), dim=1)[0]
        if probs is not None:
            target = int(probs.argmax()) if target is None else self._check_target(target, probs.numel())
        seed = p["seed"]
        want_delta = spec.name in _DELTA_METHODS

        # With a known target, the method's own forward pass of ``x`` (if it makes one) gives
        # the probabilities: no extra forward for Saliency, Grad-CAM and the like.
        seen: list[torch.Tensor] = []

        def record(_module: nn.Module, args: tuple, output: Any) -> None:
            if not seen and args and isinstance(output, torch.Tensor) and args[0].shape == x.shape and torch.equal(args[0].detach(), x):
                seen.append(output.detach().float())

        handle = model.register_forward_hook(record) if probs is None else None
        _sync(device)
        t0 = time.perf_counter()
        try:
            with torch.enable_grad():
                # a leaf that requires grad (Captum warns otherwise); ``x`` stays as is
                xg = x.detach().requires_grad_()
                if spec.stochastic:
                    with _seeded(seed, device):
                        raw, delta = algorithm.attribute(xg, target, p, want_delta)
                else:
                    raw, delta = algorithm.attribute(xg, target, p, want_delta)
                raw = raw.detach().contiguous()
        finally:
            if handle is not None:
                handle.remove()
        _sync(device)
        timing_ms = (time.perf_counter() - t0) * 1000
        if probs is None:
            if not seen:
                with torch.no_grad():
                    seen.append(model(x).float())
            probs = torch.softmax(seen[0], dim=1)[0]
            self._check_target(target, probs.numel())
        predicted = int(probs.argmax())

        h, w = x.shape[-2:]
        ranking = None
        if spec.output == "input":
            heat = raw[0].sum(0)
            attribution = raw[0]
        elif spec.output == "layer":
            heat = LayerAttribution.interpolate(raw, (h, w), interpolate_mode="bilinear")[0, 0]
            attribution = raw[0]
        else:  # channels
            attribution = raw[0].sum(dim=(1, 2))
            heat = LayerAttribution.interpolate(raw.sum(1, keepdim=True), (h, w), interpolate_mode="bilinear")[0, 0]
            scores = attribution.float().cpu()
            order = torch.argsort(scores, descending=True, stable=True)
            ranking = [(int(i), float(scores[i])) for i in order]

        quality: dict[str, float] = {}
        curves: dict[str, list[float]] = {}
        t1 = time.perf_counter()
        if delta is not None:
            quality["convergence_delta"] = float(delta.detach().abs().sum())
        if p["auc_steps"] > 0:
            di = deletion_insertion_auc(model, x, heat, target, steps=p["auc_steps"])
            quality["deletion_auc"] = di.deletion_auc
            quality["insertion_auc"] = di.insertion_auc
            curves = {"fractions": di.fractions, "deletion": di.deletion, "insertion": di.insertion}
        if p["infidelity"]:
            quality["infidelity"] = self._infidelity(spec, x, raw, heat, target, seed)
        if p["sensitivity"]:
            quality["sensitivity_max"] = self._sensitivity(spec, algorithm, x, target, p, seed)
        _sync(device)
        quality_ms = (time.perf_counter() - t1) * 1000

        return AttributionResult(
            method=spec.name,
            target=target,
            predicted=predicted,
            probability=float(probs[target]),
            layer=layer,
            part=part,
            attribution=attribution.float().cpu(),
            heatmap=heat.float().cpu(),
            timing_ms=timing_ms,
            quality=quality,
            params=dict(p),
            quality_ms=quality_ms,
            channel_ranking=ranking,
            curves=curves,
        )

    def _infidelity(
        self, spec: MethodSpec, x: torch.Tensor, raw: torch.Tensor, heat: torch.Tensor, target: int, seed: int
    ) -> float:
        # Input-space attributions as they are; layer-space ones through their
        # upsampled heatmap, shared by the colour channels. normalize=True fits
        # the attributions' scale, so Grad-CAM's arbitrary units do not matter.
        attr = raw if spec.output == "input" else heat[None, None].expand_as(x) / x.shape[1]

        def perturb(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            noise = torch.randn(inputs.shape, device=inputs.device, dtype=inputs.dtype) * INFIDELITY_NOISE
            return noise, inputs - noise

        with _seeded(seed, self.device):
            value = captum_infidelity(
                self.model,
                perturb,
                x,
                attr.contiguous(),
                target=target,
                n_perturb_samples=INFIDELITY_SAMPLES,
                max_examples_per_batch=INFIDELITY_SAMPLES,
                normalize=True,
            )
        return float(value.detach().sum())

    def _sensitivity(
        self, spec: MethodSpec, algorithm: _Algorithm, x: torch.Tensor, target: int, p: dict[str, Any], seed: int
    ) -> float:
        def explain(inputs: Any, target: Any = None) -> Any:
            batch = inputs[0] if isinstance(inputs, tuple) else inputs
            with torch.enable_grad():
                # perturbed inputs come one at a time (max_examples_per_batch=1);
                # Captum expands ``target`` to the batch
                t = int(target[0]) if isinstance(target, (list, tuple, torch.Tensor)) else int(target)
                out = algorithm.attribute(batch.detach().requires_grad_(), t, p, False)[0].detach()
            # Captum passes tuples and iterates over what comes back: from a bare [1, C, H, W]
            # tensor it would take one [C, H, W] map and norm it per channel, not as a whole.
            # Contiguous: Captum flattens with ``view``, which a channels_last tensor refuses.
            out = out.contiguous()
            return (out,) if isinstance(inputs, tuple) else out

        with _seeded(seed, self.device):
            value = captum_sensitivity_max(
                explain,
                x,
                perturb_radius=SENSITIVITY_RADIUS,
                n_perturb_samples=SENSITIVITY_SAMPLES,
                max_examples_per_batch=1,
                target=target,
            )
        return float(value.detach().sum())


def _layer_methods() -> list[str]:
    return [name for name, s in METHODS.items() if s.layer_method]
