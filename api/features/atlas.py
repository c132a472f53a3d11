"""The channel atlas: what one channel of one part of a separable layer responds to.

Three questions about a channel, each a GET without an image:

* its **visualisation** (:func:`xception_core.featurevis.visualise`): an image optimised to
  maximise the channel's objective, cancelled when the request's deadline passes, cached by
  ``("visualisation", model key, layer, part, channel, steps, size, seed, objective)``;
* its **atlas entry** (:class:`xception_core.atlas.AtlasIndex`): the data-set images that drive it
  most, cropped to the receptive field of their maximum, and a histogram of its objective over the
  data set, cached by ``("atlas", model key, index identity, layer, part, channel, k, thumb_px, bins)``;
* its **weights**: the 3x3 kernel of a depthwise channel (and the pointwise channels that weigh it
  most), or the 1x1 weights of a pointwise channel over the depthwise channels it mixes.

The model key changes with the weights (``LoadedModel.key``), so no entry outlives them. A
model's atlas index is opened once and kept; the folder it is built from is never a client's:
the index under the model's home, else the bundled model's generated data set, else the
``atlas_data`` setting (see :meth:`Atlas._open_or_build`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from xception_core.atlas import AtlasBuildRequest, AtlasError, AtlasIndex, atlas_dir, build_atlas, open_atlas
from xception_core.featurevis import VisualisationCancelled, VisualisationRequest, visualise
from xception_core.introspect import channel_weights
from xception_core.weights import BUNDLED_ID

from ..encodings import BinaryResult, b64png, finite, npy_bytes, rgb_png
from ..errors import ApiError, invalid_choice, out_of_range
from ..registry import LoadedModel
from ..runtime import Runtime
from ..workers import Deadline, DeadlineExceeded, WorkPool

PARTS = ("depthwise", "pointwise")
#: Default visualisation side: the model's input size, at most this (a CPU answers in seconds).
DEFAULT_SIZE = 128
#: How many strongest counterparts a weights answer lists.
TOP_WEIGHTS = 16


@dataclass(frozen=True)
class ChannelRef:
    """One channel of one part of one separable layer of a model (``None``: the default model)."""

    model: str | None
    layer: str
    part: str
    channel: int


@dataclass(frozen=True)
class VisualisationQuery:
    """``steps`` of the optimisation at ``size`` px (``None``: the model's input size, at most
    :data:`DEFAULT_SIZE`) from ``seed``, maximising ``objective``; answered as ``fmt``."""

    ref: ChannelRef
    steps: int
    size: int | None
    seed: int
    objective: str
    fmt: str


@dataclass(frozen=True)
class AtlasQuery:
    """The top ``k`` examples as thumbnails ``thumb_px`` on their longer side, and a histogram
    of ``bins`` bins."""

    ref: ChannelRef
    k: int
    thumb_px: int
    bins: int


def check_channel(entry: LoadedModel, ref: ChannelRef) -> int:
    """The channel count of the part; 404 for a layer, part or channel the model lacks."""
    if ref.layer not in entry.separable:
        raise invalid_choice("layer", ref.layer, list(entry.separable), status=404)
    parts = entry.separable[ref.layer].parts
    if ref.part not in parts:
        raise invalid_choice("part", ref.part, list(parts), status=404)
    count = int(getattr(entry.separable[ref.layer], ref.part).out_channels)
    if not 0 <= ref.channel < count:
        raise ApiError(
            404,
            "unknown-channel",
            f"channel {ref.channel} does not exist: the {ref.part} part of {ref.layer} has {count} channels (0..{count - 1})",
            parameter="channel",
            allowed_range=[0, count - 1],
        )
    return count


class Atlas:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._indexes: dict[str, AtlasIndex] = {}
        self._building: dict[str, list[int]] = {}  # model id -> [done, total]
        self._lock = threading.Lock()
        # opening an index, or building one (a minute of CPU at most), never holds up the slow pool's
        # visualisations and attributions: its own thread; one build per model at a time (_building)
        self.index_pool = WorkPool("atlas", 1, runtime.settings.max_pending_jobs, runtime.metrics)

    def close(self) -> None:
        self.index_pool.shutdown()

    # ------------------------------------------------------------------ visualisation

    async def visualisation(self, query: VisualisationQuery, deadline: Deadline) -> dict[str, Any] | BinaryResult:
        rt = self.runtime
        entry = await rt.model(query.ref.model, deadline)
        check_channel(entry, query.ref)
        size = query.size if query.size is not None else min(entry.input_size, DEFAULT_SIZE, rt.settings.max_visualisation_size)
        request = VisualisationRequest(
            query.ref.layer, query.ref.part, (query.ref.channel,), steps=query.steps, size=size, seed=query.seed, objective=query.objective
        )
        return await rt.attribution_pool.run(self._visualise_job, entry, query, request, deadline, deadline=deadline, device=rt.device)

    def _visualise_job(
        self, entry: LoadedModel, query: VisualisationQuery, request: VisualisationRequest, deadline: Deadline
    ) -> dict[str, Any] | BinaryResult:
        key = ("visualisation", entry.key, request.layer, request.part, request.channels[0], request.steps, request.size, request.seed, request.objective)
        hit = self.runtime.cache.get(key)
        cached = hit is not None
        if hit is None:
            try:
                result = visualise(entry.model, request, entry.preprocess, cancel=deadline.expired)
            except VisualisationCancelled:
                raise DeadlineExceeded(deadline.kind) from None
            facts = {k: v for k, v in result.to_dict().items() if k != "channels"}
            hit = (result.image, facts)
            self.runtime.cache.put(key, hit)
        image, facts = hit
        if query.fmt == "npy":
            return BinaryResult(npy_bytes(image), "application/x-npy", "", entry.id, _headers(facts, cached), filename=_name(query.ref, "npy"))
        png = rgb_png(image)
        if query.fmt == "png":
            return BinaryResult(png, "image/png", "", entry.id, _headers(facts, cached))
        return {"model": entry.id, **facts, "png": b64png(png), "cached": cached}

    # ------------------------------------------------------------------ atlas entry

    async def entry(self, query: AtlasQuery, deadline: Deadline) -> dict[str, Any]:
        rt = self.runtime
        entry = await rt.model(query.ref.model, deadline)
        check_channel(entry, query.ref)
        index = self._indexes.get(entry.key)
        if index is None:
            index = await self.index_pool.run(self._index, entry, deadline=deadline, device=rt.device)
        answer = await rt.inference_pool.run(self._entry_job, entry, index, query, deadline=deadline, device=rt.device)
        return {**answer, "timing_ms": deadline.elapsed_ms()}

    def _index(self, entry: LoadedModel) -> AtlasIndex:
        with self._lock:
            index = self._indexes.get(entry.key)
            if index is not None:
                return index
            progress = self._building.get(entry.id)
            if progress is not None:
                done, total = progress
                raise ApiError(
                    503,
                    "atlas-building",
                    f"the atlas of {entry.id} is being built ({done} of {total} images); retry in a few seconds",
                    headers={"Retry-After": "5"},
                )
            self._building[entry.id] = [0, 0]
        try:
            index = self._open_or_build(entry)
        finally:
            with self._lock:
                self._building.pop(entry.id, None)
        with self._lock:
            self._indexes[entry.key] = index
        return index

    def _progress(self, model_id: str):
        def report(done: int, total: int) -> None:
            with self._lock:
                if model_id in self._building:
                    self._building[model_id] = [done, total]

        return report

    def _open_or_build(self, entry: LoadedModel) -> AtlasIndex:
        """The index under the model's home when it matches the weights; else the bundled model's,
        built from its generated data set; else one built from the ``atlas_data`` folder."""
        settings = self.runtime.settings
        card = entry.card
        path = atlas_dir(card.id, settings.home)
        if AtlasIndex.exists(path):
            index = AtlasIndex.open(path)
            if card.sha256 is None or index.model_sha256 in (None, card.sha256):
                return index
        if card.id == BUNDLED_ID or settings.atlas_data is None:
            try:
                return open_atlas(card, settings.home, entry.model, self._progress(card.id))
            except AtlasError as exc:
                raise ApiError(
                    409,
                    "atlas-missing",
                    f"{str(exc).split(';')[0]}. Run on the server: xception-demo atlas build --model {card.id} --data DIR, "
                    f"or set XCEPTION_ATLAS_DATA to a folder of images and restart the service",
                ) from None
        request = AtlasBuildRequest(settings.atlas_data)
        return build_atlas(entry.model, entry.preprocess, request, path, card.sha256, self._progress(card.id))

    def _entry_job(self, entry: LoadedModel, index: AtlasIndex, query: AtlasQuery) -> dict[str, Any]:
        ref = query.ref
        kept = min(index.k, self.runtime.settings.max_atlas_k)
        if query.k > kept:
            raise out_of_range("k", query.k, 1, kept, f"the atlas of {entry.id} keeps {index.k} examples per channel")
        if ref.layer not in index.layers() or ref.part not in index.layers()[ref.layer]:
            raise ApiError(409, "atlas-stale", f"the atlas of {entry.id} has no {ref.part} part of {ref.layer}; rebuild it")
        identity = (str(index.path), index.meta.get("seconds"), index.model_sha256)
        key = ("atlas", entry.key, identity, ref.layer, ref.part, ref.channel, query.k, query.thumb_px, query.bins)
        hit = self.runtime.cache.get(key)
        if hit is not None:
            return {**hit, "cached": True}
        found = index.entry(ref.layer, ref.part, ref.channel, query.k)
        examples = []
        for example in found.examples:
            try:
                thumb = b64png(rgb_png(index.crop(example), query.thumb_px))
            except (OSError, ValueError, AtlasError):  # the file changed since the scan
                thumb = None
            examples.append({**example.to_dict(), "png": thumb})
        answer = {
            "model": entry.id,
            "layer": ref.layer,
            "part": ref.part,
            "channel": ref.channel,
            "objective": "mean",
            "k": len(examples),
            "kept": index.k,
            "images": found.count,
            "receptive_field": index.receptive_field(ref.layer, ref.part).to_dict(),
            "input_size": index.preprocess.input_size,
            "examples": examples,
            "stats": {k: finite(v) for k, v in found.to_dict()["stats"].items()},
            "histogram": _histogram(found.sample, query.bins),
        }
        self.runtime.cache.put(key, answer)
        return {**answer, "cached": False}

    # ------------------------------------------------------------------ weights

    async def weights(self, ref: ChannelRef, deadline: Deadline) -> dict[str, Any]:
        rt = self.runtime
        entry = await rt.model(ref.model, deadline)
        check_channel(entry, ref)
        return await rt.inference_pool.run(_weights, entry, ref, deadline=deadline, device=rt.device)


def _weights(entry: LoadedModel, ref: ChannelRef) -> dict[str, Any]:
    module = entry.separable[ref.layer]
    answer: dict[str, Any] = {"model": entry.id, "layer": ref.layer, "part": ref.part, "channel": ref.channel}
    if not module.is_separable:
        raise ApiError(
            422, "not-separable", f"{ref.layer} of {entry.id} is {module.describe()}: weights are shown for depthwise separable layers only"
        )
    weights = channel_weights(entry.model, ref.layer, ref.part, ref.channel).numpy()
    if ref.part == "depthwise":
        kernel = weights  # [3, 3]
        column = module.pointwise.weight.detach()[:, ref.channel, 0, 0].float().cpu().numpy()  # the pointwise channels reading it
        order = np.argsort(-np.abs(column), kind="stable")[:TOP_WEIGHTS]
        answer.update(
            kernel=kernel.tolist(),
            used_by=[{"channel": int(i), "weight": float(column[i])} for i in order],
            used_by_count=int(column.shape[0]),
        )
    else:
        row = weights  # [C_in]: over the depthwise channels
        order = np.argsort(-np.abs(row), kind="stable")[:TOP_WEIGHTS]
        answer.update(weights=row.tolist(), top=[{"channel": int(i), "weight": float(row[i])} for i in order])
    return answer


def _histogram(sample: np.ndarray, bins: int) -> dict[str, Any] | None:
    values = np.asarray(sample, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    counts, edges = np.histogram(values, bins=bins)
    return {"counts": counts.tolist(), "edges": edges.tolist(), "samples": int(values.size)}


def _headers(facts: dict[str, Any], cached: bool) -> dict[str, str]:
    shown = ("layer", "part", "channel", "objective", "objective_start", "objective_final", "steps", "size", "seed", "seconds", "precision")
    return {**{k: f"{facts[k]:.6g}" if isinstance(facts[k], float) else str(facts[k]) for k in shown}, "cache": "hit" if cached else "miss"}


def _name(ref: ChannelRef, ext: str) -> str:
    return f"{ref.layer}.{ref.part}{ref.channel}.visualisation.{ext}"
