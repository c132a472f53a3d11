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


# --------------------------------------------------------------------------
# the model-level report: rank correlation, the randomised copy, the averages
# --------------------------------------------------------------------------


def test_rank_correlation_is_spearmans():
    from scipy.stats import spearmanr

    from xception_core.attributions.localisation import spearman

    g = torch.Generator().manual_seed(0)
    a = torch.rand(12, 12, generator=g)
    b = 0.3 * a + torch.rand(12, 12, generator=g)  # correlated, no ties
    assert spearman(a, b) == pytest.approx(spearmanr(a.flatten(), b.flatten()).statistic, abs=1e-12)
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert spearman(a, 2 * a + 1) == pytest.approx(1.0)
    # heat maps have many equal values (zeros): ties take their mean rank, as scipy's do
    sparse = torch.where(a > 0.6, a, torch.zeros(()))
    assert spearman(sparse, b) == pytest.approx(spearmanr(sparse.flatten(), b.flatten()).statistic, abs=1e-12)


def _scrambled_model(config, seed=0):
    """A model whose every parameter and BatchNorm statistic is random: a re-initialised layer
    (BatchNorm's is weight 1, bias 0, mean 0, variance 1) then differs from it everywhere."""
    from xception_core.model import Xception

    torch.manual_seed(seed)
    model = Xception(config)
    with torch.no_grad():
        for t in [*model.parameters(), *(b for n, b in model.named_buffers() if "running" in n)]:
            t.copy_(torch.rand_like(t) + 0.5)
    return model


def test_randomized_copy_resets_the_top_layers_only(small_config):
    from torch import nn

    from xception_core.attributions import randomized_copy

    model = _scrambled_model(small_config).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.random.get_rng_state()
    kinds = (nn.Conv2d, nn.Linear, nn.BatchNorm2d)
    names = [n for n, m in model.named_modules() if isinstance(m, kinds)]
    assert names[-1] == "fc"  # the classifier comes last: the cascade starts there

    def changed(copy) -> list[bool]:
        state = copy.state_dict()
        return [
            any(not torch.equal(state[k], before[k]) for k in before if k.startswith(name + ".") and "num_batches" not in k)
            for name in names
        ]

    for fraction, count in ((0.5, round(len(names) / 2)), (0.25, round(len(names) / 4)), (0.0, 1), (1.0, len(names))):
        copy = randomized_copy(model, top_fraction=fraction, seed=3)
        assert changed(copy) == [i >= len(names) - count for i in range(len(names))], fraction
        assert copy.training is False
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the original is untouched
    assert model.training is True
    assert torch.equal(torch.random.get_rng_state(), rng)  # the global generator is left alone
    a, b = randomized_copy(model, seed=3), randomized_copy(model, seed=3)
    assert torch.equal(a.fc.weight, b.fc.weight)
    assert not torch.equal(a.fc.weight, randomized_copy(model, seed=4).fc.weight)
    torch.manual_seed(123)
    assert torch.equal(a.fc.weight, randomized_copy(model, seed=3).fc.weight)  # the seed alone decides


def test_attribution_quality_averages_the_metrics_of_each_image():
    """Two methods over two generated images of 72 px, recomputed one image at a time."""
    from scipy.stats import spearmanr

    from xception_core import synthetic
    from xception_core.attributions import Attributor, attribution_quality, randomized_copy
    from xception_core.model import Xception, XceptionConfig

    config = XceptionConfig(num_classes=synthetic.NUM_CLASSES, stem_channels=(4, 8), entry_channels=(8, 12, 16),
                            middle_repeats=1, exit_channels=(16, 20, 24))
    torch.manual_seed(0)
    model = Xception(config).eval()
    randomized = randomized_copy(model, seed=1)
    layer = [n for n in model.separable_layers() if n.startswith("entry")][-1]
    methods = {"saliency": {"method": "saliency"}, "gradcam": {"method": "layer_gradcam", "layer": layer, "part": "pointwise"}}
    n, seed, size = 2, 77, 72
    ours, theirs = Attributor(model), Attributor(randomized)
    report = attribution_quality(model, methods, n=n, seed=seed, size=size, randomized=randomized)
    plain = attribution_quality(model, {"saliency": methods["saliency"]}, n=n, seed=seed, size=size)
    for label, kwargs in methods.items():
        mass, hits, area, rho = [], [], [], []
        for i in range(n):
            image, target, mask = synthetic.make_sample(i, seed, size)
            x = synthetic.to_tensor(image)[None]
            heat = np.asarray(ours.attribute(x, target=target, auc_steps=0, **kwargs).heatmap, dtype=np.float64)
            other = np.asarray(theirs.attribute(x, target=target, auc_steps=0, **kwargs).heatmap, dtype=np.float64)
            pos = np.maximum(heat, 0)
            mass.append(pos[mask].sum() / pos.sum() if pos.sum() > 0 else 0.0)
            hits.append(float(mask[np.unravel_index(np.argmax(heat), heat.shape)]))
            area.append(mask.mean())
            rho.append(spearmanr(heat.flatten(), other.flatten()).statistic)
        got = report[label]
        assert got["mass_in_object"] == pytest.approx(np.mean(mass), abs=1e-6)
        assert got["pointing_game"] == pytest.approx(np.mean(hits))
        assert got["area_fraction"] == pytest.approx(np.mean(area))
        # the maps have ties (zeros): both the report and scipy give tied values their mean rank
        assert got["rank_correlation"] == pytest.approx(np.mean(rho), abs=1e-9)
    assert set(plain) == {"saliency"} and "rank_correlation" not in plain["saliency"]
    assert plain["saliency"] == {k: v for k, v in report["saliency"].items() if k != "rank_correlation"}


def test_upsample_to_is_captums_layer_interpolation_and_keeps_the_kind():
    """Against Captum's LayerAttribution.interpolate (bilinear, align_corners=False) on a
    non-square target; row maps [1, w] are maps, not batches; dtypes as documented."""
    from captum.attr import LayerAttribution

    coarse = torch.rand(3, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = LayerAttribution.interpolate(coarse[None, None].float(), (7, 13), interpolate_mode="bilinear")[0, 0]
    up = upsample_to(coarse.numpy(), (7, 13))
    assert up.dtype == np.float32 and up.shape == (7, 13)  # numpy in: float32 numpy out
    np.testing.assert_allclose(up, expected.numpy(), rtol=1e-6, atol=1e-7)
    t = upsample_to(coarse.half(), (7, 13))
    assert t.dtype == torch.float16 and t.shape == (7, 13)
    assert upsample_to(coarse, (3, 5)).dtype == torch.float64  # at size: only squeezed, kept as it is
    assert upsample_to(torch.ones(3, 5, dtype=torch.int64), (6, 10)).dtype == torch.float32
    row = upsample_to(np.arange(5, dtype=np.float32)[None], (4, 10))
    assert row.shape == (4, 10)
    with pytest.raises(ValueError, match=r"^attribution must be a 2-D map, got shape \(3, 4, 4\)$"):
        upsample_to(np.zeros((3, 4, 4)), (8, 8))


def test_quality_report_names_the_bad_input_and_passes_the_tolerance_on():
    m = square_mask()
    with pytest.raises(ValueError, match="^mask must be a 2-D map"):
        quality_report(np.zeros((16, 16)), np.stack([m, m]))
    with pytest.raises(ValueError, match="^attribution must be a 2-D map"):
        quality_report(np.zeros((3, 16, 16)), m)
    a = np.zeros((16, 16))
    a[10, 5] = 1.0  # two rows below the mask (rows 4..7)
    assert quality_report(a, m)["pointing_game_hit"] is False
    assert quality_report(a, m, tolerance_px=3)["pointing_game_hit"] is True


# --------------------------------------------------------------------------
# edge cases the mutation run found untested (tools/mutation.py localisation)
# --------------------------------------------------------------------------


def test_pointing_game_tolerance_reaches_every_direction_and_distance():
    """The tolerance disc around the mask (rows/cols 4..7): one pixel off each side is a miss
    at the default (exact) and a hit at 1; left of the mask and nearer than the tolerance too."""
    m = square_mask()
    for y, x in ((8, 5), (3, 5), (5, 8), (5, 3)):  # below, above, right, left
        a = np.zeros((16, 16))
        a[y, x] = 1.0
        assert pointing_game_hit(a, m) is False, (y, x)
        assert pointing_game_hit(a, m, tolerance_px=1) is True, (y, x)
    for x in (1, 2, 9, 10):  # 3 and 2 pixels left, 2 and 3 right, same row: inside a disc of 4
        a = np.zeros((16, 16))
        a[6, x] = 1.0
        assert pointing_game_hit(a, m, tolerance_px=4) is True, x
    a = np.zeros((16, 16))
    a[8, 8] = 1.0  # diagonal neighbour of the corner (7, 7): distance 1.41
    assert pointing_game_hit(a, m, tolerance_px=1) is False
    with pytest.raises(ValueError, match=r"^tolerance_px must be >= 0$"):
        pointing_game_hit(a, m, tolerance_px=-1)


def test_masks_of_any_dtype_are_masks_and_messages_name_the_input():
    m = square_mask()
    a = np.random.default_rng(1).normal(size=(16, 16))
    expected = (positive_mass_in_mask(a, m), pointing_game_hit(a, m), mask_area_fraction(m))
    for other in (m.astype(np.uint8) * 255, m.astype(np.float32), torch.from_numpy(m).long()):
        assert (positive_mass_in_mask(a, other), pointing_game_hit(a, other), mask_area_fraction(other)) == expected
    with pytest.raises(ValueError, match=r"^mask must be a 2-D map \[H, W\] \(got shape \(2, 16, 16\)\); "
                                         r"reduce channel attributions first, e\.g\. attr\.sum\(0\)$"):
        positive_mass_in_mask(a, np.stack([m, m]))
    with pytest.raises(ValueError, match=r"^mask must be a 2-D map \[H, W\] \(got shape \(2, 16, 16\)\)"):
        mask_area_fraction(np.stack([m, m]))
    with pytest.raises(ValueError, match=r"^attribution must be a 2-D map \[H, W\] \(got shape \(3, 16, 16\)\)"):
        pointing_game_hit(np.zeros((3, 16, 16)), m)
    with pytest.raises(ValueError, match=r"^attribution shape \(4, 4\) differs from mask shape \(16, 16\); "
                                         r"upsample the attribution first with upsample_to\(attribution, mask\.shape\)$"):
        positive_mass_in_mask(np.ones((4, 4)), m)
    with pytest.raises(ValueError, match="^attribution contains NaN or infinite values$"):
        positive_mass_in_mask(np.full((16, 16), np.inf), m)


def test_one_row_maps_empty_masks_and_reduced_precision_maps():
    row = np.zeros((1, 16), dtype=bool)
    row[0, 3:5] = True
    assert positive_mass_in_mask(row.astype(np.float32), row) == 1.0  # [1, W] is a map, not a batch
    assert mask_area_fraction(row) == pytest.approx(2 / 16)
    assert mask_area_fraction(np.zeros((0, 0), dtype=bool)) == 0.0
    m = square_mask()
    a = np.random.default_rng(2).normal(size=(16, 16)).astype(np.float32)
    expected = positive_mass_in_mask(a, m)
    assert positive_mass_in_mask(torch.from_numpy(a).bfloat16(), m) == pytest.approx(expected, abs=1e-2)
    assert pointing_game_hit(torch.from_numpy(a).bfloat16(), m) == pointing_game_hit(a, m)


def test_float64_maps_keep_their_precision():
    """A peak outside the mask above an inside value by less than float32 can tell apart: a miss
    (rounded to float32 the two would tie, and a tie counts as a hit)."""
    m = square_mask()
    a = np.zeros((16, 16))
    a[5, 5] = 1.0
    a[12, 12] = 1.0 + 1e-12
    assert np.float32(a[12, 12]) == np.float32(a[5, 5])
    assert pointing_game_hit(a, m) is False
    assert pointing_game_hit(torch.from_numpy(a), m) is False
    assert quality_report(a, m)["pointing_game_hit"] is False
    assert quality_report(torch.from_numpy(a), m)["pointing_game_hit"] is False


def test_positive_mass_stays_in_zero_to_one_without_warnings():
    """All the mass inside: the inside sum and the total add the same numbers in another order,
    and the quotient can come out one rounding above 1 -- the figure is clamped to [0, 1]."""
    import warnings

    above_one = 0
    for seed in range(40):
        rng = np.random.default_rng(seed)
        m = rng.random((64, 64)) < 0.9
        a = np.where(m, rng.random((64, 64)), 0.0)
        above_one += a[m].sum() / a.sum() > 1.0
        assert 0.0 <= positive_mass_in_mask(a, m) <= 1.0 and positive_mass_in_mask(a, m) == pytest.approx(1.0), seed
    assert above_one > 0  # the case the clamp is for occurs among these maps
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert positive_mass_in_mask(np.zeros((16, 16)), square_mask()) == 0.0


def test_rank_correlation_of_constant_maps():
    """No variation: agreement with another constant map only, never a division by zero."""
    from xception_core.attributions.localisation import spearman

    flat, other_flat = torch.zeros(4, 4), torch.full((4, 4), 3.0)
    varying = torch.arange(16.0).reshape(4, 4)
    assert spearman(flat, other_flat) == 1.0
    assert spearman(flat, varying) == 0.0
    assert spearman(varying, flat) == 0.0


def test_randomized_copy_defaults_are_the_top_half_and_seed_zero(small_config):
    from xception_core.attributions import randomized_copy

    model = _scrambled_model(small_config)
    default, explicit = randomized_copy(model), randomized_copy(model, top_fraction=0.5, seed=0)
    for (name, a), b in zip(default.state_dict().items(), explicit.state_dict().values()):
        assert torch.equal(a, b), name


def test_attribution_quality_defaults_are_100_images_of_96_pixels_from_seed_10000(monkeypatch):
    """The README's figures are over these images: the defaults name them."""
    from xception_core import synthetic
    from xception_core.attributions import attribution_quality, localisation
    from xception_core.model import Xception, XceptionConfig

    calls = []

    def recorded(index, seed, size):
        calls.append((index, seed, size))
        return np.zeros((8, 8, 3), dtype=np.uint8), 0, np.ones((8, 8), dtype=bool)

    monkeypatch.setattr(localisation, "make_sample", recorded)
    config = XceptionConfig(num_classes=synthetic.NUM_CLASSES, stem_channels=(4, 8), entry_channels=(8, 12, 16),
                            middle_repeats=1, exit_channels=(16, 20, 24))
    assert attribution_quality(Xception(config).eval(), {}) == {}
    assert calls == [(i, 10_000, 96) for i in range(100)]


def test_attribution_quality_computes_no_deletion_insertion_curves():
    """The report reads the maps only: every forward of both models is of the one image being
    explained (the curves would send batches of the image with pixels deleted or inserted)."""
    from xception_core import synthetic
    from xception_core.attributions import attribution_quality, randomized_copy
    from xception_core.model import Xception, XceptionConfig

    config = XceptionConfig(num_classes=synthetic.NUM_CLASSES, stem_channels=(4, 8), entry_channels=(8, 12, 16),
                            middle_repeats=1, exit_channels=(16, 20, 24))
    torch.manual_seed(0)
    model = Xception(config).eval()
    randomized = randomized_copy(model, seed=1)
    batches = {"model": [], "randomized": []}
    model.register_forward_hook(lambda module, args, out: batches["model"].append(len(args[0])))
    randomized.register_forward_hook(lambda module, args, out: batches["randomized"].append(len(args[0])))
    attribution_quality(model, {"saliency": {"method": "saliency"}}, n=1, size=72, randomized=randomized)
    assert batches["model"] and set(batches["model"]) == {1}
    assert batches["randomized"] and set(batches["randomized"]) == {1}
