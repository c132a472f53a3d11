"""The paper's spectrum of one layer (``xception_core.profile.layer_spectrum``): the points the
Architecture page shows, from a regular convolution to a depthwise separable one."""

import pytest

from xception_core.profile import layer_spectrum, profile_model, spectrum_segments


def test_spectrum_from_regular_to_separable():
    points = layer_spectrum(728, 728, (19, 19))
    ks = [p.segments for p in points]
    assert ks == [1, 4, 8, 728]  # of 3, 4, 8, 16, ... only 4 and 8 divide 728
    by_k = {p.segments: p for p in points}
    assert by_k[1].params == 728 * 728 * 9 and by_k[1].kind == "regular"  # regular 3x3 convolution
    assert by_k[728].params == 728 * 9 + 728 * 728 and by_k[728].kind == "depthwise separable"
    assert by_k[4].params == 728 * 728 + 4 * 182 * 182 * 9 and by_k[4].kind == "inception-like"
    assert all(p.macs == p.params * 19 * 19 for p in points)
    assert [p.params for p in points] == sorted((p.params for p in points), reverse=True)
    assert [p.label for p in points][::len(points) - 1] == ["k = 1 (regular conv)", "k = 728 (separable)"]
    assert by_k[4].to_dict() == {"segments": 4, "kind": "inception-like", "params": by_k[4].params,
                                 "macs": by_k[4].macs, "label": "k = 4"}


def test_spectrum_segments_divide_the_output_channels_and_stay_below_the_input():
    assert spectrum_segments(32, 32) == [1, 4, 8, 16, 32]  # 3 does not divide 32
    assert spectrum_segments(16, 24) == [1, 3, 4, 8, 16]
    assert spectrum_segments(16, 24, count=0) == [1, 16]
    assert spectrum_segments(1, 8) == [1]


def test_spectrum_rejects_impossible_layers():
    with pytest.raises(ValueError):
        layer_spectrum(0, 8, (4, 4))


def test_every_separable_layer_knows_its_regular_convolution_equivalent():
    for row in profile_model(input_size=299).separable:
        assert row.regular_params == row.in_channels * row.out_channels * 9
        assert row.regular_params == layer_spectrum(row.in_channels, row.out_channels, row.output_size)[0].params
