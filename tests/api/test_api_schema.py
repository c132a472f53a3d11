"""The OpenAPI schema against the server (in process, against the ASGI app).

Schemathesis in pytest form: every operation gets a few generated requests -- half of the
uploads a real PNG, so the analysis paths run with generated parameters, half arbitrary bytes --
and every answer must be no 5xx, with a documented status, content type, headers and body schema.
Then what generators and clients read: operation ids, file fields, security with and without a
key, and each bound the schema declares probed on both sides against the server.
(``test_api_schema_cli.py`` runs the ``schemathesis`` command with every check.)
"""

from __future__ import annotations

import re
import zlib

import hypothesis
import numpy as np
import pytest
import schemathesis
import torch
from fastapi.testclient import TestClient
from hypothesis import HealthCheck
from PIL import Image
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from apifixtures import *  # noqa: F401,F403 -- the shared fixtures
from apifixtures import SMALL
from apihelpers import assert_problem, encode, files, make_app, multipart
from xception_core.model import Xception

torch.manual_seed(0)
_app = make_app(Xception(SMALL), attribution_timeout_s=120.0)
_LAYERS = list(_app.state.registry.get("tiny").separable)  # loaded: /readyz answers 200
_png = encode(Image.fromarray((np.indices((100, 120, 3)).sum(0) * 7 % 256).astype("uint8")), "PNG")

schema = schemathesis.openapi.from_asgi("/openapi.json", _app)


# Generated values stay inside the schema; the costliest knobs are held low so the run stays short.
_CHEAP = {"n_steps": 8, "nt_samples": 3, "n_samples": 3, "internal_batch_size": 64, "auc_steps": 2}


@schema.hook
def map_case(context, case):
    """Half of the cases (chosen by a hash of the generated data, so runs repeat) upload a real
    image with a valid model, layer and class range, so that the generated values of the other
    parameters reach the analysis code; the other half stay as generated."""
    path = case.operation.path
    query = dict(case.query or {})
    body = case.body
    if zlib.crc32(repr((sorted(query.items()), repr(body)[:200])).encode()) % 2 == 0:
        if isinstance(body, dict) and "image" in body:
            case.body = {**body, "image": _png}
        elif isinstance(body, dict) and "images" in body:
            case.body = {**body, "images": [_png]}
        if "model" in query:
            query["model"] = "tiny"
        if "layer" in query or path in ("/v1/activations", "/v1/decomposition"):
            query["layer"] = _LAYERS[zlib.crc32(repr(query.get("layer")).encode()) % len(_LAYERS)]
        for key, bound in (("top_k", 7), ("target", 7), ("channel", 16), ("top", 8)):
            if isinstance(query.get(key), int) and not isinstance(query.get(key), bool):
                query[key] = query[key] % bound + (1 if key in ("top_k", "top") else 0)
        query.pop("channels", None)
    if path == "/v1/attributions":
        for key, cap in _CHEAP.items():
            if isinstance(query.get(key), int) and not isinstance(query.get(key), bool):
                query[key] = min(query[key], cap) if key != "internal_batch_size" else max(query[key], 16)
        query.pop("sensitivity", None)
        if query.get("method") == "occlusion":
            query["window"], query["stride"] = 48, 48
    if "/channels/" in path:
        # the channel atlas: half of the cases ask the tiny model about a channel it has; few steps, small images
        if zlib.crc32(repr(case.path_parameters).encode()) % 2 == 0:
            params = dict(case.path_parameters or {})
            params["model_id"] = "tiny"
            params["layer"] = _LAYERS[zlib.crc32(repr(params.get("layer")).encode()) % len(_LAYERS)]
            if isinstance(params.get("channel"), int):
                params["channel"] %= 16
            case.path_parameters = params
        if path.endswith("/visualisation"):  # absent: the default 256 steps
            steps = query.get("steps")
            query["steps"] = min(steps, 2) if isinstance(steps, int) and not isinstance(steps, bool) else 2 if steps is None else steps
        if isinstance(query.get("size"), int) and not isinstance(query.get("size"), bool):
            query["size"] = min(query["size"], 72)
    if case.query is not None or query:
        case.query = query
    return case


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance, response_schema_conformance]


@schema.parametrize()
@hypothesis.settings(
    max_examples=8,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
    phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
)
def test_api_conforms_to_its_schema(case):
    case.call_and_validate(checks=CHECKS)


def test_openapi_documents_every_parameter_with_its_limits():
    spec = _app.openapi()
    for path, item in spec["paths"].items():
        for method, op in item.items():
            assert op.get("summary") and op.get("description"), (method, path)
            for p in op.get("parameters", []):
                assert p.get("description"), (path, p["name"])
                s = p["schema"]
                options = s.get("anyOf", [s])
                if any(o.get("type") in ("integer", "number") for o in options) and p["name"] not in ("target",):
                    assert any("maximum" in o for o in options), (path, p["name"])
            for code, response in op["responses"].items():
                if code[0] in "45":
                    assert "application/problem+json" in response["content"], (path, code)
    params = {p["name"] for p in spec["paths"]["/v1/attributions"]["post"]["parameters"]}
    assert {"n_steps", "nt_samples", "n_samples", "window", "stride", "internal_batch_size", "seed", "auc_steps", "infidelity", "sensitivity"} <= params


def test_the_generated_requests_reached_the_analysis_code():
    """Runs after the schemathesis test (file order): the real-image half produced 200s."""
    text = _app.state.metrics.render().decode()
    ok_routes = set(re.findall(r'xception_http_requests_total\{method="POST",route="([^"]+)",status="200"\}', text))
    statuses = set(re.findall(r'xception_http_requests_total\{[^}]*status="(\d+)"\}', text))
    if not statuses:
        pytest.skip("run together with test_api_conforms_to_its_schema")
    assert {"/v1/predict", "/v1/activations", "/v1/attributions"} <= ok_routes, ok_routes
    assert not [s for s in statuses if s.startswith("5")], statuses


# --------------------------------------------------------------------------- what clients read

OPERATION_IDS = {
    ("get", "/healthz"): "healthz",
    ("get", "/readyz"): "readyz",
    ("get", "/metrics"): "metrics",
    ("get", "/v1/models"): "listModels",
    ("get", "/v1/models/{model_id}"): "getModel",
    ("get", "/v1/models/{model_id}/layers"): "getModelLayers",
    ("get", "/v1/models/{model_id}/layers/{layer}/spectrum"): "getLayerSpectrum",
    ("get", "/v1/models/{model_id}/classes"): "getModelClasses",
    ("get", "/v1/spectrum/results"): "getSpectrumResults",
    ("get", "/v1/models/{model_id}/layers/{layer}/parts/{part}/channels/{channel}/visualisation"): "getChannelVisualisation",
    ("get", "/v1/models/{model_id}/layers/{layer}/parts/{part}/channels/{channel}/atlas"): "getChannelAtlas",
    ("get", "/v1/models/{model_id}/layers/{layer}/parts/{part}/channels/{channel}/weights"): "getChannelWeights",
    ("get", "/v1/samples"): "listSamples",
    ("get", "/v1/samples/{sample_id}"): "getSampleImage",
    ("post", "/v1/images"): "uploadImage",
    ("get", "/v1/images/{image_id}"): "getImage",
    ("post", "/v1/predict"): "predict",
    ("post", "/v1/predict/batch"): "predictBatch",
    ("get", "/v1/colormaps"): "listColormaps",
    ("post", "/v1/activations"): "activations",
    ("post", "/v1/decomposition"): "decomposition",
    ("get", "/v1/methods"): "listMethods",
    ("post", "/v1/attributions"): "attributions",
}


def _operations(spec: dict):
    return {(method, path): op for path, item in spec["paths"].items() for method, op in item.items()}


def _multipart_schema(spec: dict, op: dict) -> dict:
    ref = op["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"]
    return spec["components"]["schemas"][ref.rsplit("/", 1)[-1]]


def test_operation_ids_are_short_and_stable():
    """A generated client's method names: a change here breaks every client's code."""
    ops = _operations(_app.openapi())
    assert {key: op["operationId"] for key, op in ops.items()} == OPERATION_IDS


def test_file_fields_are_binary_in_both_styles_with_the_servers_bounds():
    spec = _app.openapi()
    settings = _app.state.settings
    uploads = {key: op for key, op in _operations(spec).items() if "requestBody" in op}
    assert set(uploads) == {
        ("post", p) for p in ("/v1/images", "/v1/predict", "/v1/predict/batch", "/v1/activations", "/v1/decomposition", "/v1/attributions")
    }
    for key, op in uploads.items():
        body = _multipart_schema(spec, op)
        assert body["additionalProperties"] is False, key
        if key[1] == "/v1/predict/batch":
            field = body["properties"]["images"]
            assert (field["type"], field["minItems"], field["maxItems"]) == ("array", 1, settings.max_batch_images)
            part = field["items"]
            assert "minLength" not in part and "maxLength" not in part  # a bad part gets its own error in a 200
        else:
            assert set(body["properties"]) == {"image"}, key
            part = body["properties"]["image"]
            # image_id (query) may stand in for the part: optional, not nullable; /v1/images needs it
            assert body.get("required", []) == (["image"] if key[1] == "/v1/images" else []), key
            assert op["requestBody"].get("required", False) is (key[1] == "/v1/images"), key
            params = {p["name"]: p for p in op.get("parameters", [])}
            if key[1] != "/v1/images":
                assert params["image_id"]["schema"]["anyOf"][0]["pattern"] == "^[0-9a-f]{64}$", key
            assert (part["minLength"], part["maxLength"]) == (1, settings.max_upload_bytes), key
        assert (part["type"], part["format"], part["contentMediaType"]) == ("string", "binary", "application/octet-stream"), key


@pytest.fixture(scope="module")
def schema_client():
    with TestClient(_app, raise_server_exceptions=False) as c:
        yield c


def test_the_image_bounds_are_where_the_server_refuses(schema_client):
    part = _multipart_schema(_app.openapi(), _app.openapi()["paths"]["/v1/predict"]["post"])["properties"]["image"]
    assert_problem(schema_client.post("/v1/predict", files=files(b"\x89" * (part["minLength"] - 1))), 422, "empty")
    assert_problem(schema_client.post("/v1/predict", files=files(b"\x89" * part["minLength"])), 415, "not a recognised image")
    assert_problem(schema_client.post("/v1/predict", files=files(b"\x89" * (part["maxLength"] + 1))), 413, "over the limit")


def test_the_batch_bounds_are_where_the_server_refuses(schema_client):
    field = _multipart_schema(_app.openapi(), _app.openapi()["paths"]["/v1/predict/batch"]["post"])["properties"]["images"]
    for count, status in ((field["minItems"] - 1, 422), (field["minItems"], 200), (field["maxItems"], 200), (field["maxItems"] + 1, 422)):
        body, content_type = multipart("images", [b"\x89"] * count)
        r = schema_client.post("/v1/predict/batch", content=body, headers={"content-type": content_type})
        assert r.status_code == status, (count, r.text[:300])
        if status == 422:
            assert r.json()["type"].endswith("batch-size-out-of-range")


@pytest.mark.parametrize(
    "channels",
    ["0", " 1 , 2 ", "3,1,3", ",".join(["1"] * 64), ",".join(["1"] * 65), "a", "1,,2", "1 2", "1,", "\u0663", "\t1", "0000001"],
)
def test_the_channels_pattern_is_what_the_server_accepts(schema_client, png, channels):
    """Matching the schema's pattern (count included) and being accepted by the server are the same."""
    spec = _app.openapi()
    param = next(p for p in spec["paths"]["/v1/activations"]["post"]["parameters"] if p["name"] == "channels")
    matches = re.search(param["schema"]["pattern"], channels) is not None
    r = schema_client.post("/v1/activations", params={"layer": _LAYERS[0], "channels": channels}, files=files(png))
    refused = r.status_code == 422 and r.json().get("parameter") == "channels"
    assert refused is not matches, (channels, r.status_code, r.text[:300])
    assert r.status_code == (200 if matches else 422)


@pytest.mark.parametrize("api_key", [None, "schema-key"], ids=["no-key", "key"])
def test_security_is_declared_only_with_a_key(api_key):
    spec = make_app(Xception(SMALL), api_key=api_key).openapi()
    schemes = spec.get("components", {}).get("securitySchemes")
    for (method, path), op in _operations(spec).items():
        secured = api_key is not None and path.startswith("/v1")
        assert op.get("security") == ([{"APIKeyHeader": []}] if secured else None), (method, path)
        assert ("401" in op["responses"]) is secured, (method, path)
    if api_key is None:
        assert schemes is None
    else:
        assert schemes == {"APIKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key", "description": schemes["APIKeyHeader"]["description"]}}


def test_docs_load_their_assets_from_the_service(schema_client):
    """Swagger UI's script, stylesheet and icon come from this service (fastapi-offline's package),
    so /docs works without internet; the browser test checks it in Chromium with the network blocked."""
    html = schema_client.get("/docs").text
    assets = re.findall(r"""(?:src|href)=['"]([^'"]+)['"]""", html)
    assert {a.rsplit("/", 1)[-1] for a in assets} >= {"swagger-ui-bundle.js", "swagger-ui.css"}, assets
    for asset in assets:
        assert asset.startswith("/"), asset  # not https://cdn...
        r = schema_client.get(asset)
        assert r.status_code == 200 and len(r.content) > 1000, asset
    assert "://" not in html


def test_docs_disabled_serve_neither_schema_nor_assets():
    with TestClient(make_app(Xception(SMALL), docs_enabled=False), raise_server_exceptions=False) as c:
        assert [c.get(p).status_code for p in ("/docs", "/openapi.json", "/static-offline-docs/swagger-ui.css")] == [404, 404, 404]
