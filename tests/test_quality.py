"""Attribution quality metrics on hand-made maps with known answers (xception_core.attributions.localisation)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xception_core.attributions import (
    mask_area_fraction,
    pointing_game_hit,
    positive_mass_in_mask,
    quality_report,
    upsample_to,
)


def square_mask(size=16, y0=4, y1=8, x0=4, x1=8) -> np.ndarray:
    m = np.zeros((size, size), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


# --------------------------------------------------------------------------
# positive mass in mask
# --------------------------------------------------------------------------


def test_mass_all_inside_and_all_outside():
    m = square_mask()
    assert positive_mass_in_mask(m.astype(np.float32), m) == pytest.approx(1.0)
    assert positive_mass_in_mask((~m).astype(np.float32), m) == pytest.approx(0.0)


def test_mass_known_fraction():
    m = square_mask()
    a = np.zeros((16, 16))
    a[5, 5] = 3.0  # inside
    a[0, 0] = 1.0  # outside
    assert positive_mass_in_mask(a, m) == pytest.approx(0.75)


def test_mass_ignores_negative_values():
    m = square_mask()
    a = np.where(m, 1.0, -5.0)  # strong negative evidence outside does not count
    assert positive_mass_in_mask(a, m) == pytest.approx(1.0)
    a = np.where(m, -1.0, 0.0)
    a[0, 0] = 2.0
    assert positive_mass_in_mask(a, m) == pytest.approx(0.0)


def test_mass_of_a_map_without_positive_values_is_zero():
    m = square_mask()
    assert positive_mass_in_mask(np.zeros((16, 16)), m) == 0.0
    assert positive_mass_in_mask(-np.ones((16, 16)), m) == 0.0


def test_uniform_map_scores_the_area_fraction():
    m = square_mask()
    assert positive_mass_in_mask(np.ones((16, 16)), m) == pytest.approx(mask_area_fraction(m))


def test_torch_and_numpy_agree_and_batch_dims_are_squeezed():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(16, 16)).astype(np.float32)
    m = square_mask()
    expected = positive_mass_in_mask(a, m)
    assert positive_mass_in_mask(torch.from_numpy(a), torch.from_numpy(m)) == pytest.approx(expected)
    assert positive_mass_in_mask(torch.from_numpy(a)[None, None], m) == pytest.approx(expected)
    assert positive_mass_in_mask(torch.from_numpy(a).half(), m) == pytest.approx(expected, abs=1e-3)
    t = torch.from_numpy(a).requires_grad_(True)
    assert positive_mass_in_mask(t * 1.0, m) == pytest.approx(expected)  # tensors with grad are fine


def test_shape_mismatch_and_channel_maps_are_refused():
    m = square_mask()
    with pytest.raises(ValueError, match="upsample"):
        positive_mass_in_mask(np.ones((4, 4)), m)
    with pytest.raises(ValueError, match="2-D"):
        positive_mass_in_mask(np.ones((3, 16, 16)), m)
    with pytest.raises(ValueError):
        positive_mass_in_mask(np.full((16, 16), np.nan), m)


# --------------------------------------------------------------------------
# pointing game
# --------------------------------------------------------------------------


def test_pointing_game_hit_and_miss():
    m = square_mask()
    a = np.zeros((16, 16))
    a[6, 6] = 1.0
    assert pointing_game_hit(a, m) is True
    a = np.zeros((16, 16))
    a[12, 12] = 1.0
    a[6, 6] = 0.5  # inside, but not the maximum
    assert pointing_game_hit(a, m) is False


def test_pointing_game_tolerance_is_euclidean():
    m = square_mask()  # rows/cols 4..7
    a = np.zeros((16, 16))
    a[10, 10] = 1.0  # (3, 3) from the corner pixel (7, 7): distance 4.24
    assert not pointing_game_hit(a, m, tolerance_px=0)
    assert not pointing_game_hit(a, m, tolerance_px=4)
    assert pointing_game_hit(a, m, tolerance_px=5)
    b = np.zeros((16, 16))
    b[7, 11] = 1.0  # 4 pixels right of the mask's edge, same row
    assert not pointing_game_hit(b, m, tolerance_px=3)
    assert pointing_game_hit(b, m, tolerance_px=4)
    c = np.zeros((16, 16))
    c[0, 5] = 1.0  # above the mask: dilation works in every direction
    assert pointing_game_hit(c, m, tolerance_px=4)
    assert not pointing_game_hit(c, m, tolerance_px=3)
    with pytest.raises(ValueError):
        pointing_game_hit(c, m, tolerance_px=-1)


def test_pointing_game_ties_and_empty_masks():
    m = square_mask()
    a = np.zeros((16, 16))
    a[0, 0] = a[5, 5] = 2.0  # one of the two maxima is inside
    assert pointing_game_hit(a, m)
    assert not pointing_game_hit(a, np.zeros((16, 16), dtype=bool))
    # negative maps: the maximum is the least negative value
    neg = -np.ones((16, 16))
    neg[5, 6] = -0.1
    assert pointing_game_hit(torch.from_numpy(neg), torch.from_numpy(m))


# --------------------------------------------------------------------------
# area fraction, upsampling, report
# --------------------------------------------------------------------------


def test_mask_area_fraction():
    assert mask_area_fraction(square_mask()) == pytest.approx(16 / 256)
    assert mask_area_fraction(np.zeros((8, 8), dtype=bool)) == 0.0
    assert mask_area_fraction(torch.ones(1, 4, 4, dtype=torch.bool)) == 1.0


def test_upsample_to_keeps_type_and_shape():
    coarse = np.arange(16, dtype=np.float32).reshape(4, 4)
    up = upsample_to(coarse, (32, 32))
    assert isinstance(up, np.ndarray) and up.shape == (32, 32)
    assert up.min() >= coarse.min() - 1e-5 and up.max() <= coarse.max() + 1e-5
    t = upsample_to(torch.from_numpy(coarse)[None, None], (32, 32))
    assert isinstance(t, torch.Tensor) and t.shape == (32, 32)
    np.testing.assert_allclose(t.numpy(), up, atol=1e-6)
    np.testing.assert_allclose(upsample_to(np.full((5, 5), 2.0), (16, 16)), 2.0, atol=1e-6)
    same = np.ones((16, 16))
    np.testing.assert_array_equal(upsample_to(same, (16, 16)), same)


def test_coarse_map_upsampled_then_scored():
    """A 2x2 Grad-CAM-like map whose hot cell is the mask's quadrant."""
    m = np.zeros((32, 32), dtype=bool)
    m[:16, 16:] = True  # top-right quadrant
    cam = np.array([[0.0, 1.0], [0.0, 0.0]], dtype=np.float32)
    up = upsample_to(cam, m.shape)
    assert pointing_game_hit(up, m)
    assert positive_mass_in_mask(up, m) > 0.5 > mask_area_fraction(m)
    report = quality_report(cam, m)  # the report upsamples by itself
    assert report["pointing_game_hit"] is True
    assert report["positive_mass_in_mask"] == pytest.approx(positive_mass_in_mask(up, m))
    assert report["mask_area_fraction"] == pytest.approx(0.25)


def test_with_a_synthetic_mask():
    from xception_core.synthetic import make_sample

    _, _, mask = make_sample(0, seed=0, size=64)
    assert quality_report(mask.astype(np.float32), mask)["positive_mass_in_mask"] == pytest.approx(1.0)
    assert quality_report((~mask).astype(np.float32), mask)["pointing_game_hit"] is False
