"""Finished attributions cached on the server (``X-Cache``), and ``quality=none|auc|full``."""

from __future__ import annotations

import dataclasses
import io

import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from apifixtures import *  # noqa: F401,F403
from apihelpers import assert_problem, files, load_npy, make_app, wait_until
from api.features.attributions import own_nbytes
from xception_core.attributions import Attributor, AttributorOptions, fast
from xception_core.fuse import fuse_for_inference
from xception_core.transform import eval_transform

IG = "method=integrated_gradients&n_steps=8&internal_batch_size=8"


def _observed(histogram, method: str) -> float:
    """How many times ``histogram`` has timed ``method`` (the app serves earlier tests too)."""
    return sum(s.value for m in histogram.collect() for s in m.samples if s.name.endswith("_count") and s.labels["method"] == method)


def _computed(app, method: str) -> float:
    """How many attributions the service has computed (not answered from the cache)."""
    return app.state.metrics.attribution.labels("cpu", method)._sum.get(), _observed(app.state.metrics.attribution, method)


def _figures_timed(app, method: str) -> float:
    """How many figure-only computations of ``method`` the app has timed."""
    return _observed(app.state.metrics.attribution_quality, method)


@pytest.fixture(scope="module")
def nocache(tiny_model):
    """A second service without an attribution cache: every answer is freshly computed."""
    with TestClient(make_app(tiny_model, attribution_cache_bytes=0), raise_server_exceptions=False) as c:
        yield c


@pytest.mark.parametrize("seed, query", list(enumerate([
    f"{IG}&format=npy", f"{IG}&format=npy&array=heatmap", "method=saliency&format=npy", "method=smoothgrad&nt_samples=3&format=npy",
    "method=layer_gradcam&layer=entry.block3.sep2&part=pointwise&format=npy&quality=none",
], start=10)))
def test_a_hit_equals_a_fresh_result_bit_for_bit(client, nocache, png_images, seed, query):
    png = png_images[1]
    first = client.post(f"/v1/attributions?{query}&seed={seed}", files=files(png))
    again = client.post(f"/v1/attributions?{query}&seed={seed}", files=files(png))
    fresh = nocache.post(f"/v1/attributions?{query}&seed={seed}", files=files(png))
    assert (first.status_code, again.status_code, fresh.status_code) == (200, 200, 200), first.text
    assert (first.headers["x-cache"], again.headers["x-cache"], fresh.headers["x-cache"]) == ("miss", "hit", "miss")
    assert again.content == first.content == fresh.content
    assert load_npy(again.content).dtype == "float32"


def test_a_hit_computes_nothing_and_serves_every_format(app, client, png_images):
    png = png_images[2]
    first = client.post(f"/v1/attributions?{IG}", files=files(png))
    assert first.status_code == 200 and first.headers["x-cache"] == "miss" and first.json()["cached"] is False
    before = _computed(app, "integrated_gradients")
    again = client.post(f"/v1/attributions?{IG}", files=files(png))
    assert again.headers["x-cache"] == "hit" and again.json()["cached"] is True
    a, b = first.json(), again.json()
    for field in ("overlay_png", "quality", "curves", "value_range", "params", "target", "probability", "attribution_ms"):
        assert a[field] == b[field], field
    # other output options and encodings of the same attribution: still hits
    for extra in ("&format=png", "&format=png&sign=all&colormap=viridis", "&format=npy&array=heatmap", "&n_steps=8&opacity=0.2"):
        r = client.post(f"/v1/attributions?{IG}{extra}", files=files(png))
        assert r.status_code == 200 and r.headers["x-cache"] == "hit", extra
    assert _computed(app, "integrated_gradients") == before


@pytest.mark.parametrize("change, state", [
    ("&n_steps=9", "miss"), ("&seed=1", "miss"), ("&target=2", "miss"), ("&baseline=black", "miss"),
    # other quality figures of the same map: only the figures are computed; no figures at all: the map itself
    ("&auc_steps=4", "map-hit"), ("&infidelity=true", "map-hit"), ("&quality=none", "hit"), ("&quality=auc", "hit"),  # auc: the same figures, without the curves
])
def test_what_changes_the_result_changes_the_key(client, png_images, change, state):
    png = png_images[3]
    assert client.post(f"/v1/attributions?{IG}", files=files(png)).status_code == 200
    r = client.post(f"/v1/attributions?{IG}".replace("&n_steps=8", "") + (change if "n_steps" in change else "&n_steps=8" + change), files=files(png))
    assert r.status_code == 200, r.text
    assert r.headers["x-cache"] == state and r.json()["cache"] == state


def test_another_model_or_image_is_another_entry(client, png_images):
    a = client.post("/v1/attributions?method=saliency&quality=none", files=files(png_images[0]))
    b = client.post("/v1/attributions?method=saliency&quality=none", files=files(png_images[1] + b""))
    assert a.headers["x-cache"] in ("miss", "hit") and b.status_code == 200
    assert a.json()["overlay_png"] != b.json()["overlay_png"]


def test_the_cache_is_bounded(tiny_model, png_images):
    # one [3, 96, 96] float32 attribution + its [96, 96] heatmap: about 150 kB: room for two
    app = make_app(tiny_model, attribution_cache_bytes=320_000)
    cache = app.state.features.runtime.attributions
    with TestClient(app, raise_server_exceptions=False) as c:
        for png in png_images[:3]:
            assert c.post("/v1/attributions?method=saliency&quality=none&format=npy", files=files(png)).headers["x-cache"] == "miss"
        assert len(cache) == 2 and cache.bytes <= cache.max_bytes
        assert c.post("/v1/attributions?method=saliency&quality=none&format=npy", files=files(png_images[0])).headers["x-cache"] == "miss"
        assert c.post("/v1/attributions?method=saliency&quality=none&format=npy", files=files(png_images[2])).headers["x-cache"] == "hit"


def test_quality_none_returns_the_map_without_figures(client, png):
    none = client.post("/v1/attributions?method=saliency&quality=none", files=files(png)).json()
    assert none["quality_level"] == "none"
    assert "deletion_auc" not in none["quality"] and "insertion_auc" not in none["quality"]
    assert none["curves"] == {} and none["params"]["auc_steps"] == 0
    auc = client.post("/v1/attributions?method=saliency&quality=auc", files=files(png)).json()
    assert {"deletion_auc", "insertion_auc"} <= set(auc["quality"]) and auc["curves"] == {}
    full = client.post("/v1/attributions?method=saliency", files=files(png)).json()
    assert full["quality_level"] == "full" and set(full["curves"]) == {"fractions", "deletion", "insertion"}
    assert full["quality"] == auc["quality"]
    assert none["overlay_png"] == full["overlay_png"]  # the same map


def test_quality_none_with_an_explicit_figure_is_a_422(client, png):
    problem = assert_problem(client.post("/v1/attributions?method=saliency&quality=none&auc_steps=8", files=files(png)), 422, "quality=none", "auc_steps")
    assert problem["parameter"] == "auc_steps"
    assert_problem(client.post("/v1/attributions?method=saliency&quality=auc&infidelity=true", files=files(png)), 422, "quality=full")
    assert client.post("/v1/attributions?method=saliency&quality=none&auc_steps=0&infidelity=false", files=files(png)).status_code == 200
    assert_problem(client.post("/v1/attributions?method=saliency&quality=most", files=files(png)), 422, "quality")


def test_an_identical_request_during_the_computation_waits_for_it(tiny_model, png):
    """Two identical requests at once (a browser's rerun): one computation, two answers."""
    import threading

    app = make_app(tiny_model, attribution_workers=2)
    features = app.state.features
    started, release = threading.Event(), threading.Event()
    real_job = features.attributions._job
    jobs = []

    def slow_job(*args, **kwargs):
        jobs.append(1)
        started.set()
        release.wait(60)
        return real_job(*args, **kwargs)

    features.attributions._job = slow_job
    query = "/v1/attributions?method=saliency&quality=none&format=npy&seed=77"
    answers = {}
    with TestClient(app, raise_server_exceptions=False) as c:
        c.post("/v1/predict", files=files(png))  # model loaded

        def ask(name):
            answers[name] = c.post(query, files=files(png))

        first = threading.Thread(target=ask, args=("first",))
        first.start()
        assert started.wait(60)
        second = threading.Thread(target=ask, args=("second",))
        second.start()
        try:
            wait_until(lambda: features.attributions.joined == 1, "the second request to wait for the first", timeout=60)
        finally:
            release.set()
        first.join(60)
        second.join(60)
    assert len(jobs) == 1
    assert answers["first"].headers["x-cache"] == "miss" and answers["second"].headers["x-cache"] == "hit"
    assert answers["first"].content == answers["second"].content


def test_the_map_alone_does_not_wait_for_figures_being_computed(tiny_model, png):
    """quality=auc is running its curves when quality=none of the same attribution arrives (the
    UI asks for the map first, then the figures, and reruns): the map is cached already, so the
    second answer comes at once, from the cache, while the first is still computing."""
    import threading

    app = make_app(tiny_model, attribution_workers=2)
    features = app.state.features
    in_figures, release = threading.Event(), threading.Event()
    real_attribute = features.attributions.attribute

    def slow_figures(*args, earlier=None, **kwargs):
        if earlier is not None:
            in_figures.set()
            release.wait(60)
        return real_attribute(*args, earlier=earlier, **kwargs)

    features.attributions.attribute = slow_figures
    base = "/v1/attributions?method=saliency&format=npy&seed=78"
    answers = {}
    with TestClient(app, raise_server_exceptions=False) as c:
        c.post("/v1/predict", files=files(png))  # model loaded
        first = threading.Thread(target=lambda: answers.setdefault("auc", c.post(f"{base}&quality=auc&auc_steps=2", files=files(png))))
        first.start()
        try:
            assert in_figures.wait(60)
            answers["none"] = c.post(f"{base}&quality=none", files=files(png))
            assert first.is_alive()  # the figures are still being computed
        finally:
            release.set()
            first.join(60)
    assert answers["none"].status_code == 200 and answers["none"].headers["x-cache"] == "hit"
    assert answers["auc"].status_code == 200 and answers["auc"].headers["x-cache"] == "miss"
    assert answers["none"].content == answers["auc"].content  # the same map (npy of the heat map)


def test_quality_after_the_map_computes_only_the_figures(app, client, nocache, png_images):
    """none, then auc, then full: the map is computed once; each answer equals a fresh one bit for bit."""
    png, base = png_images[3], "/v1/attributions?method=integrated_gradients&n_steps=6&internal_batch_size=6&seed=91"
    before = _computed(app, "integrated_gradients")
    timed_before = _figures_timed(app, "integrated_gradients")
    none = client.post(f"{base}&quality=none", files=files(png))
    assert none.headers["x-cache"] == "miss" and none.json()["cache"] == "miss"
    auc = client.post(f"{base}&quality=auc&auc_steps=5", files=files(png))
    assert auc.headers["x-cache"] == "map-hit" and auc.json()["cached"] is False
    full = client.post(f"{base}&quality=full&auc_steps=5", files=files(png))
    assert full.headers["x-cache"] == "hit"
    assert _computed(app, "integrated_gradients")[1] == before[1] + 1  # one map computed, for three answers
    # the figures computed on their own are timed apart, once (the third answer was a hit)
    figures = app.state.metrics.attribution_quality.labels("cpu", "integrated_gradients")
    assert figures._sum.get() > 0 and "xception_attribution_quality_seconds_count" in client.get("/metrics").text
    assert _figures_timed(app, "integrated_gradients") == timed_before + 1
    for query, got in ((f"{base}&quality=none", none), (f"{base}&quality=auc&auc_steps=5", auc), (f"{base}&quality=full&auc_steps=5", full)):
        fresh = nocache.post(query, files=files(png)).json()
        mine = got.json()
        for field in ("overlay_png", "quality", "curves", "value_range", "params", "target", "probability", "precision"):
            assert mine[field] == fresh[field], (query, field)
    assert {"deletion_auc", "insertion_auc", "convergence_delta"} <= set(auc.json()["quality"])
    # the array of a map-hit answer is the fresh array, bit for bit
    npy = client.post(f"{base}&quality=auc&auc_steps=7&format=npy", files=files(png))
    assert npy.headers["x-cache"] == "map-hit"
    assert npy.content == nocache.post(f"{base}&quality=auc&auc_steps=7&format=npy", files=files(png)).content


class _CountingEngine:
    """A quality engine that counts the images it is given (and forwards them)."""

    def __init__(self, engine):
        self.engine, self.images = engine, 0

    def __call__(self, batch):
        self.images += batch.shape[0]
        return self.engine(batch)

    def info(self):
        return self.engine.info()


def test_the_model_decides_once_and_its_options_reach_the_attributor(tiny_model, png, monkeypatch):
    monkeypatch.setattr(fast, "native_reduced_precision", lambda precision, device: "forced off for this test")
    app = make_app(tiny_model)
    with TestClient(app, raise_server_exceptions=False) as c:
        wait_until(lambda: c.get("/readyz").status_code == 200, "the model to load")
        detail = c.get("/v1/models/tiny").json()
        assert detail["attribution_precision"]["precision"] == "fp32"
        assert "forced off for this test" in detail["attribution_precision"]["reason"]
        assert detail["quality_engine"]["notes"] == ["bf16 not used: forced off for this test"]
        assert detail["quality_engine"]["shared_with_predictions"] is True  # the fp32 folded prediction engine
        assert {"attribution_setup", "quality_engine"} <= set(detail["warmup_ms"])

        entry = app.state.registry.get("tiny")
        counting = _CountingEngine(entry.attribution_setup().curves)
        choice = dataclasses.replace(entry.attribution_setup().precision, input="bf16")
        entry._attribution = dataclasses.replace(entry.attribution_setup(), curves=counting, precision=choice)

        r = c.post("/v1/attributions?method=saliency&quality=auc&auc_steps=4&format=npy", files=files(png))
        assert r.status_code == 200, r.text
        assert counting.images == 2 * 4 + 1  # the deletion and insertion curves ran on the setup's engine
        assert r.headers["x-attribution-precision"] == "bf16"
        x = eval_transform(Image.open(io.BytesIO(png)).convert("RGB"), entry.preprocess)
        # input methods run on the BatchNorm-folded replica
        direct = Attributor(fuse_for_inference(entry.model), AttributorOptions(precision="bf16")).attribute(x[None], "saliency", auc_steps=0)
        assert not torch.equal(direct.attribution, Attributor(fuse_for_inference(entry.model)).attribute(x[None], "saliency", auc_steps=0).attribution)
        assert torch.equal(load_npy_tensor(r.content), direct.attribution)
        # layer methods kept fp32; a request for fp32 is another cache entry
        gc = c.post("/v1/attributions?method=layer_gradcam&layer=entry.block3.sep2&part=pointwise&quality=none", files=files(png))
        assert gc.headers["x-attribution-precision"] == "fp32"
        forced = c.post("/v1/attributions?method=saliency&quality=none&precision=fp32", files=files(png))
        assert forced.headers["x-attribution-precision"] == "fp32" and forced.headers["x-cache"] == "miss"
        assert c.get("/v1/models/tiny").json()["attribution_precision"]["input_methods"] == "bf16"


def load_npy_tensor(content: bytes) -> torch.Tensor:
    return torch.from_numpy(load_npy(content))


def test_a_map_and_its_figures_hold_the_arrays_once(tiny_model, png_images):
    """quality=none, then quality=auc of the same map: two entries, one pair of arrays counted."""
    app = make_app(tiny_model)
    base = "/v1/attributions?method=saliency&format=npy&seed=5"
    with TestClient(app, raise_server_exceptions=False) as c:
        cache = app.state.features.runtime.attributions
        assert c.post(f"{base}&quality=none", files=files(png_images[2])).status_code == 200
        (key,) = [k for k in cache._data if k[0] != "overlay"]
        r = cache.peek(key)
        arrays = r.attribution.element_size() * r.attribution.nelement() + r.heatmap.element_size() * r.heatmap.nelement()
        alone = cache.bytes
        assert c.post(f"{base}&quality=auc&auc_steps=3", files=files(png_images[2])).headers["x-cache"] == "map-hit"
        full = cache.peek(next(k for k in cache._data if k[0] != "overlay" and k != key))
        assert full.heatmap is r.heatmap  # the figures' entry holds the map's arrays
        assert cache.bytes - alone < arrays and cache.bytes - alone == own_nbytes(full)
