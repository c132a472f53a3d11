"""Shared fixtures: an isolated weights cache, small configurations, real photographs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from support import SMALL, calibrate_batchnorm, photo_batch, sample_photos
from xception_core.model import Xception, XceptionConfig


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """Every test gets its own empty weights cache; nothing touches the user's."""
    monkeypatch.setenv("XCEPTION_HOME", str(tmp_path / "xception_home"))


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small kernels on 2 shared cores: two intra-op threads mostly wait for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def small_config() -> XceptionConfig:
    return SMALL


@pytest.fixture(scope="session")
def photos() -> list[np.ndarray]:
    return sample_photos()


@pytest.fixture(scope="session")
def chelsea(photos) -> Image.Image:
    """scikit-image's cat photograph as an RGB PIL image."""
    return Image.fromarray(photos[1]).convert("RGB")


@pytest.fixture(scope="session")
def photo_model(small_config, photos) -> Xception:
    """The small configuration, seeded random weights, BatchNorm statistics of the sample photos
    at 72 px, in eval mode: a model whose activations look like a trained one's. Do not modify."""
    torch.manual_seed(0)
    m = Xception(small_config)
    calibrate_batchnorm(m, photo_batch(photos, 72), seed=1)
    return m.eval()
