"""Prediction engines: a preprocessed batch in, float32 logits out, as fast as the machine allows.

A :class:`Predictor` wraps one model for predictions only (attributions and captures need the
original modules and autograd, and keep the model itself). It picks a *backend* and a
*precision*, checks at construction that the pair works here, and falls back cleanly (to the
eager backend, to float32) with the reason in :attr:`Predictor.notes` when it does not.

Backends:

``eager``
    The model with its BatchNorms folded (:func:`~xception_core.fuse.fuse_for_inference`),
    channels_last, under ``torch.inference_mode``.
``compile``
    ``torch.compile`` (inductor) of that folded model, compiled and checked on construction
    for a batch of 1 and of 2 (the second makes the batch dimension dynamic). A failure, then
    or on a later call, switches the predictor to ``eager`` for good.
``onnxruntime``
    The folded model exported to ONNX in memory (:func:`~xception_core.export.onnx_bytes`) and
    run by onnxruntime's CPU provider, whose graph optimiser fuses each convolution with its
    bias, ReLU and residual addition and runs them in blocked (NCHWc) layouts. Float32, CPU
    only. On the 2-core development machine it is the fastest (see ``benchmarks/bench_forward.py``).
``auto``
    ``onnxruntime`` on the CPU in float32 when ``onnx`` and ``onnxruntime`` are installed (the
    ``api`` extra installs them), else ``eager``.

Precisions: ``fp32``; ``bf16`` (bfloat16 autocast, where the hardware computes it natively:
CUDA GPUs with bf16, CPUs with AVX512-BF16 or AMX; elsewhere emulation would be slower than
float32, so the predictor keeps float32 and says why); ``fp16`` (float16 autocast, CUDA only).
A reduced-precision prediction whose ``guard_top + 1`` best logits lie closer than ``margin`` is
recomputed in float32, so its top-``guard_top`` (default 5) is the float32 one
(:meth:`Predictor.predict`). ``guard_top=1`` protects only the top-1 and recomputes far fewer
images (``benchmarks/bench_precision.py``).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from .export import onnx_bytes, onnx_logits, onnx_session
from .fuse import fuse_for_inference
from .model import model_device

__all__ = [
    "BACKENDS",
    "PRECISIONS",
    "EngineInfo",
    "EngineOptions",
    "Predictor",
    "disagreement",
    "example_batch",
    "native_reduced_precision",
]

log = logging.getLogger(__name__)

BACKENDS = ("auto", "eager", "compile", "onnxruntime")
PRECISIONS = ("fp32", "bf16", "fp16")
#: Largest |difference| to the eager float32 logits, relative to their largest magnitude, that a
#: compiled or onnxruntime backend may show on its construction check.
CHECK_RTOL = 1e-3
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class EngineOptions:
    """How a :class:`Predictor` computes: the one place where the engine's defaults live.

    ``backend`` and ``precision`` as in the module notes; ``fuse_batchnorm``: predict with a
    BatchNorm-folded copy; ``margin`` and ``guard_top``: the float32 guard of reduced precisions;
    ``mixed_precision``: on CUDA, ``fp32`` is asked as ``fp16`` (float16 autocast, guarded) --
    off here, so that ``precision`` means what it says; the REST service turns it on by default.
    """

    backend: str = "auto"
    precision: str = "fp32"
    fuse_batchnorm: bool = True
    margin: float = 0.05
    guard_top: int = 5
    mixed_precision: bool = False

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}; expected one of {', '.join(BACKENDS)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; expected one of {', '.join(PRECISIONS)}")
        if int(self.guard_top) < 1:
            raise ValueError(f"guard_top must be at least 1, got {self.guard_top}")

    def precision_on(self, device: torch.device) -> str:
        """The precision asked for on ``device``: ``fp16`` for ``fp32`` on CUDA under ``mixed_precision``."""
        if self.mixed_precision and self.precision == "fp32" and device.type == "cuda":
            return "fp16"
        return self.precision


@dataclass(frozen=True)
class EngineInfo:
    """What a predictor was asked for, what it runs, and why they differ."""

    backend: str
    precision: str
    requested_backend: str
    requested_precision: str
    notes: tuple[str, ...]

    def to_dict(self) -> dict:
        return {
            "backend": self.backend,
            "precision": self.precision,
            "requested_backend": self.requested_backend,
            "requested_precision": self.requested_precision,
            "notes": list(self.notes),
        }


def native_reduced_precision(precision: str, device: torch.device) -> str | None:
    """``None`` when ``device`` computes ``precision`` natively, else why not (one line)."""
    if precision == "fp32":
        return None
    if precision not in _DTYPES:
        raise ValueError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    if device.type == "cuda":
        if precision == "bf16" and not torch.cuda.is_bf16_supported():
            return "this GPU has no bfloat16 support"
        return None
    if device.type == "cpu":
        if precision == "fp16":
            return "float16 autocast is for CUDA; CPUs compute it by conversion, slower than float32"
        if torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported():
            return None
        capability = torch.backends.cpu.get_cpu_capability()
        return f"this CPU ({capability}) has neither AVX512-BF16 nor AMX; bfloat16 would be emulated, slower than float32"
    return f"reduced precision is not supported on {device.type}"


def example_batch(model: nn.Module, size: int, n: int, device: torch.device) -> torch.Tensor:
    """``n`` seeded uniform images in [-1, 1], ``[n, C, size, size]`` channels_last: the check inputs."""
    generator = torch.Generator().manual_seed(n)
    channels = model.config.in_chans if hasattr(model, "config") else 3
    x = torch.rand(n, channels, size, size, generator=generator) * 2 - 1
    return x.to(device).contiguous(memory_format=torch.channels_last)


def disagreement(
    forward: Callable[[torch.Tensor], torch.Tensor],
    reference: Callable[[torch.Tensor], torch.Tensor],
    batch: torch.Tensor,
    measure: str = "logits",
) -> float:
    """How far ``forward`` strays from ``reference`` (float32) on ``batch``.

    ``measure="logits"``: the largest |difference| of the logits relative to the reference's
    largest magnitude (at least 1) -- the backends' check. ``"log_probabilities"``: the largest
    |difference| of the log-softmax, so every probability of ``forward`` lies within a factor
    ``exp(+-d)`` of the reference's -- what probability curves (deletion / insertion) need.
    A shape mismatch or a non-finite value is infinitely far.
    """
    with torch.inference_mode():
        expected = reference(batch).float()
        got = forward(batch).float()
    if got.shape != expected.shape or not bool(torch.isfinite(got).all()):
        return math.inf
    if measure == "logits":
        return float((got - expected).abs().max()) / max(1.0, float(expected.abs().max()))
    if measure == "log_probabilities":
        return float((torch.log_softmax(got, 1) - torch.log_softmax(expected, 1)).abs().max())
    raise ValueError(f"unknown measure {measure!r}; expected logits or log_probabilities")


def _missing_onnx() -> str | None:
    """The name of the package the onnxruntime backend lacks (``onnx`` for the exporter,
    ``onnxruntime``), or None."""
    for name in ("onnx", "onnxruntime"):
        try:
            __import__(name)
        except ImportError:
            return name
    return None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}"


class Predictor:
    """Logits of preprocessed batches ``[N, C, S, S]`` for one model, on the model's device.

    ``options`` (:class:`EngineOptions`) say how. ``model`` is left untouched; the predictor works
    on a BatchNorm-folded copy (``fuse_batchnorm=True``, the default) or, without, on ``model``
    itself in eval mode (then it must carry no hooks of its own). ``require_native=False`` keeps a reduced precision the hardware only
    emulates (slow; for measuring its agreement with float32). Calls may come from several threads.
    """

    def __init__(
        self, model: nn.Module, *, input_size: int, options: EngineOptions = EngineOptions(), require_native: bool = True
    ) -> None:
        self.options = options
        self.input_size = int(input_size)
        self.device = model_device(model)
        self.requested_backend = options.backend
        self.requested_precision = precision = options.precision_on(self.device)
        self.model = fuse_for_inference(model) if options.fuse_batchnorm else model.eval()
        self.notes: list[str] = []
        self._lock = threading.Lock()

        why = native_reduced_precision(precision, self.device) if require_native else None
        if why is not None:
            self.notes.append(f"{precision} not used: {why}")
            precision = "fp32"
        self.precision = precision

        backend = options.backend
        if backend == "auto":
            backend = "onnxruntime" if self.device.type == "cpu" and precision == "fp32" and _missing_onnx() is None else "eager"
        self.backend = "eager"
        self._forward: Callable[[torch.Tensor], torch.Tensor] = self.model
        if backend == "onnxruntime":
            self._try(backend, self._build_onnxruntime)
        elif backend == "compile":
            self._try(backend, self._build_compiled)

    # ------------------------------------------------------------------ construction

    def _try(self, backend: str, build: Callable[[], Callable[[torch.Tensor], torch.Tensor]]) -> None:
        try:
            forward = build()
            self._check(forward)
        except Exception as exc:  # noqa: BLE001 -- any failure means "not available here"
            self.notes.append(f"{backend} not used: {_one_line(exc)}")
            log.warning("prediction backend %s unavailable, using eager: %s", backend, _one_line(exc))
            return
        self.backend = backend
        self._forward = forward

    def _example(self, n: int) -> torch.Tensor:
        return example_batch(self.model, self.input_size, n, self.device)

    def _check(self, forward: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Batches of 1 and 2 through ``forward`` must match the eager model (float32 both)."""
        for n in (1, 2):
            diff = disagreement(forward, self.model, self._example(n))
            if not diff <= CHECK_RTOL:
                raise RuntimeError(
                    f"logits of a batch of {n} differ from eager float32 by {diff:.3g} of their scale (tolerance {CHECK_RTOL:.3g})"
                )

    def _build_onnxruntime(self) -> Callable[[torch.Tensor], torch.Tensor]:
        if self.device.type != "cpu":
            raise RuntimeError(f"the onnxruntime backend runs on the CPU; this model is on {self.device}")
        if self.precision != "fp32":
            raise RuntimeError(f"the onnxruntime backend runs float32, not {self.precision}")
        missing = _missing_onnx()
        if missing:
            raise RuntimeError(f"{missing} is not installed (pip install onnx onnxruntime)")
        session = onnx_session(onnx_bytes(self.model, input_size=self.input_size), threads=torch.get_num_threads())

        def forward(x: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(onnx_logits(session, x))

        return forward

    def _build_compiled(self) -> Callable[[torch.Tensor], torch.Tensor]:
        compiled = torch.compile(self.model)
        with torch.inference_mode(), self._autocast():
            for n in (1, 2):  # compile now: batch 1, then a dynamic batch dimension
                compiled(self._example(n))
        return compiled

    # ------------------------------------------------------------------ calls

    def info(self) -> EngineInfo:
        return EngineInfo(self.backend, self.precision, self.requested_backend, self.requested_precision, tuple(self.notes))

    def _autocast(self):
        dtype = _DTYPES.get(self.precision)
        return torch.autocast(device_type=self.device.type, dtype=dtype) if dtype is not None else nullcontext()

    def _run(self, batch: torch.Tensor) -> torch.Tensor:
        forward = self._forward
        try:
            with torch.inference_mode(), self._autocast():
                return forward(batch).float()
        except Exception as exc:
            if forward is self.model or isinstance(exc, torch.OutOfMemoryError):
                raise
            with self._lock:
                if self._forward is forward:
                    self.notes.append(f"{self.backend} failed at run time, eager since: {_one_line(exc)}")
                    log.warning("prediction backend %s failed, switching to eager: %s", self.backend, _one_line(exc))
                    self.backend, self._forward = "eager", self.model
            with torch.inference_mode(), self._autocast():
                return self.model(batch).float()

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """Float32 logits ``[N, classes]`` in the predictor's precision, without the float32 guard."""
        return self._run(self._prepare(batch))

    def predict(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Float32 logits ``[N, classes]`` and a bool ``[N]``: which rows reduced precision produced.

        In float32 every row is ``False``. In bf16/fp16 a row whose ``guard_top + 1`` best logits
        lie closer than ``margin`` (or that is not finite) is recomputed in float32, so its
        top-``guard_top`` is the float32 one.
        """
        batch = self._prepare(batch)
        n = batch.shape[0]
        logits = self._run(batch)
        if self.precision == "fp32":
            return logits, torch.zeros(n, dtype=torch.bool)
        k = min(self.options.guard_top + 1, logits.shape[1])
        top = logits.topk(k, dim=1).values
        gaps = (top[:, :-1] - top[:, 1:]).min(dim=1).values if k > 1 else torch.full((n,), math.inf, device=logits.device)
        redo = (gaps < self.options.margin) | ~torch.isfinite(logits).all(dim=1)
        if bool(redo.any()):
            with torch.inference_mode():
                logits[redo] = self.model(batch[redo]).float()
        return logits, (~redo).cpu()

    def _prepare(self, batch: torch.Tensor) -> torch.Tensor:
        return batch.to(self.device, torch.float32).contiguous(memory_format=torch.channels_last)
