"""The problem type of each attribution rule a request can break: the catalogue's errors
(``MethodSpec.validate``) as :func:`api.errors.translate` words them -- missing, unknown-layer
(with the valid layers), out-of-range (with the allowed range), invalid layer / part, and any
other bad parameter."""

from __future__ import annotations

import pytest

from api.errors import translate
from apihelpers import assert_problem, files
from xception_core.attributions import METHODS, get_method
from apifixtures import *  # noqa: F401,F403 -- the shared fixtures

LAYER = "exit.block8.sep1"

# (query, problem type, parameter, extension members beyond the common ones)
CASES = [
    ("method=saliency&n_steps=4", "invalid-attribution-parameter", "n_steps", {}),
    ("method=layer_gradcam", "missing-parameter", "layer", {}),
    (f"method=layer_gradcam&layer={LAYER}", "invalid-parameter", "part", {}),
    (f"method=saliency&layer={LAYER}", "invalid-parameter", "layer", {}),
    ("method=integrated_gradients&part=depthwise", "invalid-parameter", "part", {}),
    ("method=occlusion&window=128&stride=64", "parameter-out-of-range", "window", {"allowed_range": [4, 96]}),
    ("method=occlusion&window=8&stride=16", "parameter-out-of-range", "stride", {"allowed_range": [2, 8]}),
    ("method=occlusion&window=4&stride=2", "parameter-out-of-range", "stride", {}),
]


@pytest.mark.parametrize("query, slug, parameter, extra", CASES, ids=[str(i) for i in range(len(CASES))])
def test_each_broken_rule_has_its_problem_type(client, png, query, slug, parameter, extra):
    body = assert_problem(client.post(f"/v1/attributions?{query}", files=files(png)), 422)
    assert body["type"] == f"urn:xception-explorer:problem:{slug}"
    assert body["parameter"] == parameter
    common = {"type", "title", "status", "detail", "instance", "request_id", "parameter"}
    assert {k: v for k, v in body.items() if k not in common} == extra


def test_an_unknown_layer_lists_the_valid_ones(client, entry, png):
    body = assert_problem(client.post("/v1/attributions?method=layer_gradcam&layer=middle.block99.sep1&part=pointwise", files=files(png)), 422)
    assert body["type"].endswith(":unknown-layer") and body["parameter"] == "layer"
    assert body["valid_choices"] == list(entry.separable)


def test_an_unknown_method_lists_the_valid_ones():
    with pytest.raises(Exception) as info:
        get_method("nope")
    error = translate(info.value)
    assert (error.status, error.slug, error.extra) == (422, "unknown-method", {"parameter": "method", "valid_choices": list(METHODS)})
    assert error.detail == f"unknown method 'nope'; valid choices: {', '.join(METHODS)}"
