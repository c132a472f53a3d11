"""Attributions: every method equals a direct Captum call; validation; locking; quality; rendering."""

from __future__ import annotations

import io
import json
import math
import threading
import warnings

import numpy as np
import pytest
import torch
from captum.attr import (
    DeepLift,
    GradientShap,
    GuidedBackprop,
    GuidedGradCam,
    InputXGradient,
    IntegratedGradients,
    LayerAttribution,
    LayerGradCam,
    LayerGradientXActivation,
    NoiseTunnel,
    Occlusion,
    Saliency,
)
from captum.metrics import infidelity, sensitivity_max
from PIL import Image
from torch import nn

from support import calibrate_batchnorm, photo_batch
from xception_core.attributions import (
    METHODS,
    AttributionError,
    Attributor,
    InputError,
    ParamError,
    UnknownMethodError,
    deletion_insertion_auc,
    model_lock,
    occlusion_positions,
)
from xception_core.introspect import UnknownLayerError
from xception_core.model import Xception
from xception_core.render import (
    RenderError,
    colormap_names,
    heatmap_png,
    montage_png,
    overlay_png,
    to_png,
)

SIZE = 72
LAYER = "middle.block5.sep2"

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def model(small_config, photos):
    torch.manual_seed(0)
    m = Xception(small_config)
    calibrate_batchnorm(m, photo_batch(photos, SIZE))
    return m


@pytest.fixture(scope="module")
def attributor(model):
    return Attributor(model)


@pytest.fixture(scope="module")
def x(photos):
    return photo_batch(photos[1:2], SIZE)


def close(a, b, atol=1e-5, rtol=1e-4):
    torch.testing.assert_close(a.float().cpu(), b.float().cpu(), atol=atol, rtol=rtol)


def seeded(seed):
    torch.manual_seed(seed)
    np.random.seed(seed)


# --- every input method equals Captum called directly -----------------------

TARGET = 3


def _ig(m, x):
    return IntegratedGradients(m).attribute(
        x, baselines=torch.full_like(x, -1.0), target=TARGET, n_steps=6, internal_batch_size=3,
        return_convergence_delta=True,
    )


def _smooth(m, x):
    seeded(3)
    return NoiseTunnel(Saliency(m)).attribute(
        x, nt_type="smoothgrad", nt_samples=4, nt_samples_batch_size=16, stdevs=0.2, target=TARGET, abs=True
    )


def _shap(m, x):
    seeded(5)
    return GradientShap(m).attribute(x, baselines=torch.zeros_like(x), n_samples=4, stdevs=0.09, target=TARGET)


def _occ(m, x):
    return Occlusion(m).attribute(
        x, sliding_window_shapes=(3, 32, 32), strides=(3, 16, 16), baselines=-1.0, target=TARGET,
        perturbations_per_eval=8,
    )


CASES = {
    "integrated_gradients": (dict(n_steps=6, internal_batch_size=3, baseline="black"), _ig),
    "saliency": (dict(absolute=False), lambda m, x: Saliency(m).attribute(x, target=TARGET, abs=False)),
    "smoothgrad": (dict(nt_samples=4, stdev=0.2, seed=3), _smooth),
    "gradient_shap": (dict(n_samples=4, seed=5), _shap),
    "deeplift": (
        dict(),
        lambda m, x: DeepLift(m).attribute(x, torch.zeros_like(x), target=TARGET, return_convergence_delta=True),
    ),
    "guided_backprop": (dict(), lambda m, x: GuidedBackprop(m).attribute(x, target=TARGET)),
    "input_x_gradient": (dict(), lambda m, x: InputXGradient(m).attribute(x, target=TARGET)),
    "occlusion": (dict(window=32, stride=16, baseline="black", internal_batch_size=8), _occ),
}


@pytest.mark.parametrize("method", list(CASES))
def test_input_method_equals_direct_captum(model, attributor, x, method):
    params, direct = CASES[method]
    result = attributor.attribute(x, method, target=TARGET, auc_steps=0, **params)
    expected = direct(model, x.clone())
    delta = None
    if isinstance(expected, tuple):
        expected, delta = expected
    assert result.attribution.shape == (3, SIZE, SIZE) and result.attribution.dtype == torch.float32
    close(result.attribution, expected[0])
    close(result.heatmap, expected[0].sum(0))
    assert result.heatmap.shape == (SIZE, SIZE)
    assert result.target == TARGET and result.method == method
    if delta is not None:
        assert result.quality["convergence_delta"] == pytest.approx(delta.abs().item(), abs=1e-5, rel=1e-3)
    else:
        assert "convergence_delta" not in result.quality
    for name, value in params.items():
        assert result.params[name] == value


def test_gradient_shap_chunks_many_samples(model, attributor, x):
    """3 samples in chunks of 2: two Captum calls (2 samples, then 1) drawing in turn from the
    seeded generator, averaged with their sample counts as weights."""
    r = attributor.attribute(
        x, "gradient_shap", target=1, n_samples=3, internal_batch_size=2, baseline="zero", seed=4, auc_steps=0
    )
    seeded(4)
    shap = GradientShap(model)
    first = shap.attribute(x, baselines=torch.zeros_like(x), n_samples=2, stdevs=0.09, target=1)
    second = shap.attribute(x, baselines=torch.zeros_like(x), n_samples=1, stdevs=0.09, target=1)
    close(r.attribution[None], (2 * first + second) / 3)
    assert r.attribution.abs().sum() > 0


# --- layer methods ----------------------------------------------------------


@pytest.mark.parametrize("part,relu", [("depthwise", True), ("pointwise", True), ("pointwise", False)])
def test_layer_gradcam_equals_captum_on_the_part_module(model, attributor, x, part, relu):
    module = getattr(model.separable_layers()[LAYER], part)
    r = attributor.attribute(x, "layer_gradcam", target=2, layer=LAYER, part=part, relu_attributions=relu, auc_steps=0)
    expected = LayerGradCam(model, module).attribute(x.clone(), target=2, relu_attributions=relu)
    assert r.attribution.shape == expected.shape[1:] and r.attribution.shape[0] == 1
    close(r.attribution, expected[0])
    close(r.heatmap, LayerAttribution.interpolate(expected, (SIZE, SIZE), interpolate_mode="bilinear")[0, 0])
    assert (r.layer, r.part) == (LAYER, part)


def test_guided_gradcam_equals_captum(model, attributor, x):
    module = model.separable_layers()["exit.block8.sep1"].pointwise
    r = attributor.attribute(x, "guided_gradcam", target=4, layer="exit.block8.sep1", part="pointwise", auc_steps=0)
    expected = GuidedGradCam(model, module).attribute(x.clone(), target=4, interpolate_mode="bilinear")
    close(r.attribution, expected[0])
    close(r.heatmap, expected[0].sum(0))


def test_channel_importance_equals_gradient_x_activation(model, attributor, x, part="depthwise"):
    layer = model.separable_layers()["entry.block3.sep1"]
    r = attributor.attribute(x, "channel_importance", target=0, layer="entry.block3.sep1", part=part, auc_steps=0)
    gxa = LayerGradientXActivation(model, getattr(layer, part)).attribute(x.clone(), target=0)
    close(r.attribution, gxa[0].sum(dim=(1, 2)), atol=1e-5, rtol=1e-4)
    assert r.attribution.shape == (gxa.shape[1],)
    scores = [s for _, s in r.channel_ranking]
    assert scores == sorted(scores, reverse=True)
    assert sorted(c for c, _ in r.channel_ranking) == list(range(gxa.shape[1]))
    assert r.heatmap.shape == (SIZE, SIZE)


def test_default_target_is_the_prediction(model, attributor, x):
    with torch.no_grad():
        logits = model(x)
    r = attributor.attribute(x, "saliency", auc_steps=0)
    assert r.target == r.predicted == int(logits.argmax())
    assert r.probability == pytest.approx(torch.softmax(logits, 1)[0, r.target].item(), rel=1e-5)


def test_inference_mode_input_and_caller(model, attributor, x):
    reference = attributor.attribute(x, "saliency", target=1, auc_steps=0)
    with torch.inference_mode():
        xi = x.clone()
        r = attributor.attribute(xi, "saliency", target=1, auc_steps=0)
    close(r.attribution, reference.attribution)
    with torch.no_grad():
        r2 = attributor.attribute(x, "input_x_gradient", target=1, auc_steps=0)
    assert r2.attribution.abs().sum() > 0


# --- random methods: reproducible, and the caller's RNG is untouched ----------


def test_seeded_methods_are_reproducible_and_leave_global_rng_alone(attributor, x):
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()
    a = attributor.attribute(x, "smoothgrad", target=1, nt_samples=2, auc_steps=0, seed=7)
    b = attributor.attribute(x, "smoothgrad", target=1, nt_samples=2, auc_steps=0, seed=7)
    c = attributor.attribute(x, "smoothgrad", target=1, nt_samples=2, auc_steps=0, seed=8)
    assert torch.equal(torch.get_rng_state(), torch_state)
    after = np.random.get_state()
    assert np.array_equal(after[1], np_state[1]) and after[2] == np_state[2]
    assert torch.equal(a.attribution, b.attribution)
    assert not torch.equal(a.attribution, c.attribution)


# --- validation ---------------------------------------------------------------

VALIDATION = [
    (dict(method="lime"), UnknownMethodError, "integrated_gradients"),
    (dict(method="saliency", n_steps=4), ParamError, "allowed: absolute"),
    (dict(method="integrated_gradients", n_steps=1000), ParamError, "n_steps must be between 1 and 256, got 1000"),
    (dict(method="integrated_gradients", n_steps=0), ParamError, "between 1 and 256"),
    (dict(method="integrated_gradients", internal_batch_size=65), ParamError, "between 1 and 64"),
    (dict(method="smoothgrad", stdev=1.5), ParamError, "stdev must be between 0 and 1, got 1.5"),
    (dict(method="smoothgrad", nt_samples=65), ParamError, "nt_samples must be between 1 and 64"),
    (dict(method="gradient_shap", n_samples=0), ParamError, "n_samples"),
    (dict(method="integrated_gradients", n_steps=2.5), ParamError, "n_steps must be an integer"),
    (dict(method="integrated_gradients", n_steps=True), ParamError, "must be an integer"),
    (dict(method="integrated_gradients", n_steps="many"), ParamError, "must be an integer"),
    (dict(method="smoothgrad", stdev="x"), ParamError, "must be a number"),
    (dict(method="smoothgrad", stdev=float("nan")), ParamError, "finite"),
    (dict(method="saliency", absolute="maybe"), ParamError, "true or false"),
    (dict(method="integrated_gradients", baseline="blur"), ParamError, "baseline must be one of zero, black"),
    (dict(method="saliency", target=7), ParamError, "target must be in 0..6"),
    (dict(method="saliency", target=-1), ParamError, "target must be in 0..6"),
    (dict(method="saliency", target=1.0), ParamError, "target"),
    (dict(method="layer_gradcam"), ParamError, r"needs layer \(one of entry\.block2\.sep1, .*\) and part \(depthwise or pointwise\)"),
    (dict(method="layer_gradcam", layer=LAYER), ParamError, "needs part=depthwise or part=pointwise"),
    (dict(method="layer_gradcam", layer=LAYER, part="both"), ParamError, "needs part=depthwise or part=pointwise"),
    (dict(method="saliency", layer=LAYER, part="depthwise"), ParamError, "only for layer methods"),
    (dict(method="integrated_gradients", part="depthwise"), ParamError, "only for layer methods"),
    (dict(method="occlusion", window=128), ParamError, r"window=128 is out of range; allowed range: 4\.\.72 \(at most the input size 72\)"),
    (dict(method="occlusion", window=8, stride=16), ParamError, r"stride=16 is out of range; allowed range: 2\.\.8 \(at most window\)"),
    (dict(method="occlusion", window=4, stride=2), ParamError, "limit is 1024"),
    (dict(method="occlusion", window=200), ParamError, "window must be between 4 and 128"),
    (dict(method="saliency", seed=-1), ParamError, "seed"),
    (dict(method="saliency", auc_steps=65), ParamError, "auc_steps must be between 0 and 64"),
]


@pytest.mark.parametrize("kwargs,exc,match", VALIDATION, ids=[str(i) for i in range(len(VALIDATION))])
def test_validation_errors(attributor, x, kwargs, exc, match):
    with pytest.raises(exc, match=match) as info:
        attributor.attribute(x, **kwargs)
    assert isinstance(info.value, AttributionError) and isinstance(info.value, ValueError)
    if exc is ParamError:
        assert info.value.param is not None


def test_unknown_layer_is_introspects_error(attributor, x):
    with pytest.raises(UnknownLayerError, match="unknown layer 'middle.block99.sep1'; valid choices: entry.block2.sep1, "):
        attributor.attribute(x, "layer_gradcam", layer="middle.block99.sep1", part="depthwise")


@pytest.mark.parametrize(
    "bad", [torch.zeros(2, 3, SIZE, SIZE), torch.zeros(1, 1, SIZE, SIZE), torch.zeros(1, 3, SIZE, SIZE, dtype=torch.long)]
)
def test_bad_inputs(attributor, bad):
    with pytest.raises(InputError):
        attributor.attribute(bad, "saliency")
    nan = torch.full((1, 3, SIZE, SIZE), float("nan"))
    with pytest.raises(InputError, match="NaN"):
        attributor.attribute(nan, "saliency")


def test_string_params_are_coerced(attributor, x):
    r = attributor.attribute(x, "integrated_gradients", target=0, n_steps="2", baseline="zero", auc_steps="0", infidelity="false")
    assert r.params["n_steps"] == 2 and r.params["infidelity"] is False and r.params["auc_steps"] == 0


def test_catalogue_is_documented_data():
    expected = {
        "integrated_gradients", "saliency", "smoothgrad", "gradient_shap", "deeplift", "guided_backprop",
        "input_x_gradient", "occlusion", "layer_gradcam", "guided_gradcam", "channel_importance",
    }
    assert set(METHODS) == expected
    assert {n for n, s in METHODS.items() if s.layer_method} == {"layer_gradcam", "guided_gradcam", "channel_importance"}
    assert {n for n, s in METHODS.items() if s.hooks} == {
        "deeplift", "guided_backprop", "layer_gradcam", "guided_gradcam", "channel_importance"
    }
    ig = METHODS["integrated_gradients"]
    assert (ig.param("n_steps").default, ig.param("n_steps").minimum, ig.param("n_steps").maximum) == (32, 1, 256)
    assert METHODS["occlusion"].param("window").maximum == 128
    for spec in METHODS.values():
        assert spec.resolve({}) == spec.defaults()  # every default is valid
        assert {"seed", "auc_steps", "infidelity", "sensitivity"} <= set(spec.param_names)
        json.dumps(spec.to_dict())
    assert "captum#1276" in METHODS["deeplift"].description
    assert occlusion_positions(299, 299, 32, 16) == 18 * 18


# --- quality figures ------------------------------------------------------------


def test_quality_figures_are_the_ones_asked_for(attributor, x):
    """Which figures come back; their values are compared with references below."""
    r = attributor.attribute(x, "saliency", target=2, auc_steps=4)
    assert set(r.quality) == {"deletion_auc", "insertion_auc"}
    assert r.curves["fractions"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert r.curves["deletion"][0] == pytest.approx(r.probability, rel=1e-4)  # nothing deleted yet
    r = attributor.attribute(
        x, "layer_gradcam", target=2, layer=LAYER, part="pointwise", auc_steps=0, infidelity=True, sensitivity=True
    )
    assert set(r.quality) == {"infidelity", "sensitivity_max"} and r.curves == {}
    assert json.loads(json.dumps(r.summary()))["quality"] == r.quality


# The documented perturbations (method catalogue, API reference): infidelity draws 16 Gaussian
# perturbations I of std 0.1 and compares I . attribution with f(x) - f(x - I); sensitivity_max
# re-runs the method on 4 inputs perturbed uniformly within radius 0.02.
INFIDELITY_STD, INFIDELITY_N = 0.1, 16
SENSITIVITY_RADIUS, SENSITIVITY_N = 0.02, 4


def _captum_infidelity(model, x, attribution, target, seed):
    def perturb(inputs):
        noise = torch.randn(inputs.shape) * INFIDELITY_STD
        return noise, inputs - noise

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        value = infidelity(model, perturb, x, attribution, target=target, n_perturb_samples=INFIDELITY_N, normalize=True)
    return float(value)


def _captum_sensitivity(explain, x, target, seed):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        value = sensitivity_max(
            explain, x, perturb_radius=SENSITIVITY_RADIUS, n_perturb_samples=SENSITIVITY_N, target=target
        )
    return float(value)


@pytest.mark.parametrize("seed", [0, 7])
def test_input_method_quality_figures_equal_captum_metrics(model, attributor, x, seed):
    """Saliency: infidelity and sensitivity_max as captum.metrics computes them with the same
    seed, on an attribution computed here by Captum."""
    target = 2
    r = attributor.attribute(
        x, "saliency", target=target, absolute=False, auc_steps=0, infidelity=True, sensitivity=True, seed=seed
    )
    saliency = Saliency(model)
    expected_infidelity = _captum_infidelity(model, x, saliency.attribute(x, target=target, abs=False), target, seed)
    expected_sensitivity = _captum_sensitivity(
        lambda inputs, target: saliency.attribute(inputs, target=target, abs=False), x, target, seed
    )
    assert r.quality["infidelity"] == pytest.approx(expected_infidelity, rel=1e-4)
    assert r.quality["sensitivity_max"] == pytest.approx(expected_sensitivity, rel=1e-4)


def test_layer_method_quality_figures_equal_captum_metrics(model, attributor, x):
    """Grad-CAM: infidelity of the upsampled map shared by the colour channels; sensitivity_max
    of the layer-resolution map."""
    target, seed = 4, 3
    module = model.separable_layers()[LAYER].pointwise
    r = attributor.attribute(
        x, "layer_gradcam", target=target, layer=LAYER, part="pointwise", auc_steps=0,
        infidelity=True, sensitivity=True, seed=seed,
    )
    gradcam = LayerGradCam(model, module)
    cam = gradcam.attribute(x, target=target, relu_attributions=True)
    heat = LayerAttribution.interpolate(cam, (SIZE, SIZE), interpolate_mode="bilinear")
    expected_infidelity = _captum_infidelity(model, x, heat.expand_as(x) / 3, target, seed)
    # captum.metrics iterates over what the explanation returns: a tuple, as an input method
    # returns for the tuple of inputs it is given; a layer method's single map needs wrapping
    expected_sensitivity = _captum_sensitivity(
        lambda inputs, target: (gradcam.attribute(inputs, target=target, relu_attributions=True),), x, target, seed
    )
    assert r.quality["infidelity"] == pytest.approx(expected_infidelity, rel=1e-4)
    assert r.quality["sensitivity_max"] == pytest.approx(expected_sensitivity, rel=1e-4)


def _brute_force_deletion_insertion(model, x, heat, target, steps, baseline, start):
    """One image at a time: rank the pixels (largest first, ties in raster order), change the
    first round(k n / steps) of them in every colour channel, read the softmax probability."""
    h, w = heat.shape
    n = h * w
    values = heat.flatten().tolist()
    ranked = sorted(range(n), key=lambda i: (-values[i], i))
    fractions, deletion, insertion = [], [], []
    for k in range(steps + 1):
        count = round(k * n / steps)
        mask = torch.zeros(n, dtype=torch.bool)
        mask[ranked[:count]] = True
        mask = mask.view(1, 1, h, w)
        with torch.no_grad():
            deleted = model(torch.where(mask, torch.full_like(x, baseline), x))
            inserted = model(torch.where(mask, x, start))
        deletion.append(float(torch.softmax(deleted.double(), 1)[0, target]))
        insertion.append(float(torch.softmax(inserted.double(), 1)[0, target]))
        fractions.append(count / n)
    return np.trapezoid(deletion, fractions), np.trapezoid(insertion, fractions), deletion, insertion


def _scipy_blur(x, sigma):
    """Gaussian blur per colour channel, mirrored at the border, radius ceil(3 sigma)."""
    from scipy.ndimage import gaussian_filter

    radius = math.ceil(3 * sigma)
    blurred = [gaussian_filter(c.double().numpy(), sigma, mode="mirror", radius=radius) for c in x[0]]
    return torch.from_numpy(np.stack(blurred)).float()[None]


def test_deletion_insertion_equal_a_brute_force_reference(model, x):
    target = 1
    saliency = Saliency(model).attribute(x, target=target)[0].sum(0)
    heat = torch.round(saliency / saliency.max() * 6) / 6  # seven levels: many ties
    steps = 8
    got = deletion_insertion_auc(model, x, heat, target, steps=steps, baseline=0.5, insertion_start="baseline")
    start = torch.full_like(x, 0.5)
    deletion_auc, insertion_auc, deletion, insertion = _brute_force_deletion_insertion(
        model, x, heat, target, steps, 0.5, start
    )
    assert got.fractions == [k / steps for k in range(steps + 1)]
    np.testing.assert_allclose(got.deletion, deletion, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got.insertion, insertion, rtol=1e-4, atol=1e-6)
    assert got.deletion_auc == pytest.approx(deletion_auc, rel=1e-4)
    assert got.insertion_auc == pytest.approx(insertion_auc, rel=1e-4)
    # the default insertion start: x blurred with sigma max(1, 2.5 % of the side)
    sigma = max(1.0, 0.025 * SIZE)
    got = deletion_insertion_auc(model, x, heat, target, steps=steps)
    _, insertion_auc, _, insertion = _brute_force_deletion_insertion(model, x, heat, target, steps, 0.0, _scipy_blur(x, sigma))
    np.testing.assert_allclose(got.insertion, insertion, rtol=1e-4, atol=1e-6)
    assert got.insertion_auc == pytest.approx(insertion_auc, rel=1e-4)
    # and a sigma given by the caller
    got = deletion_insertion_auc(model, x, heat, target, steps=steps, blur_sigma=3.0)
    _, _, _, insertion = _brute_force_deletion_insertion(model, x, heat, target, steps, 0.0, _scipy_blur(x, 3.0))
    np.testing.assert_allclose(got.insertion, insertion, rtol=1e-4, atol=1e-6)


def test_attributor_reports_the_deletion_insertion_of_its_heatmap(model, attributor, x):
    r = attributor.attribute(x, "saliency", target=5, auc_steps=4)
    deletion_auc, insertion_auc, deletion, insertion = _brute_force_deletion_insertion(
        model, x, r.heatmap, 5, 4, 0.0, _scipy_blur(x, max(1.0, 0.025 * SIZE))
    )
    assert r.quality["deletion_auc"] == pytest.approx(deletion_auc, rel=1e-4)
    assert r.quality["insertion_auc"] == pytest.approx(insertion_auc, rel=1e-4)
    np.testing.assert_allclose(r.curves["deletion"], deletion, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(r.curves["insertion"], insertion, rtol=1e-4, atol=1e-6)


class _MaskModel(nn.Module):
    """Two classes; logit 0 = k * (mean of the left half - 0.5): only the left half matters."""

    def __init__(self, size: int, k: float = 40.0) -> None:
        super().__init__()
        mask = torch.zeros(1, 3, size, size)
        mask[..., : size // 2] = 1
        self.register_buffer("mask", mask)
        self.k = k

    def forward(self, x):
        s = (x * self.mask).sum(dim=(1, 2, 3)) / self.mask.sum()
        return torch.stack([self.k * (s - 0.5), torch.zeros_like(s)], dim=1)


def test_deletion_insertion_auc_on_a_known_case():
    size = 32
    m = _MaskModel(size).eval()
    x = torch.ones(1, 3, size, size)
    good = m.mask[0, 0].clone()  # the left half ranked first
    bad = 1 - good
    kw = dict(steps=16, baseline=0.0, insertion_start="baseline")
    g = deletion_insertion_auc(m, x, good, 0, **kw)
    b = deletion_insertion_auc(m, x, bad, 0, **kw)
    # After k of 16 steps 64 k pixels are changed, a share c of the left half's 512 (the ranked
    # left half first: "good"; the right half first: "bad"), and the probability is
    # sigmoid(40 (s - 1/2)) of the left half's mean s. Good deletion collapses once a quarter of
    # the pixels are gone: areas near 0.25 (good deletion, bad insertion) and 0.75.
    def prob(s):
        return 1 / (1 + math.exp(-40 * (s - 0.5)))

    good_share = [min(64 * k, 512) / 512 for k in range(17)]
    bad_share = [max(64 * k - 512, 0) / 512 for k in range(17)]
    for result, share in ((g, good_share), (b, bad_share)):
        deletion, insertion = [prob(1 - c) for c in share], [prob(c) for c in share]
        assert result.deletion == pytest.approx(deletion, rel=1e-5, abs=1e-9)
        assert result.insertion == pytest.approx(insertion, rel=1e-5, abs=1e-9)
        assert result.deletion_auc == pytest.approx(float(np.trapezoid(deletion, dx=1 / 16)), rel=1e-5)
        assert result.insertion_auc == pytest.approx(float(np.trapezoid(insertion, dx=1 / 16)), rel=1e-5)
    assert g.deletion_auc == pytest.approx(0.25, abs=0.02) and b.deletion_auc == pytest.approx(0.75, abs=0.02)
    rnd = deletion_insertion_auc(m, x, torch.rand(size, size, generator=torch.Generator().manual_seed(0)), 0, **kw)
    assert g.deletion_auc < rnd.deletion_auc < b.deletion_auc
    assert g.insertion_auc > rnd.insertion_auc > b.insertion_auc
    with pytest.raises(ValueError):
        deletion_insertion_auc(m, x, torch.zeros(8, 8), 0)


def test_deletion_insertion_curves_do_not_depend_on_the_batching():
    """16 steps (17 points, the default) in batches of 5, 1 or 16: the same known curves; the
    image may come without its batch dimension; NaN scores rank last."""
    size = 32
    m = _MaskModel(size).eval()
    x = torch.ones(1, 3, size, size)
    good = m.mask[0, 0].clone()
    share = [min(64 * k, 512) / 512 for k in range(17)]
    deletion = [1 / (1 + math.exp(-40 * (0.5 - c))) for c in share]
    for batch_size in (5, 1, 16, 64):  # 64: the largest allowed
        r = deletion_insertion_auc(m, x[0], good, 0, baseline=0.0, insertion_start="baseline", batch_size=batch_size)
        assert r.fractions == [k / 16 for k in range(17)]
        assert r.deletion == pytest.approx(deletion, rel=1e-5, abs=1e-9)
    r = deletion_insertion_auc(m, x, good, 0, steps=1, baseline=0.0, insertion_start="baseline")  # the fewest steps
    assert r.fractions == [0.0, 1.0]
    assert r.deletion == pytest.approx([deletion[0], deletion[16]], rel=1e-5, abs=1e-9)
    nan_right = torch.where(good > 0, good, torch.full_like(good, float("nan")))
    r = deletion_insertion_auc(m, x, nan_right, 0, baseline=0.0, insertion_start="baseline")
    assert r.deletion == pytest.approx(deletion, rel=1e-5, abs=1e-9)


def test_nan_scores_rank_after_negative_ones():
    """A NaN is no evidence at all: pixels scored NaN are changed after every scored pixel, even
    after those with negative scores (the left half, -1 here, goes first: the "good" curve)."""
    size = 32
    m = _MaskModel(size).eval()
    x = torch.ones(1, 3, size, size)
    left = m.mask[0, 0] > 0
    heat = torch.where(left, torch.full((size, size), -1.0), torch.full((size, size), float("nan")))
    share = [min(64 * k, 512) / 512 for k in range(17)]
    r = deletion_insertion_auc(m, x, heat, 0, baseline=0.0, insertion_start="baseline")
    assert r.deletion == pytest.approx([1 / (1 + math.exp(-40 * (0.5 - c))) for c in share], rel=1e-5, abs=1e-9)


def test_the_forward_gets_float32_batches_whatever_the_dtypes_given():
    """A float32 model takes float32 images only: a float64 image, heatmap or baseline tensor
    is cast first, and the curves are the float32 ones."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 2, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    heat = torch.rand(8, 8, generator=torch.Generator().manual_seed(2))
    baseline = torch.tensor([0.1, -0.2, 0.3]).view(1, 3, 1, 1)
    for start in ("blur", "baseline"):
        expected = deletion_insertion_auc(model, x, heat, 0, steps=4, baseline=baseline, insertion_start=start)
        got = deletion_insertion_auc(model, x.double(), heat.double(), 0, steps=4, baseline=baseline.double(),
                                     insertion_start=start)
        assert got.deletion == pytest.approx(expected.deletion, rel=1e-6)
        assert got.insertion == pytest.approx(expected.insertion, rel=1e-6)


def test_deletion_insertion_refuses_bad_arguments_with_what_to_fix():
    m = _MaskModel(8).eval()
    x, heat = torch.ones(1, 3, 8, 8), torch.zeros(8, 8)
    cases = [
        (dict(x=x, heatmap=heat, steps=0), "^steps must be >= 1$"),
        (dict(x=torch.ones(2, 3, 8, 8), heatmap=heat), r"^x must be one image \[1, C, H, W\], got \(2, 3, 8, 8\)$"),
        (dict(x=x, heatmap=torch.zeros(8, 4)), r"^heatmap must be 8x8 like the input, got \(8, 4\)$"),
        (dict(x=x, heatmap=heat, insertion_start="noise"), "^insertion_start must be 'blur' or 'baseline'$"),
        (dict(x=x, heatmap=heat, batch_size=65), r"^batch_size must be in 1\.\.64, got 65$"),
        (dict(x=x, heatmap=heat, batch_size=0), r"^batch_size must be in 1\.\.64, got 0$"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            deletion_insertion_auc(m, target=0, **kwargs)


@pytest.mark.parametrize("shape, sigma", [((6, 10), 3.0), ((10, 6), 3.0), ((12, 12), 0.3), ((9, 7), 1.5)])
def test_insertion_blur_is_a_gaussian_blur(shape, sigma):
    """Against scipy: radius ceil(3 sigma), at least 1 and at most the shorter side - 1, mirrored borders."""
    from scipy.ndimage import gaussian_filter

    from xception_core.attributions.faithfulness import _gaussian_blur

    x = torch.rand(1, 3, *shape, generator=torch.Generator().manual_seed(0))
    radius = min(max(1, math.ceil(3 * sigma)), shape[0] - 1, shape[1] - 1)
    expected = np.stack([gaussian_filter(c.double().numpy(), sigma, mode="mirror", radius=radius) for c in x[0]])
    np.testing.assert_allclose(_gaussian_blur(x, sigma)[0].numpy(), expected, rtol=1e-5, atol=1e-6)


# --- concurrency ------------------------------------------------------------------


def _run_threads(fns):
    barrier = threading.Barrier(len(fns))
    out, errors = [None] * len(fns), []

    def work(i):
        try:
            barrier.wait()
            out[i] = fns[i]()
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(fns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    return out


def test_concurrent_layer_gradcam_matches_sequential(model, attributor, x):
    layers = ["entry.block2.sep1", "entry.block3.sep2", "middle.block5.sep1", "exit.block8.sep2"]
    parts = ["depthwise", "pointwise", "pointwise", "depthwise"]

    def call(i):
        return attributor.attribute(x, "layer_gradcam", target=i, layer=layers[i], part=parts[i], auc_steps=0)

    sequential = [call(i) for i in range(4)]
    other = Attributor(model)  # a second Attributor on the same model shares its lock
    assert other.lock is attributor.lock is model_lock(model)
    for _ in range(2):
        concurrent = _run_threads([lambda i=i: (attributor if i % 2 else other).attribute(
            x, "layer_gradcam", target=i, layer=layers[i], part=parts[i], auc_steps=0) for i in range(4)])
        for s, c in zip(sequential, concurrent):
            assert torch.equal(s.attribution, c.attribution)


def test_hook_methods_do_not_leak_into_concurrent_gradient_methods(attributor, x):
    """GuidedBackprop hooks every ReLU; a concurrent saliency must still see plain gradients."""
    plain = attributor.attribute(x, "saliency", target=1, absolute=False, auc_steps=0).attribution
    guided = attributor.attribute(x, "guided_backprop", target=1, auc_steps=0).attribution
    fns = []
    for i in range(4):
        if i % 2:
            fns.append(lambda: ("g", attributor.attribute(x, "guided_backprop", target=1, auc_steps=0).attribution))
        else:
            fns.append(lambda: ("s", attributor.attribute(x, "saliency", target=1, absolute=False, auc_steps=0).attribution))
    for kind, value in _run_threads(fns):
        assert torch.equal(value, plain if kind == "s" else guided)


# --- rendering ----------------------------------------------------------------------


def _png(data: bytes) -> Image.Image:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def test_to_png_and_heatmap_png():
    a = np.linspace(-1, 1, 30 * 20, dtype=np.float32).reshape(20, 30)
    img = _png(to_png(a, "magma"))
    assert img.size == (30, 20) and img.mode == "RGB"
    assert to_png(a, "magma") == to_png(torch.from_numpy(a), "magma")  # deterministic, tensors accepted
    _png(to_png(np.zeros((5, 5)), "gray"))  # constant map
    _png(to_png(a, "viridis", vmin=0, vmax=0.5))
    for cmap in colormap_names():
        assert _png(to_png(a, cmap)).size == (30, 20)
    for sign in ("positive", "negative", "absolute", "all"):
        assert _png(heatmap_png(a, sign=sign)).size == (30, 20)
    with pytest.raises(RenderError, match="colormap"):
        to_png(a, "hsv")
    with pytest.raises(RenderError):
        to_png(np.zeros((2, 3, 4)))
    assert set(colormap_names()) == {
        "viridis", "magma", "inferno", "plasma", "cividis", "gray", "jet", "turbo", "RdBu_r", "seismic", "coolwarm"
    }


@pytest.mark.parametrize("sign", ["positive", "negative", "absolute", "all"])
def test_overlay_png_sign_modes(photos, sign):
    image = photos[1][:60, :90]
    heat = torch.zeros(20, 30)
    heat[2:8, 2:8] = 1.0
    heat[12:18, 20:28] = -2.0
    out = _png(overlay_png(image, heat, sign=sign, opacity=0.6))
    assert out.size == (90, 60)
    arr = np.asarray(out)
    # far from both blobs nothing is painted; inside the selected blob something is
    assert np.array_equal(arr[30:33, 45:48], image[30:33, 45:48])
    pos_changed = not np.array_equal(arr[10:20, 10:20], image[10:20, 10:20])
    neg_changed = not np.array_equal(arr[42:50, 66:80], image[42:50, 66:80])
    assert pos_changed == (sign in ("positive", "absolute", "all"))
    assert neg_changed == (sign in ("negative", "absolute", "all"))
    assert overlay_png(Image.fromarray(image), heat, sign=sign, opacity=0.6) == overlay_png(image, heat, sign=sign, opacity=0.6)
    unchanged = np.asarray(_png(overlay_png(image, heat, sign=sign, opacity=0.0)))
    assert np.array_equal(unchanged, image)


def test_overlay_png_rejects_bad_arguments(photos):
    with pytest.raises(RenderError):
        overlay_png(photos[0], np.zeros((4, 4)), sign="sideways")
    with pytest.raises(RenderError):
        overlay_png(photos[0], np.zeros((4, 4)), opacity=2)
    with pytest.raises(RenderError):
        overlay_png(photos[0].astype(np.float32), np.zeros((4, 4)))


def test_montage_png():
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(5, 6, 6)).astype(np.float32) * np.arange(1, 6)[:, None, None]
    plain = _png(montage_png(maps, colormap="viridis", tile_px=16, columns=3))
    assert plain.size == (3 * 18 + 2, 2 * 18 + 2)
    labelled = _png(montage_png(maps, [f"ch {i} with a long label" for i in range(5)], tile_px=16, columns=3))
    assert labelled.size[0] == 56 and labelled.size[1] > 38
    by_layer = montage_png(maps, tile_px=16, normalize="layer")
    assert by_layer != montage_png(maps, tile_px=16, normalize="channel")
    assert montage_png(maps, tile_px=16) == montage_png(torch.from_numpy(maps), tile_px=16)
    with pytest.raises(RenderError):
        montage_png(maps, ["a"], tile_px=16)
    with pytest.raises(RenderError):
        montage_png(maps, tile_px=4)
    with pytest.raises(RenderError):
        montage_png(maps, normalize="global")


def test_attribution_overlay_end_to_end(attributor, x):
    r = attributor.attribute(x, "layer_gradcam", layer=LAYER, part="depthwise", auc_steps=0)
    image = ((x[0].permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _png(overlay_png(image, r.heatmap)).size == (SIZE, SIZE)


# --- forwards saved: known logits, the method's own forward -----------------------


def _counting(model):
    calls = []
    handle = model.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    return calls, handle


def test_known_logits_save_the_prediction_forward(model, x):
    with torch.no_grad():
        logits = model(x)[0] + 0.0
    calls, handle = _counting(model)
    try:
        given = Attributor(model).attribute(x, "saliency", logits=logits, auc_steps=0)
    finally:
        handle.remove()
    assert calls == [1]  # the method's forward only
    probs = torch.softmax(logits, 0)
    assert given.predicted == int(probs.argmax()) == given.target
    assert given.probability == pytest.approx(float(probs.max()), rel=1e-6)
    plain = Attributor(model).attribute(x, "saliency", auc_steps=0)
    close(given.attribution, plain.attribution)


def test_a_known_target_takes_the_probabilities_from_the_method_s_forward(model, x):
    calls, handle = _counting(model)
    try:
        result = Attributor(model).attribute(x, "layer_gradcam", target=TARGET, layer=LAYER, part="pointwise", auc_steps=0)
    finally:
        handle.remove()
    assert calls == [1]
    with torch.no_grad():
        probs = torch.softmax(model(x), 1)[0]
    assert result.probability == pytest.approx(float(probs[TARGET]), rel=1e-5)
    assert result.predicted == int(probs.argmax())
    assert not model._forward_hooks  # the recording hook is gone


@pytest.mark.parametrize("method, forwards", [("integrated_gradients", [4, 1, 1]), ("gradient_shap", [4, 1])])
def test_methods_without_a_plain_forward_of_the_image_report_its_prediction(model, x, method, forwards):
    """Integrated Gradients' path points never equal the image, but its convergence delta runs
    the baseline and the image (no forward of ours); GradientSHAP's noisy points never equal it
    (one forward of ours)."""
    calls, handle = _counting(model)
    params = {"n_steps": 4, "internal_batch_size": 4} if method == "integrated_gradients" else {"n_samples": 4}
    try:
        result = Attributor(model).attribute(x, method, target=TARGET, auc_steps=0, **params)
    finally:
        handle.remove()
    assert calls == forwards
    with torch.no_grad():
        probs = torch.softmax(model(x), 1)[0]
    assert result.probability == pytest.approx(float(probs[TARGET]), rel=1e-5)


@pytest.mark.parametrize(
    "logits, message",
    [(torch.zeros(3), "classes"), (torch.zeros(2, 7), "one row"), (torch.full((7,), float("nan")), "NaN"), ([0.0] * 7, "one row")],
)
def test_bad_logits_are_refused(model, x, logits, message):
    with pytest.raises(InputError, match=message):
        Attributor(model).attribute(x, "saliency", logits=logits)


def test_sensitivity_explains_one_image_at_a_time():
    """sensitivity's documented contract: ``explain`` sees one image per call (Captum batches
    its perturbed inputs unless told ``max_examples_per_batch=1``)."""
    from xception_core.attributions.faithfulness import SENSITIVITY_SAMPLES, sensitivity

    sizes = []

    def explain(inputs, target):
        t = inputs[0] if isinstance(inputs, tuple) else inputs
        sizes.append(t.shape[0])
        return t * 2

    sensitivity(explain, torch.rand(1, 3, 8, 8), target=0, seed=0)
    assert len(sizes) > SENSITIVITY_SAMPLES and set(sizes) == {1}
