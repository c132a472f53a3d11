"""Image references: POST /v1/images, ``image_id`` on every analysis endpoint, the bounded store.

The store's clock is injected (no sleeps); eviction by bytes uses a store small enough for two
of the test images.
"""

from __future__ import annotations

import hashlib

import pytest
from fastapi.testclient import TestClient

from apifixtures import *  # noqa: F401,F403
from apihelpers import assert_problem, files, load_npy, make_app
from api.images import ImageStore

ANALYSES = [
    ("/v1/predict", "top_k=3"),
    ("/v1/activations", "layer=entry.block2.sep1&top=2&format=npy"),
    ("/v1/decomposition", "layer=entry.block2.sep1&channel=1&top=2&format=npz"),
    ("/v1/attributions", "method=saliency&auc_steps=0&format=npy"),
]


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_upload_returns_the_id_and_facts_and_computes_nothing(client, app, png):
    hits_before = app.state.metrics.cache_misses.labels("logits")._value.get()
    r = client.post("/v1/images", files=files(png))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["image_id"] == hashlib.sha256(png).hexdigest()
    assert (body["format"], body["bytes"]) == ("PNG", len(png))
    assert body["width"] == 128 and body["height"] > 0
    assert body["expires_at"].endswith("Z") and body["ttl_s"] == app.state.settings.image_store_ttl_s
    assert app.state.metrics.cache_misses.labels("logits")._value.get() == hits_before  # no model ran


@pytest.mark.parametrize("path, query", ANALYSES, ids=[p for p, _ in ANALYSES])
def test_every_analysis_endpoint_answers_the_same_by_id_as_by_body(client, png_images, path, query):
    png = png_images[2]
    by_body = client.post(f"{path}?{query}", files=files(png))
    assert by_body.status_code == 200, by_body.text
    image_id = hashlib.sha256(png).hexdigest()
    by_id = client.post(f"{path}?{query}&image_id={image_id}")  # stored by the upload above
    assert by_id.status_code == 200, by_id.text
    if path == "/v1/predict":
        assert by_id.json()["predictions"] == by_body.json()["predictions"]
        assert by_id.json()["image_id"] == image_id
    else:
        assert by_id.content == by_body.content
        assert by_id.headers["x-image-id"] == image_id


def test_an_id_from_post_images_serves_a_prediction(client, png_images):
    image_id = client.post("/v1/images", files=files(png_images[3])).json()["image_id"]
    r = client.post(f"/v1/predict?image_id={image_id}")
    assert r.status_code == 200 and r.json()["image_id"] == image_id


def test_both_or_neither_is_a_clear_422(client, png):
    image_id = client.post("/v1/images", files=files(png)).json()["image_id"]
    for path, query in ANALYSES:
        problem = assert_problem(client.post(f"{path}?{query}&image_id={image_id}", files=files(png)), 422, "either", "not both")
        assert problem["type"].endswith("image-and-image-id")
        problem = assert_problem(client.post(f"{path}?{query}"), 422, "field 'image'", "image_id", "POST /v1/images")
        assert problem["type"].endswith("image-required")
    assert_problem(client.post(f"/v1/predict?image_id={image_id}", content=b"abc", headers={"content-type": "image/png"}), 422, "not both")


def test_an_unknown_id_is_a_404_that_says_to_upload_again(client):
    unknown = "0" * 64
    for path, query in ANALYSES:
        problem = assert_problem(client.post(f"{path}?{query}&image_id={unknown}"), 404, unknown, "upload the image again via POST /v1/images")
        assert problem["type"].endswith("unknown-image-id") and problem["parameter"] == "image_id"


def test_a_malformed_id_is_a_422(client):
    assert_problem(client.post("/v1/predict?image_id=../../etc/passwd"), 422, "image_id")
    assert_problem(client.post("/v1/predict?image_id=" + "A" * 64), 422, "image_id")


def test_a_refused_upload_is_not_stored(client):
    data = b"hello, this is not an image\n" * 10
    assert_problem(client.post("/v1/images", files=files(data)), 415)
    assert_problem(client.post("/v1/predict", files=files(data)), 415)
    assert_problem(client.post(f"/v1/predict?image_id={hashlib.sha256(data).hexdigest()}"), 404, "upload the image again")


def test_the_store_evicts_by_time_since_last_use():
    clock = Clock()
    store = ImageStore(max_bytes=1000, ttl_s=60, clock=clock)
    store.put("a", b"x" * 10)
    store.put("b", b"y" * 10)
    clock.now += 50
    assert store.get("a") is not None  # used: renewed for another 60 s
    clock.now += 20
    assert store.get("b") is None  # 70 s unused
    assert store.get("a") is not None  # 20 s since its last use
    clock.now += 60
    assert store.get("a") is None
    assert store.stats()["bytes"] == 0


def test_the_store_evicts_least_recently_used_by_bytes():
    store = ImageStore(max_bytes=25, ttl_s=60, clock=Clock())
    store.put("a", b"x" * 10)
    store.put("b", b"y" * 10)
    assert store.get("a") is not None  # b is now the least recently used
    store.put("c", b"z" * 10)
    assert store.get("b") is None and store.get("a") is not None and store.get("c") is not None
    assert store.stats()["bytes"] == 20
    assert store.put("big", b"w" * 26) is None and store.get("a") is not None  # too large alone: not stored, nothing evicted


def test_the_services_store_honours_its_settings(tiny_model, png_images):
    """The settings reach the store: two images fit, a third evicts the oldest; time evicts too."""
    sizes = sorted(len(p) for p in png_images[:3])
    app = make_app(tiny_model, image_store_bytes=sizes[1] + sizes[2], image_store_ttl_s=30, preload_default_model=False)
    clock = Clock()
    store = app.state.features.runtime.images
    store.clock = clock
    with TestClient(app, raise_server_exceptions=False) as c:
        ids = [c.post("/v1/images", files=files(p)).json()["image_id"] for p in png_images[:3]]
        kept = [store.peek(i) is not None for i in ids]
        assert kept[2] and not all(kept)
        gone = ids[kept.index(False)]
        assert_problem(c.post(f"/v1/predict?image_id={gone}"), 404, "upload the image again")
        assert c.post(f"/v1/predict?image_id={ids[2]}").status_code == 200
        clock.now += 31
        assert_problem(c.post(f"/v1/predict?image_id={ids[2]}"), 404, "expired", "upload the image again")


def test_the_npy_of_an_id_equals_the_npy_of_the_body(client, png_images):
    png = png_images[0]
    first = client.post("/v1/activations?layer=entry.block3.sep1&top=3&format=npy", files=files(png))
    second = client.post(f"/v1/activations?layer=entry.block3.sep1&top=3&format=npy&image_id={hashlib.sha256(png).hexdigest()}")
    assert (load_npy(first.content) == load_npy(second.content)).all()
