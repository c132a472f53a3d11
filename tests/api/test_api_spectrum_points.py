"""Models from elsewhere on the paper's spectrum (grouped, regular, extreme Inception) served by the
API: each layer's real parts in the layer table and in activations and attributions, a 422 that
lists a layer's parts, the decomposition refused with the reason; a model saved by
``xception-demo spectrum --save`` listed and hosted like any installed model."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from apihelpers import CLASS_NAMES, PREPROCESS, assert_problem, files, load_npy, make_settings, preprocess
from support import SMALL, calibrate_batchnorm
from xception_core.introspect import forward_with_capture
from xception_core.model import Xception
from apifixtures import *  # noqa: F401,F403 -- the shared fixtures

#: id -> (segments, order) of the in-memory models
POINTS = {
    "grouped": (2, "depthwise-first"),
    "inception": (4, "pointwise-first"),
    "extreme": ("C", "pointwise-first"),
    "regular": (1, "depthwise-first"),
    "separable": ("C", "depthwise-first"),
}
LAYER = "middle.block5.sep2"


def _model(segments, order) -> Xception:
    torch.manual_seed(0)
    model = Xception(dataclasses.replace(SMALL, segments=segments, order=order))
    calibrate_batchnorm(model, torch.randn(4, 3, 96, 96))
    return model.eval()


@pytest.fixture(scope="module")
def spectrum_models() -> dict[str, Xception]:
    return {name: _model(*point) for name, point in POINTS.items()}


@pytest.fixture(scope="module")
def sc(spectrum_models):
    from api.main import create_app
    from api.registry import InMemoryModel, ModelRegistry

    registry = ModelRegistry.from_models(
        [InMemoryModel(name, m, CLASS_NAMES, PREPROCESS) for name, m in spectrum_models.items()], max_loaded=len(POINTS)
    )
    app = create_app(make_settings(predict_backend="eager", preload_default_model=False), registry=registry)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def _captured(model: Xception, png: bytes, layer: str) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        module = model.separable_layers()[layer]
        _, kept = forward_with_capture(model, preprocess(png), [layer], (*module.parts, "input"))
    return {part: t[0] for part, t in kept[layer].items()}


def test_the_layer_table_names_each_layers_parts(sc, spectrum_models):
    for name, model in spectrum_models.items():
        table = sc.get(f"/v1/models/{name}/layers").json()
        modules = model.separable_layers()
        for row in table["separable_layers"]:
            module = modules[row["name"]]
            assert row["parts"] == list(module.parts)
            assert row["segments"] == module.groups
            assert row["order"] == (None if module.parts == ("conv",) else module.order)
            assert row["decomposable"] is (module.parts == ("depthwise", "pointwise"))
            assert row["spectrum_point"] == module.describe()
        detail = sc.get(f"/v1/models/{name}").json()
        assert (detail["segments"], detail["order"]) == POINTS[name] or (name == "regular" and detail["segments"] == 1)
        assert detail["parts"] == list(dict.fromkeys(p for m in modules.values() for p in m.parts))
    rows = {r["name"]: r for r in sc.get("/v1/models/inception/layers").json()["separable_layers"]}
    assert rows[LAYER]["parts"] == ["pointwise", "grouped"] and rows[LAYER]["segments"] == 4
    assert rows[LAYER]["spectrum_point"] == "k = 4 segments, pointwise-first (Inception-like)"


@pytest.mark.parametrize("name", list(POINTS))
def test_activations_of_every_part_are_the_models_own(sc, spectrum_models, png, name):
    model = spectrum_models[name]
    module = model.separable_layers()[LAYER]
    expected = _captured(model, png, LAYER)
    for part in (*module.parts, "input"):
        r = sc.post(f"/v1/activations?model={name}&layer={LAYER}&part={part}&top=64&format=npy", files=files(png))
        assert r.status_code == 200, r.text
        c, h, w = expected[part].shape
        assert r.headers["x-shape"] == f"{min(64, c)},{h},{w}"
        order = [int(i) for i in r.headers["x-channels"].split(",")]
        np.testing.assert_allclose(load_npy(r.content), expected[part][order].numpy(), rtol=1e-3, atol=1e-3)
        body = sc.post(f"/v1/activations?model={name}&layer={LAYER}&part={part}&top=2", files=files(png)).json()
        assert body["part"] == part and body["shape"] == [c, h, w]


@pytest.mark.parametrize("name,part,parts", [
    ("grouped", "depthwise", "grouped, pointwise, input"),
    ("inception", "depthwise", "pointwise, grouped, input"),
    ("regular", "pointwise", "conv, input"),
    ("separable", "grouped", "depthwise, pointwise, input"),
    ("extreme", "conv", "pointwise, depthwise, input"),
])
def test_a_part_the_layer_lacks_is_a_422_listing_its_parts(sc, png, name, part, parts):
    body = assert_problem(
        sc.post(f"/v1/activations?model={name}&layer={LAYER}&part={part}", files=files(png)), 422,
        f"{LAYER} (", f"has no part '{part}'", f"its parts are {parts}",
    )
    assert body["type"].endswith(":unknown-part") and body["parameter"] == "part"
    assert body["valid_choices"] == parts.split(", ")


def test_an_unknown_part_name_is_refused_with_every_part_name(sc, png):
    body = assert_problem(sc.post(f"/v1/activations?model=grouped&layer={LAYER}&part=spatial", files=files(png)), 422, "part")
    assert all(p in body["detail"] for p in ("conv", "depthwise", "grouped", "pointwise", "input"))


@pytest.mark.parametrize("name,why", [
    ("grouped", "k = 2 segments, depthwise-first (grouped 3x3 before the 1x1) with parts grouped, pointwise"),
    ("inception", "k = 4 segments, pointwise-first (Inception-like) with parts pointwise, grouped"),
    ("extreme", "with parts pointwise, depthwise"),
    ("regular", "k = 1: a regular 3x3 convolution with parts conv"),
])
def test_the_decomposition_of_another_point_is_a_422_that_says_why(sc, png, name, why):
    body = assert_problem(
        sc.post(f"/v1/decomposition?model={name}&layer={LAYER}&channel=0", files=files(png)), 422,
        "needs a depthwise separable layer", why, "only depthwise separable layers decompose exactly",
    )
    assert body["type"].endswith(":view-not-applicable") and body["parameter"] == "layer"
    assert sc.post(f"/v1/decomposition?model=separable&layer={LAYER}&channel=0&top=2", files=files(png)).status_code == 200


def test_layer_attributions_take_the_layers_real_parts(sc, png):
    r = sc.post(f"/v1/attributions?model=inception&method=layer_gradcam&layer={LAYER}&part=grouped&auc_steps=0", files=files(png))
    assert r.status_code == 200, r.text
    assert r.json()["part"] == "grouped"
    ranked = sc.post(f"/v1/activations?model=regular&layer={LAYER}&part=conv&top=3&sort=attribution", files=files(png))
    assert ranked.status_code == 200, ranked.text
    body = assert_problem(
        sc.post(f"/v1/attributions?model=inception&method=layer_gradcam&layer={LAYER}&part=depthwise", files=files(png)),
        422, "part=pointwise or part=grouped",
    )
    assert body["parameter"] == "part"
    assert_problem(sc.post(f"/v1/activations?model=regular&layer={LAYER}&part=input&sort=attribution", files=files(png)), 422, "part=conv")
