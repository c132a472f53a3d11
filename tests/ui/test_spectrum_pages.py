"""The pages with a model from elsewhere on the paper's spectrum (an Inception-like one: a 1x1, then a
grouped 3x3 over 4 segments): the Layer explorer shows that layer's own parts in forward order and
explains why its decomposition is not drawn; the attributions page offers its parts."""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch
from uihelpers import ARCHITECTURE, ATTRIBUTIONS, EXPLORER, REPO_ROOT, TINY_CONFIG, assert_clean, serve_tiny_api, texts, tile_captions, with_photo

APP = REPO_ROOT / "ui" / "app.py"


@pytest.fixture(scope="module")
def inception_url(tmp_path_factory):
    from xception_core.model import Xception

    saved = {k: v for k, v in os.environ.items() if k.startswith("XCEPTION_") and k != "XCEPTION_HOME"}
    for key in saved:  # the developer's settings stay out of the test API
        del os.environ[key]
    torch.manual_seed(0)
    model = Xception(dataclasses.replace(TINY_CONFIG, segments=4, order="pointwise-first")).eval()
    try:
        with serve_tiny_api(model, tmp_path_factory.mktemp("inception_home")) as url:
            yield url
    finally:
        os.environ.update(saved)


@pytest.fixture
def inception_app(inception_url, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("XCEPTION_UI_API_URL", inception_url)
    return AppTest.from_file(str(APP), default_timeout=180)


def test_layer_explorer_shows_the_layers_own_parts(inception_app, cat_png):
    at = with_photo(inception_app, cat_png)
    at.switch_page(EXPLORER).run()
    assert_clean(at)
    assert [s.value for s in at.subheader][:2] == ["Pointwise 1×1 · cross-channel", "Grouped 3×3 · per segment"]
    grids = [c for c in tile_captions(at) if len(c) > 1]
    assert len(grids) == 2 and all(len(c) == 16 for c in grids), grids  # entry.block2.sep1: 16 output channels each
    info = texts(at.info)
    assert any("k = 4 segments, pointwise-first (Inception-like)" in t and "pointwise → grouped" in t for t in info), info
    assert any("Only a depthwise separable layer" in t for t in info), info
    assert not [m for m in at.metric if m.label == "max |sum − pointwise|"]  # no decomposition drawn
    # 16 -> 24 channels: with the 1x1 first, both parts have the 24 output channels
    at.selectbox(key="lx_layer_entry").select("entry.block3.sep1").run()
    at.slider(key="lx_top").set_value(24).run()
    assert_clean(at)
    grids = [c for c in tile_captions(at) if len(c) > 1]
    assert [len(c) for c in grids] == [24, 24], [len(c) for c in grids]


def test_attributions_page_offers_the_layers_parts(inception_app, cat_png):
    at = with_photo(inception_app, cat_png)
    at.switch_page(ATTRIBUTIONS).run()
    at.multiselect(key="attr_methods").set_value(["layer_gradcam"]).run()
    assert_clean(at)
    assert list(at.radio(key="attr_part").options) == ["grouped", "pointwise"]


def test_architecture_page_names_the_point(inception_app):
    at = inception_app.run()
    at.switch_page(ARCHITECTURE).run()
    assert_clean(at)
    assert any("elsewhere on the paper's spectrum" in t and "Inception-like" in t for t in texts(at.caption))
    separable = at.dataframe[1].value
    assert set(separable["parts"]) == {"pointwise → grouped"}


def test_each_part_shows_its_own_channel_count(app, cat_png):
    """Xception's order: the depthwise part keeps the layer's 16 input channels, the pointwise one has its 24."""
    at = with_photo(app, cat_png)
    at.switch_page(EXPLORER).run()
    at.selectbox(key="lx_layer_entry").select("entry.block3.sep1").run()
    at.slider(key="lx_top").set_value(24).run()
    assert_clean(at)
    grids = [c for c in tile_captions(at) if len(c) > 4]
    assert [len(c) for c in grids] == [16, 24], [len(c) for c in grids]
