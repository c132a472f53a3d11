"""Body-size limit while streaming, deadlines, a full queue, out of memory, the cache bound."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest
import torch

from api.cache import ByteLRU
from api.limits import BodyLimitMiddleware
from apihelpers import assert_problem, files, make_app, make_client
from apifixtures import *  # noqa: F401,F403 -- the shared fixtures

LIMIT = 64 * 1024
CHUNK = 16 * 1024


def run_asgi(app, path: str, chunks: list[bytes], headers: list[tuple[bytes, bytes]], stall: bool = False):
    """Call the ASGI app directly; return (status, headers, body, number of body messages read).

    After the chunks the client goes silent; ``stall`` marks the last chunk as not the end."""
    reads = 0
    sent: list[dict] = []

    async def receive():
        nonlocal reads
        if reads < len(chunks):
            reads += 1
            return {"type": "http.request", "body": chunks[reads - 1], "more_body": stall or reads < len(chunks)}
        await asyncio.sleep(3600)  # a client that never sends more
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": headers, "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000),
    }
    asyncio.run(asyncio.wait_for(app(scope, receive, send), 30))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict((k.decode(), v.decode()) for k, v in start["headers"]), body, reads


def multipart_stream(total: int) -> tuple[list[bytes], bytes]:
    boundary = b"XBOUNDARY"
    head = b"--" + boundary + b'\r\nContent-Disposition: form-data; name="image"; filename="big.jpg"\r\nContent-Type: image/jpeg\r\n\r\n\xff\xd8\xff'
    chunks = [head] + [b"\x00" * CHUNK for _ in range(total // CHUNK)]
    return chunks, b"multipart/form-data; boundary=" + boundary


@pytest.fixture(scope="module")
def small_limit_app(tiny_model):
    return make_app(tiny_model, max_upload_bytes=LIMIT, max_batch_upload_bytes=LIMIT)


def test_body_limit_answers_413_while_the_body_streams_in(small_limit_app):
    chunks, ctype = multipart_stream(100 * CHUNK)  # 1.6 MB announced as a stream (no Content-Length)
    status, headers, body, reads = run_asgi(small_limit_app, "/v1/predict", chunks, [(b"content-type", ctype)])
    assert status == 413
    assert headers["content-type"] == "application/problem+json"
    assert "over the limit" in json.loads(body)["detail"]
    assert reads <= LIMIT // CHUNK + 2, reads  # stopped right after passing the limit, not at the end


def test_content_length_over_the_limit_is_refused_before_reading(small_limit_app):
    chunks, ctype = multipart_stream(10 * CHUNK)
    headers = [(b"content-type", ctype), (b"content-length", str(LIMIT * 10).encode())]
    status, _, body, reads = run_asgi(small_limit_app, "/v1/predict", chunks, headers)
    assert status == 413 and reads == 0
    status, _, body, reads = run_asgi(small_limit_app, "/v1/predict", chunks, [(b"content-type", ctype), (b"content-length", b"12abc")])
    assert status == 400 and reads == 0 and "not a number" in json.loads(body)["detail"]


def test_limit_middleware_alone_counts_every_message():
    seen = []

    async def app(scope, receive, send):
        while True:
            message = await receive()
            seen.append(len(message.get("body", b"")))
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    wrapped = BodyLimitMiddleware(app, max_bytes=100, path_limits={"/big": 1000})
    status, *_ = run_asgi(wrapped, "/x", [b"a" * 60, b"a" * 60], [])
    assert status == 413 and seen == [60]
    status, *_ = run_asgi(wrapped, "/big", [b"a" * 60, b"a" * 60], [])
    assert status == 200


def test_attribution_deadline_is_504_and_stops_the_work(tiny_model, png):
    with make_client(tiny_model, attribution_timeout_s=0.3, attribution_workers=1) as c:
        runtime = c.app.state.features.runtime
        started = time.perf_counter()
        r = c.post("/v1/attributions?method=integrated_gradients&n_steps=256&internal_batch_size=1&auc_steps=0", files=files(png))
        assert_problem(r, 504, "deadline")
        assert time.perf_counter() - started < 5
        for _ in range(200):  # the running job notices the deadline in its next forward pass
            if runtime.attribution_pool.pending == 0:
                break
            time.sleep(0.02)
        assert runtime.attribution_pool.pending == 0
        assert c.post("/v1/attributions?method=saliency&auc_steps=0", files=files(png)).status_code == 200
        assert 'xception_deadline_exceeded_total{kind="attribution"}' in c.get("/metrics").text


def test_predict_deadline(tiny_model, png):
    with make_client(tiny_model, predict_timeout_s=1e-6) as c:
        assert_problem(c.post("/v1/predict", files=files(png)), 504, "deadline")


def test_full_queue_is_503_and_does_not_block_predictions(tiny_model, png, png_images):
    with make_client(tiny_model, attribution_workers=1, max_pending_jobs=1, attribution_timeout_s=20) as c:
        features = c.app.state.features
        runtime = features.runtime
        slow_done = []
        running, release = threading.Event(), threading.Event()
        real_job = features.attributions._job

        def held_job(*args, **kwargs):
            # The first attribution holds the only worker until the test releases it,
            # however fast the machine is.
            running.set()
            release.wait(30)
            return real_job(*args, **kwargs)

        features.attributions._job = held_job
        # With one pending job allowed, the default model's preload must be over first.
        for _ in range(200):
            if c.get("/readyz").status_code == 200 and runtime.inference_pool.pending == 0:
                break
            time.sleep(0.05)

        def slow():
            r = c.post("/v1/attributions?method=integrated_gradients&n_steps=8&auc_steps=0", files=files(png))
            slow_done.append(r.status_code)

        t = threading.Thread(target=slow)
        t.start()
        try:
            assert running.wait(10), slow_done
            assert runtime.attribution_pool.pending == 1
            r = c.post("/v1/attributions?method=saliency", files=files(png))
            body = assert_problem(r, 503, "queue is full")
            assert r.headers["retry-after"] == "1" and body["type"].endswith("server-busy")
            # predictions use their own pool: answered while the attribution runs
            started = time.perf_counter()
            assert c.post("/v1/predict", files=files(png_images[3])).status_code == 200
            assert time.perf_counter() - started < 5
            assert slow_done == []
        finally:
            release.set()
            t.join(60)
        assert slow_done == [200]


def test_out_of_memory_is_503_and_the_service_recovers(tiny_model, png, monkeypatch):
    import api.workers as workers

    released = []
    monkeypatch.setattr(workers, "release_gpu_memory", lambda: released.append(1))
    with make_client(tiny_model) as c:
        predictions = c.app.state.features.predictions
        original = predictions.run_batch
        calls = []

        def flaky(entry, xs):
            calls.append(len(xs))
            if len(calls) == 1:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return original(entry, xs)

        monkeypatch.setattr(predictions, "run_batch", flaky)
        predictions._batchers.clear()
        body = assert_problem(c.post("/v1/predict", files=files(png)), 503, "out of memory")
        assert body["type"].endswith("out-of-memory") and released == [1]
        assert c.post("/v1/predict", files=files(png)).status_code == 200
        assert 'xception_out_of_memory_total{device="cpu"} 1.0' in c.get("/metrics").text


def test_cache_is_bounded_in_bytes_and_least_recently_used():
    hits, misses = [], []
    cache = ByteLRU(1000, on_hit=hits.append, on_miss=misses.append)
    a, b, c = torch.zeros(100), torch.zeros(100), torch.zeros(100)  # 400 bytes each
    cache.put(("input", "a"), a)
    cache.put(("input", "b"), b)
    assert cache.get(("input", "a")) is a  # a is now the most recent
    cache.put(("layer", "c"), c)  # evicts b, the least recently used
    assert cache.get(("input", "b")) is None and cache.get(("layer", "c")) is c
    assert cache.bytes == 800 and cache.stats()["evictions"] == 1
    assert hits == ["input", "layer"] and misses == ["input"]
    assert cache.put(("input", "huge"), torch.zeros(1000)) is False and cache.bytes == 800


def test_service_cache_respects_its_byte_bound(tiny_model, png_images):
    with make_client(tiny_model, cache_max_bytes=300_000) as c:
        for data in png_images:
            c.post("/v1/activations?layer=entry.block2.sep1&top=1", files=files(data))
        cache = c.app.state.features.runtime.cache
        assert 0 < cache.bytes <= 300_000 and cache.stats()["evictions"] > 0


def test_float16_activation_cache(tiny_model, png):
    from apihelpers import load_npy

    with make_client(tiny_model, cache_activation_dtype="float16") as c16, make_client(tiny_model) as c32:
        url = "/v1/activations?layer=middle.block6.sep1&part=pointwise&top=4&format=npy"
        a16 = load_npy(c16.post(url, files=files(png)).content)
        a32 = load_npy(c32.post(url, files=files(png)).content)
        assert a16.dtype == a32.dtype == "float32"
        torch.testing.assert_close(torch.from_numpy(a16), torch.from_numpy(a32), rtol=2e-3, atol=2e-3)
        body = c16.post("/v1/decomposition?layer=middle.block6.sep1&channel=3", files=files(png)).json()
        assert body["max_abs_error"] < 1e-2


def test_a_stalled_body_gets_408_instead_of_hanging(tiny_model):
    app = make_app(tiny_model, body_timeout_s=0.2)
    chunks, ctype = multipart_stream(2 * CHUNK)  # then the client stops sending (receive sleeps)
    started = time.perf_counter()
    status, _, body, reads = run_asgi(app, "/v1/predict", chunks[:2], [(b"content-type", ctype)], stall=True)
    assert status == 408 and "without pausing" in json.loads(body)["detail"]
    assert time.perf_counter() - started < 10
