"""The paper's spectrum for one layer (xception_core.profile.segment_spectrum / layer_spectrum):
regular convolution, Inception-like segments, depthwise separable."""

from __future__ import annotations

import pytest

from xception_core.profile import SpectrumPoint, layer_spectrum, profile_model, segment_spectrum, spectrum_segments


def test_layer_spectrum_of_a_middle_flow_layer():
    points = layer_spectrum(728, 728, (19, 19))
    assert [(p.segments, p.kind) for p in points] == [
        (1, "regular"), (4, "inception-like"), (8, "inception-like"), (728, "depthwise separable"),
    ]  # 728 = 8 x 91: 3, 16, 32, ... do not divide it
    by_k = {p.segments: p for p in points}
    assert by_k[1].params == 728 * 728 * 9
    assert by_k[4].params == 728 * 728 + 4 * 182 * 182 * 9
    assert by_k[728].params == 728 * 9 + 728 * 728
    assert all(p.macs == p.params * 19 * 19 for p in points)
    assert [p.params for p in points] == sorted((p.params for p in points), reverse=True)


def test_points_carry_the_labels_the_architecture_page_shows():
    points = layer_spectrum(32, 48, (6, 5))
    assert [p.label for p in points] == ["k = 1 (regular conv)", "k = 3", "k = 4", "k = 8", "k = 16", "k = 32 (separable)"]
    assert points[1].to_dict() == {
        "segments": 3, "kind": "inception-like", "params": 32 * 48 + 3 * 16 * 16 * 9,
        "macs": (32 * 48 + 3 * 16 * 16 * 9) * 30, "label": "k = 3",
    }


def test_inception_points_divide_the_output_and_stay_below_the_input_channels():
    points = layer_spectrum(6, 10, (1, 1), count=8)
    assert [p.segments for p in points] == [1, 6]  # 3 and 4 do not divide 10; 8 and more exceed 6
    assert [p.segments for p in layer_spectrum(128, 256, (1, 1), count=2)] == [1, 4, 8, 128]


def test_the_separable_end_is_what_the_network_has():
    profile = profile_model(input_size=299)
    for layer in profile.separable:
        end = layer_spectrum(layer.in_channels, layer.out_channels, layer.output_size)[-1]
        assert end == SpectrumPoint(
            layer.in_channels, "depthwise separable",
            layer.depthwise_params + layer.pointwise_params, layer.depthwise_macs + layer.pointwise_macs,
        )


@pytest.mark.parametrize("args,message", [
    ((16, 24, 5), "segments must divide the 24 output channels"),
    ((16, 24, 0), r"segments must be in 1\.\.16"),
    ((16, 24, 17), r"segments must be in 1\.\.16"),
    ((0, 24, 1), "channel counts must be positive"),
])
def test_segment_spectrum_refuses_points_off_the_spectrum(args, message):
    with pytest.raises(ValueError, match=message):
        segment_spectrum(*args)


def test_spectrum_segments_divide_the_output_channels_and_stay_below_the_input():
    assert spectrum_segments(32, 32) == [1, 4, 8, 16, 32]  # 3 does not divide 32
    assert spectrum_segments(16, 24) == [1, 3, 4, 8, 16]
    assert spectrum_segments(16, 24, count=0) == [1, 16]
    assert spectrum_segments(1, 8) == [1]


def test_spectrum_rejects_impossible_layers():
    with pytest.raises(ValueError, match="channel counts must be positive"):
        layer_spectrum(0, 8, (4, 4))


def test_every_separable_layer_knows_its_regular_convolution_equivalent():
    for row in profile_model(input_size=299).separable:
        assert row.regular_params == row.in_channels * row.out_channels * 9
        assert row.regular_params == layer_spectrum(row.in_channels, row.out_channels, row.output_size)[0].params


def test_segment_spectrum_with_an_order_counts_the_channels_the_3x3_acts_on():
    c_in, c_out = 24, 32
    assert segment_spectrum(c_in, c_out, 1, order="depthwise-first") == (c_in * c_out * 9,) * 2
    assert segment_spectrum(c_in, c_out, 1, order="pointwise-first") == (c_in * c_out * 9,) * 2
    assert segment_spectrum(c_in, c_out, 4, order="depthwise-first")[0] == c_in * c_out + c_in * (c_in // 4) * 9
    assert segment_spectrum(c_in, c_out, 4, order="pointwise-first")[0] == c_in * c_out + c_out * (c_out // 4) * 9
    assert segment_spectrum(c_in, c_out, "C", order="depthwise-first")[0] == c_in * c_out + c_in * 9
    assert segment_spectrum(c_in, c_out, "C", order="pointwise-first")[0] == c_in * c_out + c_out * 9
    assert segment_spectrum(c_in, c_out, 32, order="pointwise-first") == segment_spectrum(c_in, c_out, "C", order="pointwise-first")
    params, macs = segment_spectrum(c_in, c_out, 8, output_hw=7 * 5, order="pointwise-first")
    assert macs == params * 35


def test_the_paper_points_are_the_ordered_points_they_stand_for():
    for c_in, c_out in ((24, 32), (32, 32), (128, 160)):
        assert segment_spectrum(c_in, c_out, c_in) == segment_spectrum(c_in, c_out, "C", order="depthwise-first")
        assert segment_spectrum(c_in, c_out, 4) == segment_spectrum(c_in, c_out, 4, order="pointwise-first")
        assert segment_spectrum(c_in, c_out, "C") == segment_spectrum(c_in, c_out, c_in)


@pytest.mark.parametrize("args,order,message", [
    ((24, 32, 16), "depthwise-first", r"divide the 24 channels .* \(C_in for depthwise-first\); got 16"),
    ((24, 32, 3), "pointwise-first", r"divide the 32 channels .* \(C_out for pointwise-first\); got 3"),
    ((24, 32, 64), "pointwise-first", "divide the 32 channels"),
    ((24, 32, 0), "pointwise-first", "divide the 32 channels"),
    ((24, 32, "all"), "depthwise-first", "divide the 24 channels"),
    ((24, 32, 4), "sideways", "order must be one of depthwise-first, pointwise-first"),
])
def test_ordered_points_off_the_spectrum_are_refused(args, order, message):
    with pytest.raises(ValueError, match=message):
        segment_spectrum(*args, order=order)
