"""The evaluation transform of a model, and its inverse.

:func:`eval_transform` is timm's evaluation transform for ``legacy_xception.tf_in1k``
(``resolve_data_config`` + ``create_transform``): resize the shorter side to
``floor(input_size / crop_pct)`` (333) with PIL bicubic, centre-crop ``input_size``
(299), scale to [0, 1], normalise with mean = std = 0.5, i.e. to [-1, 1].  It is
built from the same torchvision operations timm uses, so it equals timm's output
exactly.  :func:`to_pixels` undoes the normalisation: what the model saw, as an
RGB image.  Decoding untrusted bytes is :mod:`xception_core.decode`'s job.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F

from .decode import ALLOWED_FORMATS, DEFAULT_MAX_PIXELS, decode_image

__all__ = ["PreprocessConfig", "eval_transform", "preprocess_bytes", "to_pixels"]

_INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")


@dataclass(frozen=True)
class PreprocessConfig:
    """Evaluation preprocessing of a model; the defaults are those of the Xception weights.

    ``to_dict()`` / ``from_dict()`` round-trip through JSON.  ``from_dict`` also
    accepts timm's data config (``timm.data.resolve_data_config``): ``input_size``
    as ``[3, S, S]`` and ``crop_mode == "center"``.
    """

    input_size: int = 299
    crop_pct: float = 0.8975
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def __post_init__(self) -> None:
        size = self.input_size
        if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= 4096:
            raise ValueError(f"input_size must be an integer in 1..4096, got {size!r}")
        crop = float(self.crop_pct)
        if not math.isfinite(crop) or not 0.0 < crop <= 1.0:
            raise ValueError(f"crop_pct must be in (0, 1], got {self.crop_pct!r}")
        object.__setattr__(self, "crop_pct", crop)
        interp = str(self.interpolation).lower()
        if interp not in _INTERPOLATIONS:
            raise ValueError(
                f"interpolation must be one of {', '.join(_INTERPOLATIONS)}, got {self.interpolation!r}"
            )
        object.__setattr__(self, "interpolation", interp)
        for name in ("mean", "std"):
            values = tuple(float(v) for v in getattr(self, name))
            if len(values) != 3 or not all(math.isfinite(v) for v in values):
                raise ValueError(f"{name} must be 3 finite numbers, got {getattr(self, name)!r}")
            if name == "std" and any(v <= 0 for v in values):
                raise ValueError(f"std must be positive, got {values!r}")
            object.__setattr__(self, name, values)

    @property
    def resize_size(self) -> int:
        """Shorter side after resizing: ``floor(input_size / crop_pct)`` (timm's rule; 333 for 299)."""
        return math.floor(self.input_size / self.crop_pct)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "PreprocessConfig":
        d = dict(d)
        crop_mode = d.pop("crop_mode", "center")
        if crop_mode not in (None, "center"):
            raise ValueError(f"only crop_mode 'center' is supported, got {crop_mode!r}")
        unknown = sorted(set(d) - {"input_size", "crop_pct", "interpolation", "mean", "std"})
        if unknown:
            raise ValueError(f"unknown preprocessing keys: {', '.join(unknown)}")
        size = d.get("input_size")
        if isinstance(size, (list, tuple)):  # timm style: (3, S, S)
            if len(size) == 3 and size[0] == 3 and size[1] == size[2]:
                d["input_size"] = size[1]
            else:
                raise ValueError(f"input_size must be an integer or [3, S, S], got {list(size)!r}")
        if d.get("crop_pct") is None:
            d.pop("crop_pct", None)
        return cls(**d)


def eval_transform(image: Image.Image, cfg: PreprocessConfig | None = None) -> torch.Tensor:
    """RGB PIL image -> normalised float32 tensor ``[3, S, S]`` (S = ``cfg.input_size``).

    Same operations as timm's eval transform: torchvision ``Resize(resize_size)``
    on the PIL image (shorter side, PIL resampling), ``CenterCrop(input_size)``
    (torchvision's rounding; pads with 0 if the image is smaller), ``to_tensor``,
    ``Normalize``.
    """
    cfg = cfg or PreprocessConfig()
    if image.mode != "RGB":
        raise ValueError(f"eval_transform expects an RGB image, got mode {image.mode!r}; use decode_image")
    img = F.resize(image, cfg.resize_size, interpolation=InterpolationMode(cfg.interpolation))
    img = F.center_crop(img, [cfg.input_size, cfg.input_size])
    tensor = F.to_tensor(img)
    return F.normalize(
        tensor,
        mean=torch.tensor(cfg.mean, dtype=torch.float32),
        std=torch.tensor(cfg.std, dtype=torch.float32),
    )


def preprocess_bytes(
    data: bytes | bytearray | memoryview,
    cfg: PreprocessConfig | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    *,
    formats: Iterable[str] = ALLOWED_FORMATS,
) -> torch.Tensor:
    """:func:`decode_image` then :func:`eval_transform`: bytes -> float32 ``[3, S, S]``."""
    return eval_transform(decode_image(data, max_pixels=max_pixels, formats=formats), cfg)


def to_pixels(x: torch.Tensor, cfg: PreprocessConfig) -> np.ndarray:
    """The inverse of the normalisation: ``x`` ``[3, S, S]`` (any float dtype or device) as uint8
    RGB ``[S, S, 3]`` on the CPU -- what the model saw, ready to draw a map over."""
    mean = torch.tensor(cfg.mean, dtype=torch.float32)[:, None, None]
    std = torch.tensor(cfg.std, dtype=torch.float32)[:, None, None]
    rgb = (x.float().cpu() * std + mean).clamp(0, 1).mul(255).round().to(torch.uint8)
    return rgb.permute(1, 2, 0).contiguous().numpy()
