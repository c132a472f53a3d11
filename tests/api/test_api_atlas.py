"""The channel atlas endpoints: a channel's visualisation, its data-set examples, its weights.

The atlas is built by the service itself from a small generated folder given in the settings
(``atlas_data``), under a temporary home: nothing outside it is read or written.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from apifixtures import *  # noqa: F401,F403 -- the shared fixtures
from apihelpers import MODEL_ID, assert_problem, make_app
from api.features.atlas import ChannelRef, VisualisationQuery
from api.workers import Deadline, DeadlineExceeded
from xception_core.featurevis import VisualisationRequest, visualise
from xception_core.introspect import forward_with_capture
from xception_core.synthetic import write_folder
from xception_core.transform import preprocess_bytes

LAYER = "entry.block3.sep1"  # depthwise 16 channels, pointwise 24
VLAYER = "entry.block2.sep1"  # the cheapest layer to optimise for
FAST = {"steps": 6, "size": 72}
ATLAS_IMAGES = 12


def base(layer: str = LAYER, part: str = "depthwise", channel: int = 3, model: str = MODEL_ID) -> str:
    return f"/v1/models/{model}/layers/{layer}/parts/{part}/channels/{channel}"


def png_pixels(text: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(text))).convert("RGB"))


@pytest.fixture(scope="module")
def atlas_home(tmp_path_factory):
    root = tmp_path_factory.mktemp("atlas")
    data = write_folder(root / "data", ATLAS_IMAGES, seed=5, size=96)
    return root / "home", data


@pytest.fixture(scope="module")
def atlas_app(tiny_model, atlas_home):
    home, data = atlas_home
    return make_app(tiny_model, home=home, atlas_data=data)


@pytest.fixture(scope="module")
def ac(atlas_app):
    with TestClient(atlas_app, raise_server_exceptions=False) as c:
        yield c


# --------------------------------------------------------------------------- visualisation


def test_visualisation_json_is_the_cores_answer_and_is_cached(ac, tiny_model):
    r = ac.get(base(VLAYER) + "/visualisation", params={**FAST, "seed": 1})
    assert r.status_code == 200, r.text[:300]
    body = r.json()
    assert (body["model"], body["layer"], body["part"], body["channel"]) == (MODEL_ID, VLAYER, "depthwise", 3)
    assert (body["steps"], body["size"], body["seed"], body["objective"]) == (6, 72, 1, "mean")
    assert body["precision"] in ("fp32", "bf16") and body["seconds"] > 0
    assert body["cached"] is False
    # the same request to the core, on the same device: the same image and objectives
    core = visualise(tiny_model, VisualisationRequest(VLAYER, "depthwise", (3,), steps=6, size=72, seed=1))
    assert np.array_equal(png_pixels(body["png"]), core.image)
    assert (body["objective_start"], body["objective_final"]) == (core.images[0].objective_start, core.images[0].objective_final)
    again = ac.get(base(VLAYER) + "/visualisation", params={**FAST, "seed": 1}).json()
    assert again["cached"] is True and again["png"] == body["png"] and again["objective_final"] == body["objective_final"]
    other = ac.get(base(VLAYER) + "/visualisation", params={**FAST, "seed": 2}).json()
    assert other["cached"] is False and other["png"] != body["png"]


def test_visualisation_formats_carry_the_same_image(ac):
    params = {**FAST, "seed": 3, "objective": "centre"}
    where = base(VLAYER, "pointwise", 5) + "/visualisation"
    body = ac.get(where, params=params).json()
    png = ac.get(where, params={**params, "format": "png"})
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png.content)).convert("RGB")), png_pixels(body["png"]))
    assert float(png.headers["x-objective-final"]) == pytest.approx(body["objective_final"], rel=1e-5)
    assert png.headers["x-objective"] == "centre" and png.headers["x-cache"] == "hit"
    npy = ac.get(where, params={**params, "format": "npy"})
    assert npy.headers["content-type"] == "application/x-npy"
    array = np.load(io.BytesIO(npy.content), allow_pickle=False)
    assert array.dtype == np.uint8 and np.array_equal(array, png_pixels(body["png"]))


def test_visualisation_default_size_is_the_models_input(ac):
    body = ac.get(base(VLAYER) + "/visualisation", params={"steps": 1}).json()
    assert body["size"] == 96  # the tiny model's input size (under the default cap of 128)


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"steps": 0}, "steps"),
        ({"steps": 513}, "steps"),
        ({"steps": "many"}, "steps"),
        ({"size": 70}, "size"),
        ({"size": 257}, "size"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**32}, "seed"),
        ({"objective": "max"}, "objective"),
        ({"format": "jpeg"}, "format"),
    ],
)
def test_visualisation_refuses_every_parameter_out_of_bounds(ac, params, name):
    body = assert_problem(ac.get(base() + "/visualisation", params=params), 422, name)
    assert body["errors"][0]["loc"] == ["query", name]


def test_visualisation_bounds_follow_the_settings(tiny_model, tmp_path):
    app = make_app(tiny_model, home=tmp_path, max_visualisation_steps=4, max_visualisation_size=80)
    with TestClient(app, raise_server_exceptions=False) as c:
        assert_problem(c.get(base() + "/visualisation", params={"steps": 5, "size": 72}), 422, "steps", "<= 4")
        assert_problem(c.get(base() + "/visualisation", params={"steps": 4, "size": 81}), 422, "size", "<= 80")
        assert c.get(base(VLAYER) + "/visualisation", params={"steps": 4, "size": 80}).status_code == 200
        spec = app.openapi()["paths"]["/v1/models/{model_id}/layers/{layer}/parts/{part}/channels/{channel}/visualisation"]["get"]
        steps = next(p for p in spec["parameters"] if p["name"] == "steps")
        assert steps["schema"]["maximum"] == 4


@pytest.mark.parametrize(
    ("path", "status", "fragment", "member"),
    [
        (base(model="nope"), 404, "unknown model", ("parameter", "model")),
        (base(layer="entry.block9.sep9"), 404, "unknown layer", ("parameter", "layer")),
        (base(channel=16), 404, "0..15", ("allowed_range", [0, 15])),
        (base(part="pointwise", channel=24), 404, "0..23", ("allowed_range", [0, 23])),
        (base(channel=-1), 422, "channel", None),
        (base(part="input"), 422, "part", None),
        (base(part="conv"), 422, "part", None),
    ],
)
@pytest.mark.parametrize("what", ["visualisation", "atlas", "weights"])
def test_every_endpoint_refuses_a_channel_the_model_lacks(ac, path, status, fragment, member, what):
    body = assert_problem(ac.get(f"{path}/{what}", params=FAST if what == "visualisation" else None), status, fragment)
    if member is not None:
        assert body[member[0]] == member[1]


class _ExpiresAfter(Deadline):
    """A deadline that passes after ``checks`` looks at it (no clock in the test)."""

    def __init__(self, checks: int) -> None:
        super().__init__(3600, "visualisation")
        self.left = checks

    def expired(self) -> bool:
        self.left -= 1
        return self.left < 0


def test_the_optimisation_stops_when_the_deadline_passes(atlas_app, ac):
    ac.get("/readyz")
    entry = atlas_app.state.registry.get(MODEL_ID)
    atlas = atlas_app.state.features.atlas
    query = VisualisationQuery(ChannelRef(MODEL_ID, VLAYER, "depthwise", 1), 1000, 72, 9, "mean", "json")
    request = VisualisationRequest(VLAYER, "depthwise", (1,), steps=1000, size=72, seed=9)
    deadline = _ExpiresAfter(3)
    with pytest.raises(DeadlineExceeded):
        atlas._visualise_job(entry, query, request, deadline)
    assert deadline.left == -1  # looked at once per step: stopped at the fourth of 1000
    key = ("visualisation", entry.key, VLAYER, "depthwise", 1, 1000, 72, 9, "mean")
    assert key not in atlas_app.state.features.runtime.cache  # nothing half-done is cached


def test_a_visualisation_past_its_deadline_answers_504(tiny_model, tmp_path):
    app = make_app(tiny_model, home=tmp_path, visualisation_timeout_s=0.05, max_visualisation_steps=1024)
    with TestClient(app, raise_server_exceptions=False) as c:
        c.get("/readyz")
        assert_problem(c.get(base() + "/visualisation", params={"steps": 1024, "size": 256}), 504, "deadline")


# --------------------------------------------------------------------------- atlas entry


def test_atlas_entry_lists_the_top_examples_cropped_with_their_values(ac, atlas_app, atlas_home, tiny_model):
    r = ac.get(base(part="pointwise", channel=2) + "/atlas", params={"k": 5, "thumb_px": 40, "bins": 6})
    assert r.status_code == 200, r.text[:400]
    body = r.json()
    assert (body["k"], body["images"], body["objective"]) == (5, ATLAS_IMAGES, "mean")
    objectives = [e["objective"] for e in body["examples"]]
    assert objectives == sorted(objectives, reverse=True) and [e["rank"] for e in body["examples"]] == list(range(5))
    for e in body["examples"]:
        assert e["max"] >= e["objective"]
        top, left, bottom, right = e["box"]
        thumb = png_pixels(e["png"])
        assert max(thumb.shape[:2]) == 40
        assert thumb.shape[0] / thumb.shape[1] == pytest.approx((bottom - top) / (right - left), rel=0.1)
    # the objective is the channel's spatial mean on that image, in the model's own units
    _, data = atlas_home
    best = body["examples"][0]
    x = preprocess_bytes((data / best["file"]).read_bytes(), atlas_app.state.registry.get(MODEL_ID).preprocess)
    with torch.no_grad():
        _, kept = forward_with_capture(tiny_model, x[None], [LAYER])
    pointwise = kept[LAYER]["pointwise"][0, 2].float()
    assert best["objective"] == pytest.approx(float(pointwise.mean()), rel=1e-4, abs=1e-5)
    assert best["max"] == pytest.approx(float(pointwise.max()), rel=1e-4, abs=1e-5)
    assert list(np.unravel_index(int(pointwise.argmax()), pointwise.shape)) == best["argmax"]
    hist = body["histogram"]
    assert len(hist["counts"]) == 6 and len(hist["edges"]) == 7 and sum(hist["counts"]) == hist["samples"] == ATLAS_IMAGES
    assert body["stats"]["max"] == pytest.approx(objectives[0])
    assert body["cached"] is False
    assert ac.get(base(part="pointwise", channel=2) + "/atlas", params={"k": 5, "thumb_px": 40, "bins": 6}).json()["cached"] is True


@pytest.mark.parametrize(
    ("params", "name"),
    [({"k": 0}, "k"), ({"k": 65}, "k"), ({"thumb_px": 15}, "thumb_px"), ({"thumb_px": 257}, "thumb_px"), ({"bins": 0}, "bins"), ({"bins": 101}, "bins")],
)
def test_atlas_refuses_every_parameter_out_of_bounds(ac, params, name):
    assert_problem(ac.get(base() + "/atlas", params=params), 422, name)


def test_atlas_k_is_bounded_by_what_the_index_keeps(ac):
    body = assert_problem(ac.get(base() + "/atlas", params={"k": 17}), 422, "k=17", "keeps 16")
    assert body["allowed_range"] == [1, 16]
    assert ac.get(base() + "/atlas", params={"k": 16}).json()["k"] == min(16, ATLAS_IMAGES)


def test_atlas_parameters_name_no_folder(atlas_app):
    """No client-supplied path: the atlas operations take no parameter but the channel and sizes."""
    spec = atlas_app.openapi()["paths"]
    names = {p["name"] for path, item in spec.items() if "/channels/" in path for p in item["get"]["parameters"]}
    assert names == {"model_id", "layer", "part", "channel", "steps", "size", "seed", "objective", "format", "k", "thumb_px", "bins"}


def test_a_model_without_atlas_or_data_says_how_to_build_one(tiny_model, tmp_path):
    with TestClient(make_app(tiny_model, home=tmp_path), raise_server_exceptions=False) as c:
        body = assert_problem(c.get(base() + "/atlas"), 409, "no atlas", "xception-demo atlas build --model tiny", "XCEPTION_ATLAS_DATA")
        assert body["type"].endswith("atlas-missing")
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").rglob("*.npz"))


def test_a_request_during_a_build_answers_503_with_the_progress(tiny_model, tmp_path):
    app = make_app(tiny_model, home=tmp_path)
    with TestClient(app, raise_server_exceptions=False) as c:
        app.state.features.atlas._building[MODEL_ID] = [3, 12]
        r = c.get(base() + "/atlas")
        assert_problem(r, 503, "being built", "3 of 12")
        assert r.headers["retry-after"] == "5"


# --------------------------------------------------------------------------- weights


def test_weights_of_a_depthwise_channel_are_its_kernel(ac, tiny_model):
    body = ac.get(base(channel=7) + "/weights").json()
    module = tiny_model.separable_layers()[LAYER]
    assert np.allclose(body["kernel"], module.depthwise.weight[7, 0].detach().numpy())
    column = module.pointwise.weight[:, 7, 0, 0].detach().numpy()
    assert body["used_by_count"] == column.size
    assert [t["channel"] for t in body["used_by"]] == list(np.argsort(-np.abs(column), kind="stable")[:16])
    assert "weights" not in body


def test_weights_of_a_pointwise_channel_mix_the_depthwise_channels(ac, tiny_model):
    body = ac.get(base(part="pointwise", channel=4) + "/weights").json()
    row = tiny_model.separable_layers()[LAYER].pointwise.weight[4, :, 0, 0].detach().numpy()
    assert np.allclose(body["weights"], row)
    strengths = [abs(t["weight"]) for t in body["top"]]
    assert strengths == sorted(strengths, reverse=True) and body["top"][0]["channel"] == int(np.argmax(np.abs(row)))
    assert "kernel" not in body
