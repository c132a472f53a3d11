"""GET /v1/samples, GET /v1/samples/{id} and GET /v1/models/{id}/layers/{layer}/spectrum: what the
browser app shows without computing anything itself."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from apihelpers import MODEL_ID, assert_problem
from xception_core import synthetic
from xception_core.profile import profile_model
from xception_core.samples import sample_bytes
from apifixtures import *  # noqa: F401,F403 -- the shared fixtures


def test_samples_list_photographs_and_one_generated_sample_per_class(client):
    r = client.get("/v1/samples")
    assert r.status_code == 200
    samples = r.json()["samples"]
    photos = [s for s in samples if s["kind"] == "photo"]
    generated = [s for s in samples if s["kind"] == "generated"]
    assert {"chelsea", "astronaut", "coffee"} <= {s["id"] for s in photos}
    assert all(s["credit"] and s["variants"] == 1 and s["media_type"] == "image/jpeg" for s in photos)
    assert [(s["class_index"], s["label"]) for s in generated] == list(enumerate(synthetic.CLASS_NAMES))
    assert all(s["variants"] > 1 and s["media_type"] == "image/png" for s in generated)


@pytest.mark.parametrize("sample_id, variant, fmt", [("chelsea", 0, "JPEG"), ("generated-03", 0, "PNG"), ("generated-03", 5, "PNG")])
def test_a_sample_is_its_image_bytes(client, sample_id, variant, fmt):
    r = client.get(f"/v1/samples/{sample_id}", params={"variant": variant})
    assert r.status_code == 200
    assert r.headers["content-type"] == ("image/jpeg" if fmt == "JPEG" else "image/png")
    assert r.content == sample_bytes(sample_id, variant)
    assert Image.open(io.BytesIO(r.content)).format == fmt
    assert "max-age" in r.headers["cache-control"]


def test_a_sample_goes_straight_into_a_prediction(client):
    data = client.get("/v1/samples/generated-07").content
    r = client.post("/v1/predict", files={"image": ("s.png", data, "image/png")})
    assert r.status_code == 200 and r.json()["model"] == MODEL_ID


def test_unknown_samples_and_variants_are_problems(client):
    body = assert_problem(client.get("/v1/samples/nope"), 404, "unknown sample 'nope'", "chelsea")
    assert "generated-19" in body["valid_choices"]
    body = assert_problem(client.get("/v1/samples/chelsea?variant=1"), 422, "variant=1", "0..0")
    assert body["allowed_range"] == [0, 0]
    assert_problem(client.get("/v1/samples/generated-00?variant=10000"), 422, "variant")
    assert_problem(client.get("/v1/samples/generated-00?variant=-1"), 422, "variant")
    assert_problem(client.get("/v1/samples/generated-00?variant=two"), 422, "variant")
    assert_problem(client.get("/v1/samples/" + "x" * 101), 422, "sample_id")


def test_layer_spectrum_from_regular_to_separable(client, app):
    card = app.state.registry.card(MODEL_ID)
    layer = profile_model(card.config, card.preprocess.input_size).separable[-3]  # a middle-flow layer
    r = client.get(f"/v1/models/{MODEL_ID}/layers/{layer.name}/spectrum")
    assert r.status_code == 200
    body = r.json()
    assert (body["model"], body["layer"], body["in_channels"], body["out_channels"]) == (MODEL_ID, layer.name, layer.in_channels, layer.out_channels)
    assert body["output_size"] == list(layer.output_size)
    c_in, c_out = layer.in_channels, layer.out_channels
    h, w = layer.output_size
    points = {p["segments"]: p for p in body["points"]}
    assert points[1] == {"segments": 1, "kind": "regular", "label": "k = 1 (regular conv)", "params": c_in * c_out * 9, "macs": c_in * c_out * 9 * h * w}
    assert points[c_in]["params"] == c_in * 9 + c_in * c_out and points[c_in]["kind"] == "depthwise separable"
    middle = [k for k in points if 1 < k < c_in]
    assert middle and all(c_out % k == 0 for k in middle)
    for k in middle:
        assert points[k]["params"] == c_in * c_out + k * (c_out // k) ** 2 * 9 and points[k]["label"] == f"k = {k}"
    ends = client.get(f"/v1/models/{MODEL_ID}/layers/{layer.name}/spectrum?points=0").json()["points"]
    assert [p["segments"] for p in ends] == [1, c_in]


def test_layer_spectrum_problems(client):
    body = assert_problem(client.get(f"/v1/models/{MODEL_ID}/layers/middle.block99.sep1/spectrum"), 404, "unknown layer", "entry.block2.sep1")
    assert body["parameter"] == "layer"
    assert_problem(client.get("/v1/models/nope/layers/entry.block2.sep1/spectrum"), 404, "nope")
    assert_problem(client.get(f"/v1/models/{MODEL_ID}/layers/entry.block2.sep1/spectrum?points=9"), 422, "points")
