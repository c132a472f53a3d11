"""POST /v1/attributions refuses what MethodSpec.validate refuses, in the same words and naming the same parameter."""

from __future__ import annotations

import pytest

from apihelpers import assert_problem, files
from xception_core.attributions import ParamError, get_method
from apifixtures import *  # noqa: F401,F403 -- the shared fixtures

LAYER = "exit.block8.sep1"

# (method, params, layer, part): each breaks one rule that only the catalogue knows
CASES = [
    ("saliency", {"n_steps": 4}, None, None),
    ("layer_gradcam", {}, None, None),
    ("layer_gradcam", {}, LAYER, None),
    ("layer_gradcam", {}, "middle.block99.sep1", "pointwise"),
    ("saliency", {}, LAYER, None),
    ("integrated_gradients", {}, None, "depthwise"),
    ("occlusion", {"window": 128, "stride": 64}, None, None),
    ("occlusion", {"window": 8, "stride": 16}, None, None),
    ("occlusion", {"window": 4, "stride": 2}, None, None),
]


@pytest.mark.parametrize("method,params,layer,part", CASES, ids=[str(i) for i in range(len(CASES))])
def test_the_api_answers_with_the_catalogues_words(client, entry, png, method, params, layer, part):
    with pytest.raises(ParamError) as info:
        get_method(method).validate(params, layer=layer, part=part, layers=list(entry.separable), input_size=entry.input_size)
    where = {k: v for k, v in (("layer", layer), ("part", part)) if v is not None}
    query = "&".join(f"{k}={v}" for k, v in {"method": method, **params, **where}.items())
    body = assert_problem(client.post(f"/v1/attributions?{query}", files=files(png)), 422)
    assert body["detail"] == str(info.value)
    assert body["parameter"] == info.value.param
