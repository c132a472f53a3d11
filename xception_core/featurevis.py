"""Feature visualisation by optimisation: an image that maximises one channel of one part.

The channel's objective is the spatial mean of its part's output (the value the channel
atlas ranks data-set images by, :mod:`xception_core.atlas`), or the centre neuron on request.
The image is parameterised as in Lucid (Olah et al., "Feature Visualization", Distill 2017):
a Fourier spectrum scaled by 1/frequency, in a decorrelated colour space, squashed by a
sigmoid; each step sees it through a random jitter, scale and rotation (one affine resample).

Speed: the steps run on a copy of the model with BatchNorm folded into the convolutions and
``requires_grad=False`` (the backward computes input gradients only), cached per model, in
bf16 or fp32 (:func:`visualisation_nets`); the forward stops right after the captured part
(``capture(..., stop_after=True)``); several channels of one layer are optimised as one batch
(each batch element has its own random stream, so a channel's image does not depend on which
channels run with it, up to floating-point rounding). ``auto`` precision: bf16 only where the
device computes it natively and a step runs faster in it than in fp32 (timed once per kind of
request).
Gradients are taken with ``torch.autograd.grad`` with respect to the image parameters
alone: no ``.grad`` of the shared model is touched, so concurrent requests do not interfere.
"""

from __future__ import annotations

import copy
import math
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .engine import native_reduced_precision
from .fuse import fuse_for_inference
from .introspect import capture, resolve_layer, run_until_captured
from .locks import model_lock
from .model import MIN_INPUT_SIZE, SeparableConv2d, Xception, model_device
from .transform import PreprocessConfig

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
    "visualisation_nets",
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


class _RedirectedReLUFunction(torch.autograd.Function):
    """ReLU forward; backward as Lucid's "redirected ReLU": where the true gradient of a batch
    element is zero everywhere (a dead channel for this image), let the gradient through where
    it would raise the input, so the optimisation can leave the dead region."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        relu_grad = torch.ops.aten.threshold_backward(grad, x, 0)  # grad where x > 0, else 0
        alive = torch.count_nonzero(relu_grad, dim=tuple(range(1, grad.dim()))) > 0  # no flatten: a copy in channels_last
        if bool(alive.all()):
            return relu_grad
        # grad is d(loss)/dx; loss = -objective, so grad < 0 raises the input: keep grad where
        # x > 0 or grad <= 0, i.e. the smaller of grad and relu_grad
        redirected = torch.minimum(grad, relu_grad)
        return torch.where(alive.view(-1, *([1] * (grad.dim() - 1))), relu_grad, redirected)


class _RedirectedReLU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _RedirectedReLUFunction.apply(x)


#: Steps run with redirected ReLU gradients (then plain ReLUs: cheaper, and the true gradient).
REDIRECT_STEPS = 32
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _redirected(module: nn.Module) -> nn.Module:
    """``module`` with every ReLU redirected, sharing its parameters and buffers.

    A twin rather than hooks: hooks on a shared model would reach every concurrent forward
    (and Captum's DeepLift rules key on the exact ``nn.ReLU`` type, so the model keeps it)."""
    twin = copy.copy(module)
    twin._modules = copy.deepcopy(module._modules, memo={id(t): t for t in (*module.parameters(), *module.buffers())})
    for parent in list(twin.modules()):
        for name, child in parent.named_children():
            if type(child) is nn.ReLU:
                setattr(parent, name, _RedirectedReLU())
    return twin


class _Pointwise(nn.Module):
    """A 1x1 convolution (stride 1, no padding, one group) that runs as a matrix product over the
    channels of a channels_last map (a view, no copy) when the map has at most
    :data:`MATMUL_ROWS` pixels in all: in bf16, PyTorch's matmul beats its 1x1 convolution there
    (about 2x at 8x8 and below); on larger maps the convolution is as fast or faster."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.weight, self.bias = conv.weight, conv.bias
        self.out_channels = conv.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        if n * h * w > MATMUL_ROWS or not x.is_contiguous(memory_format=torch.channels_last):
            return F.conv2d(x, self.weight, self.bias)
        out = F.linear(x.permute(0, 2, 3, 1), self.weight.view(self.out_channels, c), self.bias)
        return out.permute(0, 3, 1, 2)


#: Batch x height x width up to which a bf16 1x1 convolution runs as a matrix product.
MATMUL_ROWS = 512


def _is_pointwise(m: nn.Module) -> bool:
    return (
        type(m) is nn.Conv2d and m.kernel_size == (1, 1) and m.stride == (1, 1)
        and m.padding == (0, 0) and m.dilation == (1, 1) and m.groups == 1
    )


def _frozen(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    for p in module.parameters():
        p.requires_grad_(False)
    module = module.to(dtype, memory_format=torch.channels_last)
    if dtype == torch.bfloat16:
        for parent in list(module.modules()):
            for name, child in parent.named_children():
                if _is_pointwise(child):
                    setattr(parent, name, _Pointwise(child))
    return module


def _signature(model: Xception) -> tuple:
    """Changes when a parameter or buffer of ``model`` is replaced, moved or written in place."""
    return tuple((id(t), t._version, t.device, t.dtype) for t in (*model.parameters(), *model.buffers()))


class _Copies:
    """The visualisation copies of one model: per dtype, BatchNorm folded into the convolutions
    (:func:`~xception_core.fuse.fuse_for_inference`), ``requires_grad=False`` (the backward
    computes input gradients only), channels_last; each with its redirected twin. Plus the
    precision ``auto`` chose per (layer, part, size, batch, threads)."""

    def __init__(self, model: Xception) -> None:
        self.signature = _signature(model)
        self.nets: dict[torch.dtype, tuple[nn.Module, nn.Module]] = {}
        self.choices: dict[tuple, str] = {}

    def nets_for(self, model: Xception, dtype: torch.dtype) -> tuple[nn.Module, nn.Module]:
        if dtype not in self.nets:
            try:
                folded = fuse_for_inference(model)
            except (TypeError, ValueError):  # a BatchNorm that cannot be folded: keep them all
                folded = copy.deepcopy(model).eval()
            plain = _frozen(folded, dtype)
            self.nets[dtype] = (plain, _redirected(plain))
        return self.nets[dtype]


_COPIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_COPIES_LOCK = threading.Lock()


def _copies(model: Xception) -> _Copies:
    """``model``'s :class:`_Copies`, cached; built again when its weights changed (in place too)."""
    with _COPIES_LOCK:
        copies = _COPIES.get(model)
        if copies is None or copies.signature != _signature(model):
            copies = _COPIES[model] = _Copies(model)
        return copies


def _splice(root: nn.Module, layer: str, new: nn.Module) -> nn.Module:
    """A shallow copy of ``root`` whose separable layer ``layer`` is ``new`` (the rest shared)."""
    path = next(name for name, m in root.named_modules() if isinstance(m, SeparableConv2d) and m.layer_name == layer)
    top = copy.copy(root)
    top._modules = dict(root._modules)
    parent, *names = (top, *path.split("."))
    for name in names[:-1]:
        child = copy.copy(parent._modules[name])
        child._modules = dict(child._modules)
        parent._modules[name] = child
        parent = child
    parent._modules[names[-1]] = new
    return top


def visualisation_nets(model: Xception, layer: str, dtype: torch.dtype = torch.float32) -> tuple[nn.Module, nn.Module]:
    """The networks a visualisation of ``layer`` runs: (plain, redirected ReLUs), in ``dtype``.

    The folded copy of ``model`` (cached), except ``layer`` itself, which keeps ``model``'s
    unfolded weights: its captured parts are read before the BatchNorm that follows (atlas
    units), and the forward stops there, so nothing after it runs. The caller holds
    ``model_lock(model).shared()`` (a copy taken under Captum's hooks would keep them)."""
    plain, redirected = _copies(model).nets_for(model, dtype)
    target = _frozen(copy.deepcopy(resolve_layer(model, layer)), dtype)
    return _splice(plain, layer, target), _splice(redirected, layer, _redirected(target))


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


def _faster(steps: dict[str, Callable[[], object]], clock: Callable[[], float] = time.perf_counter) -> str:
    """The key of the fastest of ``steps``: one warm-up each, then the best of two interleaved runs."""
    for run in steps.values():
        run()
    best = dict.fromkeys(steps, math.inf)
    for _ in range(2):
        for name, run in steps.items():
            t0 = clock()
            run()
            best[name] = min(best[name], clock() - t0)
    return min(best, key=best.__getitem__)


def _auto_precision(
    model: Xception, request: VisualisationRequest, device: torch.device,
    objective: Callable[[torch.Tensor, nn.Module, torch.dtype], torch.Tensor], rgb: torch.Tensor,
) -> str:
    """bf16 or fp32, whichever runs a step (forward and input gradient) of this request faster:
    timed on the first request per (layer, part, size, channels, device, threads) of ``model``'s
    weights, remembered after (bf16 without AMX can lose to fp32, e.g. on depthwise convolutions)."""
    copies = _copies(model)
    key = (request.layer, request.part, request.size, len(request.channels), str(device), torch.get_num_threads())
    if key not in copies.choices:
        x01 = rgb.detach().requires_grad_(True)
        steps = {}
        for name in ("fp32", "bf16"):
            net, _ = visualisation_nets(model, request.layer, _DTYPES[name])
            steps[name] = lambda net=net, dtype=_DTYPES[name]: torch.autograd.grad(objective(x01, net, dtype), [x01])
        copies.choices[key] = _faster(steps)
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
