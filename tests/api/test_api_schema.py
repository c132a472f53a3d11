"""Schemathesis over the whole OpenAPI schema (pytest form, against the ASGI app).

Every operation gets a few generated requests -- half of the uploads a real PNG, so the
analysis paths run with generated parameters, half arbitrary bytes -- and every answer must
be no 5xx, with a documented status, content type, headers and body schema.
"""

from __future__ import annotations

import zlib

import hypothesis
import numpy as np
import pytest
import schemathesis
import torch
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
from apihelpers import encode, make_app
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
    import re

    text = _app.state.metrics.render().decode()
    ok_routes = set(re.findall(r'xception_http_requests_total\{method="POST",route="([^"]+)",status="200"\}', text))
    statuses = set(re.findall(r'xception_http_requests_total\{[^}]*status="(\d+)"\}', text))
    if not statuses:
        pytest.skip("run together with test_api_conforms_to_its_schema")
    assert {"/v1/predict", "/v1/activations", "/v1/attributions"} <= ok_routes, ok_routes
    assert not [s for s in statuses if s.startswith("5")], statuses
