"""Decoding of untrusted images (:mod:`xception_core.decode`): one canonical RGB path for
every mode and format, EXIF orientation, and a clear refusal of everything else."""

from __future__ import annotations

import io
import re
import struct
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from support import encode_image as encode
from support import exif_bytes
from xception_core.decode import (
    ALLOWED_FORMATS,
    DEFAULT_MAX_PIXELS,
    CorruptImage,
    ExtremeAspectRatio,
    ImageDecodeError,
    ImageTooLarge,
    ImageTooSmall,
    UnsupportedImageFormat,
    _high_depth_to_l,
    _sniff,
    _to_rgb,
    decode_image,
)


def png_header_only_bomb(width: int, height: int) -> bytes:
    """A valid 1-bit greyscale PNG of width x height, all zeros, built row by row.

    Streaming the compressor keeps memory tiny: 20000x20000 compresses to ~50 kB.
    """
    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    comp = zlib.compressobj(9)
    row = bytes(1 + (width + 7) // 8)  # filter byte + packed bits
    parts = [comp.compress(row) for _ in range(height)]
    parts.append(comp.flush())
    idat = b"".join(parts)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


# --------------------------------------------------------------------------- canonical decoding


@pytest.mark.parametrize("fmt,kwargs", [
    ("PNG", {}), ("BMP", {}), ("TIFF", {}), ("TIFF", {"compression": "tiff_lzw"}),
    ("WEBP", {"lossless": True}),
])
def test_lossless_formats_decode_exactly(fmt, kwargs):
    arr = np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    decoded = decode_image(encode(Image.fromarray(arr), fmt, **kwargs))
    assert type(decoded) is Image.Image and decoded.mode == "RGB"
    assert np.array_equal(np.asarray(decoded), arr)


def test_sixteen_bit_greyscale_is_scaled_not_clipped():
    values = np.array([0, 257, 1000, 32768, 65535], dtype=np.uint16)
    arr = np.tile(values, (10, 2))  # 10 x 10
    png = encode(Image.fromarray(arr), "PNG")
    with Image.open(io.BytesIO(png)) as im:
        assert im.mode == "I;16"
    out = np.asarray(decode_image(png))
    assert out.shape == (10, 10, 3)
    assert np.array_equal(out[0, :5, 0], [0, 1, 4, 128, 255])
    assert np.array_equal(out[..., 0], out[..., 2])


def test_sixteen_bit_big_endian_tiff():
    arr = np.tile(np.array([0, 32768, 65535, 1000], dtype=np.uint16), (8, 2))
    im = Image.frombytes("I;16B", (8, 8), arr.astype(">u2").tobytes())
    out = np.asarray(decode_image(encode(im, "TIFF")))
    assert np.array_equal(out[0, :4, 1], [0, 128, 255, 4])


def test_float_tiff_in_unit_range_is_scaled():
    arr = np.tile(np.array([0.0, 0.5, 1.0, 0.25], dtype=np.float32), (8, 2))
    out = np.asarray(decode_image(encode(Image.fromarray(arr), "TIFF")))
    assert np.array_equal(out[0, :4, 0], [0, 128, 255, 64])


def test_animated_gif_gives_first_frame():
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    frames = [Image.new("RGB", (16, 16), c) for c in colours]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    with Image.open(io.BytesIO(data)) as im:
        assert im.n_frames == 3
    out = np.asarray(decode_image(data))
    assert out.shape == (16, 16, 3)
    assert (out == [255, 0, 0]).all()


def test_animated_png_gives_first_frame():
    frames = [Image.new("RGB", (16, 16), c) for c in [(10, 20, 30), (200, 100, 0)]]
    data = encode(frames[0], "PNG", save_all=True, append_images=frames[1:])
    assert (np.asarray(decode_image(data)) == [10, 20, 30]).all()


def test_palette_with_transparency_composited_on_white():
    pal = Image.new("P", (10, 10), 1)
    pal.putpalette([0, 0, 0, 200, 30, 40] + [0] * 762)
    pal.paste(0, (0, 0, 5, 10))  # left half uses index 0, declared transparent
    out = np.asarray(decode_image(encode(pal, "PNG", transparency=0)))
    assert (out[:, :5] == 255).all()
    assert (out[:, 5:] == [200, 30, 40]).all()
    gif = np.asarray(decode_image(encode(pal, "GIF", transparency=0)))
    assert (gif[:, :5] == 255).all() and (gif[:, 5:] == [200, 30, 40]).all()


def test_partial_alpha_and_la_composited_on_white():
    rgba = Image.new("RGBA", (10, 10), (0, 0, 0, 128))
    out = np.asarray(decode_image(encode(rgba, "PNG"))).astype(int)
    assert np.abs(out - 127).max() <= 1  # 255 * (1 - 128/255)
    la = Image.new("LA", (10, 10), (0, 0))
    assert (np.asarray(decode_image(encode(la, "PNG"))) == 255).all()


def test_bilevel_image():
    im = Image.new("1", (16, 16), 0)
    im.paste(1, (0, 0, 8, 16))
    out = np.asarray(decode_image(encode(im, "PNG")))
    assert (out[:, :8] == 255).all() and (out[:, 8:] == 0).all()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_all_exif_orientations_decode_upright(orientation):
    upright = Image.fromarray(np.random.default_rng(orientation).integers(0, 256, (12, 20, 3), dtype=np.uint8))
    # the inverse of each orientation's display transform
    inverse = {
        1: None,
        2: Image.Transpose.FLIP_LEFT_RIGHT,
        3: Image.Transpose.ROTATE_180,
        4: Image.Transpose.FLIP_TOP_BOTTOM,
        5: Image.Transpose.TRANSPOSE,
        6: Image.Transpose.ROTATE_90,
        7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_270,
    }[orientation]
    stored = upright if inverse is None else upright.transpose(inverse)
    decoded = decode_image(encode(stored, "PNG", exif=exif_bytes(orientation)))
    assert np.array_equal(np.asarray(decoded), np.asarray(upright))
    assert "exif" not in decoded.info


# --------------------------------------------------------------------------- hostile inputs


@pytest.mark.parametrize("data,cls,pattern", [
    (b"", UnsupportedImageFormat, r"empty"),
    (b"hello, this is not an image\n", UnsupportedImageFormat, r"text"),
    (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
     UnsupportedImageFormat, r"format 'SVG' is not accepted; send one of JPEG, PNG, WEBP, BMP, GIF, TIFF"),
    (b"<svg width='10' height='10'></svg>", UnsupportedImageFormat, r"'SVG'"),
    (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n", UnsupportedImageFormat, r"'PDF'"),
    (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", UnsupportedImageFormat, r"'HEIC'"),
    (bytes(range(256)) * 4, UnsupportedImageFormat, r"not a recognised image"),
    (b"\x89PNG\r\n\x1a\n\x00\x00", CorruptImage, r"PNG"),
    (b"\xff\xd8\xff", CorruptImage, r"JPEG"),
])
def test_rejects_non_images(data, cls, pattern):
    with pytest.raises(cls, match=pattern):
        decode_image(data)


def test_rejects_readable_but_disallowed_format():
    ico = encode(Image.new("RGB", (32, 32), "red"), "ICO")
    with pytest.raises(UnsupportedImageFormat, match="'ICO' is not accepted"):
        decode_image(ico)
    png = encode(Image.new("RGB", (32, 32), "red"), "PNG")
    with pytest.raises(UnsupportedImageFormat, match="'PNG' is not accepted here; send one of JPEG"):
        decode_image(png, formats=("JPEG",))


def test_rejects_non_bytes():
    with pytest.raises(TypeError, match=r"^decode_image expects bytes, not str$"):
        decode_image("not bytes")  # type: ignore[arg-type]


def test_max_pixels_must_be_positive():
    data = encode(Image.new("L", (8, 8)), "PNG")
    with pytest.raises(ValueError, match=r"^max_pixels must be positive$"):
        decode_image(data, max_pixels=0)
    with pytest.raises(ImageTooLarge):  # 1 is a limit (the image is over it), not an error
        decode_image(data, max_pixels=1)


def test_a_disabled_pillow_limit_stays_disabled(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    assert decode_image(encode(Image.new("L", (8, 8)), "PNG")).size == (8, 8)
    assert Image.MAX_IMAGE_PIXELS is None


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "TIFF"])
def test_truncated_images_are_corrupt(chelsea, fmt):
    data = encode(chelsea, fmt)
    # WebP's header already fails to open; the others fail on loading, named by their format
    decoding = rf"{fmt} data could not be decoded \(.+\)|data start like a {fmt} file but the header could not be read"
    with pytest.raises(CorruptImage, match=rf"^the ({decoding}); the file is truncated or damaged"):
        decode_image(data[: len(data) // 2])


def test_decompression_bomb_rejected_from_header(monkeypatch):
    bomb = png_header_only_bomb(20000, 20000)
    assert len(bomb) < 200_000

    def no_decoding(self):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", no_decoding)
    with pytest.raises(ImageTooLarge, match=r"400 MP, over the limit of 40 MP; send a smaller image"):
        decode_image(bomb)
    # Above our limit but below Pillow's: our own header check, with the size in the message.
    with pytest.raises(ImageTooLarge, match=r"image is 7000x7000 = 49 MP, over the limit of 40 MP"):
        decode_image(png_header_only_bomb(7000, 7000))


def test_pillow_bomb_warning_becomes_image_too_large():
    bomb = png_header_only_bomb(10000, 10000)  # 100 MP: Pillow warns (89 MP < n < 179 MP)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ImageTooLarge, match="over the limit of 40 MP"):
            decode_image(bomb)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        with pytest.raises(ImageTooLarge, match="10000x10000 = 100 MP"):
            decode_image(bomb)


def test_max_pixels_is_a_parameter(monkeypatch):
    data = encode(Image.new("RGB", (100, 100)), "PNG")
    with pytest.raises(ImageTooLarge, match=r"100x100 = 0.01 MP, over the limit of 0.005 MP"):
        decode_image(data, max_pixels=5000)
    assert decode_image(data, max_pixels=10_000).size == (100, 100)
    # one pixel row over a limit that reads the same in megapixels: the exact counts say it
    with pytest.raises(ImageTooLarge, match=r"100x100 = 10,000 pixels, over the limit of 9,900 pixels"):
        decode_image(data, max_pixels=9_900)
    # A lower global Pillow limit is raised to ours so that our check is the one that applies.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert decode_image(data).size == (100, 100)
    assert Image.MAX_IMAGE_PIXELS >= DEFAULT_MAX_PIXELS


@pytest.mark.parametrize("size,cls,pattern", [
    ((1, 1), ImageTooSmall, r"1x1; both sides must be at least 8 px"),
    ((1, 20000), ImageTooSmall, r"1x20000"),
    ((7, 100), ImageTooSmall, r"7x100"),
    ((10, 1000), ExtremeAspectRatio, r"10x1000, an aspect ratio of 1:100, beyond the limit of 1:50"),
])
def test_degenerate_sizes_rejected(size, cls, pattern):
    data = encode(Image.new("L", size), "PNG")
    with pytest.raises(cls, match=pattern) as info:
        decode_image(data)
    assert isinstance(info.value, ImageDecodeError) and isinstance(info.value, ValueError)


def test_limits_of_geometry_are_inclusive():
    assert decode_image(encode(Image.new("L", (8, 400)), "PNG")).size == (8, 400)
    assert decode_image(encode(Image.new("L", (8, 8)), "PNG")).size == (8, 8)


def test_error_codes_are_distinct():
    classes = [UnsupportedImageFormat, ImageTooLarge, ImageTooSmall, ExtremeAspectRatio, CorruptImage]
    assert len({c.code for c in classes}) == len(classes)
    assert all(re.fullmatch(r"[a-z_]+", c.code) for c in classes)
    assert ALLOWED_FORMATS == ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")


def test_concurrent_decoding(chelsea):
    good = encode(chelsea, "JPEG")
    bomb = png_header_only_bomb(7000, 7000)

    def work(i):
        if i % 2:
            with pytest.raises(ImageTooLarge):
                decode_image(bomb)
            return None
        return np.asarray(decode_image(good))

    with ThreadPoolExecutor(4) as pool:
        results = [r for r in pool.map(work, range(8)) if r is not None]
    assert all(np.array_equal(r, results[0]) for r in results)


# --- what can go wrong only while the pixels load -------------------------------------


def _load_raising(monkeypatch, exc: BaseException) -> bytes:
    def load(self):
        raise exc

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", load)
    return encode(Image.new("RGB", (32, 24)), "PNG")


def test_pillow_bomb_guard_or_memory_error_while_loading_is_image_too_large(monkeypatch):
    """Pillow's guard may fire in load() rather than in open(), and a decode may run out of
    memory: both are "too large", with the size where it is known."""
    data = _load_raising(monkeypatch, Image.DecompressionBombError("Image size (123456789 pixels) exceeds limit"))
    with pytest.raises(ImageTooLarge, match=r"^image has 123.5 MP, over the limit of 40 MP; send a smaller image$"):
        decode_image(data)
    data = _load_raising(monkeypatch, Image.DecompressionBombWarning("Image size (50000000 pixels) could be a bomb"))
    with pytest.raises(ImageTooLarge, match=r"^image has 50 MP, over the limit of 40 MP; send a smaller image$"):
        decode_image(data)
    data = _load_raising(monkeypatch, Image.DecompressionBombError("too big"))  # no pixel count in it
    with pytest.raises(ImageTooLarge, match=r"^image has too many pixels, over the limit of 0\.5 MP; send a smaller image$"):
        decode_image(data, max_pixels=500_000)
    data = _load_raising(monkeypatch, MemoryError())
    with pytest.raises(ImageTooLarge, match=r"^not enough memory to decode this 32x24 PNG image; send a smaller image$"):
        decode_image(data)


def test_a_decoder_error_is_named_in_the_corrupt_message(monkeypatch):
    data = _load_raising(monkeypatch, OSError("broken data stream when reading image file"))
    with pytest.raises(CorruptImage, match=r"^the PNG data could not be decoded \(broken data stream when reading "
                                           r"image file\); the file is truncated or damaged"):
        decode_image(data)
    data = _load_raising(monkeypatch, OSError())  # no text: the exception's type instead
    with pytest.raises(CorruptImage, match=r"^the PNG data could not be decoded \(OSError\)"):
        decode_image(data)


@pytest.mark.parametrize("loaded, limits, cls, pattern", [
    ((200, 200), dict(max_pixels=30_000), ImageTooLarge, r"^image is 200x200 = 0\.04 MP, over the limit of 0\.03 MP"),
    ((4, 30), dict(min_side=5), ImageTooSmall, r"^image is 4x30; both sides must be at least 5 px"),
    ((300, 10), dict(max_aspect_ratio=20), ExtremeAspectRatio, r"^image is 300x10, an aspect ratio of 1:30, beyond the limit of 1:20"),
])
def test_a_size_changed_while_loading_is_checked_again(monkeypatch, loaded, limits, cls, pattern):
    """A plugin may load another size than its header said (a JPEG draft, an ICO's largest
    entry): the geometry limits, as the caller gave them, apply to the loaded size too."""
    original = PngImagePlugin.PngImageFile.load

    def load(self):
        pixels = original(self)
        self._size = loaded
        return pixels

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", load)
    data = encode(Image.new("RGB", (40, 40)), "PNG")
    with pytest.raises(cls, match=pattern):
        decode_image(data, **limits)


# --------------------------------------------------------------------------- deep greyscale, against numpy


def scaled(a: np.ndarray, full: int) -> np.ndarray:
    """The documented integer scaling: (a * 255 + full // 2) // full."""
    return ((a.astype(np.int64) * 255 + full // 2) // full).astype(np.uint8)


def stretched(a: np.ndarray) -> np.ndarray:
    """Min-max stretch to 0..255 (all zeros for a flat image)."""
    a = a.astype(np.float64)
    lo, hi = a.min(), a.max()
    if hi == lo:
        return np.zeros(a.shape, np.uint8)
    return np.rint((a - lo) / (hi - lo) * 255).astype(np.uint8)


def grey(data: bytes) -> np.ndarray:
    """decode_image's output, checked to be grey, as one channel."""
    out = np.asarray(decode_image(data))
    assert out.shape[2] == 3 and np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 0], out[..., 2])
    return out[..., 0]


def with_bits(im: Image.Image, value) -> Image.Image:
    """``im`` carrying a TIFF BitsPerSample tag (258) of ``value``."""
    im.tag_v2 = {258: value}
    return im


def test_sixteen_bit_png_and_tiff_every_pixel_scaled_by_65535():
    arr = np.random.default_rng(1).integers(0, 65536, (12, 16), dtype=np.uint16)
    arr[0, :6] = [0, 1000, 32768, 65535, 128, 32767]
    for data in (encode(Image.fromarray(arr), "PNG"), encode(Image.fromarray(arr), "TIFF")):
        out = grey(data)
        assert np.array_equal(out, scaled(arr, 65535))
        assert list(out[0, :6]) == [0, 4, 128, 255, 0, 127]


def test_sixteen_bit_without_full_scale_is_scaled_not_stretched():
    arr = np.tile(np.array([0, 1000, 2000, 300], dtype=np.uint16), (8, 2))
    assert np.array_equal(grey(encode(Image.fromarray(arr), "PNG")), scaled(arr, 65535))
    assert grey(encode(Image.fromarray(arr), "PNG"))[0, 1] == 4


def test_tiff_declaring_twelve_bits_is_scaled_by_4095():
    arr = np.tile(np.array([0, 100, 4095, 2000], dtype=np.uint16), (8, 2))
    tiff = encode(Image.fromarray(arr), "TIFF")
    entry = b"\x02\x01\x03\x00\x01\x00\x00\x00"  # tag 258, SHORT, count 1
    assert tiff.count(entry + b"\x10\x00") == 1
    tiff = tiff.replace(entry + b"\x10\x00", entry + b"\x0c\x00")
    with Image.open(io.BytesIO(tiff)) as im:
        assert im.mode == "I;16" and im.tag_v2[258] == (12,)
        raw = np.asarray(im).copy()
    assert raw.max() <= 4095 and raw.max() > 255
    assert np.array_equal(grey(tiff), scaled(raw, 4095))


@pytest.mark.parametrize("bits", [9, 10, 12, 15])
def test_declared_depth_sets_the_full_scale(bits):
    full = (1 << bits) - 1
    arr = np.random.default_rng(bits).integers(0, full + 1, (8, 8)).astype(np.uint16)
    arr[0, 0], arr[0, 1] = full, 0
    for im in (Image.fromarray(arr), Image.fromarray(arr.astype(np.int32))):
        for tag in (bits, (bits,), [bits, bits]):
            out = np.asarray(_high_depth_to_l(with_bits(im.copy(), tag)))
            assert np.array_equal(out, scaled(arr, full)), (im.mode, tag)


def test_values_above_the_declared_range_are_scaled_to_their_maximum():
    top = 40000
    arr = np.tile(np.array([0, 1000, 4095, top], dtype=np.uint16), (8, 2))
    out = np.asarray(_high_depth_to_l(with_bits(Image.fromarray(arr), 12)))
    assert np.array_equal(out, scaled(arr, top))
    assert out[0, 3] == 255


def test_odd_or_missing_depth_tags_mean_sixteen_bits():
    arr = np.tile(np.array([0, 1000, 4095, 300], dtype=np.uint16), (8, 2))
    for tag in (None, 0, (), "x", 8, 17):
        out = np.asarray(_high_depth_to_l(with_bits(Image.fromarray(arr), tag)))
        assert np.array_equal(out, scaled(arr, 65535)), tag
    small = np.tile(np.array([0, 100, 255, 30], dtype=np.int32), (8, 2))
    for tag in (8, 17, 32):  # 32-bit 'I' data declaring no depth in 9..16: taken by their values
        out = np.asarray(_high_depth_to_l(with_bits(Image.fromarray(small), tag)))
        assert np.array_equal(out, small.astype(np.uint8)), tag


def signed_sixteen_bit_tiff(arr: np.ndarray) -> bytes:
    """A TIFF of signed 16-bit samples (SampleFormat 2), which Pillow opens as mode 'I'."""
    data = encode(Image.fromarray(arr.astype(np.int16).view(np.uint16)), "TIFF", tiffinfo={339: 2})
    with Image.open(io.BytesIO(data)) as im:
        assert im.mode == "I" and im.tag_v2[258] == (16,)
        assert np.array_equal(np.asarray(im), arr)
    return data


def test_signed_sixteen_bit_tiff_is_stretched_min_to_max():
    arr = np.tile(np.array([-300, 0, 100, 1700], dtype=np.int32), (8, 2))
    assert np.array_equal(grey(signed_sixteen_bit_tiff(arr)), stretched(arr))


def test_non_negative_signed_sixteen_bit_tiff_is_scaled_by_65535():
    arr = np.tile(np.array([0, 200, 1000, 32767], dtype=np.int32), (8, 2))
    assert np.array_equal(grey(signed_sixteen_bit_tiff(arr)), scaled(arr, 65535))
    small = np.tile(np.array([0, 200, 255, 100], dtype=np.int32), (8, 2))
    assert np.array_equal(grey(signed_sixteen_bit_tiff(small)), scaled(small, 65535))


@pytest.mark.parametrize("values,expect", [
    ([0, 7, 128, 255], "kept"),
    ([3, 7, 128, 200], "kept"),
    ([0, 256, 1000, 40000], "scaled"),
    ([0, 256, 100, 7], "scaled"),
    ([1, 1000, 65535, 300], "scaled"),
    ([100, 65536, 3000, 7], "stretched"),
    ([30000, 65535, 40000, 50000], "scaled"),
    ([30000, 65536, 40000, 50000], "stretched"),
    ([0, 1000, 255, 65535], "scaled"),
    ([1, 300, 1000, 600], "scaled"),
    ([0, 5, 100, 65536], "stretched"),
    ([-1, 5, 100, 200], "stretched"),
    ([-1000, 5, 100, 60000], "stretched"),
    ([100_000, 200_000, 150_000, 123_456], "stretched"),
    ([70_000] * 4, "stretched"),
])
def test_thirty_two_bit_integer_tiff(values, expect):
    arr = np.tile(np.array(values, dtype=np.int32), (8, 2))
    data = encode(Image.fromarray(arr), "TIFF")
    with Image.open(io.BytesIO(data)) as im:
        assert im.mode == "I"
    reference = {"kept": arr.astype(np.uint8), "scaled": scaled(arr, 65535), "stretched": stretched(arr)}[expect]
    assert np.array_equal(grey(data), reference)


@pytest.mark.parametrize("values,expect", [
    ([0.0, 0.25, 0.5, 1.0], "unit"),
    ([0.1, 0.3, 0.77, 0.9], "unit"),
    ([0.0, 1.5, 2.0, 0.4], "kept"),
    ([0.0, 254.6, 255.0, 17.2], "kept"),
    ([1.0, 3.0, 200.4, 12.5], "kept"),
    ([2.0, 3.0, 255.0, 12.5], "kept"),
    ([10.0, 100.0, 255.5, 30.0], "stretched"),
    ([-0.5, 0.0, 0.5, 1.0], "stretched"),
    ([-3.0, 100.0, 17.0, 255.0], "stretched"),
    ([0.0, 2.0, 100.0, 300.0], "stretched"),
    ([5.0, 5.0, 5.0, 5.0], "kept"),
    ([400.0] * 4, "stretched"),
])
def test_float_tiff(values, expect):
    arr = np.tile(np.array(values, dtype=np.float32), (8, 2))
    data = encode(Image.fromarray(arr), "TIFF")
    with Image.open(io.BytesIO(data)) as im:
        assert im.mode == "F"
    a = arr.astype(np.float64)
    reference = {
        "unit": np.rint(a * 255).astype(np.uint8),
        "kept": np.rint(a).astype(np.uint8),
        "stretched": stretched(a),
    }[expect]
    assert np.array_equal(grey(data), reference)


def test_float_nan_and_infinities_become_zero():
    arr = np.tile(np.array([np.nan, 0.5, np.inf, -np.inf, 1.0, 0.2], dtype=np.float32), (8, 2))
    out = grey(encode(Image.fromarray(arr), "TIFF"))
    assert list(out[0, :6]) == [0, 128, 0, 0, 255, 51]
    wide = np.tile(np.array([np.nan, 10.0, np.inf, 200.0, -np.inf, 30.0], dtype=np.float32), (8, 2))
    assert list(grey(encode(Image.fromarray(wide), "TIFF"))[0, :6]) == [0, 10, 0, 200, 0, 30]


def test_every_sixteen_bit_value_is_scaled_by_65535():
    arr = np.arange(65536, dtype=np.int32).reshape(256, 256)
    assert np.array_equal(grey(encode(Image.fromarray(arr), "TIFF")), scaled(arr, 65535))
    assert np.array_equal(grey(encode(Image.fromarray(arr.astype(np.uint16)), "PNG")), scaled(arr, 65535))


def test_flat_images_stretch_to_zero():
    for arr in (np.full((8, 8), -7, np.int32), np.full((8, 8), 1e6, np.float32)):
        assert (grey(encode(Image.fromarray(arr), "TIFF")) == 0).all()


def test_empty_deep_images_give_empty_greyscale():
    for mode in ("I;16", "I", "F"):
        out = _high_depth_to_l(Image.new(mode, (0, 0)))
        assert out.mode == "L" and out.size == (0, 0)


# --------------------------------------------------------------------------- naming what was sent

ACCEPTED = "JPEG, PNG, WEBP, BMP, GIF, TIFF"
SNIFFED = [
    (b"\xff\xd8\xff\xe0", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),
    (b"MM\x00+", "TIFF"),
    (b"BM", "BMP"),
    (b"RIFF\x10\x00\x00\x00WEBPVP8 ", "WEBP"),
    (b"%PDF-1.4", "PDF"),
    (b"8BPS\x00\x01", "PSD"),
    (b"\x00\x00\x01\x00\x01\x00", "ICO"),
    (b"qoif", "QOI"),
    (b"DDS |", "DDS"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG2000"),
    (b"\xff\x4f\xff\x51", "JPEG2000"),
    (b"\xff\x0a", "JXL"),
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "JXL"),
    (b"PK\x03\x04", "ZIP"),
    (b"\x1f\x8b\x08", "GZIP"),
    (b"%!PS-Adobe", "PostScript"),
    *[(b"\x00\x00\x00\x18ftyp" + brand + b"\x00\x00\x00\x00", "AVIF") for brand in (b"avif", b"avis")],
    *[(b"\x00\x00\x00\x18ftyp" + brand + b"\x00\x00\x00\x00", "HEIC")
      for brand in (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1")],
    (b"\x00\x00\x00\x18ftypisom\x00\x00\x00\x00", "MP4/QuickTime"),
    (b"\x00\x00\x00\x14ftypqt  \x00\x00\x00\x00", "MP4/QuickTime"),
    (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "SVG"),
    (b"\xef\xbb\xbf<svg/>", "SVG"),
    (b"\xef\xbb\xbf \t\r\n<SVG/>", "SVG"),
    (b"\n  <?xml version='1.0'?><svg/>", "SVG"),
    (b"<?xml version='1.0'?><note/>", "XML"),
    (b"\xef\xbb\xbf<?xml version='1.0'?>", "XML"),
    (b"<!DOCTYPE html><html></html>", "HTML"),
    (b"\r\n<html><body>", "HTML"),
    (b"\xef\xbb\xbf<HTML>", "HTML"),
    (b"hello\tworld\r\n", "text"),
    (b"XXhello", "text"),
    (b"RIFF\x24\x00\x00\x00WAVEfmt ", None),
    (b"\x00\x01\x02\x03", None),
]


@pytest.mark.parametrize("head,name", SNIFFED)
def test_sniff_names_formats_by_their_magic_bytes(head, name):
    assert _sniff(head if name == "text" else head + bytes(40)) == name


def test_sniff_text_cut_inside_a_character_at_1024_bytes():
    for text in ("a" * 1023 + "é" + "rest", "a" * 1021 + "😀rest", "a" * 1019 + "😀é" + "rest"):
        assert _sniff(text.encode()) == "text", text[-8:]  # the character at byte 1024 is cut
    assert _sniff(b"a" * 1024 + b"\x00") == "text"  # only the first 1024 bytes are looked at
    assert _sniff(b"a" * 1023 + b"\x00") is None
    assert _sniff(b"X<svg/>") == "text"
    assert _sniff(b"abcd" + b"\x00" * 1019 + "é".encode()) is None  # binary even without the cut character
    assert _sniff(b"\xff\xfe\xfd\xfc" + b"a" * 1100) is None


@pytest.mark.parametrize("head,name", [(h, n) for h, n in SNIFFED if n is not None])
def test_unreadable_data_are_named_in_the_refusal(head, name):
    data = head if name == "text" else head + bytes(40)
    if name in ALLOWED_FORMATS:
        message = (f"the data start like a {name} file but the header could not be read; the file is "
                   f"truncated or damaged, upload it again or re-save it with an image editor")
        cls = CorruptImage
    elif name == "text":
        message, cls = f"the data are text, not an image; send one of {ACCEPTED}", UnsupportedImageFormat
    else:
        message, cls = f"format {name!r} is not accepted; send one of {ACCEPTED}", UnsupportedImageFormat
    with pytest.raises(cls) as info:
        decode_image(data)
    assert str(info.value) == message


def test_unrecognised_and_disabled_formats_refusals_in_full():
    with pytest.raises(UnsupportedImageFormat) as info:
        decode_image(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(40))
    assert str(info.value) == f"the data are not a recognised image; send one of {ACCEPTED}"
    with pytest.raises(UnsupportedImageFormat) as info:
        decode_image(b"GIF89a" + bytes(40), formats=("png", "jpeg"))
    assert str(info.value) == "format 'GIF' is not accepted here; send one of PNG, JPEG"


# --------------------------------------------------------------------------- transparency and orientation, against numpy


def on_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """The alpha blend of ``rgb`` over white."""
    a = alpha.astype(np.float64)[..., None] / 255
    return rgb.astype(np.float64) * a + 255 * (1 - a)


def test_rgba_and_la_blended_over_white_pixel_by_pixel():
    rng = np.random.default_rng(5)
    rgba = rng.integers(0, 256, (12, 10, 4), dtype=np.uint8)
    rgba[0, :3, 3] = [0, 255, 128]
    out = np.asarray(decode_image(encode(Image.fromarray(rgba, "RGBA"), "PNG"))).astype(np.float64)
    assert np.abs(out - on_white(rgba[..., :3], rgba[..., 3])).max() <= 0.5 + 1e-9
    assert (out[0, 0] == 255).all() and (out[0, 1] == rgba[0, 1, :3]).all()
    la = rng.integers(0, 256, (12, 10, 2), dtype=np.uint8)
    out = np.asarray(decode_image(encode(Image.fromarray(la, "LA"), "PNG"))).astype(np.float64)
    assert np.abs(out - on_white(np.repeat(la[..., :1], 3, axis=2), la[..., 1])).max() <= 0.5 + 1e-9


@pytest.mark.parametrize("mode,colour,key", [
    ("1", 0, 0),
    ("L", 90, 90),
    ("RGB", (10, 200, 30), (10, 200, 30)),
])
def test_greyscale_and_rgb_with_a_transparent_colour_show_white_there(mode, colour, key):
    im = Image.new(mode, (10, 10), colour)
    other = {"1": 1, "L": 40, "RGB": (40, 50, 60)}[mode]
    im.paste(other, (5, 0, 10, 10))
    data = encode(im, "PNG", transparency=key)
    with Image.open(io.BytesIO(data)) as opened:
        assert opened.mode == mode and "transparency" in opened.info
    out = np.asarray(decode_image(data))
    assert (out[:, :5] == 255).all()
    assert (out[:, 5:] == {"1": (255,) * 3, "L": (40,) * 3, "RGB": other}[mode]).all()


def test_images_without_transparency_are_not_composited():
    for im in (Image.new("L", (10, 10), 90), Image.new("RGB", (10, 10), (10, 200, 30))):
        out = np.asarray(decode_image(encode(im, "PNG")))
        assert (out == np.asarray(im.convert("RGB"))).all()
    pal = Image.new("P", (10, 10), 1)
    pal.putpalette([0, 0, 0, 200, 30, 40] + [0] * 762)
    pal.paste(0, (0, 0, 5, 10))
    out = np.asarray(decode_image(encode(pal, "PNG")))
    assert (out[:, :5] == 0).all() and (out[:, 5:] == [200, 30, 40]).all()


# Each EXIF orientation as the numpy operation that makes the stored pixels upright.
UPRIGHT = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a, 2).transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),
}


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "TIFF", "WEBP"])
def test_exif_orientation_against_numpy(orientation, fmt):
    stored = np.random.default_rng(orientation).integers(0, 256, (10, 16, 3), dtype=np.uint8)
    if fmt in ("JPEG", "WEBP"):
        stored = np.kron(np.array([[0, 255], [60, 180]], dtype=np.uint8)[..., None], np.ones((5, 8, 3), np.uint8))
    kwargs = {"quality": 100} if fmt in ("JPEG", "WEBP") else {}
    if fmt == "WEBP":
        kwargs = {"lossless": True}
    data = encode(Image.fromarray(stored), fmt, exif=exif_bytes(orientation), **kwargs)
    with Image.open(io.BytesIO(data)) as im:
        assert im.getexif().get(0x0112) == orientation
    out = np.asarray(decode_image(data)).astype(int)
    expected = UPRIGHT[orientation](stored).astype(int)
    assert out.shape == expected.shape
    assert np.abs(out - expected).max() <= (8 if fmt == "JPEG" else 0)


@pytest.mark.parametrize("value", [0, 9, 65535])
def test_out_of_range_or_malformed_orientation_is_ignored(value):
    stored = np.random.default_rng(0).integers(0, 256, (10, 16, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = value
    data = encode(Image.fromarray(stored), "PNG", exif=exif.tobytes())
    assert np.array_equal(np.asarray(decode_image(data)), stored)


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_garbage_exif_is_ignored():
    stored = np.random.default_rng(0).integers(0, 256, (10, 16, 3), dtype=np.uint8)
    for exif in (b"Exif\x00\x00garbage", b"MM\x00*\x00\x00\x00\x08\xff\xff", b"\x00" * 5):
        data = encode(Image.fromarray(stored), "PNG", exif=exif)
        assert np.array_equal(np.asarray(decode_image(data)), stored)


# --------------------------------------------------------------------------- the too-large message in full


@pytest.mark.parametrize("size,limit,message", [
    ((2000, 3000), 5_000_000, "image is 2000x3000 = 6 MP, over the limit of 5 MP; send a smaller image"),
    ((1286, 96), 100_000, "image is 1286x96 = 123,456 pixels, over the limit of 100,000 pixels; send a smaller image"),
    ((500, 900), 400_000, "image is 500x900 = 0.5 MP, over the limit of 0.4 MP; send a smaller image"),
    ((250, 200), 40_000, "image is 250x200 = 0.05 MP, over the limit of 0.04 MP; send a smaller image"),
    ((1000, 1000), 999_999, "image is 1000x1000 = 1,000,000 pixels, over the limit of 999,999 pixels; send a smaller image"),
    ((20000, 20000), 40_000_000, "image has 400 MP, over the limit of 40 MP; send a smaller image"),
    ((9000, 4500), 40_000_000, "image is 9000x4500 = 40.5 MP, over the limit of 40 MP; send a smaller image"),
    ((1, 100_000), 10_000, "image is 1x100000 = 0.1 MP, over the limit of 0.01 MP; send a smaller image"),
    ((1, 1_450_001), 1_000_000, "image is 1x1450001 = 1.5 MP, over the limit of 1 MP; send a smaller image"),
])
def test_too_large_message_in_full(size, limit, message):
    with pytest.raises(ImageTooLarge) as info:
        decode_image(png_header_only_bomb(*size), max_pixels=limit)
    assert str(info.value) == message


def test_a_mode_pillow_cannot_convert_is_refused_by_name():
    """'La' (premultiplied alpha) converts neither to RGBA nor to RGB: the odd-transparency
    fallback gives way to the refusal, which names the mode."""
    with pytest.raises(UnsupportedImageFormat) as info:
        _to_rgb(Image.new("La", (8, 8)))
    assert str(info.value) == "colour mode 'La' is not supported; send an RGB or greyscale image"
