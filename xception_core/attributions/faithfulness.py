"""How faithful a map is to the model: deletion / insertion AUC, infidelity, sensitivity.

- :func:`deletion_insertion_auc` -- the curves of Petsiuk et al. (RISE, 2018) for any heatmap.
- :func:`infidelity` -- Captum's infidelity: how well the attribution predicts the change of
  the target logit under random perturbations of the input.
- :func:`sensitivity` -- Captum's sensitivity_max: how much the attribution changes when
  the input moves a little.

The random figures run seeded (:func:`~.runtime.seeded`), so they are reproducible.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
import torch.nn.functional as F
from captum.metrics import infidelity as captum_infidelity
from captum.metrics import sensitivity_max as captum_sensitivity_max
from torch import nn

from ..model import model_device
from .runtime import seeded

#: Perturbations drawn for the infidelity figure (one batched forward).
INFIDELITY_SAMPLES = 16
#: Standard deviation of the infidelity perturbations, in input units ([-1, 1]).
INFIDELITY_NOISE = 0.1
#: Perturbed inputs for sensitivity_max; each one re-runs the method.
SENSITIVITY_SAMPLES = 4
SENSITIVITY_RADIUS = 0.02


@dataclass
class DeletionInsertion:
    """Deletion and insertion curves: target probability against the fraction of pixels changed."""

    deletion_auc: float
    insertion_auc: float
    fractions: list[float]
    deletion: list[float]
    insertion: list[float]


#: Largest ``CurveOptions.batch_size``: a batch of 64 images at 299 px is ~1 GB of activations.
MAX_CURVE_BATCH = 64

#: The logits of a batch ``[N, C, H, W] -> [N, classes]``: a model, or a prediction engine
#: (:class:`~xception_core.engine.Predictor`, e.g. the one :func:`~.fast.quality_engine` builds).
Forward = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class CurveOptions:
    """How :func:`deletion_insertion_auc` draws its curves.

    ``steps`` equal chunks of pixels; deleted pixels take ``baseline`` (0 = mid-grey in
    [-1, 1] space); insertion starts from a Gaussian blur of the image (sigma
    ``blur_sigma``, default 2.5 % of the image side) or from the baseline; the
    ``2 * steps + 1`` distinct images go through the forward in the fewest batches of at
    most ``batch_size`` (1..:data:`MAX_CURVE_BATCH`), of even sizes.
    """

    steps: int = 16
    baseline: float | torch.Tensor = 0.0
    insertion_start: Literal["blur", "baseline"] = "blur"
    blur_sigma: float | None = None
    batch_size: int = 16


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(3 * sigma)))
    radius = min(radius, x.shape[-1] - 1, x.shape[-2] - 1)
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def _even_batches(n: int, largest: int) -> list[tuple[int, int]]:
    """``[start, end)`` of the fewest batches of at most ``largest`` items covering ``n``, their
    sizes differing by one at most: 33 images in batches of 16 go as 11 + 11 + 11, not 16 + 16
    + 1 (a lone image wastes the batch's efficiency)."""
    count = -(-n // largest)
    bounds = [round(k * n / count) for k in range(count + 1)]
    return list(itertools.pairwise(bounds))


def _device(forward: Forward, x: torch.Tensor) -> torch.device:
    if isinstance(forward, nn.Module):
        return model_device(forward)
    device = getattr(forward, "device", None)
    return device if isinstance(device, torch.device) else x.device


def deletion_insertion_auc(
    forward: Forward,
    x: torch.Tensor,
    heatmap: torch.Tensor,
    target: int,
    options: CurveOptions | None = None,
    **fields: Any,
) -> DeletionInsertion:
    """Deletion and insertion AUC of ``heatmap`` for class ``target`` (Petsiuk et al. 2018).

    ``forward`` gives the logits of a batch: the model itself, or a faster engine computing
    the same function (:func:`~.fast.quality_engine`: BatchNorm folded, channels_last, bf16
    where native). ``options`` (or its fields as keywords: ``steps=8``,
    ``insertion_start="baseline"``, ...) say how (:class:`CurveOptions`). Pixels are ranked by
    ``heatmap`` (largest first, ties in raster order) and changed in ``steps`` equal chunks.
    Deletion starts from ``x`` and replaces the ranked pixels (all colour channels) by the
    baseline; insertion starts from a blurred ``x`` -- or from the baseline -- and puts the
    ranked pixels of ``x`` back. At each of the ``steps + 1`` points the softmax probability
    of ``target`` is measured (no autograd); the first point of deletion and the last of
    insertion are both ``x`` itself, so ``2 * steps + 1`` images go through ``forward``, in
    batches of ``batch_size``. The AUC is the trapezoid rule over the fraction of pixels
    changed, in [0, 1]. A good heatmap gives a low deletion AUC and a high insertion AUC.
    """
    opts = replace(options or CurveOptions(), **fields)
    steps = opts.steps
    if steps < 1:
        raise ValueError("steps must be >= 1")
    if not 1 <= opts.batch_size <= MAX_CURVE_BATCH:
        raise ValueError(f"batch_size must be in 1..{MAX_CURVE_BATCH}, got {opts.batch_size}")
    device = _device(forward, x)
    x = x.detach().to(device=device, dtype=torch.float32)
    if x.dim() == 3:
        x = x[None]
    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f"x must be one image [1, C, H, W], got {tuple(x.shape)}")
    h, w = x.shape[-2:]
    heat = torch.as_tensor(heatmap).detach().to(device=device, dtype=torch.float32)
    if heat.shape != (h, w):
        raise ValueError(f"heatmap must be {h}x{w} like the input, got {tuple(heat.shape)}")
    n = h * w
    heat = torch.nan_to_num(heat.flatten(), nan=float("-inf"))
    order = torch.argsort(heat, descending=True, stable=True)
    rank = torch.empty(n, dtype=torch.long, device=device)
    rank[order] = torch.arange(n, device=device)
    counts = torch.tensor([round(i * n / steps) for i in range(steps + 1)], device=device)
    base = torch.as_tensor(opts.baseline, dtype=torch.float32, device=device).expand_as(x)
    if opts.insertion_start == "blur":
        sigma = opts.blur_sigma if opts.blur_sigma is not None else max(1.0, 0.025 * max(h, w))
        start = _gaussian_blur(x, sigma)
    elif opts.insertion_start == "baseline":
        start = base
    else:
        raise ValueError("insertion_start must be 'blur' or 'baseline'")

    # Image j < steps + 1: deletion after counts[j] pixels; then insertion after counts[0..steps-1].
    is_deletion = torch.arange(2 * steps + 1, device=device) <= steps
    changed = torch.cat([counts, counts[:-1]])
    probs = []
    for i, j in _even_batches(2 * steps + 1, opts.batch_size):
        d = is_deletion[i:j].view(-1, 1, 1, 1)
        masks = (rank[None, :] < changed[i:j, None]).view(-1, 1, h, w).to(x.dtype)
        source, dest = torch.where(d, x, start), torch.where(d, base, x)
        batch = source * (1 - masks) + dest * masks
        with torch.no_grad():
            probs.append(torch.softmax(forward(batch).float(), dim=1)[:, target])
    p = torch.cat(probs).cpu()
    deletion, insertion = p[: steps + 1], torch.cat([p[steps + 1 :], p[:1]])
    fractions = counts.cpu().double() / n
    return DeletionInsertion(
        deletion_auc=float(torch.trapezoid(deletion.double(), fractions)),
        insertion_auc=float(torch.trapezoid(insertion.double(), fractions)),
        fractions=fractions.tolist(),
        deletion=deletion.tolist(),
        insertion=insertion.tolist(),
    )


def infidelity(model: nn.Module, x: torch.Tensor, attribution: torch.Tensor, target: int, seed: int) -> float:
    """Captum's infidelity of ``attribution`` (shaped like ``x``) for ``target``.

    :data:`INFIDELITY_SAMPLES` Gaussian perturbations of std :data:`INFIDELITY_NOISE`, in one
    batched forward; ``normalize=True`` fits the attribution's scale, so a method's
    arbitrary units (Grad-CAM's) do not matter.
    """

    def perturb(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        noise = torch.randn(inputs.shape, device=inputs.device, dtype=inputs.dtype) * INFIDELITY_NOISE
        return noise, inputs - noise

    with seeded(seed, x.device):
        value = captum_infidelity(
            model,
            perturb,
            x,
            attribution.contiguous(),
            target=target,
            n_perturb_samples=INFIDELITY_SAMPLES,
            max_examples_per_batch=INFIDELITY_SAMPLES,
            normalize=True,
        )
    return float(value.detach().sum())


def sensitivity(explain: Callable[..., torch.Tensor], x: torch.Tensor, target: int, seed: int) -> float:
    """Captum's sensitivity_max of ``explain(inputs, target=...)`` at ``x``.

    :data:`SENSITIVITY_SAMPLES` inputs within radius :data:`SENSITIVITY_RADIUS`, each
    explained on its own (``explain`` sees one image at a time).
    """

    def explain_as_tuple(inputs: Any, **kwargs: Any) -> Any:
        # Captum passes tuples and iterates over what comes back: from a bare [1, C, H, W]
        # tensor it would take one [C, H, W] map and norm it per channel, not as a whole.
        # Contiguous: Captum flattens with ``view``, which a channels_last tensor refuses.
        out = explain(inputs, **kwargs).contiguous()
        return (out,) if isinstance(inputs, tuple) else out

    with seeded(seed, x.device):
        value = captum_sensitivity_max(
            explain_as_tuple,
            x,
            perturb_radius=SENSITIVITY_RADIUS,
            n_perturb_samples=SENSITIVITY_SAMPLES,
            max_examples_per_batch=1,
            target=target,
        )
    return float(value.detach().sum())
