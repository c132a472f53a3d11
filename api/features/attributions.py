"""Attributions: ``POST /v1/attributions`` (Captum, through :mod:`xception_core.attributions`).

The request is checked before it queues by the catalogue's own rules
(:meth:`~xception_core.attributions.MethodSpec.validate`; :func:`api.errors.translate` words
its errors as problems). Attributions run with autograd in float32 (``precision=mixed`` asks
for float16 autocast on CUDA) on a private replica of the model, whose forward passes check
the request's deadline; a float32 prediction of the same image lends its logits.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from xception_core import attributions as core_attr
from xception_core import render
from xception_core.attributions import AttributionRequest, AttributionResult, get_method
from xception_core.transform import to_pixels

from ..encodings import BinaryResult, b64png, finite, joined, npy_bytes
from ..errors import ApiError
from ..registry import LoadedModel
from ..runtime import Runtime, Upload, check_target
from ..workers import Deadline, DeadlineExceeded


@dataclass(frozen=True)
class ExplainRequest:
    """An attribution request: what to attribute (the core's request: method, target, layer,
    part, parameters) and how to answer (``fmt`` json / png / npy; for npy the ``array``; the
    overlay's ``sign``, ``opacity`` and ``colormap``); ``precision`` None: the settings'.
    ``quality``: ``none`` (the map alone: no deletion / insertion figures), ``auc`` (their two
    AUCs, no curves) or ``full`` (AUCs, curves and, on request, infidelity and sensitivity)."""

    model: str | None
    upload: Upload
    attribution: AttributionRequest
    fmt: str
    array: str
    sign: str
    opacity: float
    colormap: str | None
    precision: str | None
    quality: str = "full"


class Attributions:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def explain(self, request: ExplainRequest, deadline: Deadline) -> dict[str, Any] | BinaryResult:
        """The answer: from the attribution cache when an identical attribution was computed before
        (encoded in the inference pool, so a hit never waits behind a running attribution), else
        computed in the attribution pool and cached."""
        rt = self.runtime
        entry = await rt.model(request.model, deadline)
        check_target(entry, request.attribution.target)
        request = replace(request, attribution=with_quality(request.attribution, request.quality))
        resolved = validate(entry, request.attribution)
        key = self.cache_key(entry, request, resolved)
        hit = rt.attributions.get(key)
        if hit is not None:
            return await rt.inference_pool.run(self._answer, entry, request, (key, hit, True), deadline, deadline=deadline, device=rt.device)
        return await rt.attribution_pool.run(self._job, entry, request, key, deadline, deadline=deadline, device=rt.device)

    def overlay(self, entry: LoadedModel, request: ExplainRequest, key: tuple, r: AttributionResult) -> bytes:
        """The overlay PNG of a result, rendered once per style (kept beside the result: a cache
        hit in the same style costs no rendering)."""
        rt = self.runtime
        style = ("overlay", key, request.sign, request.opacity, request.colormap)
        png = rt.attributions.get(style)
        if png is None:
            x, _ = rt.input(entry, request.upload)
            image = to_pixels(x, entry.preprocess)
            png = render.overlay_png(image, r.heatmap.numpy(), sign=request.sign, opacity=request.opacity, colormap=request.colormap)  # type: ignore[arg-type]
            rt.attributions.put(style, png)
        return png

    def cache_key(self, entry: LoadedModel, request: ExplainRequest, resolved: dict[str, Any]) -> tuple:
        """What determines the attribution: the model and its weights (``entry.key``), the image's
        sha256, the method, target, layer, part, precision and every resolved parameter (defaults
        filled in, so ``n_steps=32`` and the default 32 are one entry). The output options
        (format, array, sign, opacity, colour map) and the quality level's presentation are applied
        to the cached result."""
        what = request.attribution
        params = tuple(sorted((k, repr(v)) for k, v in resolved.items()))
        return ("attribution", entry.key, request.upload.sha, what.method, what.target, what.layer, what.part,
                self.precision(entry, request.precision), params)

    def precision(self, entry: LoadedModel, requested: str | None) -> str:
        """``fp32`` or ``mixed`` (float16 autocast: a CUDA feature; on the CPU attributions stay float32)."""
        precision = requested or self.runtime.settings.attribution_precision
        return "fp32" if precision == "mixed" and entry.device.type != "cuda" else precision

    def attribute(
        self, entry: LoadedModel, x: torch.Tensor, request: AttributionRequest, precision: str, deadline: Deadline | None,
        logits: torch.Tensor | None = None,
    ) -> AttributionResult:
        """Run one attribution on a private replica (a worker thread's job); ``logits``: the
        image's float32 logits when known (they save a forward pass)."""
        rt = self.runtime

        def check_deadline(_module: Any, _args: Any) -> None:
            if deadline is not None and deadline.expired():
                raise DeadlineExceeded(deadline.kind)

        started = time.perf_counter()
        # Input methods get the BatchNorm-folded replica when folding is on: the same function
        # of the image, so the same attribution, faster. Layer methods need the original's parts.
        fused = entry.fused and not get_method(request.method).layer_method
        with entry.replica(fused=fused) as model:
            model.register_forward_pre_hook(check_deadline)  # the replica is private; its hooks are cleared after use
            autocast = (
                torch.autocast(device_type="cuda", dtype=torch.float16)
                if precision == "mixed" and entry.device.type == "cuda"
                else nullcontext()
            )
            with autocast:
                result = core_attr.Attributor(model).attribute(x[None], request, logits=logits)
        rt.metrics.attribution.labels(rt.device, request.method).observe(time.perf_counter() - started)
        return result

    def _job(self, entry: LoadedModel, request: ExplainRequest, key: tuple, deadline: Deadline) -> dict[str, Any] | BinaryResult:
        rt, upload, what = self.runtime, request.upload, request.attribution
        x, _ = rt.input(entry, upload)
        deadline.check()
        precision = self.precision(entry, request.precision)
        # A float32 prediction of this image (the usual flow: predict, then explain) saves the
        # attribution its own prediction forward.
        cached = rt.cache.peek(("logits", entry.key, upload.sha))
        logits = cached[0] if cached is not None and cached[1] == "fp32" and precision == "fp32" else None
        r = self.attribute(entry, x, what, precision, deadline, logits)
        rt.attributions.put(key, r, result_nbytes(r))
        return self._answer(entry, request, (key, r, False), deadline)

    def _answer(
        self, entry: LoadedModel, request: ExplainRequest, found: tuple[tuple, AttributionResult, bool], deadline: Deadline
    ) -> dict[str, Any] | BinaryResult:
        """The answer in the requested format from ``(cache key, result, whether it was a hit)``;
        the result is never modified."""
        rt, upload, what = self.runtime, request.upload, request.attribution
        key, r, hit = found
        precision = self.precision(entry, request.precision)
        quality, curves = dict(r.quality), dict(r.curves)
        if request.quality != "full":
            curves = {}
        facts = {"method": what.method, "target": str(r.target), "attribution_ms": f"{r.timing_ms:.1f}", "cache": "hit" if hit else "miss"}
        if request.fmt == "npy":
            raw = r.attribution if request.array == "attribution" else r.heatmap
            return BinaryResult(
                npy_bytes(raw.numpy().astype(np.float32)), "application/x-npy", upload.sha, entry.id,
                {**facts, "shape": joined(raw.shape)}, filename=f"{what.method}.{request.array}.npy",
            )
        overlay = self.overlay(entry, request, key, r)
        if request.fmt == "png":
            return BinaryResult(overlay, "image/png", upload.sha, entry.id, facts)
        heat = r.heatmap
        ranking = None
        if r.channel_ranking is not None:
            ranking = [{"channel": c, "score": finite(s)} for c, s in r.channel_ranking[: rt.settings.max_channels]]
        return {
            "image_id": upload.sha,
            "model": entry.id,
            "method": what.method,
            "target": r.target,
            "target_label": entry.class_names[r.target],
            "target_source": "requested" if what.target is not None else "predicted",
            "predicted": r.predicted,
            "probability": finite(r.probability),
            "layer": what.layer,
            "part": what.part,
            "params": {k: finite(v) for k, v in r.params.items()},
            "precision": precision,
            "shape": list(r.attribution.shape),
            "value_range": [finite(float(heat.min())), finite(float(heat.max()))],
            "quality_level": request.quality,
            "quality": {k: finite(float(v)) for k, v in quality.items()},
            "curves": {k: [finite(float(v)) for v in vs] for k, vs in curves.items()},
            "cached": hit,
            "channel_ranking": ranking,
            "overlay_png": b64png(overlay),
            "timing_ms": deadline.elapsed_ms(),
            "attribution_ms": r.timing_ms,
            "quality_ms": r.quality_ms,
            "device": rt.device,
        }


def validate(entry: LoadedModel, request: AttributionRequest) -> dict[str, Any]:
    """The catalogue's rules for this model, checked before queueing: the resolved parameters, or
    the core's UnknownMethodError / ParamError, which :func:`api.errors.translate` words as problems."""
    return get_method(request.method).validate(
        request.params, layer=request.layer, part=request.part, layers=list(entry.separable), input_size=entry.input_size
    )


#: the parameters that ask for quality figures, and the level each needs
_QUALITY_PARAMS = {"auc_steps": "auc", "infidelity": "full", "sensitivity": "full"}
_LEVELS = ("none", "auc", "full")


def with_quality(request: AttributionRequest, level: str) -> AttributionRequest:
    """The request with what ``quality`` leaves out switched off (``none``: ``auc_steps=0``;
    ``none`` and ``auc``: no infidelity, no sensitivity). A figure asked for explicitly that the
    level leaves out is a 422 (the two say different things)."""
    params = dict(request.params)
    for name, needs in _QUALITY_PARAMS.items():
        if _LEVELS.index(level) >= _LEVELS.index(needs):
            continue
        asked = params.get(name)
        if asked not in (None, 0, False, "0", "false"):
            raise ApiError(
                422, "quality-conflict",
                f"{name}={asked} asks for a quality figure that quality={level} leaves out; use quality={needs} (or full), "
                f"or drop {name}",
                parameter=name,
            )
        params[name] = 0 if name == "auc_steps" else False
    return replace(request, params=params)


def result_nbytes(r: AttributionResult) -> int:
    """Memory held by a cached attribution: its two arrays, the curves, a little for the rest."""
    curves = sum(len(v) for v in r.curves.values()) * 8
    return r.attribution.element_size() * r.attribution.nelement() + r.heatmap.element_size() * r.heatmap.nelement() + curves + 2048
