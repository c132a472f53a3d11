"""Helpers shared by the API tests (imported as ``apihelpers``; fixtures live in conftest.py)."""

from __future__ import annotations

import io
import struct
import time
import zlib
from collections.abc import Callable

import numpy as np
import torch
from fastapi.testclient import TestClient
from PIL import Image

from api.main import create_app
from api.registry import InMemoryModel, ModelRegistry
from api.settings import Settings
from xception_core.model import Xception
from xception_core.decode import decode_image
from xception_core.transform import PreprocessConfig, eval_transform

INPUT_SIZE = 96
CLASS_NAMES = ["tench", "goldfish", "shark", "crane", "crane", "maillot", "toilet tissue"]
MODEL_ID = "tiny"
PREPROCESS = PreprocessConfig(input_size=INPUT_SIZE)


def encode(img: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def make_registry(model: Xception, **kwargs) -> ModelRegistry:
    return ModelRegistry.from_models(
        [InMemoryModel(MODEL_ID, model, CLASS_NAMES, PREPROCESS, "tiny test model")],
        device="cpu",
        **kwargs,
    )


def make_settings(**overrides) -> Settings:
    base = {"inference_workers": 2, "attribution_workers": 2, "log_json": True, "access_log": False}
    base.update(overrides)
    return Settings(**base)


def make_app(model: Xception, registry_kwargs: dict | None = None, **settings):
    return create_app(make_settings(**settings), registry=make_registry(model, **(registry_kwargs or {})))


def make_client(model: Xception, registry_kwargs: dict | None = None, **settings) -> TestClient:
    return TestClient(make_app(model, registry_kwargs, **settings), raise_server_exceptions=False)


def padded_png(png: bytes, size: int) -> bytes:
    """``png`` grown to exactly ``size`` bytes by a private ancillary chunk after IHDR (decoders skip
    it): an image as large as a test needs that still decodes to the same pixels."""
    pad = size - len(png) - 12  # length, type and CRC around the padding
    if pad < 0:
        raise ValueError(f"a padded PNG has at least {len(png) + 12} bytes, not {size}")
    kind, data = b"xpAd", b"\x00" * pad
    chunk = struct.pack(">I", pad) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr_end = 8 + 4 + 4 + 13 + 4  # signature, IHDR length, type, data, CRC
    return png[:ihdr_end] + chunk + png[ihdr_end:]


BOUNDARY = b"xception-test-boundary"


def multipart(field: str, payloads: list[bytes]) -> tuple[bytes, str]:
    """A multipart/form-data body with one file part per payload in ``field``, and its content type."""
    body = b"".join(
        b"--" + BOUNDARY + b"\r\n"
        + f'Content-Disposition: form-data; name="{field}"; filename="image{i}.png"\r\n'.encode()
        + b"Content-Type: image/png\r\n\r\n" + data + b"\r\n"
        for i, data in enumerate(payloads)
    )
    return body + b"--" + BOUNDARY + b"--\r\n", "multipart/form-data; boundary=" + BOUNDARY.decode()


def multipart_of_size(field: str, png: bytes, parts: int, total: int) -> tuple[bytes, str]:
    """A multipart body of exactly ``total`` bytes: ``parts`` copies of ``png``, padded alike."""
    framing = len(multipart(field, [b""] * parts)[0])
    each, extra = divmod(total - framing, parts)
    body, ctype = multipart(field, [padded_png(png, each + (extra if i == 0 else 0)) for i in range(parts)])
    assert len(body) == total, (len(body), total)
    return body, ctype


def files(data: bytes, name: str = "image.png", content_type: str = "image/png", field: str = "image"):
    return {field: (name, data, content_type)}


def assert_problem(response, status: int, *fragments: str) -> dict:
    """An error answer: the status, problem+json with type/title/status/detail, a request id."""
    assert response.status_code == status, (response.status_code, response.text[:500])
    assert response.headers["content-type"].startswith("application/problem+json"), response.headers["content-type"]
    body = response.json()
    for key in ("type", "title", "status", "detail"):
        assert key in body, body
    assert body["status"] == status
    assert response.headers.get("x-request-id")
    for fragment in fragments:
        assert fragment.lower() in body["detail"].lower(), (fragment, body["detail"])
    return body


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
    """Poll ``condition`` until it holds. The timeout only bounds a hang: a loaded machine may be
    slow (a model load exports to ONNX), and a test must not fail for that."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not after {timeout:.0f} s")
        time.sleep(0.02)


def preprocess(data: bytes) -> torch.Tensor:
    """The tensor the service feeds the model for these bytes: ``[1, 3, S, S]``."""
    return eval_transform(decode_image(data), PREPROCESS)[None]


def load_npy(content: bytes) -> np.ndarray:
    return np.load(io.BytesIO(content), allow_pickle=False)
