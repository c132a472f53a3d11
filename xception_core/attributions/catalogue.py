"""The method catalogue: each :class:`MethodSpec` names its algorithm, its parameters and their rules.

The catalogue is data: the REST API validates and documents every method from it without
knowing the algorithms, and every cost knob a client can set is bounded here.
:meth:`MethodSpec.validate` checks everything that can be checked before running (the
parameters, ``layer`` / ``part``, the occlusion window against the input size); the
:class:`~.attributor.Attributor` and the API call the same rules.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..introspect import PARTS
from .algorithms import (
    BASELINES,
    Algorithm,
    ChannelImportance,
    DeepLift,
    GradientShap,
    GuidedBackprop,
    GuidedGradCam,
    InputXGradient,
    IntegratedGradients,
    LayerGradCam,
    Occlusion,
    OutputKind,
    Saliency,
    SmoothGrad,
)
from .errors import MissingParamError, ParamError, ParamRangeError, UnknownLayerParamError, UnknownMethodError
from .faithfulness import INFIDELITY_NOISE, INFIDELITY_SAMPLES, SENSITIVITY_RADIUS, SENSITIVITY_SAMPLES
from .params import Param, format_value

#: Most window positions one occlusion may evaluate (each is one forward pass).
MAX_OCCLUSION_POSITIONS = 1024

#: A rule of one method that needs the resolved parameters and the input size ``(h, w)``.
Check = Callable[["MethodSpec", dict[str, Any], tuple[int, int]], None]


@dataclass(frozen=True)
class MethodSpec:
    """A method of the catalogue: its algorithm, parameters and extra rule.

    ``costly``: many forward / backward passes (worth a warning in a UI). ``check``: a rule
    between parameters and the input size, beyond each parameter's own range. What the
    algorithm is (``layer_method``, ``hooks``, ``stochastic``, ``output``) is read from it.
    """

    name: str
    description: str
    algorithm: type[Algorithm]
    params: tuple[Param, ...]
    costly: bool = False
    check: Check | None = None

    @property
    def layer_method(self) -> bool:
        """Needs ``layer`` and ``part``."""
        return self.algorithm.layer_method

    @property
    def hooks(self) -> bool:
        """Registers hooks on the shared model, so it runs under the model's exclusive lock."""
        return self.algorithm.hooks

    @property
    def stochastic(self) -> bool:
        """Draws random numbers (seeded by ``seed``)."""
        return self.algorithm.stochastic

    @property
    def output(self) -> OutputKind:
        """``input`` ([3, H, W]), ``layer`` ([1, h, w] at the layer's resolution) or ``channels`` ([C])."""
        return self.algorithm.output

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params}

    def resolve(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Defaults overlaid with ``params``, each coerced and range-checked."""
        unknown = sorted(set(params) - set(self.param_names))
        if unknown:
            raise ParamError(
                f"unknown parameter(s) {', '.join(unknown)} for method {self.name}; "
                f"allowed: {', '.join(self.param_names)}",
                unknown[0],
            )
        return {p.name: p.coerce(params[p.name]) if p.name in params else p.default for p in self.params}

    def validate(
        self,
        params: Mapping[str, Any],
        *,
        layer: str | None = None,
        part: str | None = None,
        layers: Sequence[str],
        input_size: int | tuple[int, int],
        parts: Sequence[str] = PARTS,
    ) -> dict[str, Any]:
        """The resolved parameters, once everything that can be checked before running holds.

        ``layers``: the model's separable layer names; ``parts``: the parts of ``layer``
        (``SeparableConv2d.parts``; Xception's depthwise and pointwise by default); ``input_size``: the image's side, or
        ``(height, width)``. Raises :class:`ParamError` (``param`` names the culprit) for an
        unknown or out-of-range parameter, a missing or unwanted ``layer`` / ``part``, an
        unknown layer (:class:`UnknownLayerParamError`) and the method's own rule (occlusion:
        window, stride and number of positions against the input size).
        """
        resolved = self.resolve(params)
        self._check_layer(layer, part, layers, parts)
        if self.check is not None:
            size = (input_size, input_size) if isinstance(input_size, int) else (int(input_size[0]), int(input_size[1]))
            self.check(self, resolved, size)
        return resolved

    def _check_layer(self, layer: str | None, part: str | None, layers: Sequence[str], parts: Sequence[str]) -> None:
        if not self.layer_method:
            if layer is not None or part is not None:
                raise ParamError(
                    f"layer and part are only for layer methods ({', '.join(layer_methods())}); "
                    f"{self.name} works on the input",
                    "layer" if layer is not None else "part",
                )
            return
        if layer is None:
            raise MissingParamError(
                f"{self.name} needs layer (one of {', '.join(layers)}) and part ({' or '.join(parts)})", "layer"
            )
        if layer not in layers:
            raise UnknownLayerParamError(layer, layers)
        if part not in parts:
            raise ParamError(f"{self.name} needs {' or '.join(f'part={p}' for p in parts)}", "part")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "layer_method": self.layer_method,
            "costly": self.costly,
            "hooks": self.hooks,
            "stochastic": self.stochastic,
            "output": self.output,
            "params": [p.to_dict() for p in self.params],
        }


def occlusion_positions(height: int, width: int, window: int, stride: int) -> int:
    """Window positions Captum's Occlusion evaluates on an ``height x width`` image."""
    per_dim = [math.ceil((size - window) / stride) + 1 for size in (height, width)]
    return per_dim[0] * per_dim[1]


def _out_of_range(name: str, value: Any, lo: Any, hi: Any, why: str) -> ParamRangeError:
    return ParamRangeError(
        f"{name}={value} is out of range; allowed range: {format_value(lo)}..{format_value(hi)} ({why})",
        name,
        (lo, hi),
    )


def _check_occlusion(spec: MethodSpec, p: dict[str, Any], size: tuple[int, int]) -> None:
    h, w = size
    window, stride = p["window"], p["stride"]
    shown = str(h) if h == w else f"{h}x{w}"
    if window > min(h, w):
        bounds = spec.param("window")
        hi = min(h, w) if bounds.maximum is None else min(h, w, bounds.maximum)
        raise _out_of_range("window", window, bounds.minimum, hi, f"at most the input size {shown}")
    if stride > window:
        raise _out_of_range("stride", stride, spec.param("stride").minimum, window, "at most window")
    n = occlusion_positions(h, w, window, stride)
    if n > MAX_OCCLUSION_POSITIONS:
        raise ParamRangeError(
            f"occlusion with window {window} and stride {stride} on a {h}x{w} input needs {n} positions; "
            f"the limit is {MAX_OCCLUSION_POSITIONS}; use a larger stride",
            "stride",
        )


_BASELINE = Param(
    "baseline",
    "choice",
    "zero",
    choices=tuple(BASELINES),
    description="reference image: 'zero' = all zeros in the [-1, 1] input space (mid-grey), "
    "'black' = all -1",
)


def _batch(default: int, what: str) -> Param:
    return Param(
        "internal_batch_size",
        "int",
        default,
        1,
        64,
        description=f"{what} per forward/backward pass; bounds memory, not the result",
    )


COMMON_PARAMS: tuple[Param, ...] = (
    Param("seed", "int", 0, 0, 2**31 - 1, description="seed of every random draw (noise, baselines, metrics)"),
    Param(
        "auc_steps",
        "int",
        8,
        0,
        64,
        description="steps of the deletion / insertion curves (2 x steps + 1 images through the "
        "forward, batched); 0 skips them. The default 8 keeps a request interactive on a CPU; an "
        "AUC then lies on average 0.01-0.02 from the 64-step value, at 16 steps half that",
    ),
    Param(
        "infidelity",
        "bool",
        False,
        description=f"compute Captum's infidelity ({INFIDELITY_SAMPLES} Gaussian perturbations of "
        f"std {INFIDELITY_NOISE}, normalised attributions; one batched forward)",
    ),
    Param(
        "sensitivity",
        "bool",
        False,
        description=f"compute Captum's sensitivity_max: re-runs the method {1 + SENSITIVITY_SAMPLES} "
        f"times (the input plus {SENSITIVITY_SAMPLES} perturbations of radius {SENSITIVITY_RADIUS}) "
        "-- as costly as the method itself, times five",
    ),
)

_DELTA_NOTE = (
    " Captum's DeepLift rule for max-pooling is inexact when pooling windows overlap "
    "(captum#1276), as Xception's 3x3 stride-2 pools do, so the convergence delta "
    "(attributions' sum minus f(x) - f(baseline)) is not ~0 on this network; it is "
    "reported as a quality figure anyway."
)


def _spec(
    name: str,
    algorithm: type[Algorithm],
    description: str,
    params: tuple[Param, ...] = (),
    **extra: Any,
) -> MethodSpec:
    """A spec whose parameters end with :data:`COMMON_PARAMS`; ``extra``: ``costly``, ``check``."""
    return MethodSpec(name=name, description=description, algorithm=algorithm, params=params + COMMON_PARAMS, **extra)


METHODS: dict[str, MethodSpec] = {
    s.name: s
    for s in (
        _spec(
            "integrated_gradients",
            IntegratedGradients,
            "Integrated Gradients (Sundararajan et al. 2017): gradients averaged along the "
            "straight path from the baseline to the image, times (image - baseline). "
            "Reports the convergence delta.",
            (
                Param("n_steps", "int", 32, 1, 256, description="points on the path (Gauss-Legendre)"),
                _batch(8, "path points"),  # 16 measured 7-17 % slower at 299 px on a 2-core CPU
                _BASELINE,
            ),
            costly=True,
        ),
        _spec(
            "saliency",
            Saliency,
            "Saliency (Simonyan et al. 2013): gradient of the target logit w.r.t. the input.",
            (Param("absolute", "bool", True, description="take the gradient's absolute value"),),
        ),
        _spec(
            "smoothgrad",
            SmoothGrad,
            "SmoothGrad (Smilkov et al. 2017): saliency averaged over noisy copies of the image "
            "(Captum NoiseTunnel over Saliency).",
            (
                Param("nt_samples", "int", 16, 1, 64, description="noisy copies"),
                Param("stdev", "float", 0.15, 0.0, 1.0, description="noise standard deviation, in input units ([-1, 1])"),
                Param(
                    "nt_type",
                    "choice",
                    "smoothgrad",
                    choices=("smoothgrad", "smoothgrad_sq", "vargrad"),
                    description="mean, mean of squares, or variance of the noisy saliencies",
                ),
                Param("absolute", "bool", True, description="absolute value of each saliency"),
                _batch(16, "noisy copies"),
            ),
            costly=True,
        ),
        _spec(
            "gradient_shap",
            GradientShap,
            "GradientSHAP (Lundberg & Lee 2017): expected gradients at random points between the "
            "baseline and noisy copies of the image, times (image - baseline).",
            (
                Param("n_samples", "int", 16, 1, 64, description="random samples"),
                Param("stdev", "float", 0.09, 0.0, 1.0, description="noise standard deviation, in input units ([-1, 1])"),
                _BASELINE,
                _batch(16, "samples (more samples run as several Captum calls, averaged)"),
            ),
            costly=True,
        ),
        _spec(
            "deeplift",
            DeepLift,
            "DeepLIFT (Shrikumar et al. 2017), rescale rule, against the baseline." + _DELTA_NOTE,
            (_BASELINE,),
        ),
        _spec(
            "guided_backprop",
            GuidedBackprop,
            "Guided Backpropagation (Springenberg et al. 2014): gradients with negative values "
            "stopped at every ReLU.",
        ),
        _spec("input_x_gradient", InputXGradient, "Input x Gradient: the input times the gradient of the target logit."),
        _spec(
            "occlusion",
            Occlusion,
            "Occlusion (Zeiler & Fergus 2014): the drop in the target logit when a square window "
            f"is replaced by the baseline, slid over the image (at most {MAX_OCCLUSION_POSITIONS} positions).",
            (
                Param("window", "int", 32, 4, 128, description="side of the occluding square, in pixels (at most the input size)"),
                Param("stride", "int", 16, 2, 128, description="step between windows, in pixels (at most window)"),
                _BASELINE,
                _batch(16, "occluded images"),
            ),
            costly=True,
            check=_check_occlusion,
        ),
        _spec(
            "layer_gradcam",
            LayerGradCam,
            "Grad-CAM (Selvaraju et al. 2017) at the depthwise or pointwise output of a separable "
            "layer: channel maps weighted by their mean gradient, summed; at the layer's "
            "resolution, upsampled bilinearly for the heatmap.",
            (Param("relu_attributions", "bool", True, description="keep only positive evidence (ReLU), as in the paper"),),
        ),
        _spec(
            "guided_gradcam",
            GuidedGradCam,
            "Guided Grad-CAM: Guided Backpropagation times the (ReLU'd) Grad-CAM map of the "
            "chosen layer and part, upsampled to the input.",
            (
                Param(
                    "interpolate_mode",
                    "choice",
                    "bilinear",
                    choices=("nearest", "bilinear"),
                    description="how the Grad-CAM map is upsampled",
                ),
            ),
        ),
        _spec(
            "channel_importance",
            ChannelImportance,
            "Which channels of the layer's depthwise or pointwise output drive the target: "
            "gradient x activation (Captum LayerGradientXActivation) summed over space, one "
            "signed score per channel (a first-order estimate of each channel's contribution "
            "to the target logit); ranked in channel_ranking. The heatmap is the same product "
            "summed over channels.",
        ),
    )
}


def get_method(name: str) -> MethodSpec:
    """The spec of ``name``, or :class:`UnknownMethodError` listing the valid names."""
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        raise UnknownMethodError(
            f"unknown method {name!r}; valid choices: {', '.join(METHODS)}", tuple(METHODS)
        ) from None


def layer_methods() -> list[str]:
    """Names of the methods that attribute to a layer (they need ``layer`` and ``part``)."""
    return [name for name, s in METHODS.items() if s.layer_method]
