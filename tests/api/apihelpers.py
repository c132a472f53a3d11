"""Helpers shared by the API tests (imported as ``apihelpers``; fixtures live in conftest.py)."""

from __future__ import annotations

import io

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


def preprocess(data: bytes) -> torch.Tensor:
    """The tensor the service feeds the model for these bytes: ``[1, 3, S, S]``."""
    return eval_transform(decode_image(data), PREPROCESS)[None]


def load_npy(content: bytes) -> np.ndarray:
    return np.load(io.BytesIO(content), allow_pickle=False)
