"""Attributions as fast as the hardware allows, checked against float32 before they are used.

- :func:`quality_engine` -- the forward of the deletion / insertion curves: a
  :class:`~xception_core.engine.Predictor` (BatchNorm folded, channels_last) in bfloat16 where
  the CPU or GPU computes it natively (:func:`~xception_core.engine.native_reduced_precision`)
  and its probabilities agree with float32 (:func:`~xception_core.engine.disagreement`,
  ``log_probabilities``) and it is the faster of the two, else in float32 (onnxruntime on a CPU
  when installed), with the reason in its ``notes``.
- :func:`choose_attribution_precision` -- whether the methods themselves may run in bfloat16
  autocast: native hardware, and saliency and Grad-CAM heat maps of a few generated images
  whose Spearman rank correlation with float32's is at least ``threshold``. Returns a
  :class:`PrecisionChoice` whose ``reason`` says why float32 was kept.

Both decide once, when a model loads; the results go into :class:`~.attributor.AttributorOptions`.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..engine import EngineOptions, Predictor, disagreement, example_batch, native_reduced_precision
from ..model import model_device
from ..synthetic import generate
from ..synthetic.dataset import to_tensor
from ..timing import best_times
from .attributor import Attributor, AttributorOptions
from .catalogue import get_method
from .localisation import spearman

__all__ = [
    "CURVE_TOLERANCE",
    "RANK_THRESHOLD",
    "PrecisionCheck",
    "PrecisionChoice",
    "choose_attribution_precision",
    "quality_engine",
    "spearman",
]

#: Largest |difference| of log-probabilities a bf16 curve forward may show against float32 on
#: its check: every probability on the curves then lies within a factor exp(+-0.1) (about
#: +-10 %) of float32's, and so does each AUC (an average of such probabilities).
CURVE_TOLERANCE = 0.1
#: Smallest Spearman rank correlation of bf16 heat maps with float32's for bf16 attributions.
RANK_THRESHOLD = 0.99
#: Images per forward when ``auto`` times bf16 against float32: about the curves' own batches
#: (the 17 images of the default 8 steps go through as 8 + 9).
TIMING_BATCH = 8
_REQUESTS = ("auto", "fp32", "bf16")


def quality_engine(
    model: nn.Module, *, input_size: int, precision: str = "auto", tolerance: float = CURVE_TOLERANCE,
    reuse: Predictor | None = None,
) -> Predictor:
    """The forward for :func:`~.faithfulness.deletion_insertion_auc`: logits of a batch.

    ``fp32``: float32, the engine's ``auto`` backend (onnxruntime on a CPU when installed).
    ``bf16``: bfloat16 autocast on the folded eager model where the hardware computes it
    natively and its log-probabilities stay within ``tolerance`` of float32 on seeded check
    images (batches of 1 and 2, as the engine's own checks); else float32. ``auto``: as
    ``bf16``, then the faster of the two on a batch of :data:`TIMING_BATCH` (where
    AVX512-BF16 lacks AMX, onnxruntime's float32 can win). What was not used, and why, is in ``notes``
    (``precision`` and ``info()`` say what runs). ``model`` is left untouched. ``reuse``: a
    float32 predictor of ``model`` already built (a served model's prediction engine), used as
    the float32 engine instead of building another (through a shallow copy with notes of its
    own: ``reuse`` itself is not changed).
    """
    if precision not in _REQUESTS:
        raise ValueError(f"precision must be one of {', '.join(_REQUESTS)}, got {precision!r}")
    if reuse is not None and reuse.precision != "fp32":
        raise ValueError(f"reuse must be a float32 predictor, not {reuse.precision}")

    def float32() -> Predictor:
        if reuse is None:
            return Predictor(model, input_size=input_size, options=EngineOptions(backend="auto", precision="fp32"))
        view = copy.copy(reuse)
        view.notes = list(reuse.notes)
        return view

    if precision == "fp32":
        return float32()
    why_not = native_reduced_precision("bf16", model_device(model))
    if why_not is not None:  # worded as the prediction engine words it
        return _with_notes(float32(), [f"bf16 not used: {why_not}"])
    fast = Predictor(model, input_size=input_size, options=EngineOptions(backend="eager", precision="bf16"))
    worst = max(
        disagreement(fast, _float32(fast), example_batch(fast.model, input_size, n, fast.device), "log_probabilities")
        for n in (1, 2)
    )
    if not worst <= tolerance:
        why = f"bf16 not used: log-probabilities differ from float32 by {worst:.3g} (tolerance {tolerance:.3g})"
        return _with_notes(float32(), [why])
    if precision == "bf16":
        return fast
    slow = float32()
    batch = example_batch(fast.model, input_size, TIMING_BATCH, fast.device)
    t_fast, t_slow = _seconds([fast, slow], batch)
    if t_fast <= t_slow:
        return fast
    per_image = f"{t_slow / TIMING_BATCH * 1000:.0f} against {t_fast / TIMING_BATCH * 1000:.0f} ms an image"
    return _with_notes(slow, [f"bf16 not used: {slow.backend} float32 was faster here ({per_image})"])


def _seconds(forwards: list[Predictor], batch: torch.Tensor) -> list[float]:
    """Each forward's best time on ``batch`` (:func:`~xception_core.timing.best_times`)."""
    return best_times([lambda f=f: f(batch) for f in forwards], device=batch.device)


def _float32(predictor: Predictor):
    """The predictor's folded model in float32, no autocast: the reference of its checks."""

    def forward(batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return predictor.model(batch).float()

    return forward


def _with_notes(predictor: Predictor, notes: list[str]) -> Predictor:
    predictor.notes[:0] = notes
    return predictor


@dataclass(frozen=True)
class PrecisionCheck:
    """How :func:`choose_attribution_precision` decides.

    ``requested``: ``auto`` / ``bf16`` (bf16 if native and agreeing, else fp32 and why) or
    ``fp32`` (nothing checked). ``threshold``: the smallest Spearman correlation accepted;
    ``images``: generated images (:mod:`xception_core.synthetic`, ``seed``) at ``size`` px
    (``None``: 299); ``methods``: the catalogue methods compared (layer methods at the last
    separable convolution's last part).
    """

    requested: str = "auto"
    threshold: float = RANK_THRESHOLD
    images: int = 2
    size: int | None = None
    seed: int = 0
    methods: tuple[str, ...] = ("saliency", "layer_gradcam")

    def __post_init__(self) -> None:
        if self.requested not in _REQUESTS:
            raise ValueError(f"requested must be one of {', '.join(_REQUESTS)}, got {self.requested!r}")
        if not 1 <= self.images <= 16:
            raise ValueError(f"images must be in 1..16, got {self.images}")


@dataclass(frozen=True)
class PrecisionChoice:
    """What attributions run in, by family: ``input`` (methods that attribute to the image,
    judged by saliency) and ``layer`` (layer methods, judged by Grad-CAM); what was asked;
    why a family kept fp32 (``reason``, one line, ``None`` when all is as asked); the measured
    Spearman correlations by method."""

    requested: str
    input: str = "fp32"
    layer: str = "fp32"
    reason: str | None = None
    agreement: dict[str, float] = field(default_factory=dict)

    @property
    def precision(self) -> str:
        """``bf16`` when both families run in bf16, ``mixed`` when one does, else ``fp32``."""
        both = {self.input, self.layer}
        return both.pop() if len(both) == 1 else "mixed"

    def precision_for(self, method: str) -> str:
        """The precision of catalogue method ``method`` (for :class:`~.attributor.AttributorOptions`)."""
        return self.layer if get_method(method).layer_method else self.input

    def to_dict(self) -> dict:
        return {
            "precision": self.precision,
            "input_methods": self.input,
            "layer_methods": self.layer,
            "requested": self.requested,
            "reason": self.reason,
            "agreement": dict(self.agreement),
        }


def choose_attribution_precision(model: nn.Module, check: PrecisionCheck | None = None) -> PrecisionChoice:
    """bf16 or fp32 for the attributions of ``model``, by family (see :class:`PrecisionChoice`).

    bf16 needs hardware that computes it natively (the prediction engine's test: AVX512-BF16
    or AMX on a CPU, bf16 support on a GPU) and heat maps whose Spearman rank correlation
    with float32's is at least ``check.threshold`` on each generated image: saliency's decides
    for the input methods, Grad-CAM's for the layer methods (a family whose method is not in
    ``check.methods`` stays fp32). Otherwise fp32, with the reason.
    """
    check = check or PrecisionCheck()
    if check.requested == "fp32":
        return PrecisionChoice("fp32")
    device = model_device(model)
    why = native_reduced_precision("bf16", device)
    if why is not None:
        return PrecisionChoice(check.requested, reason=f"bf16 not used: {why}")
    agreement = _agreement(model, check, device)
    family: dict[str, str] = {}
    reasons = []
    for name, judge in (("input", "saliency"), ("layer", "layer_gradcam")):
        score = agreement.get(judge)
        if score is None:
            reasons.append(f"{name} methods: {judge} not checked")
        elif not score >= check.threshold:
            reasons.append(f"{name} methods: {judge} heat maps agree with float32 at Spearman {score:.4f} (at least {check.threshold:g} needed)")
        else:
            family[name] = "bf16"
    reason = f"bf16 not used for {'; '.join(reasons)} on {check.images} generated images" if reasons else None
    return PrecisionChoice(check.requested, family.get("input", "fp32"), family.get("layer", "fp32"), reason, agreement)


def _agreement(model: nn.Module, check: PrecisionCheck, device: torch.device) -> dict[str, float]:
    """The smallest Spearman correlation over the generated images, by method."""
    images, _, _ = generate(check.images, check.seed, check.size or 299)
    fp32, bf16 = Attributor(model), Attributor(model, AttributorOptions(precision="bf16"))
    where: dict[str, str] = {}
    if fp32.layers:
        name, module = list(fp32.layers.items())[-1]
        where = {"layer": name, "part": getattr(module, "parts", ("pointwise",))[-1]}
    agreement: dict[str, float] = {}
    for method in check.methods:
        kwargs = {"target": 0, "auc_steps": 0, **(where if get_method(method).layer_method else {})}
        worst = math.inf
        for image in images:
            x = to_tensor(np.asarray(image))[None].to(device)
            a = fp32.attribute(x, method, **kwargs).heatmap
            b = bf16.attribute(x, method, **kwargs).heatmap
            worst = min(worst, spearman(a, b))
        agreement[method] = worst
    return agreement
