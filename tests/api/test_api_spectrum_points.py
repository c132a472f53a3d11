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


@pytest.mark.slow
def test_a_point_saved_by_a_spectrum_run_is_listed_and_hosted(tmp_path, png):
    """``xception-demo spectrum --save`` registers each point in the model home: the service lists
    it, loads it with its config (segments, order) from the card, and serves its grouped maps."""
    from api.main import create_app
    from api.registry import ModelRegistry
    from xception_core.decode import decode_image
    from xception_core.spectrum import SpectrumRequest, run_spectrum, spectrum_points
    from xception_core.train import TrainConfig
    from xception_core.transform import eval_transform
    from xception_core.weights import read_checkpoint

    base = TrainConfig(
        stem_channels=(4, 8), entry_channels=(8, 12, 16), middle_repeats=1, exit_channels=(16, 20, 24),
        input_size=72, epochs=1, batch_size=8, train_size=16, val_size=10, eval_every=1, threads=1,
    )
    home = tmp_path / "home"
    request = SpectrumRequest(
        base=base, out_dir=tmp_path / "run", points=tuple(spectrum_points([2], ["depthwise-first"], [0])),
        save=True, home=home, timing_batch=2, timing_rounds=1,
    )
    run_spectrum(request, progress=False, log=lambda line: None)
    name, layer = "spectrum-k2-depthwise-first-s0", "middle.block5.sep1"
    registry = ModelRegistry(home=home, device="cpu", default_model=name)
    with TestClient(create_app(make_settings(preload_default_model=False), registry=registry)) as c:
        listed = {m["id"]: m for m in c.get("/v1/models").json()["models"]}
        assert listed[name]["status"] == "available" and listed[name]["num_classes"] == 20
        detail = c.get(f"/v1/models/{name}").json()
        assert detail["config"]["segments"] == 2 and detail["config"]["order"] == "depthwise-first"
        assert (detail["segments"], detail["order"], detail["input_size"]) == (2, "depthwise-first", 72)
        assert detail["extra"]["metrics"]["val_top1"] >= 0
        rows = {r["name"]: r for r in c.get(f"/v1/models/{name}/layers").json()["separable_layers"]}
        assert rows[layer]["parts"] == ["grouped", "pointwise"] and rows[layer]["decomposable"] is False

        entry = registry.get(name)
        served = entry.model
        stored = read_checkpoint(tmp_path / "run" / "points" / "k2-depthwise-first-s0.safetensors")
        assert torch.equal(served.state_dict()[f"{layer}.grouped.weight"].cpu(), stored[f"{layer}.grouped.weight"])
        x = eval_transform(decode_image(png), entry.preprocess)[None]
        with torch.no_grad():
            _, kept = forward_with_capture(served, x, [layer], ("grouped", "pointwise"))
        for part in ("grouped", "pointwise"):
            r = c.post(f"/v1/activations?layer={layer}&part={part}&top=16&format=npy", files=files(png))
            assert r.status_code == 200, r.text
            order = [int(i) for i in r.headers["x-channels"].split(",")]
            np.testing.assert_allclose(load_npy(r.content), kept[layer][part][0][order].numpy(), rtol=1e-3, atol=1e-3)
        assert_problem(c.post(f"/v1/activations?layer={layer}&part=depthwise", files=files(png)), 422, "its parts are grouped, pointwise, input")
        assert_problem(
            c.post(f"/v1/decomposition?layer={layer}&channel=0", files=files(png)), 422, "grouped 3x3 before the 1x1", "decompose exactly"
        )
        assert c.post("/v1/predict?top_k=3", files=files(png)).json()["model"] == name

