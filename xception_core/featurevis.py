"""Feature visualisation by optimisation: an image that maximises one channel of one part.

The channel's objective is the spatial mean of its part's output (the value the channel
atlas ranks data-set images by, :mod:`xception_core.atlas`), or the centre neuron on request.
The image is parameterised as in Lucid (Olah et al., "Feature Visualization", Distill 2017):
a Fourier spectrum scaled by 1/frequency, in a decorrelated colour space, squashed by a
sigmoid; each step sees it through a random jitter, scale and rotation (one affine resample).

Speed: the steps run on a copy of the model with BatchNorm folded into the convolutions and
``requires_grad=False`` (the backward computes input gradients only), cached per model, in
bf16 or fp32 (:func:`~xception_core.visnets.visualisation_nets`); the forward stops right after the captured part
(``capture(..., stop_after=True)``); several channels of one layer are optimised as one batch
(each batch element has its own random stream, so a channel's image does not depend on which
channels run with it, up to floating-point rounding). ``auto`` precision: bf16 only where the
device computes it natively and a step runs faster in it than in fp32 (timed once per kind of
request).
Gradients are taken with ``torch.autograd.grad`` with respect to the image parameters
alone: no ``.grad`` of the shared model is touched, so concurrent requests do not interfere.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .engine import native_reduced_precision
from .introspect import capture, resolve_layer, run_until_captured
from .locks import model_lock
from .model import MIN_INPUT_SIZE, Xception, model_device
from .timing import best_times
from .transform import PreprocessConfig
from .visnets import model_copies, visualisation_nets

__all__ = [
    "MAX_CHANNELS",
    "MAX_SIZE",
    "MAX_STEPS",
    "MIN_SIZE",
    "OBJECTIVES",
    "PRECISIONS",
    "ChannelImage",
    "VisualisationCancelled",
    "VisualisationError",
    "VisualisationRequest",
    "VisualisationResult",
    "native_bf16",
    "visualise",
]

MAX_STEPS = 1024
MIN_SIZE = MIN_INPUT_SIZE
MAX_SIZE = 512
MAX_CHANNELS = 16
OBJECTIVES = ("mean", "centre")
PRECISIONS = ("auto", "fp32", "bf16")

#: Lucid's square root of the colour correlation of ImageNet pixels (its columns
#: decorrelate RGB); normalised so that the largest column has unit norm.
_COLOUR_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
_COLOUR = _COLOUR_SQRT / _COLOUR_SQRT.norm(dim=0).max()
#: Per-step transforms, as Lucid's ``standard_transforms`` (pad 12 + jitter 8, scale
#: 0.9..1.1, rotation -10..10 degrees, jitter 4), folded into one affine resample.
_JITTER_PX = 12
_SCALE = (0.9, 1.1)
_ROTATE_DEG = 10.0


#: Steps run with redirected ReLU gradients (then plain ReLUs: cheaper, and the true gradient).
REDIRECT_STEPS = 32
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


class VisualisationError(ValueError):
    """A request parameter out of bounds; ``param`` names it, the message says what to use."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


class VisualisationCancelled(Exception):
    """The ``cancel`` callable returned True; ``step`` is the step at which it was seen."""

    def __init__(self, step: int) -> None:
        super().__init__(f"feature visualisation cancelled at step {step}")
        self.step = step


def _int(param: str, value: object, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
        raise VisualisationError(param, f"{param} must be an integer in {lo}..{hi}, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class VisualisationRequest:
    """What to visualise and at what cost.

    ``channels``: one or more channels of ``part`` of ``layer`` (optimised together, at most
    :data:`MAX_CHANNELS`). ``size`` ``None`` means the model's input size (the caller passes
    it, see :meth:`with_size`). ``lr`` is Adam's step on the spectrum; ``precision``
    ``auto`` picks bf16 where the device computes it natively, fp32 otherwise.
    """

    layer: str
    part: str
    channels: tuple[int, ...]
    steps: int = 256
    size: int = 96
    seed: int = 0
    objective: str = "mean"
    lr: float = 0.05
    precision: str = "auto"

    def __post_init__(self) -> None:
        if not isinstance(self.layer, str) or not self.layer:
            raise VisualisationError("layer", f"layer must be a layer name, got {self.layer!r}")
        if not isinstance(self.part, str) or not self.part:
            raise VisualisationError("part", f"part must be a part name (depthwise, pointwise), got {self.part!r}")
        channels = (self.channels,) if isinstance(self.channels, (int, np.integer)) else tuple(self.channels)
        if not 1 <= len(channels) <= MAX_CHANNELS:
            raise VisualisationError("channels", f"give 1..{MAX_CHANNELS} channels, got {len(channels)}")
        channels = tuple(_int("channel", c, 0, 1 << 20) for c in channels)
        if len(set(channels)) != len(channels):
            raise VisualisationError("channels", f"channels must be distinct, got {list(channels)}")
        object.__setattr__(self, "channels", channels)
        _int("steps", self.steps, 1, MAX_STEPS)
        _int("size", self.size, MIN_SIZE, MAX_SIZE)
        _int("seed", self.seed, 0, 2**32 - 1)
        if self.objective not in OBJECTIVES:
            raise VisualisationError("objective", f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not 0 < self.lr <= 1:
            raise VisualisationError("lr", f"lr must be a number in (0, 1], got {self.lr!r}")
        if self.precision not in PRECISIONS:
            raise VisualisationError("precision", f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")

    def check(self, model: Xception) -> None:
        """Layer, part and channels against ``model`` (UnknownLayerError / VisualisationError)."""
        module = resolve_layer(model, self.layer)
        with capture(model, [self.layer], [self.part]):  # refuses a part the layer lacks
            pass
        if self.part == "input":
            raise VisualisationError("part", f"part must be one of {', '.join(module.parts)}")
        count = part_channels(model, self.layer, self.part)
        for c in self.channels:
            if c >= count:
                raise VisualisationError(
                    "channel", f"channel must be in 0..{count - 1} for {self.layer} {self.part}, got {c}"
                )


def part_channels(model: Xception, layer: str, part: str) -> int:
    """The number of output channels of ``part`` of ``layer``."""
    return getattr(resolve_layer(model, layer), part).out_channels


@dataclass(frozen=True)
class ChannelImage:
    channel: int
    image: np.ndarray = field(repr=False)  # uint8 [H, W, 3]
    objective_start: float
    objective_final: float

    def to_dict(self) -> dict:
        return {"channel": self.channel, "objective_start": self.objective_start, "objective_final": self.objective_final}


@dataclass(frozen=True)
class VisualisationResult:
    """One image per requested channel; ``precision`` is what the optimisation ran in.

    The objectives are measured on the final (untransformed) image in fp32, in the units
    of the atlas (the spatial mean of the part's output, or its centre value)."""

    request: VisualisationRequest
    images: tuple[ChannelImage, ...]
    steps: int
    seconds: float
    precision: str
    device: str

    @property
    def image(self) -> np.ndarray:
        return self.images[0].image

    def to_dict(self) -> dict:
        first = self.images[0]
        return {
            "layer": self.request.layer,
            "part": self.request.part,
            "channel": first.channel,
            "objective": self.request.objective,
            "objective_start": first.objective_start,
            "objective_final": first.objective_final,
            "steps": self.steps,
            "size": self.request.size,
            "seed": self.request.seed,
            "seconds": self.seconds,
            "precision": self.precision,
            "device": self.device,
            "channels": [c.to_dict() for c in self.images],
        }


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively (the prediction engine's test: AVX512-BF16 or AMX on a CPU)."""
    return native_reduced_precision("bf16", device) is None


def _precision(request: VisualisationRequest, device: torch.device) -> str | None:
    """The precision asked for; ``None`` for ``auto`` where bf16 is native (then timed)."""
    if request.precision == "auto":
        return None if native_bf16(device) else "fp32"
    return request.precision


def _faster(steps: dict[str, Callable[[], object]], device: torch.device | None = None, clock: Callable[[], float] = time.perf_counter) -> str:
    """The key of the fastest of ``steps`` (:func:`~xception_core.timing.best_times`: one warm-up
    each, then the best of two interleaved runs, CUDA work waited for)."""
    times = best_times(list(steps.values()), device=device, clock=clock)
    return min(zip(times, steps), key=lambda pair: pair[0])[1]


def _auto_precision(
    model: Xception, request: VisualisationRequest, device: torch.device,
    objective: Callable[[torch.Tensor, nn.Module, torch.dtype], torch.Tensor], rgb: torch.Tensor,
) -> str:
    """bf16 or fp32, whichever runs a step (forward and input gradient) of this request faster:
    timed on the first request per (layer, part, size, channels, device, threads) of ``model``'s
    weights, remembered after (bf16 without AMX can lose to fp32, e.g. on depthwise convolutions)."""
    copies = model_copies(model)
    key = (request.layer, request.part, request.size, len(request.channels), str(device), torch.get_num_threads())
    if key not in copies.choices:
        x01 = rgb.detach().requires_grad_(True)
        steps = {}
        for name in ("fp32", "bf16"):
            net, _ = visualisation_nets(model, request.layer, _DTYPES[name])
            steps[name] = lambda net=net, dtype=_DTYPES[name]: torch.autograd.grad(objective(x01, net, dtype), [x01])
        copies.choices[key] = _faster(steps, device)
    return copies.choices[key]


class _Image:
    """Fourier-basis, colour-decorrelated image parameters of a batch ``[N, 3, S, S]``."""

    def __init__(self, n: int, size: int, generators: list[torch.Generator], device: torch.device) -> None:
        self.size = size
        fy = torch.fft.fftfreq(size)[:, None]
        fx = torch.fft.rfftfreq(size)[None, :]
        freq = torch.sqrt(fx * fx + fy * fy)
        self.scale = (1.0 / torch.clamp(freq, min=1.0 / size)).to(device)  # 1/f spectrum
        shape = (3, size, size // 2 + 1, 2)
        init = torch.stack([torch.randn(shape, generator=g) * 0.01 for g in generators])
        self.spectrum = init.to(device).requires_grad_(True)
        self.colour = _COLOUR.to(device)

    def rgb(self) -> torch.Tensor:
        """The images in ``[0, 1]``, ``[N, 3, S, S]``."""
        spectrum = torch.view_as_complex(self.spectrum) * self.scale
        image = torch.fft.irfft2(spectrum, s=(self.size, self.size), norm="ortho") / 4.0
        image = torch.einsum("ij,njhw->nihw", self.colour, image)
        return torch.sigmoid(image)


def _random_affine(generators: list[torch.Generator], size: int) -> torch.Tensor:
    """One jitter + scale + rotation per batch element as ``affine_grid`` matrices ``[N, 2, 3]``."""
    rows = []
    for g in generators:
        u = torch.rand(4, generator=g, dtype=torch.float64).tolist()
        scale = _SCALE[0] + (_SCALE[1] - _SCALE[0]) * u[0]
        angle = math.radians(_ROTATE_DEG * (2 * u[1] - 1))
        tx, ty = ((2 * u[2] - 1) * _JITTER_PX * 2 / size, (2 * u[3] - 1) * _JITTER_PX * 2 / size)
        cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
        rows.append([[cos, -sin, tx], [sin, cos, ty]])
    return torch.tensor(rows, dtype=torch.float32)


def _objective(out: torch.Tensor, channels: torch.Tensor, kind: str) -> torch.Tensor:
    """Per batch element ``i``, the objective of channel ``channels[i]`` of ``out[i]``: ``[N]``."""
    picked = out[torch.arange(out.shape[0], device=out.device), channels].float()  # [N, H, W]
    if kind == "centre":
        return picked[:, picked.shape[1] // 2, picked.shape[2] // 2]
    return picked.mean(dim=(1, 2))


def _generators(request: VisualisationRequest) -> list[torch.Generator]:
    """One CPU random stream per channel, a function of (seed, channel) only."""
    gens = []
    for c in request.channels:
        seed = int(np.random.SeedSequence([request.seed, c]).generate_state(1, dtype=np.uint64)[0])
        gens.append(torch.Generator().manual_seed(seed))
    return gens


def visualise(
    model: Xception,
    request: VisualisationRequest,
    preprocess: PreprocessConfig | None = None,
    cancel: Callable[[], bool] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> VisualisationResult:
    """Optimise one image per requested channel; see the module docstring.

    ``preprocess`` supplies the normalisation the model expects (mean/std; the defaults are
    Xception's [-1, 1]). ``cancel`` is called before every step (True raises
    :class:`VisualisationCancelled`); ``progress(step, steps)`` after every step. The model
    must be in eval mode; it is not modified.
    """
    if model.training:
        raise ValueError("feature visualisation needs the model in eval mode (model.eval())")
    request.check(model)
    cfg = preprocess or PreprocessConfig()
    device = model_device(model)
    precision = _precision(request, device)
    mean = torch.tensor(cfg.mean, device=device)[None, :, None, None]
    std = torch.tensor(cfg.std, device=device)[None, :, None, None]
    channels = torch.tensor(request.channels, device=device)
    generators = _generators(request)
    image = _Image(len(generators), request.size, generators, device)
    optimiser = torch.optim.Adam([image.spectrum], lr=request.lr)

    def objective(x01: torch.Tensor, net: nn.Module, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        x = ((x01 - mean) / std).to(dtype).contiguous(memory_format=torch.channels_last)
        with capture(net, [request.layer], [request.part], detach=False, stop_after=True) as kept:
            run_until_captured(net, x)
        return _objective(kept[request.layer][request.part], channels, request.objective)

    start = time.perf_counter()
    with model_lock(model).shared():
        with torch.no_grad():
            before = objective(image.rgb(), model).tolist()
        if precision is None:
            def probe(x01: torch.Tensor, net: nn.Module, dtype: torch.dtype) -> torch.Tensor:
                return objective(x01, net, dtype).sum()

            precision = _auto_precision(model, request, device, probe, image.rgb().detach())
        dtype = _DTYPES[precision]
        plain, redirected = visualisation_nets(model, request.layer, dtype)
        for step in range(request.steps):
            if cancel is not None and cancel():
                raise VisualisationCancelled(step)
            theta = _random_affine(generators, request.size).to(device)
            rgb = image.rgb()
            grid = F.affine_grid(theta, list(rgb.shape), align_corners=False)
            seen = F.grid_sample(rgb - 0.5, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + 0.5
            net = redirected if step < REDIRECT_STEPS else plain  # native ReLUs once out of dead regions
            loss = -objective(seen, net, dtype).sum()
            (grad,) = torch.autograd.grad(loss, [image.spectrum])
            image.spectrum.grad = grad
            optimiser.step()
            if progress is not None:
                progress(step + 1, request.steps)
        with torch.no_grad():
            final_rgb = image.rgb()
            after = objective(final_rgb, model).tolist()
    seconds = time.perf_counter() - start
    pixels = final_rgb.mul(255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    images = tuple(
        ChannelImage(channel=c, image=np.ascontiguousarray(pixels[i]), objective_start=float(before[i]), objective_final=float(after[i]))
        for i, c in enumerate(request.channels)
    )
    return VisualisationResult(request, images, request.steps, seconds, precision, str(device))
