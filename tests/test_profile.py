import pytest

from xception_core.model import Xception, XceptionConfig
from xception_core.profile import profile_model, segment_spectrum


def test_paper_totals():
    profile = profile_model(XceptionConfig(), 299)
    assert profile.total_params == 22_855_952
    assert profile.total_macs == pytest.approx(8.36e9, rel=0.005)
    assert len(profile.separable) == 34


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
