"""What every feature of the service shares: the models, the cache, the worker pools.

A feature (:mod:`api.features`) resolves the model of a request (:meth:`Runtime.model`), checks
what depends on it, then runs one *job* -- a plain synchronous function -- in a worker pool
(:mod:`api.workers`): the event loop never runs torch or Pillow. Jobs read and fill the
byte-bounded cache (:mod:`api.cache`), keyed by the model's key and the upload's sha256:

* ``("input", model key, sha256)``: the preprocessed image ``[3, S, S]`` float32
  (:meth:`Runtime.input`);
* ``("logits", model key, sha256)``: the logits ``[classes]`` float32 and their precision
  (:mod:`api.features.predict`; a capture leaves float32 ones);
* ``("layer", model key, sha256, layer)``: ``{"input", "depthwise", "pointwise"}`` maps
  ``[C, H, W]`` of one separable layer, in ``cache_activation_dtype`` (:meth:`Runtime.layer_maps`:
  one capture serves both parts and every later channel selection, colour map and format);
* ``("channel_importance", model key, sha256, layer, part, target)``: per-channel scores
  (:mod:`api.features.activations`).
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass

import torch
from PIL import Image
from starlette.concurrency import run_in_threadpool

from xception_core.decode import decode_image
from xception_core.introspect import forward_with_capture
from xception_core.transform import eval_transform

from .cache import ByteLRU
from .errors import ApiError, invalid_choice, out_of_range
from .images import ImageStore, StoredImage
from .metrics import Metrics
from .registry import LoadedModel, ModelRegistry
from .settings import Settings
from .workers import Deadline, WorkPool


#: What one capture of a layer keeps: its input and its two parts' outputs.
CAPTURED = ("depthwise", "pointwise", "input")


@dataclass(frozen=True)
class Upload:
    """An uploaded image: its bytes and their sha256 (the ``image_id``); ``stored``: it came
    from the image store (``?image_id=``), not from the request's body."""

    data: bytes
    sha: str
    stored: bool = False


class Runtime:
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
        # finished attributions (api.features.attributions), apart: they must not evict layer maps
        self.attributions = ByteLRU(
            settings.attribution_cache_bytes,
            on_hit=lambda kind: metrics.cache_hits.labels(kind).inc(),
            on_miss=lambda kind: metrics.cache_misses.labels(kind).inc(),
        )
        self.images = ImageStore(settings.image_store_bytes, settings.image_store_ttl_s)
        self.inference_pool = WorkPool("inference", settings.inference_workers, settings.max_pending_jobs, metrics)
        self.attribution_pool = WorkPool("attribution", settings.attribution_workers, settings.max_pending_jobs, metrics)
        self.cache_dtype = torch.float16 if settings.cache_activation_dtype == "float16" else torch.float32
        registry.on_change = lambda n: metrics.models_loaded.set(n)

    def close(self) -> None:
        self.inference_pool.shutdown()
        self.attribution_pool.shutdown()

    @property
    def device(self) -> str:
        return str(self.registry.device)

    # ------------------------------------------------------------------ models

    def default_model(self) -> str:
        return self.registry.default_id()

    async def model(self, model_id: str | None, deadline: Deadline | None = None) -> LoadedModel:
        """The loaded model (an unknown id raises the registry's UnknownModelError: 404, before
        queueing; missing weights raise the core's WeightsMissingError: 409)."""
        model_id = model_id or self.registry.default_id()
        if self.registry.is_loaded(model_id):
            return self.registry.get(model_id)
        await run_in_threadpool(self.registry.card, model_id)  # reads model cards
        return await self.inference_pool.run(self.registry.get, model_id, deadline=deadline, device=self.device)

    # ------------------------------------------------------------------ shared steps (worker threads)

    def input(self, entry: LoadedModel, upload: Upload) -> tuple[torch.Tensor, bool]:
        """The preprocessed image ``[3, S, S]`` and whether the cache had it."""
        key = ("input", entry.key, upload.sha)
        x = self.cache.get(key)
        if x is not None:
            self.keep(upload)
            return x, True
        if not upload.data:
            raise ApiError(422, "empty-upload", "the uploaded image is empty (0 bytes); send an image file")
        image = decode_image(upload.data, max_pixels=self.settings.max_image_pixels)
        self.keep(upload, image)
        x = eval_transform(image, entry.preprocess).contiguous()
        self.cache.put(key, x)
        return x, False

    def keep(self, upload: Upload, image: Image.Image | None = None) -> None:
        """Put an uploaded image that decoded (now or before) into the image store, so that its
        ``image_id`` serves later requests; an image that came from the store is left as is."""
        if not upload.stored:
            size = image.size if image is not None else (None, None)
            self.images.put(upload.sha, upload.data, *size, image_format(upload.data) if image is not None else None)

    def describe(self, upload: Upload) -> StoredImage:
        """Decode an upload (the same checks as every analysis), store it, return what was stored
        (``POST /v1/images``; a worker thread's job)."""
        image = decode_image(upload.data, max_pixels=self.settings.max_image_pixels)
        stored = self.images.put(upload.sha, upload.data, image.width, image.height, image_format(upload.data))
        if stored is None:
            raise ApiError(
                413, "image-store-too-small",
                f"the image ({len(upload.data)} bytes) is larger than the whole image store ({self.images.max_bytes} bytes, "
                "XCEPTION_IMAGE_STORE_BYTES); send it with each request instead",
            )
        return stored

    def layer_maps(self, entry: LoadedModel, upload: Upload, layer: str, deadline: Deadline | None) -> tuple[dict[str, torch.Tensor], bool]:
        """The three parts' maps ``[C, H, W]`` of one separable layer (one capture for all three),
        and whether the cache had them; the capture's logits are cached too."""
        key = ("layer", entry.key, upload.sha, layer)
        maps = self.cache.get(key)
        if maps is not None:
            self.keep(upload)
            return maps, True
        x, _ = self.input(entry, upload)
        if deadline is not None:
            deadline.check()
        started = time.perf_counter()
        with torch.no_grad():
            logits, kept = forward_with_capture(entry.model, on_device(x[None], entry), [layer], CAPTURED)
        sync(entry)
        self.metrics.inference.labels(self.device, entry.id, "capture").observe(time.perf_counter() - started)
        maps = {part: t[0].detach().to("cpu", self.cache_dtype).contiguous() for part, t in kept[layer].items()}
        self.cache.put(key, maps)
        logits_key = ("logits", entry.key, upload.sha)
        if self.cache.peek(logits_key) is None:
            self.cache.put(logits_key, (logits[0].detach().float().cpu().clone(), "fp32"))
        return maps, False


def image_format(data: bytes) -> str | None:
    """The container format of bytes that decoded (Pillow's name: JPEG, PNG, ...), from the header."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.format
    except Exception:  # noqa: BLE001 - a fact for the answer, not a check
        return None


def on_device(x: torch.Tensor, entry: LoadedModel) -> torch.Tensor:
    """A batch on the model's device, in its memory format (channels_last)."""
    return x.to(entry.device, non_blocking=True).contiguous(memory_format=torch.channels_last)


def sync(entry: LoadedModel) -> None:
    """Wait for the model's device (so that timings measure the work, not its launch)."""
    if entry.device.type == "cuda":
        torch.cuda.synchronize(entry.device)


# ---------------------------------------------------------------------- checks against the model


def check_layer(entry: LoadedModel, layer: str) -> None:
    if layer not in entry.separable:
        raise invalid_choice("layer", layer, list(entry.separable))


def check_target(entry: LoadedModel, target: int | None) -> None:
    if target is not None and not 0 <= target < entry.num_classes:
        raise out_of_range("target", target, 0, entry.num_classes - 1, f"model {entry.id} has {entry.num_classes} classes")
