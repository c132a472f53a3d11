"""api.encodings on its own: arrays and tiles survive the trip, JSON numbers stay JSON, and a
binary result's facts become the headers clients read."""

from __future__ import annotations

import base64
import io
import math

import numpy as np
import pytest
from PIL import Image

from api.encodings import BinaryResult, b64png, finite, joined, npy_bytes, npz_bytes, tile_png
from api.routers.common import binary, header_name


def test_npy_round_trip_keeps_values_dtype_and_shape():
    array = np.arange(24, dtype=np.float32).reshape(2, 3, 4)[:, ::2]  # not contiguous
    back = np.load(io.BytesIO(npy_bytes(array)), allow_pickle=False)
    assert back.dtype == np.float32 and back.shape == (2, 2, 4)
    np.testing.assert_array_equal(back, array)


def test_npy_refuses_objects():
    with pytest.raises(ValueError):
        npy_bytes(np.array([{"a": 1}], dtype=object))


def test_npz_round_trip_keeps_every_named_array():
    arrays = {"weights": np.linspace(-1, 1, 5, dtype=np.float32), "order": np.array([4, 0, 2], dtype=np.int64)}
    with np.load(io.BytesIO(npz_bytes(arrays)), allow_pickle=False) as back:
        assert list(back.files) == ["weights", "order"]
        for name, array in arrays.items():
            assert back[name].dtype == array.dtype
            np.testing.assert_array_equal(back[name], array)


@pytest.mark.parametrize("shape, tile_px, size", [((4, 4), 32, (32, 32)), ((2, 4), 64, (64, 32)), ((5, 3), 30, (30, 50))])
def test_a_tile_is_tile_px_wide_with_the_maps_aspect_and_blocky(shape, tile_px, size):
    array = np.arange(math.prod(shape), dtype=np.float32).reshape(shape)
    image = Image.open(io.BytesIO(tile_png(array, tile_px, "gray", None, None)))
    assert image.format == "PNG" and image.size == size
    pixels = np.asarray(image.convert("L"))
    # nearest-neighbour: one colour per activation, increasing as the values do
    assert len(np.unique(pixels)) == array.size
    assert pixels[0, 0] < pixels[-1, -1]


def test_a_tile_on_a_fixed_scale_shows_a_constant_map_as_one_colour():
    low = Image.open(io.BytesIO(tile_png(np.zeros((3, 3), np.float32), 16, "gray", 0.0, 1.0))).convert("L")
    high = Image.open(io.BytesIO(tile_png(np.ones((3, 3), np.float32), 16, "gray", 0.0, 1.0))).convert("L")
    assert np.unique(np.asarray(low)).size == 1 and np.unique(np.asarray(high)).size == 1
    assert np.asarray(low)[0, 0] < np.asarray(high)[0, 0]


def test_b64png_decodes_to_the_same_bytes():
    data = tile_png(np.eye(3, dtype=np.float32), 16, "viridis", None, None)
    assert base64.b64decode(b64png(data)) == data


@pytest.mark.parametrize("value, expected", [(float("nan"), None), (float("inf"), None), (-math.inf, None), (1.5, 1.5), (3, 3), (None, None)])
def test_finite_keeps_json_numbers_only(value, expected):
    assert finite(value) == expected


def test_joined():
    assert joined([0, 5, 17]) == "0,5,17" and joined((4, 10, 10)) == "4,10,10" and joined([]) == ""


def test_a_binary_results_facts_become_x_headers():
    result = BinaryResult(
        b"\x93NUMPY", "application/x-npy", "abc123", "tiny", {"max_abs_error": "1e-07", "shape": "2,3", "cache": "hit"},
        filename="entry.block2.sep1.depthwise.npy",
    )
    response = binary(result)
    assert response.body == b"\x93NUMPY" and response.media_type == "application/x-npy"
    headers = dict(response.headers)
    assert headers["content-disposition"] == 'attachment; filename="entry.block2.sep1.depthwise.npy"'
    assert headers["x-image-id"] == "abc123" and headers["x-model"] == "tiny"
    assert headers["x-max-abs-error"] == "1e-07" and headers["x-shape"] == "2,3" and headers["x-cache"] == "hit"
    assert "content-disposition" not in dict(binary(BinaryResult(b"", "image/png", "abc123", "tiny")).headers)


def test_header_names():
    assert header_name("attribution_ms") == "X-Attribution-Ms" and header_name("channels") == "X-Channels"
