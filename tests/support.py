"""Helpers shared by the tests (importable as ``support``; ``conftest`` names are ambiguous
once sub-folders have their own conftest.py)."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from xception_core.engine import native_reduced_precision
from xception_core.model import XceptionConfig

#: Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX): bf16 tests run only there.
NATIVE_BF16 = native_reduced_precision("bf16", torch.device("cpu")) is None

SMALL = XceptionConfig(
    num_classes=7,
    stem_channels=(8, 16),
    entry_channels=(16, 24, 32),
    middle_repeats=2,
    exit_channels=(40, 48, 56),
)


def encode_image(image: Image.Image, fmt: str, **kwargs) -> bytes:
    """``image`` saved as ``fmt`` (Pillow's format name, its save options as keywords)."""
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def exif_bytes(orientation: int) -> bytes:
    """An EXIF block that holds only the orientation tag (0x0112)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def sample_photos() -> list[np.ndarray]:
    """Real RGB photographs shipped inside scikit-image's wheel."""
    from skimage import data

    return [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]


def photo_batch(photos: list[np.ndarray], size: int) -> torch.Tensor:
    """Photos resized to ``size`` and scaled to [-1, 1], as a batch."""
    import torch.nn.functional as F

    tensors = [torch.from_numpy(p).permute(2, 0, 1).float().div(127.5).sub(1) for p in photos]
    return torch.stack([F.interpolate(t[None], size=(size, size), mode="bilinear", antialias=True)[0] for t in tensors])


def calibrate_batchnorm(model: torch.nn.Module, batch: torch.Tensor, seed: int | None = None) -> None:
    """Set every BatchNorm's running statistics to those of ``batch`` (cumulative average).

    With random weights and default statistics the logits barely depend on
    the input; calibrated statistics make the comparison against timm telling.
    With ``seed``, every BatchNorm's weight and bias are first drawn at random
    (weight in [0.5, 1.5], bias N(0, 0.2)): by default they are 1 and 0 in every
    BatchNorm, so a conversion that swapped two BatchNorms' affine parameters
    would change nothing.
    """
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
            if generator is not None:
                with torch.no_grad():
                    m.weight.copy_(torch.rand(m.weight.shape, generator=generator) + 0.5)
                    m.bias.copy_(torch.randn(m.bias.shape, generator=generator) * 0.2)
    model.train()
    with torch.no_grad():
        model(batch)
    model.eval()
