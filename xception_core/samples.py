"""Sample images to try the model on: real photographs that ship with scikit-image, and
generated images of the bundled model's classes with their true labels.

A sample has an id (``chelsea``, ``generated-03``), a kind (``photo`` or ``generated``)
and encoded bytes: :func:`sample_bytes`. A generated sample has variants (another
image of the same class, ``variant`` 0..:data:`MAX_VARIANT`); a photograph has one.
scikit-image is imported only when a photograph is asked for.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

from . import synthetic

#: Seed of the generated samples (the bundled model's training and validation data use others).
SAMPLE_SEED = 20_170_721
GENERATED_SIZE = 128
MAX_VARIANT = 9_999
PHOTO = "photo"
GENERATED = "generated"


class UnknownSampleError(LookupError):
    """No sample has this id (the message lists the valid ones)."""


class SampleVariantError(ValueError):
    """A variant out of range for its sample."""


@dataclass(frozen=True)
class Sample:
    id: str
    kind: str  # PHOTO or GENERATED
    title: str
    media_type: str
    variants: int  # how many: 1 for a photograph
    credit: str | None = None  # photographs: who took it
    class_index: int | None = None  # generated samples: the true class
    label: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _photo(name: str, title: str, credit: str) -> Sample:
    return Sample(name, PHOTO, title, "image/jpeg", 1, credit=credit)


def _generated(class_index: int) -> Sample:
    label = synthetic.CLASS_NAMES[class_index]
    return Sample(
        f"generated-{class_index:02d}", GENERATED, f"Generated: {label}", "image/png", MAX_VARIANT + 1,
        class_index=class_index, label=label,
    )


#: Photographs by their scikit-image ``skimage.data`` function name.
PHOTOS: tuple[Sample, ...] = (
    _photo("chelsea", "Chelsea the cat", "Stefan van der Walt"),
    _photo("astronaut", "Astronaut Eileen Collins", "NASA"),
    _photo("coffee", "Cup of coffee", "Rachel Michetti"),
    _photo("rocket", "Falcon 9 rocket", "SpaceX"),
    _photo("hubble_deep_field", "Hubble deep field", "NASA"),
    _photo("camera", "Cameraman (greyscale)", "MIT"),
)
SAMPLES: tuple[Sample, ...] = PHOTOS + tuple(_generated(i) for i in range(synthetic.NUM_CLASSES))
_BY_ID = {s.id: s for s in SAMPLES}


def get_sample(sample_id: str) -> Sample:
    try:
        return _BY_ID[sample_id]
    except KeyError:
        raise UnknownSampleError(f"unknown sample {sample_id!r}; samples are {', '.join(_BY_ID)}") from None


def _encode(array: np.ndarray, media_type: str) -> bytes:
    buf = io.BytesIO()
    if media_type == "image/jpeg":
        Image.fromarray(array).save(buf, format="JPEG", quality=92)
    else:
        Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


@lru_cache(maxsize=64)
def sample_bytes(sample_id: str, variant: int = 0) -> bytes:
    """The encoded image (``media_type`` of its :class:`Sample`) of ``variant`` of ``sample_id``."""
    sample = get_sample(sample_id)
    if not 0 <= variant < sample.variants:
        raise SampleVariantError(f"variant must be in 0..{sample.variants - 1} for sample {sample_id!r}, got {variant}")
    if sample.kind == PHOTO:
        from skimage import data

        return _encode(np.asarray(getattr(data, sample.id)()), sample.media_type)
    index = sample.class_index + synthetic.NUM_CLASSES * variant  # labels are index % NUM_CLASSES
    image, _label, _mask = synthetic.make_sample(index, SAMPLE_SEED, GENERATED_SIZE)
    return _encode(image, sample.media_type)
