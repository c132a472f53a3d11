"""Sample images (``xception_core.samples``): the photographs of scikit-image and generated images
of the bundled model's classes, as the API serves them."""

import io

import numpy as np
import pytest
from PIL import Image

from xception_core import synthetic
from xception_core.samples import (
    GENERATED_SIZE,
    MAX_VARIANT,
    PHOTOS,
    SAMPLE_SEED,
    SAMPLES,
    SampleVariantError,
    UnknownSampleError,
    get_sample,
    sample_bytes,
)


def test_catalogue_has_the_photographs_and_one_generated_sample_per_class():
    ids = [s.id for s in SAMPLES]
    assert len(ids) == len(set(ids)) == len(PHOTOS) + synthetic.NUM_CLASSES
    generated = [s for s in SAMPLES if s.kind == "generated"]
    assert [s.class_index for s in generated] == list(range(synthetic.NUM_CLASSES))
    assert [s.label for s in generated] == list(synthetic.CLASS_NAMES)
    assert all(s.credit and s.variants == 1 and s.media_type == "image/jpeg" for s in PHOTOS)


def test_generated_samples_carry_their_class():
    sample = get_sample("generated-07")
    data = sample_bytes("generated-07", 2)
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG" and image.size == (GENERATED_SIZE,) * 2
    expected, label, _ = synthetic.make_sample(7 + synthetic.NUM_CLASSES * 2, SAMPLE_SEED, GENERATED_SIZE)
    assert label == sample.class_index == 7
    assert np.array_equal(np.asarray(image.convert("RGB")), expected)
    assert sample_bytes("generated-07", 2) == data  # deterministic
    assert sample_bytes("generated-07", 3) != data  # another variant, another image


def test_photographs_are_jpeg_of_the_scikit_image_pictures():
    from skimage import data as skdata

    image = Image.open(io.BytesIO(sample_bytes("chelsea")))
    assert image.format == "JPEG" and image.size == skdata.chelsea().shape[1::-1]


def test_unknown_samples_and_variants_are_refused_with_the_valid_choices():
    with pytest.raises(UnknownSampleError, match="samples are chelsea, astronaut"):
        sample_bytes("nope")
    with pytest.raises(SampleVariantError, match=r"0\.\.0"):
        sample_bytes("chelsea", 1)
    with pytest.raises(SampleVariantError, match=rf"0\.\.{MAX_VARIANT}"):
        sample_bytes("generated-00", MAX_VARIANT + 1)
