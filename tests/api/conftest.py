"""Fixtures of the API tests: a tiny in-memory model, real photographs, an app and its client.

The model is ``Xception(SMALL)`` (random weights, BatchNorm statistics calibrated
on real photographs so that its outputs depend on the image) at a 96-px input,
injected with :meth:`api.registry.ModelRegistry.from_models`: nothing is read
from or written to a weights cache.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from apihelpers import INPUT_SIZE, MODEL_ID, PREPROCESS, encode, make_app
from xception_core.model import Xception


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """The CI machine has 2 shared cores: intra-op threads fighting other processes cost
    far more than they bring for these tiny tensors."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session", autouse=True)
def _clean_environment():
    """Settings come from XCEPTION_* variables: none of the developer's may leak into the tests."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("XCEPTION_") and k != "XCEPTION_HOME"}
    for k in saved:
        del os.environ[k]
    yield
    os.environ.update(saved)


def _resize(photo: np.ndarray, width: int) -> Image.Image:
    img = Image.fromarray(photo)
    h = round(img.height * width / img.width)
    return img.resize((width, h), Image.Resampling.BICUBIC)


@pytest.fixture(scope="session")
def photo_images(photos) -> list[Image.Image]:
    """Four real photographs, 128 px wide."""
    return [_resize(p, 128) for p in photos]


@pytest.fixture(scope="session")
def png_images(photo_images) -> list[bytes]:
    return [encode(img, "PNG") for img in photo_images]


@pytest.fixture(scope="session")
def jpeg_images(photo_images) -> list[bytes]:
    return [encode(img, "JPEG", quality=90) for img in photo_images]


@pytest.fixture(scope="session")
def png(png_images) -> bytes:
    return png_images[1]


def _calibrate(model: torch.nn.Module, batch: torch.Tensor) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        model(batch)
    model.eval()


@pytest.fixture(scope="session")
def tiny_model(small_config, photo_images) -> Xception:
    from xception_core.preprocess import eval_transform

    torch.manual_seed(0)
    model = Xception(small_config)
    batch = torch.stack([eval_transform(img.convert("RGB"), PREPROCESS) for img in photo_images])
    _calibrate(model, batch)
    return model


@pytest.fixture(scope="session")
def app(tiny_model):
    return make_app(tiny_model, {"max_replicas": 4})


@pytest.fixture(scope="session")
def client(app):
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="session")
def entry(app, client):
    """The loaded tiny model as the service holds it (the object the endpoints use)."""
    return app.state.registry.get(MODEL_ID)
