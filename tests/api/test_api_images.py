"""Image references: POST /v1/images, ``image_id`` on every analysis endpoint, the bounded store.

The store's clock is injected (no sleeps); eviction by bytes uses a store small enough for two
of the test images.
"""

from __future__ import annotations

import hashlib
import io

import pytest
from fastapi.testclient import TestClient
from PIL import Image

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


def test_the_store_is_in_the_metrics(client, app, png):
    client.post("/v1/images", files=files(png))
    metrics = client.get("/metrics").text
    stats = app.state.features.runtime.images.stats()
    assert f"xception_image_store_bytes {float(stats['bytes'])}" in metrics and stats["bytes"] >= len(png)
    assert f"xception_image_store_entries {float(stats['entries'])}" in metrics


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 30, 90)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def test_get_image_gives_back_the_bytes_with_their_type(client, png):
    """Stored by POST /v1/images or by an analysis: the same bytes, the format's content type,
    the id as ETag, nosniff; If-None-Match with the ETag answers 304 without a body."""
    image_id = client.post("/v1/images", files=files(png)).json()["image_id"]
    got = client.get(f"/v1/images/{image_id}")
    assert got.status_code == 200 and got.content == png
    assert got.headers["content-type"] == "image/png"
    assert got.headers["etag"] == f'"{image_id}"' and got.headers["x-content-type-options"] == "nosniff"
    assert "private" in got.headers["cache-control"]
    again = client.get(f"/v1/images/{image_id}", headers={"If-None-Match": f'"other", "{image_id}"'})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == f'"{image_id}"'
    assert client.get(f"/v1/images/{image_id}", headers={"If-None-Match": '"other"'}).status_code == 200
    jpeg = _jpeg()
    client.post("/v1/predict?top_k=1", files=files(jpeg))  # stored by an analysis
    got = client.get(f"/v1/images/{hashlib.sha256(jpeg).hexdigest()}")
    assert got.status_code == 200 and got.content == jpeg and got.headers["content-type"] == "image/jpeg"


def test_get_image_of_an_unknown_or_malformed_id_is_a_problem(client):
    assert_problem(client.get(f"/v1/images/{'0' * 64}"), 404, "upload the image again")
    for bad in ("A" * 64, "0" * 63, "..%2F..%2Fetc%2Fpasswd"):
        response = client.get(f"/v1/images/{bad}")
        assert response.status_code in (404, 422) and response.headers["content-type"] == "application/problem+json"
    assert_problem(client.get(f"/v1/images/{'A' * 64}"), 422, "image_id")


def test_get_image_renews_its_lifetime(tiny_model, png):
    """Reading an image is a use: it stays ttl_s after the last one."""
    app = make_app(tiny_model, image_store_ttl_s=60, preload_default_model=False)
    clock = Clock()
    app.state.features.runtime.images.clock = clock
    with TestClient(app, raise_server_exceptions=False) as c:
        image_id = c.post("/v1/images", files=files(png)).json()["image_id"]
        clock.now += 50
        assert c.get(f"/v1/images/{image_id}").status_code == 200
        clock.now += 50
        assert c.get(f"/v1/images/{image_id}").status_code == 200  # 100 s after the upload, 50 after the read
        clock.now += 61
        assert_problem(c.get(f"/v1/images/{image_id}"), 404)
