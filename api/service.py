"""The glue between HTTP and :mod:`xception_core`.

Routers validate what they can see (parameters, model-independent limits) and
call the ``async`` methods here. Each method resolves the model, checks what
depends on it (layer names, channel and class ranges), then runs one *job* --
a plain synchronous function -- in a worker pool (:mod:`api.workers`): the
event loop never runs torch or Pillow. Jobs read and fill the byte-bounded
cache (:mod:`api.cache`):

* ``("input", model key, sha256)``: the preprocessed image ``[3, S, S]`` float32;
* ``("logits", model key, sha256)``: the logits ``[classes]`` float32;
* ``("layer", model key, sha256, layer)``: ``{"input", "depthwise",
  "pointwise"}`` maps ``[C, H, W]`` of one separable layer, in
  ``cache_activation_dtype`` (one capture serves both parts and every later
  channel selection, colour map and format);
* ``("channel_importance", model key, sha256, layer, part, target)``: per-channel scores.

Precision: predictions run through the loaded model's
:class:`~xception_core.engine.Predictor` (``predict_backend``, ``predict_precision``: float32,
or bfloat16 / float16 autocast where the hardware has it, with the top-5 guard described in the
settings); captures under ``torch.no_grad``; attributions with autograd in
float32 (``precision=mixed`` asks for float16 autocast on CUDA) on a private
replica of the model, whose forward passes check the request's deadline.
"""

from __future__ import annotations

import base64
import io
import logging
import math
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from xception_core import attributions as core_attr
from xception_core import inference, render
from xception_core.decode import decode_image
from xception_core.introspect import decompose, forward_with_capture
from xception_core.transform import eval_transform, to_pixels

from .batching import MicroBatcher
from .cache import ByteLRU
from .errors import ApiError, invalid_choice, out_of_range, translate
from .metrics import Metrics
from .registry import LoadedModel, ModelRegistry
from .settings import Settings
from .workers import Deadline, DeadlineExceeded, WorkPool

#: The response's ``precision`` for each predictor precision (``mixed`` predates bf16: float16).
PRECISION_LABELS = {"fp32": "fp32", "fp16": "mixed", "bf16": "bf16"}

log = logging.getLogger("api.service")

PARTS = ("depthwise", "pointwise", "input")

def b64png(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def finite(value: Any) -> Any:
    """JSON-safe number: non-finite floats become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def tile_png(array2d: np.ndarray, tile_px: int, colormap: str, vmin: float | None, vmax: float | None) -> bytes:
    """One map as a PNG ``tile_px`` wide (nearest-neighbour, so each activation is a block)."""
    h, w = array2d.shape
    th = max(1, round(tile_px * h / w))
    rows = np.minimum(np.arange(th) * h // th, h - 1)
    cols = np.minimum(np.arange(tile_px) * w // tile_px, w - 1)
    return render.to_png(array2d[rows][:, cols], colormap, vmin, vmax)


@dataclass
class Upload:
    data: bytes
    sha: str


@dataclass
class BinaryResult:
    """A non-JSON answer (PNG or NPY) and the headers that describe it."""

    body: bytes
    media_type: str
    headers: dict[str, str]


class Service:
    def __init__(self, settings: Settings, registry: ModelRegistry, metrics: Metrics) -> None:
        self.settings = settings
        self.registry = registry
        self.metrics = metrics
        self.cache = ByteLRU(
            settings.cache_max_bytes,
            on_hit=lambda kind: metrics.cache_hits.labels(kind).inc(),
            on_miss=lambda kind: metrics.cache_misses.labels(kind).inc(),
            on_evict=lambda n: metrics.cache_evictions.inc(n),
            on_size=lambda b, n: (metrics.cache_bytes.set(b), metrics.cache_entries.set(n)),
        )
        self.inference_pool = WorkPool("inference", settings.inference_workers, settings.max_pending_jobs, metrics)
        self.attribution_pool = WorkPool("attribution", settings.attribution_workers, settings.max_pending_jobs, metrics)
        self._batchers: dict[str, MicroBatcher] = {}
        self._batcher_entries: dict[str, LoadedModel] = {}
        self.cache_dtype = torch.float16 if settings.cache_activation_dtype == "float16" else torch.float32
        registry.on_change = lambda n: metrics.models_loaded.set(n)

    # ------------------------------------------------------------------ lifecycle

    async def close(self) -> None:
        for batcher in list(self._batchers.values()):
            await batcher.close()
        self._batchers.clear()
        self._batcher_entries.clear()
        self.inference_pool.shutdown()
        self.attribution_pool.shutdown()

    @property
    def device(self) -> str:
        return str(self.registry.device)

    # ------------------------------------------------------------------ models

    def default_model(self) -> str:
        return self.registry.default_id()

    async def model(self, model_id: str | None, deadline: Deadline | None = None) -> LoadedModel:
        """The loaded model (404 when unknown, 409 when its weights are missing)."""
        model_id = model_id or self.registry.default_id()
        if self.registry.is_loaded(model_id):
            return self.registry.get(model_id)
        from starlette.concurrency import run_in_threadpool

        await run_in_threadpool(self.registry.card, model_id)  # 404 before queueing (reads model cards)
        return await self.inference_pool.run(self.registry.get, model_id, deadline=deadline, device=self.device)

    # ------------------------------------------------------------------ shared steps (worker threads)

    def _input(self, entry: LoadedModel, upload: Upload) -> tuple[torch.Tensor, bool]:
        key = ("input", entry.key, upload.sha)
        x = self.cache.get(key)
        if x is not None:
            return x, True
        if not upload.data:
            raise ApiError(422, "empty-upload", "the uploaded image is empty (0 bytes); send an image file")
        image = decode_image(upload.data, max_pixels=self.settings.max_image_pixels)
        x = eval_transform(image, entry.preprocess).contiguous()
        self.cache.put(key, x)
        return x, False

    def _batch_input(self, x: torch.Tensor, entry: LoadedModel) -> torch.Tensor:
        return x.to(entry.device, non_blocking=True).contiguous(memory_format=torch.channels_last)

    def _layer_maps(self, entry: LoadedModel, upload: Upload, layer: str, deadline: Deadline | None) -> tuple[dict[str, torch.Tensor], bool]:
        key = ("layer", entry.key, upload.sha, layer)
        maps = self.cache.get(key)
        if maps is not None:
            return maps, True
        x, _ = self._input(entry, upload)
        if deadline is not None:
            deadline.check()
        started = time.perf_counter()
        with torch.no_grad():
            logits, kept = forward_with_capture(entry.model, self._batch_input(x[None], entry), [layer], PARTS)
        self._sync(entry)
        self.metrics.inference.labels(self.device, entry.id, "capture").observe(time.perf_counter() - started)
        maps = {part: t[0].detach().to("cpu", self.cache_dtype).contiguous() for part, t in kept[layer].items()}
        self.cache.put(key, maps)
        logits_key = ("logits", entry.key, upload.sha)
        if self.cache.peek(logits_key) is None:
            self.cache.put(logits_key, (logits[0].detach().float().cpu().clone(), "fp32"))
        return maps, False

    def _sync(self, entry: LoadedModel) -> None:
        if entry.device.type == "cuda":
            torch.cuda.synchronize(entry.device)

    # ------------------------------------------------------------------ predictions

    def _run_predict_batch(self, entry: LoadedModel, xs: Sequence[torch.Tensor]) -> list[tuple[torch.Tensor, str]]:
        started = time.perf_counter()
        predictor = entry.predictor
        logits, reduced = predictor.predict(torch.stack(list(xs)))
        if predictor.precision != "fp32" and not bool(reduced.all()):
            self.metrics.amp_fallbacks.inc(int((~reduced).sum()))
        label = PRECISION_LABELS[predictor.precision]
        self.metrics.inference.labels(self.device, entry.id, "predict").observe(time.perf_counter() - started)
        out = logits.cpu().clone()  # an ordinary tensor (outside inference mode)
        return [(out[i].clone(), label if bool(reduced[i]) else "fp32") for i in range(len(xs))]

    def _batcher(self, entry: LoadedModel) -> MicroBatcher:
        batcher = self._batchers.get(entry.key)
        if batcher is not None and self._batcher_entries.get(entry.key) is not entry:
            # The model was unloaded and loaded again: a new batcher for the new copy. The old one
            # finishes what it holds and its worker ends when idle, releasing the old copy.
            batcher = None
        if batcher is None:
            s = self.settings
            batcher = MicroBatcher(
                lambda xs, e=entry: self._run_predict_batch(e, xs),
                lambda fn, items: self.inference_pool.run(fn, items, device=self.device),
                max_size=s.batch_max_size,
                max_wait_s=s.batch_max_wait_ms / 1000.0,
                on_batch=lambda n, mid=entry.id: self.metrics.batch_size.labels(mid).observe(n),
                name=entry.id,
                wait_only_when_expected=True,
            )
            self._batchers[entry.key] = batcher
            self._batcher_entries[entry.key] = entry
        return batcher

    def _predict_prepare(self, entry: LoadedModel, upload: Upload) -> tuple[tuple[torch.Tensor, str] | None, torch.Tensor | None]:
        """((cached logits, precision), None) or (None, preprocessed input)."""
        hit = self.cache.get(("logits", entry.key, upload.sha))
        if hit is not None:
            return hit, None
        x, _ = self._input(entry, upload)
        return None, x

    async def _logits(self, entry: LoadedModel, upload: Upload, deadline: Deadline) -> tuple[torch.Tensor, bool, str]:
        import asyncio

        batcher = self._batcher(entry)
        batcher.expect()  # a batch forming meanwhile may wait for this image (see api.batching)
        try:
            hit, x = await self.inference_pool.run(self._predict_prepare, entry, upload, deadline=deadline, device=self.device)
        except BaseException:
            batcher.unexpect()
            raise
        if hit is not None:
            batcher.unexpect()
            return hit[0], True, hit[1]
        try:
            logits, precision = await asyncio.wait_for(batcher.enqueue(x, expected=True), timeout=max(deadline.remaining(), 0.0))
        except (TimeoutError, asyncio.TimeoutError):
            self.metrics.timeouts.labels(deadline.kind).inc()
            raise deadline.error() from None
        self.cache.put(("logits", entry.key, upload.sha), (logits, precision))
        return logits, False, precision

    def _top(self, entry: LoadedModel, logits: torch.Tensor, k: int) -> list[dict[str, Any]]:
        # NumPy on a CPU tensor's memory (no torch kernel on the event loop); <= a few thousand values.
        return [p.to_dict() for p in inference.top_k(logits.numpy()[None], k, entry.class_names)[0]]

    def _check_top_k(self, entry: LoadedModel, top_k: int) -> None:
        if top_k > entry.num_classes:
            raise out_of_range("top_k", top_k, 1, min(entry.num_classes, self.settings.max_top_k), f"model {entry.id} has {entry.num_classes} classes")

    async def predict(self, model_id: str | None, upload: Upload, top_k: int, deadline: Deadline) -> dict[str, Any]:
        started = time.perf_counter()
        entry = await self.model(model_id, deadline)
        self._check_top_k(entry, top_k)
        logits, cached, precision = await self._logits(entry, upload, deadline)
        return {
            "image_id": upload.sha,
            "model": entry.id,
            "device": self.device,
            "precision": precision,
            "cached": cached,
            "predictions": self._top(entry, logits, top_k),
            "timing_ms": (time.perf_counter() - started) * 1000,
        }

    async def predict_batch(
        self, model_id: str | None, uploads: Sequence[tuple[Upload, str | None]], top_k: int, deadline: Deadline
    ) -> dict[str, Any]:
        import asyncio

        from .errors import problem_body

        started = time.perf_counter()
        entry = await self.model(model_id, deadline)
        self._check_top_k(entry, top_k)

        async def one(position: int, upload: Upload, filename: str | None) -> dict[str, Any]:
            try:
                logits, _, _ = await self._logits(entry, upload, deadline)
            except Exception as exc:  # noqa: BLE001 - one bad image must not spoil the others
                error = translate(exc)
                if error is None or error.status >= 500:
                    raise
                return {
                    "position": position,
                    "filename": filename,
                    "ok": False,
                    "image_id": upload.sha,
                    "error": problem_body(error.status, error.slug, error.title, error.detail, None, error.extra),
                }
            return {
                "position": position,
                "filename": filename,
                "ok": True,
                "image_id": upload.sha,
                "predictions": self._top(entry, logits, top_k),
            }

        results = await asyncio.gather(*(one(i, u, f) for i, (u, f) in enumerate(uploads)))
        return {
            "model": entry.id,
            "device": self.device,
            "count": len(results),
            "results": list(results),
            "timing_ms": (time.perf_counter() - started) * 1000,
        }

    # ------------------------------------------------------------------ validation helpers

    def check_layer(self, entry: LoadedModel, layer: str) -> None:
        if layer not in entry.separable:
            raise invalid_choice("layer", layer, list(entry.separable))

    def check_target(self, entry: LoadedModel, target: int | None) -> None:
        if target is not None and not 0 <= target < entry.num_classes:
            raise out_of_range("target", target, 0, entry.num_classes - 1, f"model {entry.id} has {entry.num_classes} classes")

    # ------------------------------------------------------------------ activations

    async def activations(
        self,
        model_id: str | None,
        upload: Upload,
        *,
        layer: str,
        part: str,
        channels: list[int] | None,
        top: int | None,
        sort: str,
        target: int | None,
        fmt: str,
        normalize: str,
        colormap: str,
        tile_px: int,
        columns: int | None,
        deadline: Deadline,
    ) -> dict[str, Any] | BinaryResult:
        started = time.perf_counter()
        entry = await self.model(model_id, deadline)
        self.check_layer(entry, layer)
        n_channels, h, w = entry.layer_shape(layer, part)
        if channels is not None:
            bad = [c for c in channels if not 0 <= c < n_channels]
            if bad:
                raise out_of_range("channels", bad[0], 0, n_channels - 1, f"{layer} {part} has {n_channels} channels")
        if sort == "attribution":
            self.check_target(entry, target)
            if part == "input":
                raise ApiError(
                    422, "invalid-parameter", "sort=attribution needs part=depthwise or pointwise (the attribution is taken at that part)", parameter="sort"
                )
        k = min(top or 0, n_channels)
        if fmt == "png":
            cols = columns or int(math.ceil(math.sqrt(len(channels) if channels is not None else k)))
            width = cols * (tile_px + 2)
            rows = math.ceil((len(channels) if channels is not None else k) / cols)
            height = rows * (round(tile_px * h / w) + 16)
            if width * height > render.MAX_OUTPUT_PIXELS:
                raise ApiError(422, "image-too-large", "the montage would be too large; ask for fewer channels or a smaller tile_px")
        pool = self.attribution_pool if sort == "attribution" and channels is None else self.inference_pool
        result = await pool.run(
            self._activations_job,
            entry,
            upload,
            layer,
            part,
            channels,
            k,
            sort,
            target,
            fmt,
            normalize,
            colormap,
            tile_px,
            columns,
            deadline,
            deadline=deadline,
            device=self.device,
        )
        if isinstance(result, dict):
            result["timing_ms"] = (time.perf_counter() - started) * 1000
        return result

    def _channel_scores(self, entry: LoadedModel, upload: Upload, layer: str, part: str, target: int | None, deadline: Deadline) -> tuple[torch.Tensor, int]:
        """Per-channel gradient x activation for ``target`` (None: the predicted class, a function of the image)."""
        key = ("channel_importance", entry.key, upload.sha, layer, part, target)
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        x, _ = self._input(entry, upload)
        result = self._attribute(entry, x, "channel_importance", target, layer, part, {"auc_steps": 0}, "fp32", deadline)
        value = (result.attribution, result.target)
        self.cache.put(key, value)
        return value

    def _activations_job(
        self,
        entry: LoadedModel,
        upload: Upload,
        layer: str,
        part: str,
        channels: list[int] | None,
        k: int,
        sort: str,
        target: int | None,
        fmt: str,
        normalize: str,
        colormap: str,
        tile_px: int,
        columns: int | None,
        deadline: Deadline,
    ) -> dict[str, Any] | BinaryResult:
        maps_all, cached = self._layer_maps(entry, upload, layer, deadline)
        maps = maps_all[part].float()
        scores: torch.Tensor | None = None
        used_target = None
        if channels is not None:
            index = list(dict.fromkeys(channels))
        else:
            if sort == "mean":
                scores = maps.mean(dim=(1, 2))
            elif sort == "max":
                scores = maps.amax(dim=(1, 2))
            else:
                scores, used_target = self._channel_scores(entry, upload, layer, part, target, deadline)
                scores = scores.float()
            order = torch.argsort(scores, descending=True, stable=True)
            index = [int(i) for i in order[:k]]
        selected = maps[index]
        deadline.check()
        layer_min, layer_max = float(maps.min()), float(maps.max())
        if fmt == "npy":
            return BinaryResult(
                npy_bytes(selected.numpy().astype(np.float32)),
                "application/x-npy",
                {
                    "Content-Disposition": f'attachment; filename="{layer}.{part}.npy"',
                    "X-Image-Id": upload.sha,
                    "X-Model": entry.id,
                    "X-Channels": ",".join(map(str, index)),
                    "X-Shape": ",".join(map(str, selected.shape)),
                    "X-Cache": "hit" if cached else "miss",
                },
            )
        if fmt == "png":
            png = render.montage_png(
                selected.numpy(),
                labels=[f"ch {i}" for i in index],
                colormap=colormap,
                normalize=normalize,  # type: ignore[arg-type]
                tile_px=tile_px,
                columns=columns,
            )
            return BinaryResult(
                png,
                "image/png",
                {
                    "X-Image-Id": upload.sha,
                    "X-Model": entry.id,
                    "X-Channels": ",".join(map(str, index)),
                    "X-Cache": "hit" if cached else "miss",
                },
            )
        arr = selected.numpy()
        vmin = vmax = None
        if normalize == "layer" and arr.size:
            vmin, vmax = float(arr.min()), float(arr.max())
        out = []
        for j, c in enumerate(index):
            m = arr[j]
            out.append(
                {
                    "index": c,
                    "mean": float(m.mean()),
                    "max": float(m.max()),
                    "min": float(m.min()),
                    "std": float(m.std()),
                    "zero_fraction": float((m == 0).mean()),
                    "nonpositive_fraction": float((m <= 0).mean()),
                    "score": finite(float(scores[c])) if scores is not None else None,
                    "png": b64png(tile_png(m, tile_px, colormap, vmin, vmax)),
                }
            )
        return {
            "image_id": upload.sha,
            "model": entry.id,
            "layer": layer,
            "part": part,
            "shape": list(maps.shape),
            "selection": "channels" if channels is not None else "top",
            "sort": None if channels is not None else sort,
            "target": used_target,
            "normalize": normalize,
            "colormap": colormap,
            "value_range": [layer_min, layer_max],
            "tile_px": tile_px,
            "cached": cached,
            "channels": out,
            "timing_ms": 0.0,
        }

    # ------------------------------------------------------------------ decomposition

    async def decomposition(
        self,
        model_id: str | None,
        upload: Upload,
        *,
        layer: str,
        channel: int,
        top: int,
        fmt: str,
        colormap: str,
        tile_px: int,
        deadline: Deadline,
    ) -> dict[str, Any] | BinaryResult:
        started = time.perf_counter()
        entry = await self.model(model_id, deadline)
        self.check_layer(entry, layer)
        c_out = entry.layer_shape(layer, "pointwise")[0]
        if not 0 <= channel < c_out:
            raise out_of_range("channel", channel, 0, c_out - 1, f"the pointwise output of {layer} has {c_out} channels")
        result = await self.inference_pool.run(
            self._decomposition_job, entry, upload, layer, channel, top, fmt, colormap, tile_px, deadline, deadline=deadline, device=self.device
        )
        if isinstance(result, dict):
            result["timing_ms"] = (time.perf_counter() - started) * 1000
        return result

    def _decomposition_job(
        self, entry: LoadedModel, upload: Upload, layer: str, channel: int, top: int, fmt: str, colormap: str, tile_px: int, deadline: Deadline
    ) -> dict[str, Any] | BinaryResult:
        maps, cached = self._layer_maps(entry, upload, layer, deadline)
        module = entry.separable[layer]
        depthwise = maps["depthwise"].float()
        d = decompose(module, depthwise.to(module.pointwise.weight.device), channel, top)
        contributions = d.contributions.float().cpu()
        total, rest = d.total.float().cpu(), d.rest.float().cpu()
        pointwise = maps["pointwise"][channel].float()
        err = float((total - pointwise).abs().max())
        order = [int(i) for i in d.order.cpu()]
        weights = d.weights.float().cpu()
        kernels = module.depthwise.weight.detach()[order, 0].float().cpu()  # [top, 3, 3]
        if fmt == "npz":
            buf = io.BytesIO()
            np.savez(
                buf,
                weights=weights.numpy(),
                order=np.asarray(order, dtype=np.int64),
                energy=d.energy.float().cpu().numpy(),
                contributions=contributions.numpy(),
                kernels=kernels.numpy(),
                rest=rest.numpy(),
                total=total.numpy(),
                pointwise=pointwise.numpy(),
            )
            return BinaryResult(
                buf.getvalue(),
                "application/x-npz",
                {
                    "Content-Disposition": f'attachment; filename="{layer}.ch{channel}.decomposition.npz"',
                    "X-Image-Id": upload.sha,
                    "X-Model": entry.id,
                    "X-Max-Abs-Error": f"{err:.3g}",
                },
            )
        if fmt == "png":
            stack = torch.cat([contributions, rest[None], total[None], pointwise[None]]).numpy()
            labels = [f"{w:+.2f} x dw{i}" for i, w in zip(order, weights[order].tolist())] + ["rest", "sum", f"pw{channel}"]
            png = render.montage_png(stack, labels=labels, colormap=colormap, normalize="layer", tile_px=tile_px)
            return BinaryResult(png, "image/png", {"X-Image-Id": upload.sha, "X-Model": entry.id, "X-Max-Abs-Error": f"{err:.3g}"})
        # One scale for every map (they add up), so the tiles compare.
        stack = torch.cat([contributions, rest[None], total[None], pointwise[None]])
        vmin, vmax = float(stack.min()), float(stack.max())

        def summary(m: torch.Tensor) -> dict[str, Any]:
            a = m.numpy()
            return {"min": float(a.min()), "max": float(a.max()), "png": b64png(tile_png(a, tile_px, colormap, vmin, vmax))}

        return {
            "image_id": upload.sha,
            "model": entry.id,
            "layer": layer,
            "channel": channel,
            "top": len(order),
            "shape": list(total.shape),
            "weights": weights.tolist(),
            "contributions": [
                {"channel": i, "weight": float(weights[i]), "energy": float(e), "kernel": kernels[j].tolist(), **summary(contributions[j])}
                for j, (i, e) in enumerate(zip(order, d.energy.float().cpu().tolist()))
            ],
            "rest": summary(rest),
            "total": summary(total),
            "pointwise": summary(pointwise),
            "max_abs_error": err,
            "colormap": colormap,
            "cached": cached,
            "timing_ms": 0.0,
        }

    # ------------------------------------------------------------------ attributions

    def check_attribution(self, entry: LoadedModel, method: str, layer: str | None, part: str | None, params: dict[str, Any]) -> dict[str, Any]:
        """The resolved parameters once the catalogue's rules hold for this model (before queueing);
        raises the core's UnknownMethodError / ParamError, which :func:`api.errors.translate` words."""
        spec = core_attr.get_method(method)
        return spec.validate(params, layer=layer, part=part, layers=list(entry.separable), input_size=entry.input_size)

    def _attribute(
        self, entry: LoadedModel, x: torch.Tensor, method: str, target: int | None, layer: str | None, part: str | None,
        params: dict[str, Any], precision: str, deadline: Deadline | None, logits: torch.Tensor | None = None,
    ) -> core_attr.AttributionResult:
        def check_deadline(_module: Any, _args: Any) -> None:
            if deadline is not None and deadline.expired():
                raise DeadlineExceeded(deadline.kind)

        started = time.perf_counter()
        # Input methods get the BatchNorm-folded replica when folding is on: the same function
        # of the image, so the same attribution, faster. Layer methods need the original's parts.
        fused = entry.fused and not core_attr.get_method(method).layer_method
        with entry.replica(fused=fused) as model:
            model.register_forward_pre_hook(check_deadline)  # the replica is private; its hooks are cleared after use
            autocast = (
                torch.autocast(device_type="cuda", dtype=torch.float16)
                if precision == "mixed" and entry.device.type == "cuda"
                else nullcontext()
            )
            with autocast:
                result = core_attr.Attributor(model).attribute(
                    x[None], method, target=target, layer=layer, part=part, logits=logits, **params
                )
        self.metrics.attribution.labels(self.device, method).observe(time.perf_counter() - started)
        return result

    async def attribution(
        self,
        model_id: str | None,
        upload: Upload,
        *,
        method: str,
        target: int | None,
        layer: str | None,
        part: str | None,
        params: dict[str, Any],
        fmt: str,
        array: str,
        sign: str,
        opacity: float,
        colormap: str | None,
        precision: str | None,
        deadline: Deadline,
    ) -> dict[str, Any] | BinaryResult:
        started = time.perf_counter()
        entry = await self.model(model_id, deadline)
        self.check_target(entry, target)
        resolved = self.check_attribution(entry, method, layer, part, params)
        precision = precision or self.settings.attribution_precision
        if precision == "mixed" and entry.device.type != "cuda":
            precision = "fp32"  # float16 autocast is a CUDA feature; on the CPU attributions stay float32
        result = await self.attribution_pool.run(
            self._attribution_job, entry, upload, method, target, layer, part, params, precision, fmt, array, sign, opacity, colormap, deadline,
            deadline=deadline, device=self.device,
        )
        if isinstance(result, dict):
            result["timing_ms"] = (time.perf_counter() - started) * 1000
            result["params"] = {k: finite(v) for k, v in resolved.items()}
        return result

    def _attribution_job(
        self, entry: LoadedModel, upload: Upload, method: str, target: int | None, layer: str | None, part: str | None,
        params: dict[str, Any], precision: str, fmt: str, array: str, sign: str, opacity: float, colormap: str | None, deadline: Deadline,
    ) -> dict[str, Any] | BinaryResult:
        x, _ = self._input(entry, upload)
        deadline.check()
        # A float32 prediction of this image (the usual flow: predict, then explain) saves the
        # attribution its own prediction forward.
        cached = self.cache.peek(("logits", entry.key, upload.sha))
        logits = cached[0] if cached is not None and cached[1] == "fp32" and precision == "fp32" else None
        r = self._attribute(entry, x, method, target, layer, part, params, precision, deadline, logits)
        target_source = "requested" if target is not None else "predicted"
        headers = {
            "X-Image-Id": upload.sha,
            "X-Model": entry.id,
            "X-Method": method,
            "X-Target": str(r.target),
            "X-Attribution-Ms": f"{r.timing_ms:.1f}",
        }
        if fmt == "npy":
            raw = r.attribution if array == "attribution" else r.heatmap
            headers["X-Shape"] = ",".join(map(str, raw.shape))
            headers["Content-Disposition"] = f'attachment; filename="{method}.{array}.npy"'
            return BinaryResult(npy_bytes(raw.numpy().astype(np.float32)), "application/x-npy", headers)
        image = to_pixels(x, entry.preprocess)
        overlay = render.overlay_png(image, r.heatmap.numpy(), sign=sign, opacity=opacity, colormap=colormap)  # type: ignore[arg-type]
        if fmt == "png":
            return BinaryResult(overlay, "image/png", headers)
        heat = r.heatmap
        ranking = None
        if r.channel_ranking is not None:
            ranking = [{"channel": c, "score": finite(s)} for c, s in r.channel_ranking[: self.settings.max_channels]]
        return {
            "image_id": upload.sha,
            "model": entry.id,
            "method": method,
            "target": r.target,
            "target_label": entry.class_names[r.target],
            "target_source": target_source,
            "predicted": r.predicted,
            "probability": finite(r.probability),
            "layer": layer,
            "part": part,
            "params": {},
            "precision": precision,
            "shape": list(r.attribution.shape),
            "value_range": [finite(float(heat.min())), finite(float(heat.max()))],
            "quality": {k: finite(float(v)) for k, v in r.quality.items()},
            "curves": {k: [finite(float(v)) for v in vs] for k, vs in r.curves.items()},
            "channel_ranking": ranking,
            "overlay_png": b64png(overlay),
            "timing_ms": 0.0,
            "attribution_ms": r.timing_ms,
            "quality_ms": r.quality_ms,
            "device": self.device,
        }
