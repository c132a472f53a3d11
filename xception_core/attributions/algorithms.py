"""The algorithms: one small class per Captum method, one public verb ``attribute``.

Each class wraps the Captum class of the same name (``ca.``) and declares what a caller
must know about it, as class attributes: whether it attributes to a layer's ``module``
(``layer_method``), registers hooks on the shared model (``hooks``: it runs under the
model's exclusive lock), draws random numbers (``stochastic``: it runs seeded), reports
Captum's convergence delta (``convergence_delta``), and the kind of its ``output``:
``input`` ([N, 3, H, W]), ``layer`` ([N, 1, h, w] at the layer's resolution) or
``channels`` ([N, C, h, w], summed over space by the caller).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from captum import attr as ca
from torch import nn

OutputKind = Literal["input", "layer", "channels"]

#: Reference images in the [-1, 1] input space: all zeros (mid-grey) or all -1 (black).
BASELINES = {"zero": 0.0, "black": -1.0}


def _baseline(x: torch.Tensor, name: str) -> torch.Tensor:
    return torch.full_like(x, BASELINES[name])


class Algorithm:
    """``attribute(x, target, params, delta)`` -> (attribution with batch dim, delta or None).

    ``params`` are the method's resolved catalogue parameters; ``module`` is the layer part
    a layer method attributes to (None for the others).
    """

    layer_method: ClassVar[bool] = False
    hooks: ClassVar[bool] = False
    stochastic: ClassVar[bool] = False
    convergence_delta: ClassVar[bool] = False
    output: ClassVar[OutputKind] = "input"

    def __init__(self, model: nn.Module, module: nn.Module | None = None) -> None:
        self.model = model
        self.module = module

    def attribute(
        self, x: torch.Tensor, target: int, params: dict[str, Any], delta: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError


class IntegratedGradients(Algorithm):
    convergence_delta = True

    def attribute(self, x, target, params, delta=False):
        out = ca.IntegratedGradients(self.model).attribute(
            x,
            baselines=_baseline(x, params["baseline"]),
            target=target,
            n_steps=params["n_steps"],
            internal_batch_size=params["internal_batch_size"],
            return_convergence_delta=delta,
        )
        return out if delta else (out, None)


class Saliency(Algorithm):
    def attribute(self, x, target, params, delta=False):
        return ca.Saliency(self.model).attribute(x, target=target, abs=params["absolute"]), None


class SmoothGrad(Algorithm):
    stochastic = True

    def attribute(self, x, target, params, delta=False):
        out = ca.NoiseTunnel(ca.Saliency(self.model)).attribute(
            x,
            nt_type=params["nt_type"],
            nt_samples=params["nt_samples"],
            nt_samples_batch_size=params["internal_batch_size"],
            stdevs=params["stdev"],
            target=target,
            abs=params["absolute"],
        )
        return out, None


class GradientShap(Algorithm):
    stochastic = True

    def attribute(self, x, target, params, delta=False):
        n, chunk = params["n_samples"], params["internal_batch_size"]
        baselines = _baseline(x, params["baseline"])
        total = torch.zeros_like(x)
        done = 0
        # GradientShap evaluates all samples in one batch; run chunks of at most
        # internal_batch_size samples and average (identical to Captum when n <= chunk).
        while done < n:
            k = min(chunk, n - done)
            part = ca.GradientShap(self.model).attribute(
                x, baselines=baselines, n_samples=k, stdevs=params["stdev"], target=target
            )
            total = total + part * k
            done += k
        return total / n, None


class DeepLift(Algorithm):
    hooks = True
    convergence_delta = True

    def attribute(self, x, target, params, delta=False):
        out = ca.DeepLift(self.model).attribute(
            x, baselines=_baseline(x, params["baseline"]), target=target, return_convergence_delta=delta
        )
        return out if delta else (out, None)


class GuidedBackprop(Algorithm):
    hooks = True

    def attribute(self, x, target, params, delta=False):
        return ca.GuidedBackprop(self.model).attribute(x, target=target), None


class InputXGradient(Algorithm):
    def attribute(self, x, target, params, delta=False):
        return ca.InputXGradient(self.model).attribute(x, target=target), None


class Occlusion(Algorithm):
    def attribute(self, x, target, params, delta=False):
        w, s = params["window"], params["stride"]
        out = ca.Occlusion(self.model).attribute(
            x,
            sliding_window_shapes=(x.shape[1], w, w),
            strides=(x.shape[1], s, s),
            baselines=BASELINES[params["baseline"]],
            target=target,
            perturbations_per_eval=params["internal_batch_size"],
        )
        return out, None


class LayerGradCam(Algorithm):
    layer_method = True
    hooks = True
    output = "layer"

    def attribute(self, x, target, params, delta=False):
        out = ca.LayerGradCam(self.model, self.module).attribute(
            x, target=target, relu_attributions=params["relu_attributions"]
        )
        return out, None


class GuidedGradCam(Algorithm):
    layer_method = True
    hooks = True

    def attribute(self, x, target, params, delta=False):
        out = ca.GuidedGradCam(self.model, self.module).attribute(
            x, target=target, interpolate_mode=params["interpolate_mode"]
        )
        return out, None


class ChannelImportance(Algorithm):
    """Gradient x activation of the layer part, per channel and position (Captum's LayerGradientXActivation)."""

    layer_method = True
    hooks = True
    output = "channels"

    def attribute(self, x, target, params, delta=False):
        return ca.LayerGradientXActivation(self.model, self.module).attribute(x, target=target), None
