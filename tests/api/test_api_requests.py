"""Each route builds one frozen request object from its parameters and hands it to its feature;
a feature called with a request object, without HTTP, answers completely (timing and resolved
parameters included)."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib

import pytest

from api.encodings import BinaryResult
from api.errors import ApiError
from api.features.activations import ActivationsRequest
from api.features.attributions import ExplainRequest
from api.features.decomposition import DecompositionRequest
from api.features.predict import BatchPart, BatchRequest, PredictRequest
from api.runtime import Upload
from api.workers import Deadline
from apihelpers import MODEL_ID, files, make_app
from xception_core.attributions import AttributionRequest, get_method
from apifixtures import *  # noqa: F401,F403 -- the shared fixtures

LAYER = "middle.block6.sep1"


def _upload(data: bytes) -> Upload:
    return Upload(data, hashlib.sha256(data).hexdigest())


@pytest.fixture
def recorded(client, monkeypatch):
    """Replace a feature's entry point by one that records its request and answers with bytes."""
    seen = []

    def record(feature: str, verb: str, answer=None):
        async def fake(request, deadline):
            seen.append((request, deadline))
            return answer if answer is not None else BinaryResult(b"ok", "application/octet-stream", "sha", "model", {"shape": "1"})

        monkeypatch.setattr(getattr(client.app.state.features, feature), verb, fake)
        return seen

    return record


def _assert_frozen(request) -> None:
    field = dataclasses.fields(request)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(request, field, None)


def test_activations_route_builds_one_request(client, png, recorded):
    seen = recorded("activations", "maps")
    url = (f"/v1/activations?model={MODEL_ID}&layer={LAYER}&part=pointwise&channels=3,1,3&sort=max&target=2"
           "&format=npy&normalize=layer&colormap=gray&tile_px=32&columns=2")
    r = client.post(url, files=files(png))
    assert r.status_code == 200 and r.content == b"ok" and r.headers["x-shape"] == "1"
    (request, deadline), = seen
    assert request == ActivationsRequest(
        model=MODEL_ID, upload=_upload(png), layer=LAYER, part="pointwise", channels=(3, 1, 3), top=16, sort="max",
        target=2, fmt="npy", normalize="layer", colormap="gray", tile_px=32, columns=2,
    )
    assert deadline.kind == "activations"
    _assert_frozen(request)


def test_decomposition_route_builds_one_request(client, png, recorded):
    seen = recorded("decompositions", "decompose")
    r = client.post(f"/v1/decomposition?layer={LAYER}&channel=5&top=3&format=png&tile_px=48", files=files(png))
    assert r.status_code == 200
    (request, deadline), = seen
    assert request == DecompositionRequest(None, _upload(png), LAYER, 5, 3, "png", "RdBu_r", 48)
    assert deadline.kind == "decomposition"
    _assert_frozen(request)


def test_attributions_route_builds_one_request_around_the_cores(client, png, recorded):
    seen = recorded("attributions", "explain")
    url = f"/v1/attributions?method=layer_gradcam&layer={LAYER}&part=depthwise&target=4&relu_attributions=false&auc_steps=2&format=npy&array=heatmap"
    assert client.post(url, files=files(png)).status_code == 200
    (request, deadline), = seen
    assert request == ExplainRequest(
        model=None, upload=_upload(png),
        attribution=AttributionRequest("layer_gradcam", 4, LAYER, "depthwise", {"relu_attributions": False, "auc_steps": 2}),
        fmt="npy", array="heatmap", sign="positive", opacity=0.5, colormap=None, precision=None,
    )
    assert deadline.kind == "attribution"
    _assert_frozen(request)
    _assert_frozen(request.attribution)


def test_predict_routes_build_one_request(client, png, recorded):
    answer = {"model": MODEL_ID, "device": "cpu", "count": 0, "results": [], "timing_ms": 1.0}
    seen = recorded("predictions", "predict_batch", answer)
    body = [("images", ("a.png", png, "image/png")), ("images", ("../b.png", b"", "image/png"))]
    assert client.post("/v1/predict/batch?top_k=3", files=body).status_code == 200
    (request, _), = seen
    assert isinstance(request, BatchRequest) and request.model is None and request.top_k == 3
    good, empty = request.parts
    assert good == BatchPart(_upload(png), "a.png")
    assert empty.filename == "b.png" and empty.upload.slug == "empty-upload"
    _assert_frozen(request)

    seen = recorded("predictions", "predict", {**answer, "image_id": "x", "precision": "fp32", "cached": False, "predictions": []})
    assert client.post(f"/v1/predict?model={MODEL_ID}&top_k=2", files=files(png)).status_code == 200
    assert seen[-1][0] == PredictRequest(MODEL_ID, _upload(png), 2)


def test_features_answer_completely_without_http(tiny_model, png):
    """No placeholders for the caller to fill: timing, resolved parameters, all there."""
    app = make_app(tiny_model)
    features = app.state.features

    async def calls():
        try:
            explained = await features.attributions.explain(
                ExplainRequest(None, _upload(png), AttributionRequest("occlusion", params={"window": 48, "stride": 48}),
                               "json", "attribution", "positive", 0.5, None, None),
                Deadline(60, "attribution"),
            )
            decomposed = await features.decompositions.decompose(
                DecompositionRequest(None, _upload(png), LAYER, 0, 2, "json", "gray", 16), Deadline(60, "decomposition")
            )
            refused = await features.predictions.predict_batch(
                BatchRequest(None, (BatchPart(ApiError(422, "empty-upload", "this image is empty (0 bytes)"), "e.png"),), 1),
                Deadline(60, "predict"),
            )
            return explained, decomposed, refused
        finally:
            await features.close()

    explained, decomposed, refused = asyncio.run(calls())
    defaults = get_method("occlusion").defaults()
    assert explained["params"] == {**defaults, "window": 48, "stride": 48}
    assert explained["timing_ms"] >= explained["attribution_ms"] > 0
    assert decomposed["timing_ms"] > 0 and decomposed["top"] == 2
    assert refused["timing_ms"] > 0 and refused["results"][0]["ok"] is False

