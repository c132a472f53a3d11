"""The evaluation transform (:mod:`xception_core.transform`): equal to timm's on every kind of
decoded image, its configuration, and its inverse :func:`to_pixels`.

timm is the reference (test-only dependency): nothing is downloaded, only the
``pretrained_cfg`` of ``legacy_xception`` is used.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from support import encode_image as encode
from support import exif_bytes
from xception_core.decode import ImageTooLarge, UnsupportedImageFormat, decode_image
from xception_core.transform import PreprocessConfig, eval_transform, preprocess_bytes, to_pixels

timm = pytest.importorskip("timm")
skdata = pytest.importorskip("skimage.data")

ATOL = 1e-5
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


@pytest.fixture(scope="module")
def timm_data_config() -> dict:
    model = timm.create_model("legacy_xception", pretrained=False, num_classes=10)
    return timm.data.resolve_data_config({}, model=model)


@pytest.fixture(scope="module")
def timm_transform(timm_data_config):
    return timm.data.create_transform(**timm_data_config)


@pytest.fixture(scope="module", params=PHOTOS)
def photo(request) -> Image.Image:
    return Image.fromarray(getattr(skdata, request.param)()).convert("RGB")


def pillow_rgb(data: bytes) -> Image.Image:
    """What Pillow itself decodes (for lossy formats, the reference is that, not the array)."""
    with Image.open(io.BytesIO(data)) as im:
        return im.convert("RGB")


def assert_same_as_timm(data: bytes, canonical: Image.Image, timm_transform) -> None:
    ours = preprocess_bytes(data)
    ref = timm_transform(canonical)
    assert ours.dtype == torch.float32
    assert ours.shape == ref.shape == (3, 299, 299)
    diff = (ours - ref).abs().max().item()
    assert diff <= ATOL, f"max |ours - timm| = {diff}"


# --------------------------------------------------------------------------- config


def test_default_config_is_timm_legacy_xception(timm_data_config):
    assert PreprocessConfig.from_dict(timm_data_config) == PreprocessConfig()
    cfg = timm.models.get_pretrained_cfg("legacy_xception.tf_in1k")
    assert PreprocessConfig.from_dict(timm.data.resolve_data_config(pretrained_cfg=cfg.to_dict())) == PreprocessConfig()
    assert PreprocessConfig().resize_size == 333


def test_config_json_round_trip():
    cfg = PreprocessConfig(input_size=224, crop_pct=0.875, interpolation="bilinear",
                           mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    d = json.loads(json.dumps(cfg.to_dict()))
    assert d == {"input_size": 224, "crop_pct": 0.875, "interpolation": "bilinear",
                 "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    assert PreprocessConfig.from_dict(d) == cfg
    assert PreprocessConfig.from_dict({}) == PreprocessConfig()


@pytest.mark.parametrize("bad", [
    {"input_size": 0}, {"input_size": 299.5}, {"crop_pct": 0}, {"crop_pct": 1.5},
    {"interpolation": "cubic"}, {"mean": [0.5, 0.5]}, {"std": [0.5, 0.0, 0.5]},
    {"input_size": [3, 299, 300]}, {"crop_mode": "squash"}, {"resize": 333},
])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        PreprocessConfig.from_dict(bad)


@pytest.mark.parametrize("size", [1, 4096])
def test_config_accepts_the_ends_of_the_input_size_range(size):
    assert PreprocessConfig(input_size=size).input_size == size


@pytest.mark.parametrize("size", [0, 4097])
def test_config_refuses_just_outside_the_input_size_range(size):
    with pytest.raises(ValueError, match=rf"input_size must be an integer in 1\.\.4096, got {size}"):
        PreprocessConfig(input_size=size)


@pytest.mark.parametrize("bad,message", [
    ({"crop_mode": "squash"}, "only crop_mode 'center' is supported, got 'squash'"),
    ({"crop_pct": 1.5}, r"crop_pct must be in \(0, 1\], got 1\.5"),
    ({"interpolation": "cubic"},
     "interpolation must be one of nearest, bilinear, bicubic, box, hamming, lanczos, got 'cubic'"),
    ({"mean": [0.5, 0.5]}, r"mean must be 3 finite numbers, got \[0\.5, 0\.5\]"),
    ({"std": [0.5, 0.0, 0.5]}, r"std must be positive, got \(0\.5, 0\.0, 0\.5\)"),
    ({"resize": 333, "crop": 1}, "unknown preprocessing keys: crop, resize"),
    ({"input_size": [3, 299, 300]}, r"input_size must be an integer or \[3, S, S\], got \[3, 299, 300\]"),
])
def test_config_errors_say_what_to_fix(bad, message):
    with pytest.raises(ValueError, match=message):
        PreprocessConfig.from_dict(bad)


def test_config_stores_plain_json_values():
    """A crop_pct from numpy and an interpolation in capitals are stored as the float and the
    lower-case name that JSON, torchvision and the model card expect."""
    cfg = PreprocessConfig(input_size=224, crop_pct=np.float32(0.875), interpolation="BILINEAR", mean=np.zeros(3))
    assert type(cfg.crop_pct) is float and cfg.crop_pct == 0.875
    assert cfg.interpolation == "bilinear"
    assert json.loads(json.dumps(cfg.to_dict())) == {
        "input_size": 224, "crop_pct": 0.875, "interpolation": "bilinear", "mean": [0.0, 0.0, 0.0], "std": [0.5, 0.5, 0.5],
    }


def test_config_from_dict_treats_a_null_crop_pct_as_absent():
    assert PreprocessConfig.from_dict({"input_size": [3, 224, 224], "crop_pct": None}) == PreprocessConfig(input_size=224)


# --------------------------------------------------------------------------- equality with timm


def test_rgb_png_matches_timm(photo, timm_transform):
    assert_same_as_timm(encode(photo, "PNG"), photo, timm_transform)


def test_rgb_jpeg_matches_timm_on_pillow_decode(photo, timm_transform):
    data = encode(photo, "JPEG", quality=90)
    assert_same_as_timm(data, pillow_rgb(data), timm_transform)


def test_greyscale_matches_timm(photo, timm_transform):
    grey = photo.convert("L")
    assert_same_as_timm(encode(grey, "PNG"), grey.convert("RGB"), timm_transform)


def test_rgba_composited_on_white_matches_timm(photo, timm_transform):
    arr = np.asarray(photo)
    h, w = arr.shape[:2]
    yy, xx = np.mgrid[:h, :w]
    opaque = (((yy // 37) + (xx // 23)) % 2 == 0)  # blocks of fully transparent / opaque
    alpha = np.where(opaque, 255, 0).astype(np.uint8)
    rgba = Image.fromarray(np.dstack([arr, alpha]), "RGBA")
    expected = Image.fromarray(np.where(opaque[..., None], arr, 255).astype(np.uint8))
    assert_same_as_timm(encode(rgba, "PNG"), expected, timm_transform)


def test_palette_matches_timm(photo, timm_transform):
    pal = photo.quantize(colors=256)
    assert pal.mode == "P"
    assert_same_as_timm(encode(pal, "PNG"), pal.convert("RGB"), timm_transform)


def test_cmyk_tiff_matches_timm(photo, timm_transform):
    cmyk = photo.convert("CMYK")
    # Pillow's RGB->CMYK->RGB is exact when K = 0, so the canonical image is the photo itself.
    assert np.array_equal(np.asarray(cmyk.convert("RGB")), np.asarray(photo))
    assert_same_as_timm(encode(cmyk, "TIFF"), photo, timm_transform)


def test_cmyk_jpeg_matches_timm_on_pillow_decode(chelsea, timm_transform):
    data = encode(chelsea.convert("CMYK"), "JPEG", quality=95)
    with Image.open(io.BytesIO(data)) as im:
        assert im.mode == "CMYK"
    assert_same_as_timm(data, pillow_rgb(data), timm_transform)


def test_exif_rotated_png_matches_timm_on_upright(photo, timm_transform):
    # Orientation 6 means "rotate 90 degrees clockwise to display"; store the upright
    # photo rotated 90 degrees counter-clockwise with that tag.
    stored = photo.transpose(Image.Transpose.ROTATE_90)
    data = encode(stored, "PNG", exif=exif_bytes(6))
    decoded = decode_image(data)
    assert decoded.size == photo.size
    assert np.array_equal(np.asarray(decoded), np.asarray(photo))
    assert_same_as_timm(data, photo, timm_transform)


def test_exif_rotated_jpeg_matches_timm(chelsea, timm_transform):
    stored = chelsea.transpose(Image.Transpose.ROTATE_270)
    data = encode(stored, "JPEG", quality=90, exif=exif_bytes(8))
    upright = pillow_rgb(data).transpose(Image.Transpose.ROTATE_90)
    assert upright.size == chelsea.size
    assert_same_as_timm(data, upright, timm_transform)


def test_non_default_config_matches_timm(chelsea):
    kwargs = dict(input_size=(3, 224, 224), crop_pct=0.875, interpolation="bilinear",
                  mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    ref = timm.data.create_transform(**kwargs)(chelsea)
    ours = eval_transform(chelsea, PreprocessConfig.from_dict(kwargs))
    assert ours.shape == (3, 224, 224)
    assert (ours - ref).abs().max().item() <= ATOL


def test_eval_transform_requires_rgb(chelsea):
    with pytest.raises(ValueError, match="RGB"):
        eval_transform(chelsea.convert("L"), PreprocessConfig())




def test_preprocess_bytes_uses_the_config_it_is_given(chelsea):
    kwargs = dict(input_size=(3, 224, 224), crop_pct=0.875, interpolation="bilinear",
                  mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    ref = timm.data.create_transform(**kwargs)(chelsea)
    ours = preprocess_bytes(encode(chelsea, "PNG"), PreprocessConfig.from_dict(kwargs))
    assert ours.shape == (3, 224, 224)
    assert (ours - ref).abs().max().item() <= ATOL


def test_preprocess_bytes_passes_the_decoding_limits_on(chelsea):
    png = encode(chelsea, "PNG")
    w, h = chelsea.size
    with pytest.raises(ImageTooLarge):
        preprocess_bytes(png, max_pixels=w * h - 1)
    assert preprocess_bytes(png, max_pixels=w * h).shape == (3, 299, 299)
    with pytest.raises(UnsupportedImageFormat):
        preprocess_bytes(png, formats=("JPEG",))


def test_smallest_accepted_image_goes_through_the_transform():
    assert preprocess_bytes(encode(Image.new("L", (8, 8)), "PNG")).shape == (3, 299, 299)


# --------------------------------------------------------------------------- the inverse


@pytest.mark.parametrize("mean,std", [((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)), ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
def test_to_pixels_gives_back_what_the_model_saw(chelsea, mean, std):
    # crop_pct 1 and an image already input_size square: the transform only normalises,
    # so the inverse must give back every pixel exactly.
    cfg = PreprocessConfig(input_size=64, crop_pct=1.0, mean=mean, std=std)
    square = chelsea.resize((64, 64))
    x = eval_transform(square, cfg)
    pixels = to_pixels(x, cfg)
    assert pixels.dtype == np.uint8 and pixels.shape == (64, 64, 3)
    np.testing.assert_array_equal(pixels, np.asarray(square))
    # a half-precision input (a cached one, say) lands within one grey level
    assert np.abs(to_pixels(x.half(), cfg).astype(int) - np.asarray(square).astype(int)).max() <= 1


def test_to_pixels_clips_values_outside_the_image_range():
    cfg = PreprocessConfig(input_size=2)
    x = torch.tensor([-3.0, -1.0, 1.0, 3.0]).reshape(1, 2, 2).expand(3, 2, 2)
    np.testing.assert_array_equal(to_pixels(x, cfg)[..., 0], [[0, 0], [255, 255]])
