"""The :class:`Attributor`: runs a catalogue method on one model and measures the map it makes.

``attribute(x, method, target, layer, part, **params)`` (or ``attribute(x, request)`` with an
:class:`AttributionRequest`) validates everything first -- with the same
:meth:`~.catalogue.MethodSpec.validate` the REST API uses -- then runs the method in float32
with autograd (never under ``torch.inference_mode``; the input is copied into a fresh tensor)
and returns an :class:`AttributionResult`: the raw attribution, a heatmap at input
resolution, timings and the faithfulness figures. :class:`AttributorOptions` say how fast:
bfloat16 for the method (where :func:`~.fast.choose_attribution_precision` found it native and
agreeing with float32: input methods of an Xception on its :class:`~.reduced.ReducedNet`, the
others in autocast), and the forward the deletion / insertion curves use (the model itself, or
a faster engine from :func:`~.fast.quality_engine`).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
from captum.attr import LayerAttribution
from torch import nn

from ..locks import model_lock
from ..introspect import PARTS
from .algorithms import Algorithm
from .catalogue import MethodSpec, get_method
from .errors import InputError, ParamError
from .faithfulness import MAX_CURVE_BATCH, DeletionInsertion, Forward, deletion_insertion_auc, infidelity, sensitivity
from ..model import Xception, model_device
from ..timing import sync
from .reduced import reduced_net
from .runtime import ATTRIBUTION_PRECISIONS, autocast, seeded


@dataclass(frozen=True)
class AttributionRequest:
    """What to attribute: a catalogue method, the class (``None``: the predicted one), the
    layer and part for layer methods, and the method's parameters (strings are accepted)."""

    method: str
    target: int | None = None
    layer: str | None = None
    part: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))


@dataclass(frozen=True)
class AttributorOptions:
    """How an :class:`Attributor` computes.

    ``precision``: ``fp32``, or ``bf16`` (input methods of an :class:`~xception_core.model.Xception`
    on its :func:`~.reduced.reduced_net`, other methods and models in bfloat16 autocast; decide
    it with :func:`~.fast.choose_attribution_precision`, which checks the hardware and the
    agreement with float32). ``curves``: the forward of the deletion / insertion curves (logits
    of a batch), e.g. :func:`~.fast.quality_engine`'s; ``None``: the attributed model in float32.
    ``curve_batch``: images per forward of the curves (1..64). ``before_forward``: called ahead
    of every forward of the method (e.g. a deadline check that raises to stop it).
    """

    precision: str = "fp32"
    curves: Forward | None = None
    curve_batch: int = 16
    before_forward: Callable[[], None] | None = None

    def __post_init__(self) -> None:
        if self.precision not in ATTRIBUTION_PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(ATTRIBUTION_PRECISIONS)}, got {self.precision!r}")
        if not 1 <= int(self.curve_batch) <= MAX_CURVE_BATCH:
            raise ValueError(f"curve_batch must be in 1..{MAX_CURVE_BATCH}, got {self.curve_batch}")


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
    parameter values (defaults filled in); ``precision`` what the method ran in
    (``fp32`` or ``bf16``).
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
    precision: str = "fp32"

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
            "precision": self.precision,
            "channel_ranking": (
                [{"channel": c, "score": s} for c, s in self.channel_ranking]
                if self.channel_ranking is not None
                else None
            ),
            "curves": dict(self.curves),
        }


@dataclass(frozen=True)
class _Job:
    """One validated attribution: the method, its algorithm, the input, the resolved parameters,
    the precision, and the network the method runs (``net``: the model, or its reduced-precision
    net, behind :class:`_Checked` when there is a ``before_forward``)."""

    spec: MethodSpec
    algorithm: Algorithm
    x: torch.Tensor
    params: dict[str, Any]
    precision: str = "fp32"
    net: nn.Module | None = None
    #: the autocast around the method: ``fp32`` (none) where the net itself runs reduced
    autocast: str = "fp32"


class _Checked(nn.Module):
    """``net`` with ``before()`` called ahead of each forward: a wrapper per call, so a check
    never reaches another caller's forwards through a shared model."""

    def __init__(self, net: nn.Module, before: Callable[[], None]) -> None:
        super().__init__()
        self.net = net
        self.before = before

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.before()
        return self.net(x)


def _num_classes(model: nn.Module) -> int | None:
    cfg = getattr(model, "config", None)
    n = getattr(cfg, "num_classes", None)
    if isinstance(n, int):
        return n
    fc = getattr(model, "fc", None)
    return getattr(fc, "out_features", None) if isinstance(fc, nn.Linear) else None


def _check_target(target: Any, num_classes: int) -> int:
    if isinstance(target, str) and target.strip().lstrip("-").isdigit():
        target = int(target.strip())
    if isinstance(target, (bool, np.bool_)) or not isinstance(target, (int, np.integer)):
        raise ParamError(f"target must be an integer class index, got {target!r}", "target")
    if not 0 <= int(target) < num_classes:
        raise ParamError(f"target must be in 0..{num_classes - 1}, got {target}", "target")
    return int(target)


def _check_logits(logits: Any, num_classes: int | None) -> None:
    if logits is None:
        return
    if not isinstance(logits, torch.Tensor) or logits.dim() not in (1, 2) or logits.shape[0] != 1 and logits.dim() == 2:
        raise InputError(
            "logits must be one row of logits [classes] or [1, classes], "
            f"got {getattr(logits, 'shape', type(logits).__name__)}"
        )
    if num_classes is not None and logits.numel() != num_classes:
        raise InputError(f"logits has {logits.numel()} values; the model has {num_classes} classes")
    if not torch.isfinite(logits).all():
        raise InputError("logits contains NaN or infinite values")


def _maps(job: _Job, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, float]] | None]:
    """The attribution without its batch dimension, the heatmap at input size, the channel ranking."""
    h, w = job.x.shape[-2:]
    if job.spec.output == "input":
        return raw[0], raw[0].sum(0), None
    if job.spec.output == "layer":
        return raw[0], LayerAttribution.interpolate(raw, (h, w), interpolate_mode="bilinear")[0, 0], None
    attribution = raw[0].sum(dim=(1, 2))  # channels
    heat = LayerAttribution.interpolate(raw.sum(1, keepdim=True), (h, w), interpolate_mode="bilinear")[0, 0]
    scores = attribution.float().cpu()
    order = torch.argsort(scores, descending=True, stable=True)
    return attribution, heat, [(int(i), float(scores[i])) for i in order]


def _explainer(job: _Job) -> Callable[..., torch.Tensor]:
    """``explain(inputs, target)`` for sensitivity_max: the job's method on a perturbed input."""

    def explain(inputs: Any, target: Any = None) -> torch.Tensor:
        batch = inputs[0] if isinstance(inputs, tuple) else inputs
        with torch.enable_grad(), autocast(job.autocast, batch.device):
            # perturbed inputs come one at a time (max_examples_per_batch=1);
            # Captum expands ``target`` to the batch
            t = int(target[0]) if isinstance(target, (list, tuple, torch.Tensor)) else int(target)
            return job.algorithm.attribute(batch.detach().requires_grad_(), t, job.params, False)[0].detach().float()

    return explain


class Attributor:
    """Runs catalogue methods on one model; thread-safe (see the package notes on locking).

    Methods whose algorithm registers hooks run under ``model_lock(model).exclusive()``, the
    others under ``.shared()``; do not call :meth:`attribute` while holding that lock yourself
    (it is not reentrant). Other forwards of the same model that may run concurrently
    (prediction, activation capture) should hold ``model_lock(model).shared()``.

    The model should be in eval mode. For the methods that attribute to the input, a
    BatchNorm-folded copy (:func:`~xception_core.fuse.fuse_for_inference`) computes the same
    attributions (it is the same function of the image) in about half the time on a CPU: no
    BatchNorm layers and no weight gradients. Layer methods need the unfolded model, whose
    ``pointwise`` outputs precede their BatchNorm. A model whose parameters are not float32
    is copied once into a float32 twin used for every attribution (attributions
    run in full precision).
    """

    def __init__(self, model: nn.Module, options: AttributorOptions | None = None) -> None:
        params = list(model.parameters())
        if params and any(p.dtype != torch.float32 for p in params):
            model = copy.deepcopy(model).float()
        self.model = model
        self.options = options or AttributorOptions()
        self.device = model_device(model)
        self.lock = model_lock(model)
        separable = getattr(model, "separable_layers", None)
        self.layers: dict[str, nn.Module] = separable() if callable(separable) else {}

    def attribute(
        self,
        x: torch.Tensor,
        method: str | AttributionRequest,
        target: int | None = None,
        layer: str | None = None,
        part: str | None = None,
        logits: torch.Tensor | None = None,
        **params: Any,
    ) -> AttributionResult:
        """Attribute the logit of ``target`` (default: the predicted class) to the image ``x``.

        ``method`` is a catalogue name (with ``target``, ``layer``, ``part`` and the method's
        parameters as keywords) or a whole :class:`AttributionRequest`. ``x`` is one
        preprocessed image ``[1, 3, H, W]`` (or ``[3, H, W]``). ``logits``: the model's logits
        for ``x`` when the caller has them (a prediction's), which saves a forward pass; they
        give the reported prediction and probability.
        Raises :class:`UnknownMethodError`, :class:`ParamError` (an unknown layer is also an
        :class:`~xception_core.introspect.UnknownLayerError`) or :class:`InputError` before
        any computation when something is invalid.
        """
        if isinstance(method, AttributionRequest):
            if target is not None or layer is not None or part is not None or params:
                raise TypeError("give either an AttributionRequest or a method name with its arguments, not both")
            request = method
        else:
            request = AttributionRequest(method, target, layer, part, params)
        spec = get_method(request.method)
        xin = self._prepare_input(x)
        known = self.layers.get(request.layer) if isinstance(request.layer, str) else None
        resolved = spec.validate(
            request.params, layer=request.layer, part=request.part, layers=list(self.layers),
            input_size=tuple(xin.shape[-2:]), parts=getattr(known, "parts", PARTS),
        )
        n_classes = _num_classes(self.model)
        checked = request.target
        if checked is not None and n_classes is not None:
            checked = _check_target(checked, n_classes)
        _check_logits(logits, n_classes)
        module = getattr(self.layers[request.layer], request.part) if spec.layer_method else None  # type: ignore[index,arg-type]
        job = self._job(spec, module, xin, resolved)
        guard = self.lock.exclusive() if spec.hooks else self.lock.shared()
        with torch.inference_mode(False), guard:
            return self._run(job, request, checked, logits)

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

    def curves(self, x: torch.Tensor, heatmap: torch.Tensor, target: int, steps: int = 16) -> DeletionInsertion:
        """The deletion / insertion curves of ``heatmap`` (``[H, W]``, e.g. an earlier result's)
        for ``target`` on the image ``x``, through the options' curve forward: the quality
        figures on their own, after the map (``auc_steps=0``) was returned."""
        xin = self._prepare_input(x)
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= 64:
            raise ParamError(f"steps must be an integer in 1..64, got {steps!r}", "auc_steps")
        n_classes = _num_classes(self.model)
        if n_classes is not None:
            target = _check_target(target, n_classes)
        with torch.inference_mode(False), self.lock.shared():
            return self._curves(xin, heatmap, target, steps)

    def quality(self, x: torch.Tensor, result: AttributionResult, request: AttributionRequest) -> AttributionResult:
        """``result`` (a map of ``x`` computed without figures, e.g. ``auc_steps=0``) with the
        quality figures ``request`` asks for (``auc_steps``, ``infidelity``, ``sensitivity``; its
        other parameters must resolve as ``result``'s did): the same result as
        :meth:`attribute` of ``request`` would give, without computing the map again. The
        convergence delta is the map's. ``result`` is not modified."""
        spec = get_method(request.method)
        if spec.name != result.method or request.layer != result.layer or request.part != result.part:
            raise InputError(f"the request ({request.method}) does not describe the result ({result.method})")
        xin = self._prepare_input(x)
        known = self.layers.get(request.layer) if isinstance(request.layer, str) else None
        resolved = spec.validate(
            request.params, layer=request.layer, part=request.part, layers=list(self.layers),
            input_size=tuple(xin.shape[-2:]), parts=getattr(known, "parts", PARTS),
        )
        figures = {"auc_steps", "infidelity", "sensitivity"}
        if {k: v for k, v in resolved.items() if k not in figures} != {k: v for k, v in result.params.items() if k not in figures}:
            raise InputError("the request's method parameters differ from the result's")
        module = getattr(self.layers[request.layer], request.part) if spec.layer_method else None  # type: ignore[index,arg-type]
        job = self._job(spec, module, xin, resolved)
        raw = result.attribution[None].to(self.device) if spec.output == "input" else result.attribution
        guard = self.lock.exclusive() if spec.hooks else self.lock.shared()
        with torch.inference_mode(False), guard:
            t1 = time.perf_counter()
            quality, curves = self._quality(job, raw, result.heatmap.to(self.device), result.target, None)
            sync(self.device)
            quality_ms = (time.perf_counter() - t1) * 1000
        if "convergence_delta" in result.quality:
            quality = {"convergence_delta": result.quality["convergence_delta"], **quality}
        return replace(result, quality=quality, curves=curves, params=dict(resolved), quality_ms=quality_ms)

    def _job(self, spec: MethodSpec, module: nn.Module | None, x: torch.Tensor, params: dict[str, Any]) -> _Job:
        precision = self.options.precision
        net: nn.Module = self.model
        reduced = precision == "bf16" and spec.output == "input" and not spec.layer_method and isinstance(net, Xception)
        if reduced:
            net = reduced_net(net)
        if self.options.before_forward is not None:
            net = _Checked(net, self.options.before_forward)
        return _Job(spec, spec.algorithm(net, module), x, params, precision, net, "fp32" if reduced else precision)

    def _curves(self, x: torch.Tensor, heatmap: torch.Tensor, target: int, steps: int) -> DeletionInsertion:
        forward = self.options.curves if self.options.curves is not None else self.model
        return deletion_insertion_auc(forward, x, heatmap, target, steps=steps, batch_size=self.options.curve_batch)

    def _run(
        self, job: _Job, request: AttributionRequest, target: int | None, logits: torch.Tensor | None
    ) -> AttributionResult:
        probs = None
        if logits is not None:
            probs = torch.softmax(logits.detach().float().reshape(1, -1), dim=1)[0].to(self.device)
        elif target is None:  # the target is the predicted class: one forward first
            with torch.no_grad():
                probs = torch.softmax(self.model(job.x).float(), dim=1)[0]
        if probs is not None:
            target = int(probs.argmax()) if target is None else _check_target(target, probs.numel())
        raw, delta, timing_ms, probs = self._explain(job, target, probs)
        attribution, heat, ranking = _maps(job, raw)
        t1 = time.perf_counter()
        quality, curves = self._quality(job, raw, heat, target, delta)
        sync(self.device)
        quality_ms = (time.perf_counter() - t1) * 1000
        return AttributionResult(
            method=job.spec.name,
            target=target,
            predicted=int(probs.argmax()),
            probability=float(probs[target]),
            layer=request.layer,
            part=request.part,
            attribution=attribution.float().cpu(),
            heatmap=heat.float().cpu(),
            timing_ms=timing_ms,
            quality=quality,
            params=dict(job.params),
            quality_ms=quality_ms,
            channel_ranking=ranking,
            curves=curves,
            precision=job.precision,
        )

    def _explain(
        self, job: _Job, target: int, probs: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None, float, torch.Tensor]:
        """The raw attribution, its convergence delta, its time in ms, and the class probabilities.

        With ``probs`` unknown (a given target, no logits), the method's own forward pass of
        ``x`` (if it makes one) gives them: no extra forward for Saliency, Grad-CAM and the like.
        """
        model, x = job.net, job.x
        seen: list[torch.Tensor] = []

        def record(_module: nn.Module, args: tuple, output: Any) -> None:
            if not seen and args and isinstance(output, torch.Tensor) and args[0].shape == x.shape and torch.equal(args[0].detach(), x):
                seen.append(output.detach().float())

        handle = model.register_forward_hook(record) if probs is None else None
        sync(self.device)
        t0 = time.perf_counter()
        try:
            with torch.enable_grad():
                # a leaf that requires grad (Captum warns otherwise); ``x`` stays as is
                xg = x.detach().requires_grad_()
                want_delta = job.algorithm.convergence_delta
                rng = seeded(job.params["seed"], self.device) if job.spec.stochastic else nullcontext()
                with rng, autocast(job.autocast, self.device):
                    raw, delta = job.algorithm.attribute(xg, target, job.params, want_delta)
                raw = raw.detach().float().contiguous()
        finally:
            if handle is not None:
                handle.remove()
        sync(self.device)
        timing_ms = (time.perf_counter() - t0) * 1000
        if probs is None:
            if not seen:
                with torch.no_grad():
                    seen.append(model(x).float())
            probs = torch.softmax(seen[0], dim=1)[0]
            _check_target(target, probs.numel())
        return raw, delta, timing_ms, probs

    def _quality(
        self, job: _Job, raw: torch.Tensor, heat: torch.Tensor, target: int, delta: torch.Tensor | None
    ) -> tuple[dict[str, float], dict[str, list[float]]]:
        """The faithfulness figures the parameters ask for, and the deletion / insertion curves."""
        p, x = job.params, job.x
        quality: dict[str, float] = {}
        curves: dict[str, list[float]] = {}
        if delta is not None:
            quality["convergence_delta"] = float(delta.detach().abs().sum())
        if p["auc_steps"] > 0:
            di = self._curves(x, heat, target, p["auc_steps"])
            quality["deletion_auc"] = di.deletion_auc
            quality["insertion_auc"] = di.insertion_auc
            curves = {"fractions": di.fractions, "deletion": di.deletion, "insertion": di.insertion}
        if p["infidelity"]:
            # Input-space attributions as they are; layer-space ones through their
            # upsampled heatmap, shared by the colour channels.
            attr = raw if job.spec.output == "input" else heat[None, None].expand_as(x) / x.shape[1]
            quality["infidelity"] = infidelity(self.model, x, attr, target, p["seed"])
        if p["sensitivity"]:
            quality["sensitivity_max"] = sensitivity(_explainer(job), x, target, p["seed"])
        return quality, curves
