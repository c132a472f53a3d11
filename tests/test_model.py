import pytest
import torch
import torch.nn.functional as F

from xception_core.model import SeparableConv2d, Xception, XceptionConfig

PAPER = XceptionConfig()


def test_paper_parameter_count():
    model = Xception()
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 22_855_952


def test_separable_layer_names_follow_the_paper():
    names = list(Xception().separable_layers())
    assert len(names) == 34
    assert names[:6] == [f"entry.block{b}.sep{k}" for b in (2, 3, 4) for k in (1, 2)]
    assert names[6:30] == [f"middle.block{b}.sep{k}" for b in range(5, 13) for k in (1, 2, 3)]
    assert names[30:] == ["exit.block13.sep1", "exit.block13.sep2", "exit.block14.sep1", "exit.block14.sep2"]
    assert sum(n.startswith("entry") for n in names) == 6
    assert sum(n.startswith("middle") for n in names) == 24


def test_every_relu_is_its_own_module_and_nothing_is_in_place():
    model = Xception()
    relus = [m for m in model.modules() if isinstance(m, torch.nn.ReLU)]
    assert len(relus) == len({id(m) for m in relus})
    assert not any(m.inplace for m in relus)
    # Block 2 starts without a ReLU; every other residual block starts with one.
    assert not hasattr(model.entry.block2, "relu1")
    assert all(hasattr(model.entry[f"block{n}"], "relu1") for n in (3, 4))
    assert all(hasattr(b, "relu1") for b in model.middle.values())


def test_separable_convs_have_no_bias_and_the_right_shapes():
    model = Xception()
    for name, layer in model.separable_layers().items():
        c = layer.depthwise.in_channels
        assert layer.depthwise.weight.shape == (c, 1, 3, 3)
        assert layer.depthwise.bias is None and layer.pointwise.bias is None
        assert layer.pointwise.weight.shape[1:] == (c, 1, 1)
        assert isinstance(layer.intermediate, torch.nn.Identity), name


def _hand_count(cfg: XceptionConfig) -> int:
    """Parameters counted from the architecture description, not the modules."""
    bn = lambda c: 2 * c  # noqa: E731 - affine weight and bias
    sep = lambda i, o: 9 * i + i * o + bn(o)  # noqa: E731 - depthwise, pointwise, its BN
    s1, s2 = cfg.stem_channels
    e1, e2, e3 = cfg.entry_channels
    x1, x2, x3 = cfg.exit_channels
    n = 9 * cfg.in_chans * s1 + bn(s1) + 9 * s1 * s2 + bn(s2)
    skip = (lambda i, o: i * o + bn(o)) if cfg.residual else (lambda i, o: 0)
    previous = s2
    for width in (e1, e2, e3):
        n += sep(previous, width) + sep(width, width) + skip(previous, width)
        previous = width
    n += cfg.middle_repeats * 3 * sep(e3, e3)
    n += sep(e3, e3) + sep(e3, x1) + skip(e3, x1)
    n += sep(x1, x2) + sep(x2, x3)
    return n + x3 * cfg.num_classes + cfg.num_classes


@pytest.mark.parametrize("activation", ["none", "relu", "elu"])
@pytest.mark.parametrize("residual", [True, False])
def test_ablation_configurations_build_run_and_count(small_config, activation, residual):
    cfg = XceptionConfig(**{**small_config.to_dict(), "intermediate_activation": activation, "residual": residual})
    model = Xception(cfg)
    assert sum(p.numel() for p in model.parameters()) == _hand_count(cfg)
    kinds = {type(m.intermediate) for m in model.separable_layers().values()}
    assert kinds == {{"none": torch.nn.Identity, "relu": torch.nn.ReLU, "elu": torch.nn.ELU}[activation]}
    x = torch.randn(2, 3, 80, 80, requires_grad=True)
    model(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in model.parameters())


def test_paper_ablations_at_full_width_count_by_hand():
    for activation in ("none", "relu", "elu"):
        for residual in (True, False):
            cfg = XceptionConfig(intermediate_activation=activation, residual=residual)
            assert sum(p.numel() for p in Xception(cfg).parameters()) == _hand_count(cfg)
    assert _hand_count(PAPER) == 22_855_952


@pytest.mark.parametrize("size", [71, 96, 133])
def test_any_input_size_from_71(small_config, size):
    model = Xception(small_config).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, size, size)).shape == (1, small_config.num_classes)


def test_too_small_input_is_a_clear_error(small_config):
    with pytest.raises(ValueError, match="at least 71"):
        Xception(small_config)(torch.randn(1, 3, 64, 64))


def test_config_validation_and_round_trip(small_config):
    assert XceptionConfig.from_dict(small_config.to_dict()) == small_config
    with pytest.raises(ValueError, match="intermediate_activation"):
        XceptionConfig(intermediate_activation="gelu")
    with pytest.raises(ValueError, match="entry_channels"):
        XceptionConfig(entry_channels=(1, 2))
    with pytest.raises(ValueError, match="unknown"):
        XceptionConfig.from_dict({"widths": 3})
    assert PAPER.is_paper and not small_config.is_paper


def test_separable_module_is_depthwise_then_pointwise():
    layer = SeparableConv2d(6, 10, "test.sep1")
    x = torch.randn(2, 6, 12, 12)
    expected = F.conv2d(F.conv2d(x, layer.depthwise.weight, groups=6, padding=1), layer.pointwise.weight)
    torch.testing.assert_close(layer(x), expected)
