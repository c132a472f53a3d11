"""Attributions as fast as the hardware allows, checked against float32 before they are used.

- :func:`quality_engine` -- the forward of the deletion / insertion curves: a
  :class:`~xception_core.engine.Predictor` (BatchNorm folded, channels_last) in bfloat16 where
  the CPU or GPU computes it natively (:func:`~xception_core.engine.native_reduced_precision`)
  and its probabilities agree with float32 (:func:`~xception_core.engine.disagreement`,
  ``log_probabilities``) and it is the faster of the two, else in float32 (onnxruntime on a CPU
  when installed), with the reason in its ``notes``.
- :func:`choose_attribution_precision` -- whether the methods themselves may run in bfloat16
  (input methods on a :class:`~.reduced.ReducedNet`, layer methods in autocast), by family
  (:data:`FAMILIES`): native hardware, and heat maps of a few generated images whose Spearman
  rank correlation with float32's is at least ``threshold``, for the family's judge (saliency,
  Integrated Gradients, Grad-CAM). Returns a :class:`PrecisionChoice` whose ``reason`` says
  why float32 was kept.

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
from ..fuse import fuse_for_inference
from ..model import Xception, model_device
from ..synthetic import generate
from ..synthetic.dataset import to_tensor
from ..timing import best_times
from .attributor import Attributor, AttributorOptions
from .catalogue import get_method, layer_methods
from .localisation import spearman

__all__ = [
    "CURVE_TOLERANCE",
    "FAMILIES",
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
#: Path points of Integrated Gradients on its check: its bf16 agreement hardly depends on them
#: (0.9914 at 8, 0.9923 at 32 on the paper model's first check image, all blocks bf16 but the
#: stem), since bf16's rounding of the weights is the same at every point.
CHECK_IG_STEPS = 8

#: Generated images Integrated Gradients is checked on (the first of ``PrecisionCheck.images``):
#: its check is the costliest of the load (about 5 s an image at 299 px on 2 cores, float32 and
#: bf16), and its agreement varies less between images (0.9905-0.9909 over three) than between
#: path lengths (0.989 at 4 points, 0.991 at 32).
CHECK_IG_IMAGES = 1


def _layer_family() -> tuple[str, ...]:
    return tuple(layer_methods())


#: The method families that may run in bfloat16: name -> (judge, members). A family runs in
#: bf16 when its judge's heat maps agree with float32's. Saliency judges the methods built from
#: one gradient per image, Integrated Gradients those that average gradients along paths from a
#: baseline, Grad-CAM the layer methods. DeepLift and Guided Backprop (rules at every ReLU) and
#: Occlusion (differences of logits) are in none: they always run in float32.
FAMILIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "input": ("saliency", ("saliency", "smoothgrad", "input_x_gradient")),
    "integrated": ("integrated_gradients", ("integrated_gradients", "gradient_shap")),
    "layer": ("layer_gradcam", _layer_family()),
}


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
    separable convolution's last part, Integrated Gradients with :data:`CHECK_IG_STEPS` points
    on the first :data:`CHECK_IG_IMAGES` images).
    """

    requested: str = "auto"
    threshold: float = RANK_THRESHOLD
    images: int = 2
    size: int | None = None
    seed: int = 0
    methods: tuple[str, ...] = ("saliency", "integrated_gradients", "layer_gradcam")

    def __post_init__(self) -> None:
        if self.requested not in _REQUESTS:
            raise ValueError(f"requested must be one of {', '.join(_REQUESTS)}, got {self.requested!r}")
        if not 1 <= self.images <= 16:
            raise ValueError(f"images must be in 1..16, got {self.images}")


@dataclass(frozen=True)
class PrecisionChoice:
    """What attributions run in, by family (:data:`FAMILIES`): ``input`` (judged by saliency),
    ``integrated`` (judged by Integrated Gradients) and ``layer`` (judged by Grad-CAM); what was
    asked; why a family kept fp32 (``reason``, one line, ``None`` when all is as asked); the
    measured Spearman correlations by method. Methods in no family run in fp32."""

    requested: str
    input: str = "fp32"
    layer: str = "fp32"
    reason: str | None = None
    agreement: dict[str, float] = field(default_factory=dict)
    integrated: str = "fp32"

    @property
    def precision(self) -> str:
        """``bf16`` when every family runs in bf16, ``mixed`` when some do, else ``fp32``."""
        every = {self.input, self.integrated, self.layer}
        return every.pop() if len(every) == 1 else "mixed"

    def precision_for(self, method: str) -> str:
        """The precision of catalogue method ``method`` (for :class:`~.attributor.AttributorOptions`)."""
        name = get_method(method).name
        family = next((f for f, (_, members) in FAMILIES.items() if name in members), None)
        return "fp32" if family is None else getattr(self, family)

    def to_dict(self) -> dict:
        return {
            "precision": self.precision,
            "input_methods": self.input,
            "integrated_methods": self.integrated,
            "layer_methods": self.layer,
            "requested": self.requested,
            "reason": self.reason,
            "agreement": dict(self.agreement),
        }


def choose_attribution_precision(model: nn.Module, check: PrecisionCheck | None = None) -> PrecisionChoice:
    """bf16 or fp32 for the attributions of ``model``, by family (see :class:`PrecisionChoice`).

    bf16 needs hardware that computes it natively (the prediction engine's test: AVX512-BF16
    or AMX on a CPU, bf16 support on a GPU) and heat maps whose Spearman rank correlation
    with float32's is at least ``check.threshold`` on each generated image, for the family's
    judge (:data:`FAMILIES`; a family whose judge is not in ``check.methods`` stays fp32).
    Otherwise fp32, with the reason.
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
    for name, (judge, _) in FAMILIES.items():
        score = agreement.get(judge)
        if score is None:
            reasons.append(f"{name} methods: {judge} not checked")
        elif not score >= check.threshold:
            reasons.append(f"{name} methods: {judge} heat maps agree with float32 at Spearman {score:.4f} (at least {check.threshold:g} needed)")
        else:
            family[name] = "bf16"
    reason = f"bf16 not used for {'; '.join(reasons)} on {check.images} generated images" if reasons else None
    return PrecisionChoice(
        check.requested, family.get("input", "fp32"), family.get("layer", "fp32"), reason, agreement, family.get("integrated", "fp32"),
    )


def _agreement(model: nn.Module, check: PrecisionCheck, device: torch.device) -> dict[str, float]:
    """The smallest Spearman correlation over the generated images, by method. Input methods
    run on a BatchNorm-folded copy of an Xception, as served (and dropped afterwards, with the
    :class:`~.reduced.ReducedNet` built from it)."""
    images, _, _ = generate(check.images, check.seed, check.size or 299)
    fp32, bf16 = Attributor(model), Attributor(model, AttributorOptions(precision="bf16"))
    folded = _folded(model)
    input32, input16 = Attributor(folded), Attributor(folded, AttributorOptions(precision="bf16"))
    where: dict[str, str] = {}
    if fp32.layers:
        name, module = list(fp32.layers.items())[-1]
        where = {"layer": name, "part": getattr(module, "parts", ("pointwise",))[-1]}
    agreement: dict[str, float] = {}
    for method in check.methods:
        layer = get_method(method).layer_method
        kwargs = {"target": 0, "auc_steps": 0, **(where if layer else {})}
        if method == "integrated_gradients":
            kwargs.update(n_steps=CHECK_IG_STEPS, internal_batch_size=CHECK_IG_STEPS)
        reference, reduced = (fp32, bf16) if layer else (input32, input16)
        worst = math.inf
        for image in images[:CHECK_IG_IMAGES] if method == "integrated_gradients" else images:
            x = to_tensor(np.asarray(image))[None].to(device)
            a = reference.attribute(x, method, **kwargs).heatmap
            b = reduced.attribute(x, method, **kwargs).heatmap
            worst = min(worst, spearman(a, b))
        agreement[method] = worst
    return agreement


def _folded(model: nn.Module) -> nn.Module:
    """A BatchNorm-folded copy of an Xception (the input methods' served form); else ``model``."""
    if not isinstance(model, Xception):
        return model
    try:
        return fuse_for_inference(model)
    except ValueError:  # a BatchNorm that cannot be folded
        return model
