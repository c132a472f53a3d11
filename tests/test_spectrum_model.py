"""The spectrum knob of the model (XceptionConfig.segments / order): each point builds the module the
paper describes, names its parts, counts what xception_core.profile.segment_spectrum says, and the
default stays Xception. Introspection, folding and checkpoint inference follow the parts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from support import SMALL
from xception_core.attributions import Attributor, ParamError
from xception_core.fuse import fuse_for_inference
from xception_core.introspect import UnknownLayerError, ViewNotApplicableError, capture, decompose
from xception_core.model import SeparableConv2d, Xception, XceptionConfig
from xception_core.profile import profile_model, segment_spectrum
from xception_core.train import TrainConfig
from xception_core.weights import infer_config

BUNDLED = TrainConfig().model_config()  # the bundled model's architecture (train's defaults)
PAPER = XceptionConfig()
POINTS = [(1, "depthwise-first"), (2, "pointwise-first"), (4, "depthwise-first"), (8, "pointwise-first"),
          (8, "depthwise-first"), ("C", "pointwise-first"), ("C", "depthwise-first")]


def point(config: XceptionConfig, segments, order) -> XceptionConfig:
    return XceptionConfig(**{**config.to_dict(), "segments": segments, "order": order})


def _reference(x, layer: SeparableConv2d, c_in: int, c_out: int):
    """The paper's description in functional form, from the weights alone (groups from the shapes)."""
    def conv3(t, w):
        return F.conv2d(t, w, padding=1, groups=t.shape[1] // w.shape[1])
    weights = {name: getattr(layer, name).weight for name in layer.parts}
    if layer.parts == ("conv",):
        return F.conv2d(x, weights["conv"], padding=1)
    spatial = next(w for n, w in weights.items() if n != "pointwise")
    if layer.parts[0] == "pointwise":
        assert spatial.shape[0] == c_out
        return conv3(F.conv2d(x, weights["pointwise"]), spatial)
    assert spatial.shape[0] == c_in
    return F.conv2d(conv3(x, spatial), weights["pointwise"])


@pytest.mark.parametrize("segments,order,parts", [
    (1, "depthwise-first", ("conv",)),
    (1, "pointwise-first", ("conv",)),
    (2, "depthwise-first", ("grouped", "pointwise")),
    (2, "pointwise-first", ("pointwise", "grouped")),
    ("C", "pointwise-first", ("pointwise", "depthwise")),
    ("C", "depthwise-first", ("depthwise", "pointwise")),
])
def test_each_point_is_the_module_the_paper_describes(segments, order, parts):
    layer = SeparableConv2d(8, 12, "t.sep1", segments=segments, order=order)
    assert layer.parts == parts
    expected_groups = {1: 1, 2: 2, "C": 12 if order == "pointwise-first" else 8}[segments]
    spatial = getattr(layer, next(p for p in parts if p != "pointwise"))
    assert spatial.groups == expected_groups == layer.segments
    assert spatial.kernel_size == (3, 3) and spatial.bias is None
    x = torch.randn(2, 8, 9, 9)
    torch.testing.assert_close(layer(x), _reference(x, layer, 8, 12))
    params = sum(p.numel() for p in layer.parameters())
    assert params == segment_spectrum(8, 12, segments, order=order)[0]


@pytest.mark.parametrize("config", [BUNDLED, PAPER, SMALL], ids=["bundled", "paper", "small"])
@pytest.mark.parametrize("segments,order", POINTS)
def test_every_layer_counts_what_the_formula_says(config, segments, order):
    cfg = point(config, segments, order)
    with torch.device("meta"):
        model = Xception(cfg)
    layers = model.separable_layers()
    assert [(n, m.in_channels, m.out_channels) for n, m in layers.items()] == cfg.separable_channels()
    for name, layer in layers.items():
        params = sum(p.numel() for p in layer.parameters())
        assert params == segment_spectrum(layer.in_channels, layer.out_channels, segments, order=order)[0], name
    profile = profile_model(cfg, 96)
    for row in profile.separable:
        params, macs = segment_spectrum(row.in_channels, row.out_channels, segments,
                                        output_hw=row.output_size[0] * row.output_size[1], order=order)
        assert row.depthwise_params + row.pointwise_params == params, row.name
        assert row.depthwise_macs + row.pointwise_macs == macs, row.name
        assert row.parts == layers[row.name].parts
    assert profile.total_params == sum(p.numel() for p in model.parameters())


def test_the_default_is_xception_and_names_its_parts_as_today():
    assert XceptionConfig().segments == "C" and XceptionConfig().order == "depthwise-first"
    model = Xception(point(PAPER, "C", "depthwise-first"))
    assert sum(p.numel() for p in model.parameters()) == 22_855_952
    assert {layer.parts for layer in model.separable_layers().values()} == {("depthwise", "pointwise")}
    assert list(model.state_dict()) == list(Xception().state_dict())
    parts = {k.split(".")[-2] for k in model.state_dict() if ".sep" in k}
    assert parts == {"depthwise", "pointwise"}
    assert point(PAPER, "C", "depthwise-first").is_paper
    assert not point(PAPER, "C", "pointwise-first").is_paper and not point(PAPER, 8, "depthwise-first").is_paper


def test_grouped_points_name_their_parts_in_the_state_dict():
    keys = Xception(point(SMALL, 4, "pointwise-first")).state_dict()
    assert "entry.block2.sep1.pointwise.weight" in keys and "entry.block2.sep1.grouped.weight" in keys
    assert not any(".depthwise." in k for k in keys)
    keys = Xception(point(SMALL, 1, "depthwise-first")).state_dict()
    assert "middle.block5.sep3.conv.weight" in keys and not any(".pointwise." in k for k in keys)


@pytest.mark.parametrize("overrides,message", [
    ({"segments": 3}, r"segments=3 must divide .*C_in for depthwise-first\); entry.block2.sep1 has 16"),
    ({"segments": 16, "order": "pointwise-first"}, r"C_out for pointwise-first\); entry.block3.sep1 has 24"),
    ({"segments": 0}, "positive integer or 'C'"),
    ({"segments": "all"}, "positive integer or 'C'"),
    ({"segments": True}, "positive integer or 'C'"),
    ({"order": "sideways"}, "order must be one of depthwise-first, pointwise-first"),
    ({"segments": 1, "intermediate_activation": "relu"}, "no intermediate activation"),
])
def test_points_off_the_spectrum_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        XceptionConfig(**{**SMALL.to_dict(), **overrides})


def test_config_round_trips_and_a_regular_convolution_has_no_order():
    cfg = point(SMALL, 8, "pointwise-first")
    assert XceptionConfig.from_dict(cfg.to_dict()) == cfg
    assert point(SMALL, 1, "pointwise-first") == point(SMALL, 1, "depthwise-first")
    with pytest.raises(ValueError, match="intermediate"):
        SeparableConv2d(4, 4, "t.sep1", "elu", segments=1)


@pytest.mark.parametrize("activation", ["none", "elu"])
@pytest.mark.parametrize("segments,order", [(2, "pointwise-first"), ("C", "pointwise-first"), (8, "depthwise-first")])
def test_the_activation_sits_between_the_parts(activation, segments, order):
    layer = SeparableConv2d(8, 16, "t.sep1", activation, segments, order)
    x = torch.randn(1, 8, 7, 7)
    first, second = (getattr(layer, p) for p in layer.parts)
    act = F.elu if activation == "elu" else (lambda t: t)
    torch.testing.assert_close(layer(x), second(act(first(x))))


@pytest.mark.parametrize("segments,order", POINTS)
def test_capture_keeps_every_part_by_its_name(segments, order):
    torch.manual_seed(0)
    model = Xception(point(SMALL, segments, order)).eval()
    name = "middle.block5.sep2"
    layer = model.separable_layers()[name]
    with capture(model, [name], parts=None) as kept, torch.no_grad():
        model(torch.randn(1, 3, 80, 80))
    assert list(kept[name]) == list(layer.parts)
    with capture(model, [name], parts=["input", *layer.parts]) as kept, torch.no_grad():
        model(torch.randn(1, 3, 80, 80))
    x = kept[name]["input"]
    torch.testing.assert_close(kept[name][layer.parts[-1]], layer(x))
    torch.testing.assert_close(kept[name][layer.parts[0]], getattr(layer, layer.parts[0])(x))


def test_capture_refuses_a_part_the_layer_does_not_have():
    model = Xception(point(SMALL, 4, "pointwise-first"))
    with pytest.raises(UnknownLayerError, match=r"has no depthwise; parts of entry.block2.sep1 are pointwise, grouped"):
        with capture(model, ["entry.block2.sep1"], parts=["depthwise"]):
            pass
    regular = Xception(point(SMALL, 1, "depthwise-first"))
    with pytest.raises(UnknownLayerError, match="k = 1: a regular 3x3 convolution.* are conv"):
        with capture(regular, ["entry.block2.sep1"], parts=["pointwise"]):
            pass


@pytest.mark.parametrize("segments,order", [(1, "depthwise-first"), (4, "pointwise-first"),
                                            ("C", "pointwise-first"), (4, "depthwise-first")])
def test_the_pointwise_decomposition_is_refused_off_the_separable_point(segments, order):
    layer = Xception(point(SMALL, segments, order)).separable_layers()["middle.block5.sep1"]
    with pytest.raises(ViewNotApplicableError, match="needs a depthwise separable layer.*middle.block5.sep1 is k = "):
        decompose(layer, torch.zeros(32, 5, 5), 0)


def test_what_holds_with_the_1x1_first():
    """Extreme Inception without an intermediate activation: output channel o is the sum over input
    channels of W[o, i] * (K_o conv x_i), the pointwise decomposition moved behind the 3x3 filter."""
    torch.manual_seed(0)
    layer = SeparableConv2d(6, 4, "t.sep1", segments="C", order="pointwise-first")
    x = torch.randn(1, 6, 8, 8)
    w, k = layer.pointwise.weight[:, :, 0, 0], layer.depthwise.weight  # [4, 6], [4, 1, 3, 3]
    with torch.no_grad():
        out = layer(x)[0]
        for o in range(4):
            filtered = F.conv2d(x[0][:, None], k[o:o + 1], padding=1)[:, 0]  # K_o on every input channel
            torch.testing.assert_close(out[o], (w[o][:, None, None] * filtered).sum(0))


@pytest.mark.parametrize("segments,order", POINTS)
def test_folding_batchnorm_keeps_every_point_exact(segments, order):
    torch.manual_seed(0)
    model = Xception(point(SMALL, segments, order))
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.normal_()
    model.eval()
    x = torch.randn(2, 3, 80, 80)
    with torch.no_grad():
        torch.testing.assert_close(fuse_for_inference(model)(x), model(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("segments,order", POINTS)
def test_checkpoints_tell_their_point(segments, order):
    cfg = point(SMALL, segments, order)
    assert infer_config(Xception(cfg).state_dict()) == cfg


def test_capture_takes_the_first_part_before_the_intermediate_activation():
    torch.manual_seed(0)
    model = Xception(XceptionConfig(**{**SMALL.to_dict(), "segments": 4, "order": "pointwise-first",
                                       "intermediate_activation": "relu"})).eval()
    name = "middle.block5.sep1"
    with capture(model, [name], parts=["input", "pointwise", "grouped"]) as kept, torch.no_grad():
        model(torch.randn(1, 3, 80, 80))
    layer = model.separable_layers()[name]
    assert bool((kept[name]["pointwise"] < 0).any())  # not yet through the ReLU
    torch.testing.assert_close(kept[name]["pointwise"], layer.pointwise(kept[name]["input"]))
    torch.testing.assert_close(kept[name]["grouped"], layer.grouped(F.relu(kept[name]["pointwise"])))


def test_layer_attributions_take_the_parts_of_the_layer():
    torch.manual_seed(0)
    model = Xception(point(SMALL, 4, "pointwise-first")).eval()
    attributor = Attributor(model)
    x = torch.randn(1, 3, 80, 80)
    result = attributor.attribute(x, "layer_gradcam", target=1, layer="middle.block5.sep1", part="grouped", auc_steps=0)
    assert result.part == "grouped" and result.heatmap.shape[-2:] == (80, 80)
    assert bool(torch.isfinite(result.attribution).all())
    with pytest.raises(ParamError, match="needs part=pointwise or part=grouped"):
        attributor.attribute(x, "layer_gradcam", target=1, layer="middle.block5.sep1", part="depthwise")
