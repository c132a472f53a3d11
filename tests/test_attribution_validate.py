"""MethodSpec.validate: every rule checked before a run, with the messages and parameter names users see.

The wording is the REST API's (``POST /v1/attributions`` answers with these messages and
``parameter`` names); tests/api/test_api_attribution_rules.py holds the API to the same words.
"""

from __future__ import annotations

import pytest

from xception_core.attributions import (
    METHODS,
    AttributionError,
    MissingParamError,
    ParamError,
    ParamRangeError,
    UnknownLayerParamError,
    UnknownMethodError,
    get_method,
    occlusion_positions,
)
from xception_core.introspect import UnknownLayerError

LAYERS = ["entry.block2.sep1", "middle.block5.sep2", "exit.block8.sep1"]
SIZE = 96


def validate(method: str, params: dict | None = None, *, size=SIZE, **where):
    return get_method(method).validate(params or {}, layers=LAYERS, input_size=size, **where)


def refused(method: str, params: dict | None = None, *, size=SIZE, **where) -> ParamError:
    with pytest.raises(ParamError) as info:
        validate(method, params, size=size, **where)
    assert isinstance(info.value, AttributionError) and isinstance(info.value, ValueError)
    return info.value


# --- what passes -----------------------------------------------------------------


def test_valid_requests_return_the_resolved_parameters():
    assert validate("saliency") == METHODS["saliency"].defaults()
    resolved = validate("integrated_gradients", {"n_steps": "8", "baseline": "black"})
    assert resolved == {**METHODS["integrated_gradients"].defaults(), "n_steps": 8, "baseline": "black"}
    assert validate("layer_gradcam", layer="exit.block8.sep1", part="depthwise")["relu_attributions"] is True
    # a window as large as the image; the smallest stride with at most 1024 positions
    assert validate("occlusion", {"window": 96, "stride": 2})["window"] == 96
    assert occlusion_positions(SIZE, SIZE, 48, 2) == 25 * 25
    assert validate("occlusion", {"window": 48, "stride": 2})["stride"] == 2


def test_every_method_accepts_its_defaults():
    for name, spec in METHODS.items():
        where = dict(layer=LAYERS[0], part="pointwise") if spec.layer_method else {}
        assert validate(name, **where) == spec.defaults()


# --- the rules, one by one, with the API's words ----------------------------------


def test_unknown_parameter():
    e = refused("saliency", {"n_steps": 4, "window": 8})
    assert str(e) == "unknown parameter(s) n_steps, window for method saliency; allowed: absolute, seed, auc_steps, infidelity, sensitivity"
    assert e.param == "n_steps"


def test_out_of_range_parameter():
    e = refused("integrated_gradients", {"n_steps": 1000})
    assert str(e) == "n_steps must be between 1 and 256, got 1000"
    assert e.param == "n_steps" and isinstance(e, ParamRangeError) and e.allowed_range == (1, 256)
    e = refused("smoothgrad", {"stdev": 1.5})
    assert str(e) == "stdev must be between 0 and 1, got 1.5" and e.param == "stdev"


def test_wrong_kind_of_value():
    e = refused("integrated_gradients", {"n_steps": "many"})
    assert str(e) == "n_steps must be an integer, got 'many'" and e.param == "n_steps"
    assert not isinstance(e, ParamRangeError)


def test_occlusion_window_larger_than_the_input():
    e = refused("occlusion", {"window": 128, "stride": 64})
    assert str(e) == "window=128 is out of range; allowed range: 4..96 (at most the input size 96)"
    assert e.param == "window" and isinstance(e, ParamRangeError) and e.allowed_range == (4, 96)
    e = refused("occlusion", {"window": 80, "stride": 40}, size=(72, 100))
    assert str(e) == "window=80 is out of range; allowed range: 4..72 (at most the input size 72x100)"
    # the catalogue's own bound stays the upper end when the input is larger
    e = refused("occlusion", {"window": 128, "stride": 64}, size=(100, 120))
    assert e.allowed_range == (4, 100)


def test_occlusion_stride_larger_than_the_window():
    e = refused("occlusion", {"window": 8, "stride": 16})
    assert str(e) == "stride=16 is out of range; allowed range: 2..8 (at most window)"
    assert e.param == "stride" and e.allowed_range == (2, 8)


def test_occlusion_with_too_many_positions():
    assert occlusion_positions(SIZE, SIZE, 4, 2) == 47 * 47
    e = refused("occlusion", {"window": 4, "stride": 2})
    assert str(e) == (
        "occlusion with window 4 and stride 2 on a 96x96 input needs 2209 positions; "
        "the limit is 1024; use a larger stride"
    )
    assert e.param == "stride" and isinstance(e, ParamRangeError) and e.allowed_range is None
    # the same window and stride fit a smaller image
    assert validate("occlusion", {"window": 4, "stride": 2}, size=64)["stride"] == 2


def test_layer_method_without_a_layer():
    e = refused("layer_gradcam")
    assert str(e) == (
        "layer_gradcam needs layer (one of entry.block2.sep1, middle.block5.sep2, exit.block8.sep1) "
        "and part (depthwise or pointwise)"
    )
    assert e.param == "layer" and isinstance(e, MissingParamError)
    e = refused("channel_importance", part="pointwise")
    assert e.param == "layer" and str(e).startswith("channel_importance needs layer (one of ")


def test_layer_method_without_a_valid_part():
    for part in (None, "both"):
        e = refused("guided_gradcam", layer="exit.block8.sep1", part=part)
        assert str(e) == "guided_gradcam needs part=depthwise or part=pointwise"
        assert e.param == "part" and not isinstance(e, MissingParamError)


def test_layer_or_part_given_to_an_input_method():
    e = refused("saliency", layer="exit.block8.sep1", part="pointwise")
    assert str(e) == (
        "layer and part are only for layer methods (layer_gradcam, guided_gradcam, channel_importance); "
        "saliency works on the input"
    )
    assert e.param == "layer"
    assert refused("integrated_gradients", part="depthwise").param == "part"


def test_unknown_layer():
    e = refused("layer_gradcam", layer="middle.block99.sep1", part="pointwise")
    assert str(e) == "unknown layer 'middle.block99.sep1'; valid choices: entry.block2.sep1, middle.block5.sep2, exit.block8.sep1"
    assert e.param == "layer" and isinstance(e, UnknownLayerParamError) and e.choices == tuple(LAYERS)
    assert isinstance(e, UnknownLayerError)  # what code that catches the model's unknown-layer error expects


def test_rules_run_in_the_apis_order():
    """Parameters first, then layer / part (missing, unknown, part), then the method's own rule."""
    assert refused("occlusion", {"window": 4, "stride": 2, "bogus": 1}).param == "bogus"
    assert refused("occlusion", {"window": 4, "stride": 2}, layer="exit.block8.sep1").param == "layer"
    assert refused("layer_gradcam", layer="nope", part="both").param == "layer"


def test_unknown_method_lists_the_valid_ones():
    with pytest.raises(UnknownMethodError) as info:
        get_method("lime")
    assert str(info.value) == f"unknown method 'lime'; valid choices: {', '.join(METHODS)}"
    assert info.value.choices == tuple(METHODS)
