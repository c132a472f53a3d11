"""Predictions: ``POST /v1/predict`` and ``POST /v1/predict/batch``.

Concurrent predictions for one model share forward passes (:class:`~api.batching.MicroBatcher`)
through the model's :class:`~xception_core.engine.Predictor` (its
:class:`~xception_core.engine.EngineOptions` come from the settings: backend, float32 or a
guarded bfloat16 / float16). Logits are cached per image, so a second request on the same image
-- a prediction, or an attribution that needs them -- skips the forward pass.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from xception_core import inference

from ..batching import MicroBatcher
from ..errors import ApiError, out_of_range, problem_body, translate
from ..registry import LoadedModel
from ..runtime import Runtime, Upload
from ..workers import Deadline

#: The response's ``precision`` for each predictor precision (``mixed`` predates bf16: float16).
PRECISION_LABELS = {"fp32": "fp32", "fp16": "mixed", "bf16": "bf16"}


@dataclass(frozen=True)
class PredictRequest:
    model: str | None
    upload: Upload
    top_k: int


@dataclass(frozen=True)
class BatchPart:
    """One ``images`` part of a batch: its upload, or why it was refused while reading the body."""

    upload: Upload | ApiError
    filename: str | None


@dataclass(frozen=True)
class BatchRequest:
    model: str | None
    parts: tuple[BatchPart, ...]
    top_k: int


class Predictions:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._batchers: dict[str, MicroBatcher] = {}
        self._batcher_entries: dict[str, LoadedModel] = {}

    async def close(self) -> None:
        for batcher in list(self._batchers.values()):
            await batcher.close()
        self._batchers.clear()
        self._batcher_entries.clear()

    # ------------------------------------------------------------------ requests

    async def predict(self, request: PredictRequest, deadline: Deadline) -> dict[str, Any]:
        rt = self.runtime
        entry = await rt.model(request.model, deadline)
        self._check_top_k(entry, request.top_k)
        logits, cached, precision = await self.logits(entry, request.upload, deadline)
        return {
            "image_id": request.upload.sha,
            "model": entry.id,
            "device": rt.device,
            "precision": precision,
            "cached": cached,
            "predictions": top_classes(entry, logits, request.top_k),
            "timing_ms": deadline.elapsed_ms(),
        }

    async def predict_batch(self, request: BatchRequest, deadline: Deadline) -> dict[str, Any]:
        """One result per part, in order; a part that cannot be used gets its own problem object."""
        rt = self.runtime
        entry = await rt.model(request.model, deadline)
        if any(isinstance(p.upload, Upload) for p in request.parts):  # top_k matters once there is an image
            self._check_top_k(entry, request.top_k)
        results = await asyncio.gather(*(self._batch_item(entry, i, p, request.top_k, deadline) for i, p in enumerate(request.parts)))
        return {
            "model": entry.id,
            "device": rt.device,
            "count": len(results),
            "results": list(results),
            "timing_ms": deadline.elapsed_ms(),
        }

    async def _batch_item(self, entry: LoadedModel, position: int, part: BatchPart, top_k: int, deadline: Deadline) -> dict[str, Any]:
        item: dict[str, Any] = {"position": position, "filename": part.filename}
        if isinstance(part.upload, ApiError):  # refused while reading the body
            return {**item, "ok": False, "error": _problem(part.upload)}
        try:
            logits, _, _ = await self.logits(entry, part.upload, deadline)
        except Exception as exc:  # noqa: BLE001 - one bad image must not spoil the others
            error = translate(exc)
            if error is None or error.status >= 500:
                raise
            return {**item, "ok": False, "image_id": part.upload.sha, "error": _problem(error)}
        return {**item, "ok": True, "image_id": part.upload.sha, "predictions": top_classes(entry, logits, top_k)}

    def _check_top_k(self, entry: LoadedModel, top_k: int) -> None:
        if top_k > entry.num_classes:
            limit = min(entry.num_classes, self.runtime.settings.max_top_k)
            raise out_of_range("top_k", top_k, 1, limit, f"model {entry.id} has {entry.num_classes} classes")

    # ------------------------------------------------------------------ logits

    async def logits(self, entry: LoadedModel, upload: Upload, deadline: Deadline) -> tuple[torch.Tensor, bool, str]:
        """The image's logits, whether the cache had them, and their precision label."""
        rt = self.runtime
        batcher = self._batcher(entry)
        batcher.expect()  # a batch forming meanwhile may wait for this image (see api.batching)
        try:
            hit, x = await rt.inference_pool.run(self._prepare, entry, upload, deadline=deadline, device=rt.device)
        except BaseException:
            batcher.unexpect()
            raise
        if hit is not None:
            batcher.unexpect()
            return hit[0], True, hit[1]
        try:
            logits, precision = await asyncio.wait_for(batcher.enqueue(x, expected=True), timeout=max(deadline.remaining(), 0.0))
        except (TimeoutError, asyncio.TimeoutError):
            rt.metrics.timeouts.labels(deadline.kind).inc()
            raise deadline.error() from None
        rt.cache.put(("logits", entry.key, upload.sha), (logits, precision))
        return logits, False, precision

    def _prepare(self, entry: LoadedModel, upload: Upload) -> tuple[tuple[torch.Tensor, str] | None, torch.Tensor | None]:
        """((cached logits, precision), None) or (None, preprocessed input); a worker thread's job."""
        hit = self.runtime.cache.get(("logits", entry.key, upload.sha))
        if hit is not None:
            self.runtime.keep(upload)
            return hit, None
        x, _ = self.runtime.input(entry, upload)
        return None, x

    def run_batch(self, entry: LoadedModel, xs: Sequence[torch.Tensor]) -> list[tuple[torch.Tensor, str]]:
        """One forward pass of a micro-batch (a worker thread's job): per image, its logits and
        the precision that made them."""
        rt = self.runtime
        started = time.perf_counter()
        predictor = entry.predictor
        logits, reduced = predictor.predict(torch.stack(list(xs)))
        if predictor.precision != "fp32" and not bool(reduced.all()):
            rt.metrics.amp_fallbacks.inc(int((~reduced).sum()))
        label = PRECISION_LABELS[predictor.precision]
        rt.metrics.inference.labels(rt.device, entry.id, "predict").observe(time.perf_counter() - started)
        out = logits.cpu().clone()  # an ordinary tensor (outside inference mode)
        return [(out[i].clone(), label if bool(reduced[i]) else "fp32") for i in range(len(xs))]

    def _batcher(self, entry: LoadedModel) -> MicroBatcher:
        batcher = self._batchers.get(entry.key)
        if batcher is not None and self._batcher_entries.get(entry.key) is not entry:
            # The model was unloaded and loaded again: a new batcher for the new copy. The old one
            # finishes what it holds and its worker ends when idle, releasing the old copy.
            batcher = None
        if batcher is None:
            rt, s = self.runtime, self.runtime.settings
            batcher = MicroBatcher(
                lambda xs, e=entry: self.run_batch(e, xs),
                lambda fn, items: rt.inference_pool.run(fn, items, device=rt.device),
                max_size=s.batch_max_size,
                max_wait_s=s.batch_max_wait_ms / 1000.0,
                on_batch=lambda n, mid=entry.id: rt.metrics.batch_size.labels(mid).observe(n),
                name=entry.id,
                wait_only_when_expected=True,
            )
            self._batchers[entry.key] = batcher
            self._batcher_entries[entry.key] = entry
        return batcher


def top_classes(entry: LoadedModel, logits: torch.Tensor, k: int) -> list[dict[str, Any]]:
    """The ``k`` most probable classes of CPU logits (NumPy: no torch kernel on the event loop)."""
    return [p.to_dict() for p in inference.top_k(logits.numpy()[None], k, entry.class_names)[0]]


def _problem(error: ApiError) -> dict[str, Any]:
    return problem_body(error.status, error.slug, error.title, error.detail, None, error.extra)
