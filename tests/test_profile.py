import pytest
import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

from support import SMALL
from xception_core.model import Xception, XceptionConfig
from xception_core.profile import profile_model, segment_spectrum

PAPER_MACS = 8_357_403_496  # at 299 px, convolutions and the classifier


def _counted_macs(model: torch.nn.Module, size: int) -> tuple[int, dict[str, int]]:
    """PyTorch's own count on the meta device: FLOPs / 2 of every convolution and matrix product,
    in total and per module (named as in ``named_modules``)."""
    with FlopCounterMode(display=False) as counter:
        model(torch.empty(1, 3, size, size, device="meta"))
    counts = counter.get_flop_counts()
    assert {str(op) for op in counts["Global"]} == {"aten.convolution", "aten.addmm"}
    root = type(model).__name__ + "."
    per_module = {k[len(root):]: sum(v.values()) // 2 for k, v in counts.items() if k.startswith(root)}
    return counter.get_total_flops() // 2, per_module


def test_paper_totals():
    profile = profile_model(XceptionConfig(), 299)
    assert profile.total_params == 22_855_952
    assert profile.total_macs == PAPER_MACS
    assert len(profile.separable) == 34


def test_macs_equal_pytorch_flop_counter_for_ours_and_timm():
    with torch.device("meta"):
        ours = Xception(XceptionConfig())
        reference = timm.create_model("legacy_xception", pretrained=False)
    total, per_module = _counted_macs(ours, 299)
    assert total == PAPER_MACS
    assert _counted_macs(reference, 299)[0] == PAPER_MACS
    for layer in profile_model(XceptionConfig(), 299).layers:
        assert layer.macs == per_module.get(layer.name, 0), layer.name


@pytest.mark.parametrize(
    "config, size",
    [
        pytest.param(XceptionConfig(), 150, id="paper-150"),
        pytest.param(XceptionConfig(), 71, id="paper-71"),
        pytest.param(XceptionConfig(residual=False), 299, id="no-residual-299"),
        pytest.param(XceptionConfig(intermediate_activation="elu"), 96, id="elu-96"),
        pytest.param(SMALL, 96, id="small-96"),
    ],
)
def test_macs_equal_pytorch_flop_counter_at_other_sizes_and_configs(config, size):
    with torch.device("meta"):
        model = Xception(config)
    total, per_module = _counted_macs(model, size)
    profile = profile_model(config, size)
    assert profile.total_macs == total
    assert [layer.macs for layer in profile.layers] == [per_module.get(layer.name, 0) for layer in profile.layers]


def test_shapes_along_the_flows():
    profile = profile_model(XceptionConfig(), 299)
    by_name = {layer.name: layer for layer in profile.layers}
    assert by_name["entry.block1.conv1"].output_size == (149, 149)
    assert by_name["entry.block1.conv2"].output_size == (147, 147)
    assert by_name["entry.block2.pool"].output_size == (74, 74)
    assert by_name["entry.block4.pool"].output_size == (19, 19)
    assert by_name["middle.block12.sep3.pointwise"].output_size == (19, 19)
    assert by_name["exit.block13.pool"].output_size == (10, 10)
    assert by_name["exit.block14.sep2.pointwise"].out_channels == 2048
    assert by_name["fc"].macs == 2048 * 1000
    sep = {s.name: s for s in profile.separable}["middle.block7.sep2"]
    assert (sep.in_channels, sep.out_channels, sep.output_size) == (728, 728, (19, 19))
    assert sep.depthwise_params == 728 * 9 and sep.pointwise_params == 728 * 728
    assert sep.depthwise_macs == 728 * 9 * 19 * 19 and sep.pointwise_macs == 728 * 728 * 19 * 19


def test_layer_params_add_up_to_the_conv_and_fc_params(small_config):
    profile = profile_model(small_config, 96)
    model = Xception(small_config)
    conv_fc = sum(p.numel() for n, p in model.named_parameters() if "bn" not in n)
    assert sum(layer.params for layer in profile.layers) == conv_fc
    assert profile.total_params == sum(p.numel() for p in model.parameters())


def test_small_input_rejected():
    with pytest.raises(ValueError, match="at least 71"):
        profile_model(XceptionConfig(), 70)


def test_segment_spectrum_ends():
    regular, _ = segment_spectrum(728, 728, 1)
    separable, _ = segment_spectrum(728, 728, 728)
    assert regular == 728 * 728 * 9
    assert separable == 728 * 9 + 728 * 728
    inception, _ = segment_spectrum(728, 728, 4)
    assert separable < inception < regular
