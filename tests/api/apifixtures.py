"""Fixtures of the API tests: a tiny in-memory model, real photographs, an app and its client.

Each test module does ``from apifixtures import *``. (Not a ``conftest.py``: a second module
named ``conftest`` is ambiguous on ``sys.path``; shared helpers live in importable modules.) The expensive objects are built once per process and
shared by every module.

The model is ``Xception(SMALL)`` (random weights, BatchNorm statistics calibrated
on real photographs so that its outputs depend on the image) at a 96-px input,
injected with :meth:`api.registry.ModelRegistry.from_models`: nothing is read
from or written to a weights cache.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from apihelpers import MODEL_ID, PREPROCESS, encode, make_app
from support import calibrate_batchnorm
from xception_core.model import Xception, XceptionConfig

__all__ = [
    "_one_torch_thread",
    "_clean_environment",
    "photo_images",
    "png_images",
    "jpeg_images",
    "png",
    "tiny_model",
    "app",
    "client",
    "entry",
]

SMALL = XceptionConfig(
    num_classes=7, stem_channels=(8, 16), entry_channels=(16, 24, 32), middle_repeats=2, exit_channels=(40, 48, 56)
)


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


@functools.lru_cache(maxsize=1)
def _photo_images() -> tuple[Image.Image, ...]:
    from skimage import data

    return tuple(_resize(p, 128) for p in (data.astronaut(), data.chelsea(), data.coffee(), data.rocket()))


@pytest.fixture(scope="session")
def photo_images() -> list[Image.Image]:
    """Four real photographs (scikit-image's), 128 px wide."""
    return list(_photo_images())


@pytest.fixture(scope="session")
def png_images(photo_images) -> list[bytes]:
    return [encode(img, "PNG") for img in photo_images]


@pytest.fixture(scope="session")
def jpeg_images(photo_images) -> list[bytes]:
    return [encode(img, "JPEG", quality=90) for img in photo_images]


@pytest.fixture(scope="session")
def png(png_images) -> bytes:
    return png_images[1]


@functools.lru_cache(maxsize=1)
def _tiny_model() -> Xception:
    from xception_core.transform import eval_transform

    torch.manual_seed(0)
    model = Xception(SMALL)
    batch = torch.stack([eval_transform(img.convert("RGB"), PREPROCESS) for img in _photo_images()])
    calibrate_batchnorm(model, batch)
    return model


@pytest.fixture(scope="session")
def tiny_model() -> Xception:
    return _tiny_model()


@functools.lru_cache(maxsize=1)
def _app():
    return make_app(_tiny_model(), {"max_replicas": 4})


@pytest.fixture(scope="session")
def app():
    """One app for every module (its cache and metrics are shared)."""
    return _app()


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def entry(app, client):
    """The loaded tiny model as the service holds it (the object the endpoints use)."""
    return app.state.registry.get(MODEL_ID)
