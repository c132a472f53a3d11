"""Concurrent requests: 32 predictions (micro-batched) and 8 attributions, all correct."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import torch
from PIL import Image, ImageEnhance

from apihelpers import encode, files, load_npy, make_app, preprocess
from xception_core.attributions import Attributor
from xception_core.fuse import fuse_for_inference
from apifixtures import *  # noqa: F401,F403 -- the shared fixtures


@pytest.fixture(scope="module")
def variants(photo_images) -> list[bytes]:
    """32 distinct images: 4 photographs x 8 variations."""
    out = []
    for img in photo_images:
        img = img.convert("RGB")
        for k in range(8):
            v = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if k % 2 else img
            v = ImageEnhance.Brightness(v).enhance(0.7 + 0.1 * (k // 2))
            out.append(encode(v, "PNG"))
    assert len(set(out)) == 32
    return out


async def _gather(app, requests):
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=120) as client:
        return await asyncio.gather(*(client.post(url, files=f) for url, f in requests))


def test_32_concurrent_predictions_are_micro_batched_and_equal_unbatched_ones(tiny_model, variants):
    app = make_app(tiny_model, batch_max_size=16, batch_max_wait_ms=100)
    responses = asyncio.run(_gather(app, [("/v1/predict?top_k=7", files(d)) for d in variants]))
    assert [r.status_code for r in responses] == [200] * 32
    batcher = next(iter(app.state.features.predictions._batchers.values()))
    assert batcher.items == 32 and batcher.batches < 32, (batcher.batches, batcher.items)
    model = app.state.registry.get("tiny").model
    for r, data in zip(responses, variants):
        with torch.inference_mode():
            ref = torch.softmax(model(preprocess(data).contiguous(memory_format=torch.channels_last)), dim=1)[0]
        preds = r.json()["predictions"]
        assert [p["index"] for p in preds] == torch.argsort(ref, descending=True).tolist()
        torch.testing.assert_close(torch.tensor([p["probability"] for p in preds]), torch.sort(ref, descending=True).values, rtol=1e-5, atol=1e-6)
    assert "xception_batch_size_bucket" in app.state.metrics.render().decode()


def test_micro_batched_logits_equal_one_at_a_time_logits(tiny_model, variants):
    app = make_app(tiny_model)
    predictions = app.state.features.predictions
    entry = app.state.registry.get("tiny")
    xs = [preprocess(d)[0] for d in variants[:16]]
    batched = predictions.run_batch(entry, xs)
    for x, (logits, precision) in zip(xs, batched):
        single, _ = predictions.run_batch(entry, [x])[0]
        assert precision == "fp32"
        torch.testing.assert_close(logits, single, rtol=1e-5, atol=1e-5)
        assert torch.equal(torch.argsort(logits, descending=True)[:5], torch.argsort(single, descending=True)[:5])


CASES = [
    ("integrated_gradients", {"n_steps": 8, "internal_batch_size": 8}),
    ("saliency", {}),
    ("smoothgrad", {"nt_samples": 3, "internal_batch_size": 3}),
    ("deeplift", {}),
    ("guided_backprop", {}),
    ("input_x_gradient", {}),
    ("layer_gradcam", {"layer": "middle.block6.sep2", "part": "depthwise"}),
    ("guided_gradcam", {"layer": "exit.block7.sep1", "part": "pointwise"}),
]


def test_8_concurrent_attributions_are_all_correct(tiny_model, variants):
    app = make_app(tiny_model, {"max_replicas": 4}, attribution_workers=4)
    requests = []
    for i, (method, params) in enumerate(CASES):
        query = "&".join(f"{k}={v}" for k, v in {"method": method, "format": "npy", "auc_steps": 0, **params}.items())
        requests.append((f"/v1/attributions?{query}", files(variants[i * 4])))
    responses = asyncio.run(_gather(app, requests))
    assert [r.status_code for r in responses] == [200] * 8, [r.text[:200] for r in responses]
    model = app.state.registry.get("tiny").model
    fused = fuse_for_inference(model)  # what the service attributes to the input with
    for (method, params), r, i in zip(CASES, responses, range(8)):
        direct = Attributor(model if "layer" in params else fused).attribute(preprocess(variants[i * 4]), method, auc_steps=0, **params)
        torch.testing.assert_close(torch.from_numpy(load_npy(r.content)), direct.attribution, rtol=1e-5, atol=1e-7)
    # hooks never leaked onto the shared model
    assert all(not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks for m in model.modules())
