"""Hostile and malformed input: each answered with the right 4xx problem, never a 5xx, and the
service stays healthy afterwards."""

from __future__ import annotations

import io
import re
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from apihelpers import assert_problem, encode, files, make_client
from apifixtures import *  # noqa: F401,F403 -- the shared fixtures

LIMIT = 256 * 1024  # single-image bodies; a batch may carry twice as much


@pytest.fixture(scope="module")
def hclient(tiny_model):
    with make_client(tiny_model, max_upload_bytes=LIMIT, max_batch_upload_bytes=2 * LIMIT) as c:
        yield c


@pytest.fixture(scope="module")
def base(photo_images) -> Image.Image:
    return photo_images[0].convert("RGB")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid PNG header for a gigantic greyscale image whose IDAT is a few bytes of zeros."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 4096, 9)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def gif_bomb() -> bytes:
    data = bytearray(encode(Image.new("P", (16, 16)), "GIF"))
    data[6:10] = struct.pack("<HH", 65535, 65535)  # logical screen
    return bytes(data)


def exif_rotated(upright: Image.Image) -> bytes:
    """Pixels stored rotated, with EXIF orientation 6 (rotate 270 to view): upright once applied."""
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(stored, "PNG", exif=exif.tobytes())


def animated_gif(base: Image.Image) -> bytes:
    frames = [base, base.transpose(Image.Transpose.FLIP_LEFT_RIGHT), Image.new("RGB", base.size, (255, 0, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


def predictions(client, data: bytes, **kw) -> list:
    r = client.post("/v1/predict?top_k=7", files=files(data, **kw))
    assert r.status_code == 200, r.text
    return r.json()["predictions"]


# --------------------------------------------------------------------------- refused uploads

REFUSED = [
    # (case id, bytes factory, status, detail fragment)
    ("empty", lambda b: b"", 422, "empty"),
    ("text", lambda b: b"hello, this is not an image\n" * 10, 415, "text"),
    ("truncated-jpeg", lambda b: encode(b, "JPEG")[:600], 422, "truncated"),
    ("truncated-png", lambda b: encode(b, "PNG")[:700], 422, "truncated"),
    ("png-header-only", lambda b: encode(b, "PNG")[:30], 422, "png"),
    ("png-bomb", lambda b: png_bomb(), 413, "over the limit"),
    ("gif-bomb", lambda b: gif_bomb(), 413, "over the limit"),
    ("1x1", lambda b: encode(Image.new("RGB", (1, 1)), "PNG"), 422, "at least 8"),
    ("1x20000", lambda b: encode(Image.new("L", (1, 20000)), "PNG"), 422, "at least 8"),
    ("10x20000", lambda b: encode(Image.new("L", (10, 20000)), "PNG"), 422, "aspect ratio"),
    ("svg", lambda b: b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="100" height="100"><rect width="100" height="100"/></svg>', 415, "svg"),
    ("pdf", lambda b: b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF", 415, "pdf"),
    ("ico", lambda b: encode(b.resize((32, 32)), "ICO"), 415, "ico"),
    ("zip", lambda b: b"PK\x03\x04" + b"\x00" * 100, 415, "zip"),
    ("heic", lambda b: b"\x00\x00\x00\x18ftypheic" + b"\x00" * 64, 415, "heic"),
    ("html", lambda b: b"<!doctype html><html><body>hi</body></html>", 415, "html"),
    ("random-bytes", lambda b: np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(), 415, "not a recognised image"),
]


@pytest.mark.parametrize("case, make, status, fragment", REFUSED, ids=[c[0] for c in REFUSED])
def test_refused_uploads(hclient, base, case, make, status, fragment):
    assert_problem(hclient.post("/v1/predict", files=files(make(base))), status, fragment)


def test_decompression_bomb_is_refused_without_decoding(hclient, monkeypatch):
    from PIL import ImageFile

    loads = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: loads.append(self) or (_ for _ in ()).throw(AssertionError))
    assert_problem(hclient.post("/v1/activations?layer=entry.block2.sep1", files=files(png_bomb(20_000, 20_000))), 413, "400 MP, over the limit of 40 MP")
    assert loads == []


# --------------------------------------------------------------------------- accepted oddities


def test_16_bit_png(hclient, base):
    grey = (np.asarray(base.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    data = encode(Image.fromarray(grey), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    assert predictions(hclient, data) == predictions(hclient, encode(base.convert("L"), "PNG"))


def test_cmyk_jpeg(hclient, base):
    data = encode(base.convert("CMYK"), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    assert len(predictions(hclient, data)) == 7


def test_palette_with_transparency(hclient, base):
    pal = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    data = encode(pal, "PNG", transparency=0)
    assert "transparency" in Image.open(io.BytesIO(data)).info
    assert len(predictions(hclient, data)) == 7


def test_rgba_webp_bmp_tiff_greyscale(hclient, base):
    for data in (encode(base.convert("RGBA"), "PNG"), encode(base, "WEBP"), encode(base, "BMP"), encode(base, "TIFF"), encode(base.convert("L"), "JPEG")):
        assert len(predictions(hclient, data)) == 7


def test_animated_gif_uses_the_first_frame(hclient, base):
    first = base.quantize(256).convert("RGB")
    anim = animated_gif(base)
    assert Image.open(io.BytesIO(anim)).n_frames == 3
    single = encode(Image.open(io.BytesIO(anim)).convert("RGB"), "PNG")
    assert predictions(hclient, anim) == predictions(hclient, single)
    assert first.size == base.size


def test_exif_rotated_predicts_like_the_upright_image(hclient, base):
    upright = encode(base, "PNG")
    rotated = exif_rotated(base)
    assert Image.open(io.BytesIO(rotated)).size == (base.height, base.width)
    assert predictions(hclient, rotated) == predictions(hclient, upright)


def test_lying_content_type_is_ignored(hclient, base):
    png = encode(base, "PNG")
    assert predictions(hclient, png, name="photo.jpg", content_type="image/jpeg") == predictions(hclient, png)
    assert_problem(hclient.post("/v1/predict", files=files(b"GIF89a but text really", "x.gif", "image/gif")), 422, "like a GIF file", "truncated")
    assert_problem(hclient.post("/v1/predict", files=files(b"plain text", "x.png", "image/png")), 415, "text")


def test_traversal_file_name_is_harmless(hclient, base):
    png = encode(base, "PNG")
    for name in ("../../etc/passwd", "..\\..\\windows\\win.ini", "/abs/path.png", "\x00evil.png", "a" * 250 + ".png"):
        r = hclient.post("/v1/predict", files=files(png, name=name))
        assert r.status_code == 200
    # a file name the multipart parser refuses is a 400 that says what to send
    assert_problem(hclient.post("/v1/predict", files=files(png, name="a" * 9000)), 400, "multipart/form-data")


# --------------------------------------------------------------------------- malformed requests


def test_wrong_field_name(hclient, base):
    assert_problem(hclient.post("/v1/predict", files=files(encode(base), field="file")), 422, "'file'", "image")


def text_field_body(field: str, value: bytes) -> tuple[bytes, dict]:
    """A multipart body whose only part is a text field (no filename), as an HTML form sends one."""
    body = b"--b0\r\nContent-Disposition: form-data; name=\"" + field.encode() + b"\"\r\n\r\n" + value + b"\r\n--b0--\r\n"
    return body, {"content-type": "multipart/form-data; boundary=b0"}


def test_image_as_text_field(hclient):
    body, headers = text_field_body("image", b"aGVsbG8=")
    assert_problem(hclient.post("/v1/predict", content=body, headers=headers), 422, "must be a file upload")
    body, headers = text_field_body("images", b"aGVsbG8=")  # refused by the declared form schema, as a whole
    problem = assert_problem(hclient.post("/v1/predict/batch", content=body, headers=headers), 422, "form field 'images.0'", "UploadFile")
    assert problem["type"].endswith("validation-error")
    assert_problem(hclient.post("/v1/predict", data={"image": "aGVsbG8="}, files={"dummy": ("", b"")}), 422, "'dummy'", "query string")
    assert_problem(hclient.post("/v1/predict", data={"image": "aGVsbG8="}), 415, "multipart")


def test_two_images_on_a_single_image_endpoint(hclient, base):
    png = encode(base)
    r = hclient.post("/v1/predict", files=[("image", ("a.png", png, "image/png")), ("image", ("b.png", png, "image/png"))])
    assert_problem(r, 422, "exactly one")


def test_extra_form_field_is_refused(hclient, base):
    r = hclient.post("/v1/predict", files=files(encode(base)), data={"top_k": "3"})
    assert_problem(r, 422, "query string")


@pytest.mark.parametrize(
    "kwargs, status, fragment",
    [
        ({"json": {"image": "aGVsbG8="}}, 415, "application/json"),
        ({"content": b"\x89PNG raw body", "headers": {"content-type": "image/png"}}, 415, "image/png"),
        ({"content": b""}, 422, "multipart/form-data field 'image'"),
        ({"content": b"--x\r\nbroken", "headers": {"content-type": "multipart/form-data; boundary=x"}}, 422, "exactly one 'image'"),
        ({"content": b"abc", "headers": {"content-type": "multipart/form-data"}}, 400, "multipart/form-data"),
    ],
    ids=["json", "raw-png-body", "no-body", "broken-multipart", "multipart-without-boundary"],
)
def test_bodies_that_are_not_multipart_uploads(hclient, kwargs, status, fragment):
    assert_problem(hclient.post("/v1/predict", **kwargs), status, fragment)


def test_oversized_upload_is_413(hclient):
    big = b"\xff\xd8\xff" + b"\x00" * (LIMIT + 10)
    body = assert_problem(hclient.post("/v1/predict", files=files(big, "big.jpg", "image/jpeg")), 413, f"over the limit of {LIMIT} bytes")
    assert body["limit_bytes"] == LIMIT


@pytest.mark.parametrize(
    "q, status, fragment",
    [
        ("top_k=abc", 422, "valid integer"),
        ("top_k=-3", 422, ">= 1"),
        ("top_k=1e9", 422, "integer"),
        ("top_k=99999999999999999999999", 422, "top_k"),
        ("model=nope", 404, "valid ids: tiny"),
        ("model=" + "m" * 300, 422, "at most 200"),
        ("model=../../etc/passwd", 404, "valid ids"),
    ],
)
def test_out_of_range_and_wrong_type_parameters(hclient, base, q, status, fragment):
    assert_problem(hclient.post(f"/v1/predict?{q}", files=files(encode(base))), status, fragment)


def test_batch_with_a_hostile_member(hclient, base):
    parts = [("images", ("ok.png", encode(base), "image/png")), ("images", ("bomb.png", png_bomb(), "image/png")), ("images", ("e.png", b"", "image/png"))]
    body = hclient.post("/v1/predict/batch", files=parts).json()
    assert [r["ok"] for r in body["results"]] == [True, False, False]
    assert [(r.get("error") or {}).get("status") for r in body["results"]] == [None, 413, 422]


def test_service_is_healthy_afterwards_and_never_answered_5xx(hclient, base):
    assert hclient.get("/healthz").status_code == 200
    assert len(predictions(hclient, encode(base))) == 7
    metrics = hclient.get("/metrics").text
    statuses = set(re.findall(r'xception_http_requests_total\{[^}]*status="(\d+)"', metrics))
    assert statuses and not {s for s in statuses if s.startswith("5")}, statuses
