"""POST /v1/predict and /v1/predict/batch: results, caching, image ids."""

from __future__ import annotations

import hashlib

import pytest
import torch

from apihelpers import CLASS_NAMES, MODEL_ID, assert_problem, files, preprocess
from apifixtures import *  # noqa: F401,F403 -- the shared fixtures


def direct_probabilities(model, data: bytes) -> torch.Tensor:
    with torch.no_grad():
        return torch.softmax(model(preprocess(data)).float(), dim=1)[0]


def test_predict_matches_the_model(client, entry, png):
    r = client.post("/v1/predict", files=files(png))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["image_id"] == hashlib.sha256(png).hexdigest()
    assert body["model"] == MODEL_ID and body["device"] == "cpu" and body["precision"] == "fp32"
    assert isinstance(body["timing_ms"], float)
    probs = direct_probabilities(entry.model, png)
    top = torch.topk(probs, 5)
    assert [p["index"] for p in body["predictions"]] == top.indices.tolist()
    assert [p["label"] for p in body["predictions"]] == [CLASS_NAMES[i] for i in top.indices.tolist()]
    torch.testing.assert_close(torch.tensor([p["probability"] for p in body["predictions"]]), top.values, rtol=1e-5, atol=1e-6)


def test_predictions_depend_on_the_image(client, png_images):
    tops = {tuple(p["index"] for p in client.post("/v1/predict?top_k=3", files=files(d)).json()["predictions"]) for d in png_images}
    assert len(tops) > 1


@pytest.mark.parametrize("k", [1, 3, 7])
def test_top_k(client, entry, png, k):
    preds = client.post(f"/v1/predict?top_k={k}", files=files(png)).json()["predictions"]
    top = torch.topk(direct_probabilities(entry.model, png), k)
    assert [p["index"] for p in preds] == top.indices.tolist()
    probs = [p["probability"] for p in preds]
    torch.testing.assert_close(torch.tensor(probs), top.values, rtol=1e-5, atol=1e-6)
    if k == len(CLASS_NAMES):
        assert sum(probs) == pytest.approx(1.0, abs=1e-5)


def test_top_k_beyond_the_class_count_names_the_range(client, png):
    body = assert_problem(client.post("/v1/predict?top_k=8", files=files(png)), 422, "top_k", "1..7")
    assert body["allowed_range"] == [1, 7]


def test_second_request_hits_the_cache(client, jpeg_images):
    data = jpeg_images[3] + b""  # a fresh image for this test
    first = client.post("/v1/predict", files=files(data, "a.jpg", "image/jpeg")).json()
    second = client.post("/v1/predict", files=files(data, "b.jpg", "image/jpeg")).json()
    assert first["cached"] is False and second["cached"] is True
    assert first["predictions"] == second["predictions"]
    metrics = client.get("/metrics").text
    assert 'xception_cache_hits_total{kind="logits"}' in metrics


def test_jpeg_and_model_parameter(client, jpeg_images):
    r = client.post(f"/v1/predict?model={MODEL_ID}", files=files(jpeg_images[0], "x.jpg", "image/jpeg"))
    assert r.status_code == 200 and r.json()["model"] == MODEL_ID


def test_batch(client, entry, png_images):
    parts = [("images", (f"img{i}.png", d, "image/png")) for i, d in enumerate(png_images)]
    parts.append(("images", ("../../etc/passwd", b"not an image", "image/png")))
    r = client.post("/v1/predict/batch?top_k=2", files=parts)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["count"] == 5 and body["model"] == MODEL_ID
    for i, (item, data) in enumerate(zip(body["results"], png_images)):
        assert item["ok"] and item["position"] == i and item["filename"] == f"img{i}.png"
        assert item["image_id"] == hashlib.sha256(data).hexdigest()
        probs = direct_probabilities(entry.model, data)
        assert [p["index"] for p in item["predictions"]] == torch.topk(probs, 2).indices.tolist()
    bad = body["results"][4]
    assert bad["ok"] is False and bad["filename"] == "passwd"
    assert bad["error"]["status"] == 415 and "text" in bad["error"]["detail"]


def test_batch_count_is_bounded(client, png):
    body = assert_problem(client.post("/v1/predict/batch", files=[("images", ("a.png", png, "image/png"))] * 17), 422, "between 1 and 16")
    assert body["allowed_range"] == [1, 16]
    assert_problem(client.post("/v1/predict/batch", files={"other": ("a.png", png, "image/png")}), 422, "other")


@pytest.mark.parametrize("precision, label", [("fp16", "mixed"), ("bf16", "bf16")])
@pytest.mark.parametrize("margin", ["none", "median", "all"])
def test_reduced_precision_guard(tiny_model, png_images, precision, label, margin):
    """The CUDA float16 / bfloat16 paths, exercised on the CPU (autocast emulates both): an image
    whose six best float32 logits lie closer than the margin is recomputed in float32 and
    reported as `fp32`; the others keep the reduced-precision logits and say so."""
    from apihelpers import make_app

    from xception_core.engine import EngineOptions, Predictor

    app = make_app(tiny_model)
    entry = app.state.registry.get(MODEL_ID)
    predictions = app.state.features.predictions
    xs = [preprocess(d)[0] for d in png_images]
    exact = predictions.run_batch(entry, xs)
    assert all(pe == "fp32" for _, pe in exact)
    exact_logits = torch.stack([le for le, _ in exact])
    top6 = exact_logits.topk(6, dim=1).values
    gaps = (top6[:, :-1] - top6[:, 1:]).min(dim=1).values
    value = {"none": 0.0, "median": float(gaps.median()), "all": float(gaps.max()) + 1.0}[margin]
    options = EngineOptions(backend="eager", precision=precision, margin=value)
    entry.predictor = Predictor(entry.model, input_size=entry.input_size, options=options, require_native=False)
    reduced = predictions.run_batch(entry, xs)
    labels = [p for _, p in reduced]
    if margin == "none":
        assert labels == [label] * len(xs)
    elif margin == "all":
        assert labels == ["fp32"] * len(xs)
    else:  # the gaps of the reduced-precision logits decide; they lie close to the float32 ones
        assert set(labels) == {"fp32", label}
    for (lm, pm), (le, _) in zip(reduced, exact):
        if pm == "fp32":
            torch.testing.assert_close(lm, le, atol=1e-4, rtol=0)
        else:
            assert not torch.equal(lm, le)  # really computed in reduced precision
            torch.testing.assert_close(lm, le, rtol=5e-2, atol=5e-2)
