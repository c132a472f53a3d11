"""Which models the service hosts, and the loaded ones (lazily, cached, LRU).

Production: the cards come from :mod:`xception_core.weights` (the bundled model,
``xception-imagenet`` when its weights are cached, imported models); a model
is loaded on first use and kept while it is among the ``max_loaded`` most
recently used. Tests (and embedders) inject in-memory models::

    registry = ModelRegistry.from_models(
        [InMemoryModel("tiny", Xception(SMALL), class_names, PreprocessConfig(input_size=96))],
        device="cpu",
    )
    app = create_app(settings, registry=registry)

Model ids are only ever compared with the registry's list, never used as paths.

Each loaded model has one *shared* instance (eval mode, channels_last) for
activation captures, which never carries hooks; a
:class:`~xception_core.engine.Predictor` for predictions only, built with the registry's
:class:`~xception_core.engine.EngineOptions` (with ``fuse_batchnorm`` a BatchNorm-folded
copy, run by the backend that works here); and private
*replicas* for attributions (Captum's DeepLift, GuidedBackprop and layer methods
register hooks on modules; on a shared instance they would leak into
concurrent requests).
"""

from __future__ import annotations

import copy
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from xception_core import weights
from xception_core.attributions.fast import PrecisionCheck, PrecisionChoice, choose_attribution_precision, quality_engine
from xception_core.attributions.reduced import reduced_net
from xception_core.engine import EngineOptions, Predictor
from xception_core.fuse import fuse_for_inference
from xception_core.model import MIN_INPUT_SIZE, SeparableConv2d, Xception
from xception_core.profile import ModelProfile, profile_model
from xception_core.transform import PreprocessConfig

log = logging.getLogger("api.registry")


@dataclass
class InMemoryModel:
    """A model given to the registry directly (tests, notebooks): no weights file involved."""

    id: str
    model: Xception
    class_names: Sequence[str]
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    description: str = "in-memory model"

    def card(self) -> weights.ModelCard:
        weights.validate_model_id(self.id)
        names = list(self.class_names)
        if len(names) != self.model.config.num_classes:
            raise ValueError(f"{self.id}: {len(names)} class names for {self.model.config.num_classes} classes")
        return weights.ModelCard(
            id=self.id,
            description=self.description,
            config=self.model.config,
            class_names=names,
            preprocess=self.preprocess,
            source="in-memory",
            weights_path=None,
            sha256=None,
            status="available",
        )


def resolve_device(name: str = "auto") -> torch.device:
    name = (name or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for but CUDA is not available")
    return device


@dataclass(frozen=True)
class AttributionSetup:
    """How a loaded model's attributions run, decided once (at warm-up, else on the first
    attribution) and fixed while it stays loaded: ``precision`` by method family
    (:func:`~xception_core.attributions.fast.choose_attribution_precision`, with the reason
    bf16 was not used) and ``curves``, the forward of the deletion / insertion curves
    (:func:`~xception_core.attributions.fast.quality_engine`; the prediction engine itself when
    it is the float32 folded engine the curves would get anyway)."""

    requested: str
    precision: PrecisionChoice
    curves: Predictor
    reused_prediction_engine: bool

    def precision_for(self, method: str) -> str:
        """``fp32`` or ``bf16`` for catalogue method ``method``."""
        return self.precision.precision_for(method)


class LoadedModel:
    """A model ready to serve: weights on the device plus what requests need to know."""

    def __init__(
        self, card: weights.ModelCard, model: Xception, device: torch.device, *, engine: EngineOptions, max_replicas: int,
        attribution_precision: str = "auto",
    ) -> None:
        self.card = card
        self.id = card.id
        self.key = f"{card.id}@{card.sha256 or uuid.uuid4().hex}"
        self.device = device
        self.class_names = list(card.class_names)
        self.preprocess = card.preprocess
        self.input_size = card.preprocess.input_size
        if self.input_size < MIN_INPUT_SIZE:
            raise ValueError(f"{card.id}: input_size {self.input_size} is under Xception's minimum {MIN_INPUT_SIZE}")
        model.eval()
        self.model = model.to(device=device, memory_format=torch.channels_last)
        # Predictions only (micro-batched /v1/predict): BatchNorm folded into the convolutions, the
        # fastest backend that works here. Captures and attributions need the original's modules
        # and keep ``self.model``.
        self.predictor = Predictor(self.model, input_size=self.input_size, options=engine)
        self.predict_model: Xception = self.predictor.model
        self.fused = engine.fuse_batchnorm
        self.profile: ModelProfile = profile_model(card.config, self.input_size)
        self.separable: dict[str, SeparableConv2d] = self.model.separable_layers()
        self.separable_profile = {s.name: s for s in self.profile.separable}
        self._replicas: dict[bool, list[Xception]] = {False: [], True: []}  # by ``fused``
        self._replica_count = {False: 0, True: 0}
        self._max_replicas = max(1, int(max_replicas))
        self._replica_lock = threading.Condition()
        self.warmup_ms: dict[str, float] | None = None  # set by warm_up()
        #: the ``attribution_precision`` setting: ``auto`` (decided here), ``fp32``, ``mixed`` (float16 on CUDA)
        self.attribution_precision = attribution_precision
        self._attribution: AttributionSetup | None = None
        self._attribution_lock = threading.Lock()

    def warm_up(self) -> dict[str, float]:
        """Run each engine once on a generated image, so the first request gets the steady-state
        time: the prediction engine (onnxruntime sessions and eager kernels allocate on their
        first call), the shared model (captures), the attributions' precision check, and one
        private attribution replica of each kind, forward and backward, with the folded one's
        bf16 :func:`~xception_core.attributions.reduced.reduced_net` where input methods run in
        bf16 (their copies are made here, not in the first request). Returns, and keeps in
        ``warmup_ms``, the milliseconds each took."""
        timings: dict[str, float] = {}
        generator = torch.Generator().manual_seed(0)
        x = (torch.rand(1, 3, self.input_size, self.input_size, generator=generator) * 2 - 1).to(self.device)
        x = x.contiguous(memory_format=torch.channels_last)

        def timed(name: str, work) -> None:
            started = time.perf_counter()
            work()
            timings[name] = (time.perf_counter() - started) * 1000

        timed("predict", lambda: self.predictor.predict(x))

        def capture() -> None:
            with torch.inference_mode():
                self.model(x)

        timed("capture", capture)
        timed("attribution_setup", self.attribution_setup)
        for fused in sorted({False, self.fused}):
            timed("replica_fused" if fused else "replica", lambda f=fused: self._warm_replica(x, f))
        timed("quality_engine", lambda: self.attribution_setup().curves(x))
        self.warmup_ms = timings
        return timings

    @property
    def attribution_decided(self) -> bool:
        """Whether :meth:`attribution_setup` has decided (it is then instant)."""
        return self._attribution is not None

    def attribution_setup(self) -> AttributionSetup:
        """The attributions' precision and curve engine (decided on the first call, then kept)."""
        with self._attribution_lock:
            if self._attribution is None:
                self._attribution = self._decide_attributions()
            return self._attribution

    def _decide_attributions(self) -> AttributionSetup:
        auto = "auto" if self.attribution_precision == "auto" else "fp32"
        # The curves need the float32 folded forward the prediction engine already is (unless it
        # predicts in a reduced precision or unfolded): reuse it rather than export a second one.
        served = self.predictor if self.predictor.precision == "fp32" and self.fused else None
        curves = quality_engine(self.model, input_size=self.input_size, precision=auto, reuse=served)
        choice = choose_attribution_precision(self.model, PrecisionCheck(requested=auto, size=self.input_size))
        if self.attribution_precision == "mixed":
            choice = PrecisionChoice("mixed", reason=None if self.device.type == "cuda" else "mixed (float16 autocast) is CUDA only: fp32")
        return AttributionSetup(self.attribution_precision, choice, curves, served is not None and curves.model is served.model)

    def _warm_replica(self, x: torch.Tensor, fused: bool) -> None:
        choice = self.attribution_setup().precision
        with self.replica(fused=fused) as model, torch.enable_grad():
            nets = [model]
            if fused and "bf16" in (choice.input, choice.integrated):
                nets.append(reduced_net(model))
            for net in nets:
                xg = x.detach().clone().requires_grad_()
                net(xg)[0].max().backward()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def parts(self, layer: str) -> tuple[str, ...]:
        """The parts of a separable layer in forward order (``SeparableConv2d.parts``), without ``input``."""
        return self.separable[layer].parts

    def layer_shape(self, layer: str, part: str) -> tuple[int, int, int]:
        """``(C, H, W)`` of a separable layer's part: ``input`` or one of :meth:`parts`.

        Every part keeps the spatial size (3x3 with padding 1, or 1x1), so all share ``H, W``;
        a part has as many channels as its convolution's output.
        """
        s = self.separable_profile[layer]
        h, w = s.output_size
        channels = s.in_channels if part == "input" else getattr(self.separable[layer], part).out_channels
        return (int(channels), int(h), int(w))

    @contextmanager
    def replica(self, fused: bool = False) -> Iterator[Xception]:
        """A private copy of the model for one attribution at a time (hooks stay private).

        ``fused``: a BatchNorm-folded copy with frozen parameters
        (:func:`~xception_core.fuse.fuse_for_inference`): the same function of the input, so the
        same input attributions, computed faster (no BatchNorm layers, no weight gradients). Its
        ``pointwise`` outputs include the BatchNorm, so layer methods need ``fused=False``. Each
        kind has its own pool of at most ``max_replicas`` copies.
        """
        pool = self._replicas[bool(fused)]
        with self._replica_lock:
            while not pool and self._replica_count[bool(fused)] >= self._max_replicas:
                self._replica_lock.wait()
            if pool:
                model = pool.pop()
            else:
                self._replica_count[bool(fused)] += 1
                model = None
        if model is None:
            try:
                model = fuse_for_inference(self.model) if fused else copy.deepcopy(self.model)
            except BaseException:
                with self._replica_lock:
                    self._replica_count[bool(fused)] -= 1
                    self._replica_lock.notify_all()
                raise
        try:
            yield model
        finally:
            # Whatever a method left behind (hooks, grads) must not reach the next user.
            for module in model.modules():
                module._forward_hooks.clear()
                module._forward_pre_hooks.clear()
                module._backward_hooks.clear()
                if hasattr(module, "_backward_pre_hooks"):
                    module._backward_pre_hooks.clear()
            model.zero_grad(set_to_none=True)
            model.eval()
            with self._replica_lock:
                pool.append(model)
                self._replica_lock.notify_all()


class ModelRegistry:
    def __init__(
        self,
        *,
        home: str | Path | None = None,
        device: str | torch.device = "auto",
        max_loaded: int = 2,
        models: Iterable[InMemoryModel] = (),
        include_weights: bool = True,
        default_model: str | None = None,
        max_replicas: int | None = None,
        engine: EngineOptions | None = None,
    ) -> None:
        self.home = home
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.max_loaded = max(1, int(max_loaded))
        self.include_weights = include_weights
        # None: what the app serving this registry says (see serve_with)
        self.max_replicas = max_replicas
        self.engine = engine
        self.attribution_precision = "auto"  # the serving app's setting (see serve_with)
        self.warm_up: bool | None = None  # None: what the serving app says (see serve_with); off outside an app
        self._memory: dict[str, InMemoryModel] = {}
        for m in models:
            m.card()  # validate now
            self._memory[m.id] = m
        self._default = default_model
        self._default_cached: str | None = None
        self._loaded: OrderedDict[str, LoadedModel] = OrderedDict()
        self._loading: dict[str, threading.Lock] = {}
        self._lock = threading.RLock()
        self._cards: list[weights.ModelCard] | None = None
        self._cards_at = 0.0
        self.on_change = None  # callback(number of loaded models), set by the app for metrics

    @classmethod
    def from_models(
        cls, models: Iterable[InMemoryModel], *, device: str | torch.device = "cpu", default_model: str | None = None, **kwargs
    ) -> "ModelRegistry":
        """A registry of in-memory models only (no weights cache is read)."""
        kwargs.setdefault("include_weights", False)
        return cls(models=models, device=device, default_model=default_model, **kwargs)

    def serve_with(self, engine: EngineOptions, max_replicas: int, warm_up: bool = True, attribution_precision: str = "auto") -> None:
        """The serving app's choices, for what the registry's builder left open (``None``).

        The app calls it once, before any request: ``engine`` is the app's
        :meth:`~api.settings.Settings.engine_options`, ``max_replicas`` one private replica per
        thread that can ask for one. A builder's explicit choice wins (tests, benchmarks).
        """
        if self.engine is None:
            self.engine = engine
        if self.max_replicas is None:
            self.max_replicas = max_replicas
        if self.warm_up is None:
            self.warm_up = warm_up
        self.attribution_precision = attribution_precision

    # ------------------------------------------------------------------ cards

    def cards(self, refresh: bool = False) -> list[weights.ModelCard]:
        with self._lock:
            if refresh or self._cards is None or time.monotonic() - self._cards_at > 5.0:
                cards = [m.card() for m in self._memory.values()]
                if self.include_weights:
                    cards += [c for c in weights.list_models(self.home) if c.id not in self._memory]
                self._cards = cards
                self._cards_at = time.monotonic()
            return list(self._cards)

    def ids(self) -> list[str]:
        return [c.id for c in self.cards()]

    def card(self, model_id: str) -> weights.ModelCard:
        """The card of ``model_id`` (the list is read again once before giving up), else
        :class:`~xception_core.weights.UnknownModelError` with the valid ids as ``choices``."""
        for refresh in (False, True):
            for c in self.cards(refresh=refresh):
                if c.id == model_id:
                    return c
        ids = self.ids()
        shown = model_id if len(str(model_id)) <= 80 else str(model_id)[:77] + "..."
        raise weights.UnknownModelError(f"unknown model {shown!r}; valid ids: {', '.join(ids)}", choices=ids)

    def default_id(self) -> str:
        """The explicit default, else the first injected model, else ``weights.default_model_id``
        (``xception-imagenet`` when its weights are cached, else the bundled model), decided on
        first use and kept for the life of the process (readiness never flips back)."""
        if self._default:
            return self._default
        if self._memory:
            return next(iter(self._memory))
        with self._lock:
            if self._default_cached is None:
                self._default_cached = weights.default_model_id(self.home)
            return self._default_cached

    # ------------------------------------------------------------------ loading

    def is_loaded(self, model_id: str) -> bool:
        with self._lock:
            return model_id in self._loaded

    def loaded_ids(self) -> list[str]:
        with self._lock:
            return list(self._loaded)

    def peek(self, model_id: str) -> LoadedModel | None:
        """The loaded model, or None when it is not loaded (never loads, never reorders)."""
        with self._lock:
            return self._loaded.get(model_id)

    def get(self, model_id: str | None = None) -> LoadedModel:
        """The loaded model (loading it now if needed; blocking: call from a worker thread)."""
        model_id = model_id or self.default_id()
        with self._lock:
            entry = self._loaded.get(model_id)
            if entry is not None:
                self._loaded.move_to_end(model_id)
                return entry
            card = self.card(model_id)
            lock = self._loading.setdefault(model_id, threading.Lock())
        with lock:
            with self._lock:
                entry = self._loaded.get(model_id)
                if entry is not None:
                    return entry
            entry = self._load(card)
            with self._lock:
                self._loaded[model_id] = entry
                self._loaded.move_to_end(model_id)
                default = self.default_id()  # never unloaded: readiness depends on it
                while len(self._loaded) > self.max_loaded:
                    victim = next((k for k in self._loaded if k != model_id and k != default), None)
                    if victim is None:
                        break
                    del self._loaded[victim]
                    log.info("unloaded model %s (max_loaded_models=%d)", victim, self.max_loaded)
                count = len(self._loaded)
        if self.on_change is not None:
            self.on_change(count)
        return entry

    def _load(self, card: weights.ModelCard) -> LoadedModel:
        started = time.perf_counter()
        if card.id in self._memory:
            source = self._memory[card.id]
            model = source.model
            card = source.card()
        else:
            model, card = weights.load_model(card.id, self.device, home=self.home)
        entry = LoadedModel(
            card, model, self.device, engine=self.engine or EngineOptions(), max_replicas=self.max_replicas or 1,
            attribution_precision=self.attribution_precision,
        )
        if self.warm_up:
            entry.warm_up()
        engine = entry.predictor.info()
        log.info(
            "loaded model %s on %s in %.0f ms; predictions: %s, %s%s%s", card.id, self.device,
            (time.perf_counter() - started) * 1000, engine.backend, engine.precision,
            "".join(f"; {note}" for note in engine.notes),
            "" if entry.warmup_ms is None else "; warmed up: " + ", ".join(f"{k} {v:.0f} ms" for k, v in entry.warmup_ms.items()),
            extra={"model": card.id, "device": str(self.device)},
        )
        return entry
