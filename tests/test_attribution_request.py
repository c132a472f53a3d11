"""Attributor.attribute takes one AttributionRequest, or the method's name and its arguments: the same call."""

from __future__ import annotations

import pytest
import torch

from xception_core.attributions import AttributionRequest, Attributor
from xception_core.model import Xception

SIZE = 72
LAYER = "exit.block8.sep1"


@pytest.fixture(scope="module")
def attributor(small_config):
    torch.manual_seed(0)
    return Attributor(Xception(small_config).eval())


@pytest.fixture(scope="module")
def x():
    return torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1)) * 2 - 1


@pytest.mark.parametrize(
    "request_, keywords",
    [
        (
            AttributionRequest("integrated_gradients", target=2, params={"n_steps": "4", "auc_steps": 2}),
            dict(method="integrated_gradients", target=2, n_steps=4, auc_steps=2),
        ),
        (
            AttributionRequest("layer_gradcam", target=5, layer=LAYER, part="depthwise", params={"auc_steps": 0}),
            dict(method="layer_gradcam", target=5, layer=LAYER, part="depthwise", auc_steps=0),
        ),
    ],
    ids=["input", "layer"],
)
def test_a_request_is_the_same_call_as_keywords(attributor, x, request_, keywords):
    by_request = attributor.attribute(x, request_)
    by_keywords = attributor.attribute(x, **keywords)
    torch.testing.assert_close(by_request.attribution, by_keywords.attribution, rtol=0, atol=0)
    assert by_request.summary() == {**by_keywords.summary(), "timing_ms": by_request.timing_ms, "quality_ms": by_request.quality_ms}
    assert (by_request.target, by_request.layer, by_request.part) == (keywords["target"], keywords.get("layer"), keywords.get("part"))


def test_a_request_is_frozen_and_copies_its_params():
    params = {"n_steps": 4}
    request = AttributionRequest("integrated_gradients", params=params)
    params["n_steps"] = 400
    assert request.params["n_steps"] == 4
    with pytest.raises(TypeError):
        request.params["n_steps"] = 8  # type: ignore[index]
    with pytest.raises(AttributeError):
        request.target = 3  # type: ignore[misc]


def test_a_request_and_keywords_together_are_refused(attributor, x):
    request = AttributionRequest("saliency")
    with pytest.raises(TypeError, match="either an AttributionRequest"):
        attributor.attribute(x, request, target=1)
    with pytest.raises(TypeError, match="either an AttributionRequest"):
        attributor.attribute(x, request, absolute=False)
