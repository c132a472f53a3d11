"""Fixtures of the UI tests: a real API (tiny model, real HTTP on 127.0.0.1) and Streamlit AppTests
of the app against it."""

from __future__ import annotations

import os

import pytest
import torch
from uihelpers import REPO_ROOT, photo_png, serve_tiny_api, tiny_model

from xception_core.synthetic import write_folder

APP = REPO_ROOT / "ui" / "app.py"
API_URL_ENV = "XCEPTION_UI_API_URL"
ATLAS_IMAGES = 12


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """2 shared cores: intra-op threads fighting other processes cost more than they bring here."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def api_url(tmp_path_factory) -> str:
    """The API serving the tiny model; the app under test talks to it (``XCEPTION_UI_API_URL``)."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("XCEPTION_") and k != "XCEPTION_HOME"}
    for key in saved:
        del os.environ[key]
    home = tmp_path_factory.mktemp("ui_home")
    data = write_folder(home / "atlas-data", ATLAS_IMAGES, seed=5, size=96)  # the atlas of the tiny model
    with serve_tiny_api(tiny_model(), home, atlas_data=data) as url:
        os.environ[API_URL_ENV] = url
        yield url
    os.environ.pop(API_URL_ENV, None)
    os.environ.update(saved)


@pytest.fixture
def app(api_url, monkeypatch):
    """A fresh session of the app (its own session state) against the test API."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv(API_URL_ENV, api_url)
    return AppTest.from_file(str(APP), default_timeout=180)


@pytest.fixture(scope="session")
def cat_png() -> bytes:
    return photo_png(1, 160)
