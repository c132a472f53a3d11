"""POST /v1/attributions: every method equals a direct Attributor call with the same settings."""

from __future__ import annotations

import base64
import io

import pytest
import torch
from PIL import Image

from apihelpers import INPUT_SIZE, assert_problem, files, load_npy, preprocess
from xception_core.attributions import METHODS, Attributor
from xception_core.fuse import fuse_for_inference
from apifixtures import *  # noqa: F401,F403 -- the shared fixtures

LAYER = "exit.block8.sep1"
# Cheap settings for every method (and the values a direct call gets).
CHEAP = {
    "integrated_gradients": {"n_steps": 8, "internal_batch_size": 8},
    "smoothgrad": {"nt_samples": 3, "stdev": 0.2, "internal_batch_size": 3},
    "gradient_shap": {"n_samples": 3, "internal_batch_size": 3},
    "occlusion": {"window": 32, "stride": 32},
}


def query(method: str, **extra) -> str:
    params = {"method": method, "auc_steps": 2, **CHEAP.get(method, {}), **extra}
    if METHODS[method].layer_method:
        params.setdefault("layer", LAYER)
        params.setdefault("part", "pointwise")
    return "&".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in params.items())


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_equals_a_direct_attributor_call(client, entry, png, method):
    r = client.post(f"/v1/attributions?{query(method, format='npy', target=3)}", files=files(png))
    assert r.status_code == 200, r.text
    served = load_npy(r.content)
    kwargs = {"auc_steps": 2, **CHEAP.get(method, {})}
    layer = dict(layer=LAYER, part="pointwise") if METHODS[method].layer_method else {}
    # the service attributes to the input with the BatchNorm-folded replica (fuse_batchnorm)
    model = entry.model if layer else fuse_for_inference(entry.model)
    direct = Attributor(model).attribute(preprocess(png), method, target=3, **layer, **kwargs)
    assert served.shape == tuple(direct.attribution.shape)
    torch.testing.assert_close(torch.from_numpy(served), direct.attribution, rtol=1e-5, atol=1e-7)
    assert r.headers["x-target"] == "3"


def test_json_answer_has_overlay_timing_quality_and_the_predicted_target(client, entry, png):
    r = client.post(f"/v1/attributions?{query('integrated_gradients', infidelity=True)}", files=files(png))
    body = r.json()
    x = preprocess(png)
    with torch.no_grad():
        predicted = int(entry.model(x).argmax())
    assert body["target"] == predicted == body["predicted"] and body["target_source"] == "predicted"
    direct = Attributor(fuse_for_inference(entry.model)).attribute(x, "integrated_gradients", n_steps=8, internal_batch_size=8, auc_steps=2, infidelity=True)
    for key in ("convergence_delta", "deletion_auc", "insertion_auc", "infidelity"):
        assert body["quality"][key] == pytest.approx(direct.quality[key], rel=1e-4, abs=1e-6), key
    assert body["params"]["n_steps"] == 8 and body["params"]["baseline"] == "zero"
    assert body["shape"] == [3, INPUT_SIZE, INPUT_SIZE] and body["precision"] == "fp32"
    assert body["attribution_ms"] > 0 and body["timing_ms"] >= body["attribution_ms"]
    overlay = Image.open(io.BytesIO(base64.b64decode(body["overlay_png"])))
    assert overlay.size == (INPUT_SIZE, INPUT_SIZE)
    assert set(body["curves"]) == {"fractions", "deletion", "insertion"}


def test_sensitivity_on_request(client, entry, png):
    body = client.post(f"/v1/attributions?{query('saliency', sensitivity=True, seed=3)}", files=files(png)).json()
    direct = Attributor(fuse_for_inference(entry.model)).attribute(preprocess(png), "saliency", auc_steps=2, sensitivity=True, seed=3)
    assert body["quality"]["sensitivity_max"] == pytest.approx(direct.quality["sensitivity_max"], rel=1e-4, abs=1e-7)
    assert body["quality"]["sensitivity_max"] > 0


def test_png_overlay_and_heatmap_array(client, png):
    r = client.post(f"/v1/attributions?{query('layer_gradcam', format='png', sign='all', opacity=0.7)}", files=files(png))
    assert r.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(r.content)).size == (INPUT_SIZE, INPUT_SIZE)
    r = client.post(f"/v1/attributions?{query('layer_gradcam', format='npy', array='heatmap')}", files=files(png))
    assert load_npy(r.content).shape == (INPUT_SIZE, INPUT_SIZE)
    r = client.post(f"/v1/attributions?{query('layer_gradcam', format='npy', part='depthwise')}", files=files(png))
    assert load_npy(r.content).shape == (1, 3, 3)  # Grad-CAM at the layer's own resolution (exit.block8.sep1: 3x3)


def test_channel_importance_ranking(client, entry, png):
    body = client.post(f"/v1/attributions?{query('channel_importance', target=1)}", files=files(png)).json()
    ranking = body["channel_ranking"]
    assert body["shape"] == [48] and len(ranking) == 48  # exit.block8.sep1 has 48 pointwise channels
    direct = Attributor(entry.model).attribute(preprocess(png), "channel_importance", target=1, layer=LAYER, part="pointwise", auc_steps=2)
    assert [r["channel"] for r in ranking] == [c for c, _ in direct.channel_ranking]
    torch.testing.assert_close(torch.tensor([r["score"] for r in ranking]), torch.tensor([s for _, s in direct.channel_ranking]), rtol=1e-5, atol=1e-7)
    assert [r["score"] for r in ranking] == sorted((r["score"] for r in ranking), reverse=True)


def test_stochastic_methods_are_reproducible_by_seed(client, png):
    a = client.post(f"/v1/attributions?{query('smoothgrad', format='npy', seed=5)}", files=files(png)).content
    b = client.post(f"/v1/attributions?{query('smoothgrad', format='npy', seed=5)}", files=files(png)).content
    c = client.post(f"/v1/attributions?{query('smoothgrad', format='npy', seed=6)}", files=files(png)).content
    assert a == b and a != c


@pytest.mark.parametrize(
    "q, fragment",
    [
        ("method=magic", "integrated_gradients"),
        ("method=integrated_gradients&n_steps=100000", "<= 256"),
        ("method=integrated_gradients&n_steps=1.5", "integer"),
        ("method=integrated_gradients&n_steps=0", ">= 1"),
        ("method=smoothgrad&nt_samples=65", "<= 64"),
        ("method=saliency&n_steps=4", "allowed: absolute"),
        ("method=saliency&target=7", "0..6"),
        ("method=saliency&target=-1", ">= 0"),
        ("method=saliency&layer=exit.block8.sep1", "only for layer methods"),
        ("method=layer_gradcam", "needs layer"),
        ("method=layer_gradcam&layer=exit.block8.sep1", "part"),
        ("method=layer_gradcam&layer=nope&part=pointwise", "valid choices"),
        ("method=layer_gradcam&layer=exit.block8.sep1&part=input", "depthwise"),
        ("method=occlusion&window=8&stride=16", "at most window"),
        ("method=occlusion&window=128&stride=64", "input size"),
        ("method=occlusion&window=4&stride=2", "positions"),
        ("method=saliency&opacity=1.5", "<= 1"),
        ("method=saliency&opacity=nan", "opacity"),
        ("method=saliency&sign=sideways", "positive"),
        ("method=saliency&precision=fp8", "fp32"),
        ("method=saliency&auc_steps=65", "<= 64"),
        ("method=saliency&infidelity=maybe", "infidelity"),
    ],
)
def test_attribution_parameter_errors(client, png, q, fragment):
    assert_problem(client.post(f"/v1/attributions?{q}", files=files(png)), 422, fragment)


def test_mixed_precision_request_on_cpu_stays_fp32(client, png):
    body = client.post(f"/v1/attributions?{query('saliency', precision='mixed')}", files=files(png)).json()
    assert body["precision"] == "fp32"


def test_an_image_predicted_before_lends_its_logits(tiny_model, png_images, monkeypatch):
    """Predict, then explain: the attribution takes the cached float32 logits instead of
    running its own prediction forward; a new image has none to lend."""
    from apihelpers import make_client

    from xception_core import attributions as core_attr

    seen = []

    class Recording(Attributor):
        def attribute(self, *args, logits=None, **kwargs):
            seen.append(logits)
            return super().attribute(*args, logits=logits, **kwargs)

    monkeypatch.setattr(core_attr, "Attributor", Recording)
    with make_client(tiny_model) as c:
        predicted = c.post("/v1/predict?top_k=1", files=files(png_images[0])).json()["predictions"][0]
        body = c.post("/v1/attributions?method=saliency&auc_steps=0", files=files(png_images[0])).json()
        c.post("/v1/attributions?method=saliency&auc_steps=0", files=files(png_images[2]))
    assert seen[0] is not None and seen[1] is None
    assert body["target"] == predicted["index"]
    assert body["probability"] == pytest.approx(predicted["probability"], rel=1e-4)
