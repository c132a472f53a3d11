"""Safe decoding of untrusted image bytes.

:func:`decode_image` turns untrusted bytes into one canonical form: a fully
loaded 8-bit RGB :class:`PIL.Image.Image`, upright per EXIF.  Every refusal
is an :class:`ImageDecodeError` (a ``ValueError``) whose message tells the sender
what to fix; the subclass says which kind of problem it is, and ``code`` gives a
stable machine-readable name for it:

* ``UnsupportedImageFormat`` (``unsupported_format``): empty, not an image, or a
  format that is not accepted;
* ``ImageTooLarge`` (``image_too_large``): width x height over ``max_pixels``,
  checked from the header before any pixel is decoded;
* ``ImageTooSmall`` (``image_too_small``): shorter side under ``min_side`` (8 px);
* ``ExtremeAspectRatio`` (``extreme_aspect_ratio``): long side / short side over
  ``max_aspect_ratio`` (50);
* ``CorruptImage`` (``corrupt_image``): truncated or undecodable data.

Why the geometry limits: the evaluation transform (:mod:`xception_core.transform`)
resizes the *shorter* side to 333 px, so a 1 x 20000 strip would become
333 x 6,660,000 pixels (6.6 GB) and a 4 px-high image carries nothing a 299 px
classifier can use.  Below 8 px or beyond 1:50 the request is refused instead;
within them the resize costs at most 333 x 16,650 pixels.
"""

from __future__ import annotations

import codecs
import re
import threading
from io import BytesIO
from typing import Iterable

import numpy as np
from PIL import Image

__all__ = [
    "ALLOWED_FORMATS",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MIN_SIDE",
    "DEFAULT_MAX_ASPECT_RATIO",
    "ImageDecodeError",
    "UnsupportedImageFormat",
    "ImageTooLarge",
    "ImageTooSmall",
    "ExtremeAspectRatio",
    "CorruptImage",
    "decode_image",
]

ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")
DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_MIN_SIDE = 8
DEFAULT_MAX_ASPECT_RATIO = 50.0

# --------------------------------------------------------------------------- errors


class ImageDecodeError(ValueError):
    """The upload cannot be turned into an image; ``str(err)`` says what to fix."""

    code = "image_decode_error"


class UnsupportedImageFormat(ImageDecodeError):
    """Empty data, not an image, or an image format that is not accepted."""

    code = "unsupported_format"


class ImageTooLarge(ImageDecodeError):
    """More pixels than allowed (detected from the header, before decoding)."""

    code = "image_too_large"


class ImageTooSmall(ImageDecodeError):
    """The shorter side is below the minimum."""

    code = "image_too_small"


class ExtremeAspectRatio(ImageDecodeError):
    """Long side / short side beyond the maximum ratio."""

    code = "extreme_aspect_ratio"


class CorruptImage(ImageDecodeError):
    """Truncated or undecodable image data."""

    code = "corrupt_image"


# --------------------------------------------------------------------------- helpers


def _mp(pixels: int) -> str:
    """Pixel count in megapixels for messages: 400000000 -> '400', 40500000 -> '40.5'."""
    value = pixels / 1e6
    text = f"{value:.1f}" if value >= 0.1 else f"{value:.3f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _sizes(pixels: int, limit: int) -> tuple[str, str]:
    """Both pixel counts for a message: in megapixels, or exactly where megapixels would read alike."""
    found, allowed = f"{_mp(pixels)} MP", f"{_mp(limit)} MP"
    return (found, allowed) if found != allowed else (f"{pixels:,} pixels", f"{limit:,} pixels")


def _formats_text(formats: Iterable[str]) -> str:
    return ", ".join(formats)


# Magic numbers, only to name what was sent when Pillow does not recognise it.
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),
    (b"MM\x00+", "TIFF"),
    (b"BM", "BMP"),
    (b"%PDF", "PDF"),
    (b"8BPS", "PSD"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"qoif", "QOI"),
    (b"DDS ", "DDS"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG2000"),
    (b"\xff\x4f\xff\x51", "JPEG2000"),
    (b"\xff\x0a", "JXL"),
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "JXL"),
    (b"PK\x03\x04", "ZIP"),
    (b"\x1f\x8b", "GZIP"),
    (b"%!PS", "PostScript"),
)


def _sniff(data: bytes) -> str | None:
    """Best-effort name of the format of ``data`` (for error messages only)."""
    head = data[:1024]
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"avif", b"avis"):
            return "AVIF"
        if brand in (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"):
            return "HEIC"
        return "MP4/QuickTime"
    for magic, name in _SIGNATURES:
        if head.startswith(magic):
            return name
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if stripped.startswith(b"<svg") or (stripped.startswith(b"<?xml") and b"<svg" in stripped):
        return "SVG"
    if stripped.startswith((b"<!doctype html", b"<html")):
        return "HTML"
    if stripped.startswith(b"<?xml"):
        return "XML"
    try:
        # final=False: a multi-byte character cut at the 1024-byte boundary is not an error.
        text = codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return None
    if text and all(ch.isprintable() or ch in "\t\r\n" for ch in text):
        return "text"
    return None


_bomb_lock = threading.Lock()


def _ensure_pillow_limit(max_pixels: int) -> None:
    """Keep Pillow's own bomb guard at or above ours, so that our header check,
    with its clearer message and the service's limit, is the one that fires.

    Only ever raises ``Image.MAX_IMAGE_PIXELS`` (never lowers it, never disables
    it), under a lock; with the default limit (40 MP < Pillow's 89 MP) it is
    never touched.  No global warning filters are changed: Pillow warns only
    above ``MAX_IMAGE_PIXELS`` >= ``max_pixels``, where our check rejects the
    image anyway, and a warning promoted to an error is caught and reported as
    :class:`ImageTooLarge`.
    """
    current = Image.MAX_IMAGE_PIXELS
    if current is not None and current < max_pixels:
        with _bomb_lock:
            if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < max_pixels:
                Image.MAX_IMAGE_PIXELS = max_pixels


def _check_geometry(
    width: int, height: int, *, max_pixels: int, min_side: int, max_aspect_ratio: float
) -> None:
    pixels = width * height
    if pixels > max_pixels:
        found, allowed = _sizes(pixels, max_pixels)
        raise ImageTooLarge(f"image is {width}x{height} = {found}, over the limit of {allowed}; send a smaller image")
    short, long = min(width, height), max(width, height)
    if short < min_side:
        raise ImageTooSmall(
            f"image is {width}x{height}; both sides must be at least {min_side} px; send a larger image"
        )
    if long / short > max_aspect_ratio:
        raise ExtremeAspectRatio(
            f"image is {width}x{height}, an aspect ratio of 1:{long / short:.0f}, beyond the limit "
            f"of 1:{max_aspect_ratio:g}; crop it closer to square"
        )


# EXIF orientation tag value -> the transpose that makes the image upright
# (the same table as PIL.ImageOps.exif_transpose).
_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _exif_orientation(im: Image.Image) -> int:
    """The EXIF orientation of ``im`` (1 when absent or unreadable).

    Malformed EXIF is common in real photos and says nothing about the pixels,
    so it is ignored rather than refused.
    """
    try:
        value = im.getexif().get(0x0112, 1)
        return int(value) if value in _ORIENTATION_TRANSPOSE else 1
    except Exception:  # noqa: BLE001 - any EXIF parsing problem means "no orientation"
        return 1


def _bits_per_sample(im: Image.Image) -> int | None:
    tags = getattr(im, "tag_v2", None)
    if tags is None:
        return None
    try:
        value = tags.get(258)
        if isinstance(value, (tuple, list)):
            value = max(value) if value else None
        return int(value) if value else None
    except Exception:  # noqa: BLE001
        return None


def _high_depth_to_l(im: Image.Image) -> Image.Image:
    """Greyscale deeper than 8 bits ('I;16*', 'I', 'F') -> 'L', scaled, never clipped.

    Pillow's own ``convert("L")`` clips (16-bit 1000 and 65535 both become 255).
    Here integer data is scaled by its nominal range: 16-bit full scale is 65535
    (so 65535 -> 255, 32768 -> 128), or ``2**BitsPerSample - 1`` when a TIFF
    declares fewer bits.  Without a declared depth, 32-bit 'I' data in 0..255 is
    taken as 8-bit, in 0..65535 as 16-bit, and otherwise min-max stretched;
    'F' data in [0, 1] is scaled by 255, in [0, 255] kept, otherwise stretched
    (NaN -> 0).  If the data exceed the nominal range they are scaled to their
    maximum rather than clipped.
    """
    arr = np.asarray(im)
    mode = im.mode
    bits = _bits_per_sample(im)
    out: np.ndarray
    if mode.startswith("I;16") or (mode == "I" and bits is not None and 8 < bits <= 16):
        a = arr.astype(np.int64)
        nominal = (1 << bits) - 1 if bits is not None and 8 < bits <= 16 else 65535
        lo = int(a.min()) if a.size else 0
        if lo < 0:  # signed 16-bit data
            out = _stretch(a.astype(np.float64))
        else:
            full = max(nominal, int(a.max()) if a.size else 0)
            out = ((a * 255 + full // 2) // full).astype(np.uint8)
    elif mode == "I":
        a = arr.astype(np.int64)
        lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
        if lo >= 0 and hi <= 255:
            out = a.astype(np.uint8)
        elif lo >= 0 and hi <= 65535:
            out = ((a * 255 + 32767) // 65535).astype(np.uint8)
        else:
            out = _stretch(a.astype(np.float64))
    else:  # "F"
        a = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        if lo >= 0.0 and hi <= 1.0:
            out = np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8)
        elif lo >= 0.0 and hi <= 255.0:
            out = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        else:
            out = _stretch(a)
    return Image.fromarray(np.ascontiguousarray(out), mode="L")


def _stretch(a: np.ndarray) -> np.ndarray:
    lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        return np.zeros(a.shape, dtype=np.uint8)
    return np.clip(np.rint((a - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)


_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_HIGH_DEPTH_MODES = {"I", "F", "I;16", "I;16L", "I;16B", "I;16N"}


def _composite_on_white(rgba: Image.Image) -> Image.Image:
    background = Image.new("RGB", rgba.size, (255, 255, 255))
    background.paste(rgba.convert("RGB"), mask=rgba.getchannel("A"))
    return background


def _to_rgb(im: Image.Image) -> Image.Image:
    """One canonical path from any decoded mode to 8-bit RGB (a new image)."""
    mode = im.mode
    if mode in _HIGH_DEPTH_MODES:
        return _high_depth_to_l(im).convert("RGB")
    if mode in _ALPHA_MODES or (mode in {"P", "L", "RGB", "1"} and "transparency" in im.info):
        try:
            rgba = im.convert("RGBA")
        except (ValueError, OSError):  # odd transparency info: ignore it
            rgba = None
        if rgba is not None:
            return _composite_on_white(rgba)
    if mode == "RGB":
        return im.copy()
    try:
        # CMYK (Adobe-inverted JPEGs are already un-inverted by Pillow), YCbCr,
        # LAB, HSV, RGBX, P, L, 1, ...
        return im.convert("RGB")
    except (ValueError, OSError) as exc:
        raise UnsupportedImageFormat(
            f"colour mode {mode!r} is not supported; send an RGB or greyscale image"
        ) from exc


# --------------------------------------------------------------------------- decoding


def decode_image(
    data: bytes | bytearray | memoryview,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    formats: Iterable[str] = ALLOWED_FORMATS,
    min_side: int = DEFAULT_MIN_SIDE,
    max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO,
) -> Image.Image:
    """Decode untrusted image bytes into a fully loaded, upright, 8-bit RGB image.

    Only ``formats`` are tried (Pillow format names).  Width x height is checked
    against ``max_pixels``, ``min_side`` and ``max_aspect_ratio`` from the header
    before any pixel is decoded.  Then, on one canonical path:

    * animated images (GIF, APNG, WebP, multi-page TIFF): the first frame;
    * EXIF orientation is applied (the result is upright; malformed EXIF is ignored);
    * transparency (RGBA, LA, PA, palette or greyscale with a transparent colour)
      is composited on **white** -- the usual background of transparent web
      images and documents, where black would invent dark edges;
    * CMYK, YCbCr, palette, greyscale ('L', '1') -> RGB with Pillow's conversions
      (embedded ICC profiles are ignored: pixels are taken as sRGB, as timm and
      torchvision do);
    * 16-bit and other deep greyscale ('I;16', 'I;16B', 'I', 'F') is scaled to
      8 bits, not clipped (see :func:`_high_depth_to_l`).

    Truncated data raise :class:`CorruptImage`; Pillow's ``LOAD_TRUNCATED_IMAGES``
    is never set here (if some other code sets it globally, truncated images will
    decode padded instead).  Safe to call from several threads at once.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"decode_image expects bytes, not {type(data).__name__}")
    data = bytes(data)
    if max_pixels < 1:
        raise ValueError("max_pixels must be positive")
    formats = tuple(f.upper() for f in formats)
    if not data:
        raise UnsupportedImageFormat(
            f"the upload is empty (0 bytes); send an image file ({_formats_text(formats)})"
        )
    _ensure_pillow_limit(max_pixels)

    try:
        src = Image.open(BytesIO(data), formats=list(formats))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _pillow_bomb(exc, max_pixels) from None
    except Exception as exc:  # noqa: BLE001 - anything Pillow raises on hostile headers
        raise _unidentified(data, formats) from exc

    with src:
        width, height = src.size
        _check_geometry(
            width, height, max_pixels=max_pixels, min_side=min_side, max_aspect_ratio=max_aspect_ratio
        )
        fmt = src.format or "image"
        try:
            src.load()  # the current frame is the first one: Image.open never seeks further
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _pillow_bomb(exc, max_pixels) from None
        except MemoryError:
            raise ImageTooLarge(
                f"not enough memory to decode this {width}x{height} {fmt} image; send a smaller image"
            ) from None
        except Exception as exc:  # noqa: BLE001 - OSError, SyntaxError, zlib.error, struct.error...
            raise CorruptImage(_corrupt_message(fmt, exc)) from exc
        if src.size != (width, height):  # a plugin may resize on load (e.g. JPEG draft, ICO)
            _check_geometry(
                *src.size, max_pixels=max_pixels, min_side=min_side, max_aspect_ratio=max_aspect_ratio
            )
        orientation = _exif_orientation(src)
        rgb = _to_rgb(src)

    method = _ORIENTATION_TRANSPOSE.get(orientation)
    if method is not None:
        rgb = rgb.transpose(method)
    rgb.info.clear()  # drop EXIF/ICC/XMP: the pixels are now canonical (and upright)
    return rgb


def _pillow_bomb(exc: BaseException, max_pixels: int) -> ImageTooLarge:
    """Pillow's own guard fired (only possible above ``max_pixels``, see
    :func:`_ensure_pillow_limit`); its message carries the pixel count, not the size."""
    found = re.search(r"\((\d+) pixels\)", str(exc))
    if found is None:
        return ImageTooLarge(f"image has too many pixels, over the limit of {_mp(max_pixels)} MP; send a smaller image")
    pixels, allowed = _sizes(int(found.group(1)), max_pixels)
    return ImageTooLarge(f"image has {pixels}, over the limit of {allowed}; send a smaller image")


def _corrupt_message(fmt: str, exc: BaseException) -> str:
    detail = str(exc).strip() or type(exc).__name__
    return (
        f"the {fmt} data could not be decoded ({detail}); the file is truncated or damaged, "
        f"upload it again or re-save it with an image editor"
    )


def _unidentified(data: bytes, formats: tuple[str, ...]) -> ImageDecodeError:
    sniffed = _sniff(data)
    accepted = _formats_text(formats)
    if sniffed in formats:
        return CorruptImage(
            f"the data start like a {sniffed} file but the header could not be read; the file is "
            f"truncated or damaged, upload it again or re-save it with an image editor"
        )
    if sniffed is None:
        return UnsupportedImageFormat(
            f"the data are not a recognised image; send one of {accepted}"
        )
    if sniffed == "text":
        return UnsupportedImageFormat(
            f"the data are text, not an image; send one of {accepted}"
        )
    if sniffed in ALLOWED_FORMATS:  # known but disabled by the ``formats`` argument
        return UnsupportedImageFormat(
            f"format {sniffed!r} is not accepted here; send one of {accepted}"
        )
    return UnsupportedImageFormat(f"format {sniffed!r} is not accepted; send one of {accepted}")
