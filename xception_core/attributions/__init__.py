"""Captum attributions for Xception, with the method catalogue kept as data.

Every algorithm is a small class with one public verb (``attribute``), in the style of
``captum.attr``, and every one of them calls Captum itself. Around them:

- ``catalogue`` -- :data:`METHODS`: each :class:`MethodSpec` holds its algorithm, its
  parameters (:class:`Param`: kinds, defaults, ranges) and :meth:`MethodSpec.validate`,
  the one place where a request's parameters, layer / part and occlusion window are
  checked (the REST API and the :class:`Attributor` both call it).
- ``algorithms`` -- one class per Captum method, with its traits (layer method, hooks,
  random draws, convergence delta, kind of output).
- ``attributor`` -- :class:`Attributor` runs a method on a model for an
  :class:`AttributionRequest` and returns an :class:`AttributionResult`; its
  :class:`AttributorOptions` say the precision and the forward of the quality curves.
- ``fast`` -- what makes them fast, checked against float32 once when a model loads:
  ``quality_engine`` (the curves' forward) and ``choose_attribution_precision`` (bf16 or fp32).
- ``faithfulness`` -- the quality figures of a map: deletion / insertion AUC, infidelity,
  sensitivity.
- ``localisation`` -- how well a map points at a known object (masks of generated images).
- ``errors`` -- :class:`AttributionError` and its kinds; ``params`` -- :class:`Param`;
  ``runtime`` -- seeded random generators, precision (the timing sync is :mod:`xception_core.timing`).

Concurrency
-----------
Captum's layer methods (LayerGradCam, GuidedGradCam, LayerGradientXActivation)
register forward hooks on the model's sub-modules, and DeepLift /
GuidedBackprop / GuidedGradCam register hooks on every ``nn.ReLU``. Hooks live
on the *shared* modules, so while they are registered they act on every
forward and backward through that model, from any thread. Each model
therefore has a readers-writer lock, :func:`model_lock` (kept in a
``WeakKeyDictionary`` keyed by the model): hook-free methods (integrated
gradients, saliency, smoothgrad, gradient SHAP, input x gradient, occlusion)
take it *shared* and run concurrently; hook methods take it *exclusive*.
Code outside this package that runs forwards on a model an :class:`Attributor`
may be using at the same time (prediction, activation capture) should hold
``model_lock(model).shared()`` around them, otherwise a hook registered for an
attribution can see (and, for layer methods, record) that foreign forward.
The lock is not reentrant.
"""

from ..introspect import UnknownLayerError
from ..locks import ModelLock, model_lock
from .algorithms import BASELINES, Algorithm
from .attributor import AttributionRequest, AttributionResult, Attributor, AttributorOptions
from .catalogue import (
    COMMON_PARAMS,
    MAX_OCCLUSION_POSITIONS,
    METHODS,
    MethodSpec,
    get_method,
    layer_methods,
    occlusion_positions,
)
from .errors import (
    AttributionError,
    InputError,
    MissingParamError,
    ParamError,
    ParamRangeError,
    UnknownLayerParamError,
    UnknownMethodError,
)
from .faithfulness import (
    INFIDELITY_NOISE,
    INFIDELITY_SAMPLES,
    SENSITIVITY_RADIUS,
    SENSITIVITY_SAMPLES,
    CurveOptions,
    DeletionInsertion,
    deletion_insertion_auc,
    infidelity,
    sensitivity,
)
from .localisation import (
    attribution_quality,
    mask_area_fraction,
    pointing_game_hit,
    positive_mass_in_mask,
    quality_report,
    randomized_copy,
    upsample_to,
)
from .params import Param, format_value

__all__ = [
    "Algorithm",
    "AttributionError",
    "AttributionRequest",
    "AttributionResult",
    "Attributor",
    "AttributorOptions",
    "BASELINES",
    "COMMON_PARAMS",
    "CurveOptions",
    "DeletionInsertion",
    "INFIDELITY_NOISE",
    "INFIDELITY_SAMPLES",
    "InputError",
    "MAX_OCCLUSION_POSITIONS",
    "METHODS",
    "MethodSpec",
    "MissingParamError",
    "ModelLock",
    "Param",
    "ParamError",
    "ParamRangeError",
    "SENSITIVITY_RADIUS",
    "SENSITIVITY_SAMPLES",
    "UnknownLayerError",
    "UnknownLayerParamError",
    "UnknownMethodError",
    "attribution_quality",
    "deletion_insertion_auc",
    "format_value",
    "get_method",
    "infidelity",
    "layer_methods",
    "mask_area_fraction",
    "model_lock",
    "occlusion_positions",
    "pointing_game_hit",
    "positive_mass_in_mask",
    "quality_report",
    "randomized_copy",
    "sensitivity",
    "upsample_to",
]
