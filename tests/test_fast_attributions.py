"""Fast attributions: batched quality curves on a handed-in forward, bf16 where native, checked against fp32."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from captum.attr import Saliency
from scipy.stats import spearmanr

from support import NATIVE_BF16, photo_batch
from xception_core.attributions import Attributor, AttributorOptions, ParamError, deletion_insertion_auc
from xception_core.attributions import fast
from xception_core.attributions.faithfulness import _gaussian_blur
from xception_core.attributions.fast import (
    CURVE_TOLERANCE,
    PrecisionCheck,
    choose_attribution_precision,
    quality_engine,
    spearman,
)
from xception_core.engine import EngineOptions, Predictor

SIZE = 72

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def model(photo_model):
    return photo_model


@pytest.fixture(scope="module")
def x(photos):
    return photo_batch(photos[1:2], SIZE)


@pytest.fixture(scope="module")
def heat(model, x):
    return Saliency(model).attribute(x.clone().requires_grad_(), target=3)[0].abs().sum(0)


def _unbatched(model, x, heat, target, steps):
    """The old way, written out: one float32 forward of the unfused model per point of each curve
    (2 (steps + 1) of them), pixels ranked largest first, ties in raster order."""
    n = heat.numel()
    order = sorted(range(n), key=lambda i: (-float(heat.flatten()[i]), i))
    start = _gaussian_blur(x, max(1.0, 0.025 * max(x.shape[-2:])))
    fractions, deletion, insertion = [], [], []
    for k in range(steps + 1):
        count = round(k * n / steps)
        mask = torch.zeros(n, dtype=torch.bool)
        mask[order[:count]] = True
        mask = mask.view(1, 1, *heat.shape)
        with torch.no_grad():
            deletion.append(float(torch.softmax(model(torch.where(mask, torch.zeros_like(x), x)), 1)[0, target]))
            insertion.append(float(torch.softmax(model(torch.where(mask, x, start)), 1)[0, target]))
        fractions.append(count / n)
    return SimpleNamespace(
        deletion=deletion, insertion=insertion,
        deletion_auc=float(np.trapezoid(deletion, fractions)), insertion_auc=float(np.trapezoid(insertion, fractions)),
    )


class _Counting:
    """A forward that records the batch sizes it was given."""

    def __init__(self, model):
        self.model, self.sizes = model, []

    def __call__(self, batch):
        self.sizes.append(batch.shape[0])
        return self.model(batch)


@pytest.mark.parametrize("batch", [16, 5, 64])
def test_batched_curves_equal_unbatched_float32(model, x, heat, batch):
    ref = _unbatched(model, x, heat, 3, steps=8)
    got = deletion_insertion_auc(model, x, heat, 3, steps=8, batch_size=batch)
    assert got.deletion_auc == pytest.approx(ref.deletion_auc, abs=1e-5)
    assert got.insertion_auc == pytest.approx(ref.insertion_auc, abs=1e-5)
    np.testing.assert_allclose(got.deletion, ref.deletion, atol=1e-5)
    np.testing.assert_allclose(got.insertion, ref.insertion, atol=1e-5)


def test_curves_run_2_steps_plus_1_images_in_bounded_batches(model, x, heat):
    counting = _Counting(model)
    deletion_insertion_auc(counting, x, heat, 3, steps=16, batch_size=8)
    assert sum(counting.sizes) == 33 and max(counting.sizes) <= 8
    with pytest.raises(ValueError, match="batch_size"):
        deletion_insertion_auc(model, x, heat, 3, batch_size=65)


def test_curves_on_a_folded_engine_equal_the_model(model, x, heat):
    """The engine computes the same function: the same figures within float rounding."""
    engine = Predictor(model, input_size=SIZE, options=EngineOptions(backend="eager"))
    ref = _unbatched(model, x, heat, 3, steps=8)
    got = deletion_insertion_auc(engine, x, heat, 3, steps=8)
    assert got.deletion_auc == pytest.approx(ref.deletion_auc, abs=1e-5)
    assert got.insertion_auc == pytest.approx(ref.insertion_auc, abs=1e-5)


@pytest.mark.parametrize(("steps", "batch_size", "sizes"), [(16, 16, [11, 11, 11]), (8, 16, [8, 9]), (8, 17, [17]), (2, 1, [1] * 5), (3, 2, [2, 2, 1, 2])])
def test_curves_go_through_the_fewest_even_batches(model, x, heat, steps, batch_size, sizes):
    """No lone image in a batch of its own (it would cost nearly what a full batch costs), and
    the same figures whatever the batching."""
    seen = []

    def forward(batch):
        seen.append(batch.shape[0])
        return model(batch)

    got = deletion_insertion_auc(forward, x, heat, 3, steps=steps, batch_size=batch_size)
    assert seen == sizes
    one = deletion_insertion_auc(model, x, heat, 3, steps=steps, batch_size=1)
    assert got.deletion == pytest.approx(one.deletion, abs=1e-5) and got.insertion == pytest.approx(one.insertion, abs=1e-5)


def test_fp32_quality_engine_and_attributor_curves(model, x):
    engine = quality_engine(model, input_size=SIZE, precision="fp32")
    assert engine.precision == "fp32"
    fast = Attributor(model, AttributorOptions(curves=engine, curve_batch=4))
    r = fast.attribute(x, "saliency", target=3, auc_steps=8)
    ref = _unbatched(model, x, r.heatmap, 3, steps=8)
    assert r.quality["deletion_auc"] == pytest.approx(ref.deletion_auc, abs=1e-5)
    assert r.quality["insertion_auc"] == pytest.approx(ref.insertion_auc, abs=1e-5)
    later = fast.curves(x, r.heatmap, 3, steps=8)  # the figures on their own, after the map
    assert later.deletion_auc == pytest.approx(r.quality["deletion_auc"], abs=1e-6)
    assert later.insertion == pytest.approx(r.curves["insertion"], abs=1e-6)


@pytest.mark.skipif(not NATIVE_BF16, reason="this CPU computes bfloat16 by emulation")
def test_bf16_quality_engine_within_its_tolerance(model, x, heat):
    engine = quality_engine(model, input_size=SIZE, precision="bf16")
    assert engine.precision == "bf16", engine.notes
    ref = _unbatched(model, x, heat, 3, steps=8)
    got = deletion_insertion_auc(engine, x, heat, 3, steps=8)
    # every probability within a factor exp(+-CURVE_TOLERANCE) of float32's, so each AUC too
    bound = np.exp(CURVE_TOLERANCE)
    for a, b in ((got.deletion_auc, ref.deletion_auc), (got.insertion_auc, ref.insertion_auc)):
        assert b / bound <= a <= b * bound


def test_quality_engine_falls_back_to_float32_and_says_why(model):
    if NATIVE_BF16:
        engine = quality_engine(model, input_size=SIZE, tolerance=0.0)  # bf16 can never be exact
        assert engine.precision == "fp32"
        assert "log-probabilities differ from float32" in engine.notes[0]


@pytest.mark.skipif(not NATIVE_BF16, reason="this CPU computes bfloat16 by emulation")
@pytest.mark.parametrize("bf16_faster", [True, False])
def test_auto_quality_engine_takes_the_faster(model, monkeypatch, bf16_faster):
    def seconds(forwards, batch):
        assert batch.shape[0] == fast.TIMING_BATCH
        return [1.0 if (f.precision == "bf16") == bf16_faster else 2.0 for f in forwards]

    monkeypatch.setattr(fast, "_seconds", seconds)
    engine = quality_engine(model, input_size=SIZE)
    if bf16_faster:
        assert engine.precision == "bf16" and engine.notes == []
    else:
        assert engine.precision == "fp32"
        assert engine.notes[0].startswith("bf16 not used: ") and "float32 was faster here (125 against 250 ms" in engine.notes[0]


def test_without_native_bf16_everything_stays_float32(model, monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    engine = quality_engine(model, input_size=SIZE)
    assert engine.precision == "fp32" and "neither AVX512-BF16 nor AMX" in engine.notes[0]
    choice = choose_attribution_precision(model, PrecisionCheck(images=1, size=SIZE))
    assert choice.precision == "fp32" and "neither AVX512-BF16 nor AMX" in choice.reason
    assert choice.precision_for("saliency") == choice.precision_for("layer_gradcam") == "fp32"


def test_fp32_requested_checks_nothing(model):
    choice = choose_attribution_precision(model, PrecisionCheck(requested="fp32"))
    assert choice.precision == "fp32" and choice.reason is None and choice.agreement == {}


@pytest.mark.skipif(not NATIVE_BF16, reason="this CPU computes bfloat16 by emulation")
def test_bf16_attributions_chosen_when_the_heat_maps_agree(model, x):
    # a random model's saliency is noise-like (Spearman ~0.87 here); the threshold is the knob
    choice = choose_attribution_precision(model, PrecisionCheck(images=2, size=SIZE, threshold=0.5))
    assert set(choice.agreement) == {"saliency", "integrated_gradients", "layer_gradcam"}
    assert choice.precision == "bf16", choice.reason
    assert choice.reason is None and min(choice.agreement.values()) >= 0.5
    for family, method in [("input", "smoothgrad"), ("integrated", "gradient_shap"), ("layer", "guided_gradcam")]:
        assert getattr(choice, family) == choice.precision_for(method) == "bf16", method
    # judged by none of the checks: float32 whatever they found
    assert [choice.precision_for(m) for m in ("deeplift", "guided_backprop", "occlusion")] == ["fp32"] * 3
    r = Attributor(model, AttributorOptions(precision="bf16")).attribute(x, "saliency", target=3, auc_steps=0)
    ref = Attributor(model).attribute(x, "saliency", target=3, auc_steps=0)
    assert r.precision == "bf16" and ref.precision == "fp32" and r.summary()["precision"] == "bf16"
    assert r.heatmap.dtype == torch.float32
    assert spearman(r.heatmap, ref.heatmap) >= 0.5
    assert not torch.equal(r.heatmap, ref.heatmap)  # it did run in bf16


@pytest.mark.skipif(not NATIVE_BF16, reason="this CPU computes bfloat16 by emulation")
def test_bf16_attributions_fall_back_when_the_check_fails(model):
    choice = choose_attribution_precision(model, PrecisionCheck(images=1, size=SIZE, threshold=1.01))
    assert choice.precision == "fp32"
    assert choice.reason.startswith("bf16 not used for input methods: saliency heat maps agree")
    assert "; integrated methods: integrated_gradients heat maps agree" in choice.reason
    assert "layer methods: layer_gradcam heat maps agree" in choice.reason
    assert choice.to_dict()["agreement"] == choice.agreement


@pytest.mark.skipif(not NATIVE_BF16, reason="this CPU computes bfloat16 by emulation")
def test_a_family_left_unchecked_stays_float32(model):
    choice = choose_attribution_precision(model, PrecisionCheck(images=1, size=SIZE, threshold=0.5, methods=("layer_gradcam",)))
    assert choice.precision == "mixed" and choice.layer == "bf16" and choice.input == choice.integrated == "fp32"
    assert choice.precision_for("smoothgrad") == "fp32" and choice.precision_for("guided_gradcam") == "bf16"
    assert choice.precision_for("integrated_gradients") == "fp32"
    assert "input methods: saliency not checked" in choice.reason
    assert "integrated methods: integrated_gradients not checked" in choice.reason
    assert choice.to_dict()["integrated_methods"] == "fp32" and choice.to_dict()["layer_methods"] == "bf16"


def test_spearman_matches_scipy_with_ties():
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 5, (200,), generator=g).float()
    b = a + torch.rand(200, generator=g) * 3
    assert spearman(a, b) == pytest.approx(spearmanr(a.numpy(), b.numpy()).statistic, abs=1e-9)
    assert spearman(a, a) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert spearman(torch.zeros(5), torch.zeros(5)) == 1.0


def test_curves_on_their_own_check_steps_and_target(model, x, heat):
    attributor = Attributor(model)
    for steps in (0, 65, True, 2.5):
        with pytest.raises(ParamError, match="steps"):
            attributor.curves(x, heat, 3, steps=steps)
    with pytest.raises(ParamError, match="target"):
        attributor.curves(x, heat, 99, steps=2)


def test_options_are_checked():
    with pytest.raises(ValueError):
        AttributorOptions(precision="fp16")
    with pytest.raises(ValueError):
        AttributorOptions(curve_batch=0)
    with pytest.raises(ValueError):
        PrecisionCheck(requested="int8")


@pytest.mark.parametrize("method, params", [
    ("saliency", {"auc_steps": 6}),
    ("integrated_gradients", {"n_steps": 4, "auc_steps": 5, "infidelity": True}),
    ("layer_gradcam", {"layer": "exit.block8.sep1", "part": "pointwise", "auc_steps": 4}),
])
def test_quality_after_the_map_equals_one_computation(model, x, method, params):
    """Map first (no figures), figures after: the same result as computing both at once."""
    from xception_core.attributions import AttributionRequest

    attributor = Attributor(model, AttributorOptions(curves=Predictor(model, input_size=SIZE)))
    layer = {k: params.pop(k) for k in ("layer", "part") if k in params}
    request = AttributionRequest(method, 2, params=params, **layer)
    whole = attributor.attribute(x, request)
    bare = attributor.attribute(x, AttributionRequest(method, 2, params={**params, "auc_steps": 0, "infidelity": False}, **layer))
    assert "deletion_auc" not in bare.quality
    after = attributor.quality(x, bare, request)
    assert after.quality == whole.quality and after.curves == whole.curves and after.params == whole.params
    assert torch.equal(after.attribution, whole.attribution) and torch.equal(after.heatmap, whole.heatmap)
    assert bare.quality.get("deletion_auc") is None  # the map's result is not modified
    with pytest.raises(ValueError):
        attributor.quality(x, bare, AttributionRequest(method, 2, params={**params, "seed": 5}, **layer))


def test_quality_engine_reuses_a_float32_predictor_without_changing_it(model):
    served = Predictor(model, input_size=SIZE)
    notes = list(served.notes)
    engine = quality_engine(model, input_size=SIZE, precision="fp32", reuse=served)
    assert engine.model is served.model and engine.notes == notes
    with pytest.raises(ValueError):
        quality_engine(model, input_size=SIZE, reuse=Predictor(model, input_size=SIZE, options=EngineOptions(precision="bf16"), require_native=False))
