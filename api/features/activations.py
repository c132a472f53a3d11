"""Feature maps: ``POST /v1/activations``.

One capture of a layer (:meth:`~api.runtime.Runtime.layer_maps`, cached) serves all its parts and
every later channel selection, colour map and format. ``sort=attribution`` ranks channels by
gradient x activation for a class (the catalogue's ``channel_importance``, cached too), so it
runs in the attribution pool.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from xception_core import render
from xception_core.attributions import AttributionRequest

from ..encodings import BinaryResult, b64png, finite, joined, npy_bytes, tile_png
from ..errors import ApiError, out_of_range
from ..registry import LoadedModel
from ..runtime import Runtime, Upload, check_layer, check_part, check_target
from ..workers import Deadline
from .attributions import Attributions


@dataclass(frozen=True)
class ActivationsRequest:
    """Which maps (``layer``, ``part``; ``channels``, else the ``top`` by ``sort``, with ``target``
    for ``sort=attribution``) and how to answer them (``fmt`` json / png / npy, ``normalize``,
    ``colormap``, ``tile_px``, montage ``columns``)."""

    model: str | None
    upload: Upload
    layer: str
    part: str
    channels: tuple[int, ...] | None
    top: int
    sort: str
    target: int | None
    fmt: str
    normalize: str
    colormap: str
    tile_px: int
    columns: int | None


class Activations:
    def __init__(self, runtime: Runtime, attributions: Attributions) -> None:
        self.runtime = runtime
        self.attributions = attributions

    async def maps(self, request: ActivationsRequest, deadline: Deadline) -> dict[str, Any] | BinaryResult:
        rt = self.runtime
        entry = await rt.model(request.model, deadline)
        self._validate(entry, request)
        ranked = request.sort == "attribution" and request.channels is None
        pool = rt.attribution_pool if ranked else rt.inference_pool
        return await pool.run(self._job, entry, request, deadline, deadline=deadline, device=rt.device)

    def _validate(self, entry: LoadedModel, r: ActivationsRequest) -> None:
        check_layer(entry, r.layer)
        check_part(entry, r.layer, r.part)
        n_channels, h, w = entry.layer_shape(r.layer, r.part)
        if r.channels is not None:
            bad = [c for c in r.channels if not 0 <= c < n_channels]
            if bad:
                raise out_of_range("channels", bad[0], 0, n_channels - 1, f"{r.layer} {r.part} has {n_channels} channels")
        if r.sort == "attribution":
            check_target(entry, r.target)
            if r.part == "input":
                parts = " or ".join(f"part={p}" for p in entry.parts(r.layer))
                raise ApiError(
                    422, "invalid-parameter", f"sort=attribution needs {parts} (the attribution is taken at that part)", parameter="sort"
                )
        if r.fmt == "png":
            count = len(r.channels) if r.channels is not None else min(r.top, n_channels)
            cols = r.columns or int(math.ceil(math.sqrt(count)))
            width = cols * (r.tile_px + 2)
            height = math.ceil(count / cols) * (round(r.tile_px * h / w) + 16)
            if width * height > render.MAX_OUTPUT_PIXELS:
                raise ApiError(422, "image-too-large", "the montage would be too large; ask for fewer channels or a smaller tile_px")

    def _channel_scores(self, entry: LoadedModel, r: ActivationsRequest, deadline: Deadline) -> tuple[torch.Tensor, int]:
        """Per-channel gradient x activation for ``target`` (None: the predicted class, a function of the image)."""
        rt = self.runtime
        key = ("channel_importance", entry.key, r.upload.sha, r.layer, r.part, r.target)
        hit = rt.cache.get(key)
        if hit is not None:
            return hit
        x, _ = rt.input(entry, r.upload)
        what = AttributionRequest("channel_importance", r.target, r.layer, r.part, {"auc_steps": 0})
        result = self.attributions.attribute(entry, x, what, "fp32", deadline)
        value = (result.attribution, result.target)
        rt.cache.put(key, value)
        return value

    def _job(self, entry: LoadedModel, r: ActivationsRequest, deadline: Deadline) -> dict[str, Any] | BinaryResult:
        maps_all, cached = self.runtime.layer_maps(entry, r.upload, r.layer, deadline)
        maps = maps_all[r.part].float()
        scores: torch.Tensor | None = None
        used_target = None
        if r.channels is not None:
            index = list(dict.fromkeys(r.channels))
        else:
            if r.sort == "mean":
                scores = maps.mean(dim=(1, 2))
            elif r.sort == "max":
                scores = maps.amax(dim=(1, 2))
            else:
                scores, used_target = self._channel_scores(entry, r, deadline)
                scores = scores.float()
            order = torch.argsort(scores, descending=True, stable=True)
            index = [int(i) for i in order[: r.top]]
        selected = maps[index]
        deadline.check()
        facts = {"channels": joined(index)}
        cache = {"cache": "hit" if cached else "miss"}
        if r.fmt == "npy":
            return BinaryResult(
                npy_bytes(selected.numpy().astype(np.float32)), "application/x-npy", r.upload.sha, entry.id,
                {**facts, "shape": joined(selected.shape), **cache}, filename=f"{r.layer}.{r.part}.npy",
            )
        if r.fmt == "png":
            png = render.montage_png(
                selected.numpy(),
                labels=[f"ch {i}" for i in index],
                colormap=r.colormap,
                normalize=r.normalize,  # type: ignore[arg-type]
                tile_px=r.tile_px,
                columns=r.columns,
            )
            return BinaryResult(png, "image/png", r.upload.sha, entry.id, {**facts, **cache})
        return {
            "image_id": r.upload.sha,
            "model": entry.id,
            "layer": r.layer,
            "part": r.part,
            "shape": list(maps.shape),
            "selection": "channels" if r.channels is not None else "top",
            "sort": None if r.channels is not None else r.sort,
            "target": used_target,
            "normalize": r.normalize,
            "colormap": r.colormap,
            "value_range": [float(maps.min()), float(maps.max())],
            "tile_px": r.tile_px,
            "cached": cached,
            "channels": _channel_summaries(selected.numpy(), index, scores, r),
            "timing_ms": deadline.elapsed_ms(),
        }


def _channel_summaries(arr: np.ndarray, index: list[int], scores: torch.Tensor | None, r: ActivationsRequest) -> list[dict[str, Any]]:
    """Per selected map: its statistics, its score (when ranked) and its PNG tile."""
    vmin = vmax = None
    if r.normalize == "layer" and arr.size:
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
                "png": b64png(tile_png(m, r.tile_px, r.colormap, vmin, vmax)),
            }
        )
    return out
