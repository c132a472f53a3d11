"""Sample images made locally: real photographs that ship with scikit-image, and generated
images of the bundled model's classes with their true labels.

This is the only use the UI makes of ``xception_core`` (``xception_core.synthetic``
draws the images); everything about models goes through the API.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

from xception_core import synthetic

#: Seed of the generated samples (the training data of the bundled model uses other seeds).
SAMPLE_SEED = 20_170_721
GENERATED_SIZE = 128
CLASS_NAMES: tuple[str, ...] = synthetic.CLASS_NAMES
NUM_CLASSES: int = synthetic.NUM_CLASSES


@dataclass(frozen=True)
class Photo:
    name: str  # skimage.data function
    title: str
    credit: str


PHOTOS: tuple[Photo, ...] = (
    Photo("chelsea", "Chelsea the cat", "Stefan van der Walt"),
    Photo("astronaut", "Astronaut Eileen Collins", "NASA"),
    Photo("coffee", "Cup of coffee", "Rachel Michetti"),
    Photo("rocket", "Falcon 9 rocket", "SpaceX"),
    Photo("hubble_deep_field", "Hubble deep field", "NASA"),
    Photo("camera", "Cameraman (greyscale)", "MIT"),
)
PHOTO_NAMES = tuple(p.name for p in PHOTOS)


def _encode(array: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    image = Image.fromarray(array)
    if fmt == "JPEG":
        image.save(buf, format="JPEG", quality=92)
    else:
        image.save(buf, format=fmt)
    return buf.getvalue()


@lru_cache(maxsize=16)
def photo_bytes(name: str) -> bytes:
    """The photograph ``name`` (one of :data:`PHOTO_NAMES`) as JPEG bytes."""
    if name not in PHOTO_NAMES:
        raise ValueError(f"unknown sample photo {name!r}; samples are {', '.join(PHOTO_NAMES)}")
    from skimage import data

    return _encode(np.asarray(getattr(data, name)()), "JPEG")


def generated_index(class_index: int, variant: int) -> int:
    """Dataset index of ``variant`` of class ``class_index`` (labels are ``index % NUM_CLASSES``)."""
    if not 0 <= class_index < NUM_CLASSES:
        raise ValueError(f"class index must be in 0..{NUM_CLASSES - 1}")
    if variant < 0:
        raise ValueError("variant must be >= 0")
    return class_index + NUM_CLASSES * variant


@lru_cache(maxsize=64)
def generated_bytes(class_index: int, variant: int = 0, size: int = GENERATED_SIZE) -> bytes:
    """A generated image of class ``class_index`` as PNG bytes (its true label is ``CLASS_NAMES[class_index]``)."""
    image, label, _mask = synthetic.make_sample(generated_index(class_index, variant), SAMPLE_SEED, size)
    assert label == class_index
    return _encode(image, "PNG")
