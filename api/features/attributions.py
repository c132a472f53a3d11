"""Attributions: ``POST /v1/attributions`` (Captum, through :mod:`xception_core.attributions`).

The request is checked before it queues by the catalogue's own rules
(:meth:`~xception_core.attributions.MethodSpec.validate`; :func:`api.errors.translate` words
its errors as problems). Attributions run with autograd on a private replica of the model, whose
forward passes check the request's deadline, in the precision the model's
:class:`~api.registry.AttributionSetup` decided when it loaded (bf16 where native and agreeing
with float32, else float32; ``precision=fp32`` forces float32, ``mixed`` float16 autocast on
CUDA); the deletion / insertion curves run on the setup's engine. A float32 prediction of the
same image lends its logits.

Map first, figures after: the map is cached under a key without the quality parameters, the
answer with its figures under one with them. ``X-Cache``: ``hit`` (the whole answer from the
cache), ``map-hit`` (the map from the cache, only the figures computed), ``miss``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from xception_core import attributions as core_attr
from xception_core import render
from xception_core.attributions import AttributionRequest, AttributionResult, get_method
from xception_core.introspect import PARTS
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
        #: cache key -> done when the attribution being computed for it has finished (or failed)
        self._running: dict[tuple, asyncio.Future] = {}
        self.joined = 0  # requests that waited for an identical one's computation

    async def explain(self, request: ExplainRequest, deadline: Deadline) -> dict[str, Any] | BinaryResult:
        """The answer: from the attribution cache when an identical attribution was computed before
        (encoded in the inference pool, so a hit never waits behind a running attribution), else
        computed in the attribution pool and cached -- reusing a cached map of the same attribution
        with other quality figures (``map-hit``: only the figures are computed). An identical
        request (or one needing the same map) that arrives while it is being computed waits for
        it instead of computing it again."""
        rt = self.runtime
        entry = await rt.model(request.model, deadline)
        check_target(entry, request.attribution.target)
        if not entry.attribution_decided:  # decided once per loaded model, off the event loop
            await rt.attribution_pool.run(entry.attribution_setup, deadline=deadline, device=rt.device)
        request = replace(request, attribution=with_quality(request.attribution, request.quality))
        resolved = validate(entry, request.attribution)
        key, map_key = self.cache_key(entry, request, resolved), self.map_key(entry, request, resolved)
        await self._join(key, deadline)
        hit = rt.attributions.get(key)
        if hit is not None:
            return await rt.inference_pool.run(self._answer, entry, request, (key, hit, "hit"), deadline, deadline=deadline, device=rt.device)
        if key != map_key:
            await self._join(map_key, deadline)
        loop = asyncio.get_running_loop()
        # One future per key: whoever waits for the map alone is let go as soon as it is cached,
        # not after the figures that follow it.
        futures = {k: loop.create_future() for k in dict.fromkeys((key, map_key))}
        mine = [k for k, f in futures.items() if self._running.setdefault(k, f) is f]

        def map_ready() -> None:  # called from the worker thread
            loop.call_soon_threadsafe(_settle, futures[map_key])

        try:
            return await rt.attribution_pool.run(
                self._job, entry, request, (key, map_key), deadline, map_ready, deadline=deadline, device=rt.device
            )
        finally:
            for k in mine:
                if self._running.get(k) is futures[k]:
                    del self._running[k]
            for f in futures.values():
                _settle(f)

    async def _join(self, key: tuple, deadline: Deadline) -> None:
        """Wait for the computation of ``key`` another request started, if one is running."""
        running = self._running.get(key)
        if running is None:
            return
        self.joined += 1
        try:
            await asyncio.wait_for(asyncio.shield(running), timeout=max(deadline.remaining(), 0.0))
        except (TimeoutError, asyncio.TimeoutError):
            raise deadline.error() from None

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
        sha256, the method, target, layer, part, precision (fixed per loaded model) and every
        resolved parameter (defaults filled in, so ``n_steps=32`` and the default 32 are one
        entry). The output options (format, array, sign, opacity, colour map) and the quality
        level's presentation are applied to the cached result."""
        what = request.attribution
        params = tuple(sorted((k, repr(v)) for k, v in resolved.items()))
        return ("attribution", entry.key, request.upload.sha, what.method, what.target, what.layer, what.part,
                self.precision(entry, request.precision, what.method), params)

    def map_key(self, entry: LoadedModel, request: ExplainRequest, resolved: dict[str, Any]) -> tuple:
        """The key of the map alone: :meth:`cache_key` with the quality parameters switched off
        (``quality=none``'s key)."""
        return self.cache_key(entry, request, {**resolved, **_NO_FIGURES})

    def precision(self, entry: LoadedModel, requested: str | None, method: str) -> str:
        """``fp32``, ``bf16`` (the model's :class:`~api.registry.AttributionSetup` chose it for
        ``method``'s family) or ``mixed`` (float16 autocast: a CUDA feature; float32 on the CPU)."""
        precision = requested or self.runtime.settings.attribution_precision
        if precision == "mixed":
            return "mixed" if entry.device.type == "cuda" else "fp32"
        if precision == "fp32":
            return "fp32"
        return entry.attribution_setup().precision_for(method)

    def attribute(
        self, entry: LoadedModel, x: torch.Tensor, request: AttributionRequest, precision: str, deadline: Deadline | None,
        logits: torch.Tensor | None = None, earlier: AttributionResult | None = None,
    ) -> AttributionResult:
        """Run one attribution on a private replica (a worker thread's job); ``logits``: the
        image's float32 logits when known (they save a forward pass). ``earlier``: the map of
        the same attribution without figures; then only the figures ``request`` asks for are
        computed (:meth:`~xception_core.attributions.Attributor.quality`)."""
        rt = self.runtime

        def check_deadline() -> None:
            if deadline is not None and deadline.expired():
                raise DeadlineExceeded(deadline.kind)

        setup = entry.attribution_setup()

        def curves(batch: torch.Tensor) -> torch.Tensor:
            check_deadline()
            return setup.curves(batch)

        started = time.perf_counter()
        # Input methods get the BatchNorm-folded replica when folding is on: the same function
        # of the image, so the same attribution, faster. Layer methods need the original's parts.
        fused = entry.fused and not get_method(request.method).layer_method
        with entry.replica(fused=fused) as model:
            autocast = (
                torch.autocast(device_type="cuda", dtype=torch.float16)
                if precision == "mixed" and entry.device.type == "cuda"
                else nullcontext()
            )
            options = core_attr.AttributorOptions(
                precision="bf16" if precision == "bf16" else "fp32", curves=curves, before_forward=check_deadline,
            )
            attributor = core_attr.Attributor(model, options)
            with autocast:
                if earlier is not None:
                    result = attributor.quality(x[None], earlier, request)
                else:
                    result = attributor.attribute(x[None], request, logits=logits)
        histogram = rt.metrics.attribution if earlier is None else rt.metrics.attribution_quality
        histogram.labels(rt.device, request.method).observe(time.perf_counter() - started)
        return result

    def _job(
        self, entry: LoadedModel, request: ExplainRequest, keys: tuple[tuple, tuple], deadline: Deadline,
        map_ready: Callable[[], None] | None = None,
    ) -> dict[str, Any] | BinaryResult:
        """The map (from the cache, else computed and cached under ``map_key``, then
        ``map_ready()``), then the figures the request asks for (cached with the map under ``key``)."""
        rt, upload, what = self.runtime, request.upload, request.attribution
        key, map_key = keys
        x, _ = rt.input(entry, upload)
        deadline.check()
        precision = self.precision(entry, request.precision, what.method)
        state = "map-hit"
        r = rt.attributions.get(map_key)
        if r is None:
            state = "miss"
            # A float32 prediction of this image (the usual flow: predict, then explain) saves the
            # attribution its own prediction forward.
            cached = rt.cache.peek(("logits", entry.key, upload.sha))
            logits = cached[0] if cached is not None and cached[1] == "fp32" and precision == "fp32" else None
            bare = replace(what, params={**what.params, **_NO_FIGURES})
            r = self.attribute(entry, x, bare, precision, deadline, logits)
            rt.attributions.put(map_key, r, own_nbytes(r), shared=(r.attribution, r.heatmap))
            if map_ready is not None:
                map_ready()
        if key != map_key:
            deadline.check()
            r = self.attribute(entry, x, what, precision, deadline, earlier=r)
            rt.attributions.put(key, r, own_nbytes(r), shared=(r.attribution, r.heatmap))
        return self._answer(entry, request, (key, r, state), deadline)

    def _answer(
        self, entry: LoadedModel, request: ExplainRequest, found: tuple[tuple, AttributionResult, str], deadline: Deadline
    ) -> dict[str, Any] | BinaryResult:
        """The answer in the requested format from ``(cache key, result, cache state)`` (``hit``,
        ``map-hit`` or ``miss``); the result is never modified."""
        rt, upload, what = self.runtime, request.upload, request.attribution
        key, r, state = found
        precision = self.precision(entry, request.precision, what.method)
        quality, curves = dict(r.quality), dict(r.curves)
        if request.quality != "full":
            curves = {}
        facts = {
            "method": what.method, "target": str(r.target), "attribution_ms": f"{r.timing_ms:.1f}", "cache": state,
            "attribution_precision": precision,
        }
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
            "cached": state == "hit",
            "cache": state,
            "channel_ranking": ranking,
            "overlay_png": b64png(overlay),
            "timing_ms": deadline.elapsed_ms(),
            "attribution_ms": r.timing_ms,
            "quality_ms": r.quality_ms,
            "device": rt.device,
        }


def _settle(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


def validate(entry: LoadedModel, request: AttributionRequest) -> dict[str, Any]:
    """The catalogue's rules for this model, checked before queueing: the resolved parameters, or
    the core's UnknownMethodError / ParamError, which :func:`api.errors.translate` words as problems."""
    known = entry.separable.get(request.layer) if isinstance(request.layer, str) else None
    return get_method(request.method).validate(
        request.params, layer=request.layer, part=request.part, layers=list(entry.separable), input_size=entry.input_size,
        parts=known.parts if known is not None else PARTS,
    )


#: the parameters that ask for quality figures, and the level each needs
_QUALITY_PARAMS = {"auc_steps": "auc", "infidelity": "full", "sensitivity": "full"}
#: the quality parameters of the map alone
_NO_FIGURES = {"auc_steps": 0, "infidelity": False, "sensitivity": False}
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


def own_nbytes(r: AttributionResult) -> int:
    """Memory a cached attribution holds beside its two arrays (the curves, a little for the
    rest): the arrays are counted once by the cache, also when a map entry and the entries of
    its figures hold the same ones."""
    return sum(len(v) for v in r.curves.values()) * 8 + 2048
