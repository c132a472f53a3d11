"""Body-size limits while streaming, the pixel limit, deadlines, a full queue, out of memory, the cache bound."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest
import torch
from fastapi.testclient import TestClient

from api.cache import ByteLRU
from api.errors import TYPE_PREFIX
from api.limits import BodyLimitMiddleware
from apihelpers import assert_problem, encode, files, make_app, make_client, multipart, multipart_of_size, padded_png, wait_until
from apifixtures import *  # noqa: F401,F403 -- the shared fixtures

# Distinct limits, so that wiring one endpoint to the other's limit fails a test.
SINGLE = 64 * 1024
BATCH = 160 * 1024
CHUNK = 16 * 1024
FRAMINGS = ["content-length", "chunked"]  # the body announced by its length, or streamed without one


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
    return make_app(tiny_model, max_upload_bytes=SINGLE, max_batch_upload_bytes=BATCH)


@pytest.fixture(scope="module")
def limited(small_limit_app):
    with TestClient(small_limit_app, raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def small_png(photo_images) -> bytes:
    return encode(photo_images[1].convert("RGB").resize((48, 32)), "PNG")


def post_body(client, path: str, body: bytes, content_type: str, framing: str):
    content = body if framing == "content-length" else iter([body])  # an iterator: chunked, no Content-Length
    return client.post(path, content=content, headers={"content-type": content_type})


@pytest.mark.parametrize("framing", FRAMINGS)
def test_single_image_body_limit_at_its_boundary(limited, small_png, framing):
    body, ctype = multipart_of_size("image", small_png, 1, SINGLE)
    r = post_body(limited, "/v1/predict", body, ctype, framing)
    assert r.status_code == 200, r.text
    body, ctype = multipart_of_size("image", small_png, 1, SINGLE + 1)
    for path in ("/v1/predict", "/v1/activations?layer=entry.block2.sep1", "/v1/attributions?method=saliency"):
        problem = assert_problem(post_body(limited, path, body, ctype, framing), 413, f"over the limit of {SINGLE} bytes")
        assert problem["limit_bytes"] == SINGLE and problem["type"].endswith("upload-too-large")


@pytest.mark.parametrize("framing", FRAMINGS)
def test_batch_body_limit_at_its_boundary(limited, small_png, framing):
    body, ctype = multipart_of_size("images", small_png, 3, BATCH)  # well over the single-image limit
    r = post_body(limited, "/v1/predict/batch", body, ctype, framing)
    assert r.status_code == 200, r.text
    assert [item["ok"] for item in r.json()["results"]] == [True, True, True]
    body, ctype = multipart_of_size("images", small_png, 3, BATCH + 1)
    problem = assert_problem(post_body(limited, "/v1/predict/batch", body, ctype, framing), 413, f"over the limit of {BATCH} bytes")
    assert problem["limit_bytes"] == BATCH


def test_each_image_of_a_batch_has_the_single_image_limit(limited, small_png):
    body, ctype = multipart("images", [padded_png(small_png, SINGLE), padded_png(small_png, SINGLE + 1)])
    assert SINGLE < len(body) < BATCH
    r = limited.post("/v1/predict/batch", content=body, headers={"content-type": ctype})
    assert r.status_code == 200, r.text
    first, second = r.json()["results"]
    assert first["ok"] is True
    assert second["ok"] is False and second["error"]["status"] == 413
    assert f"over the limit of {SINGLE} bytes" in second["error"]["detail"]


def test_body_limit_answers_413_while_the_body_streams_in(small_limit_app):
    chunks, ctype = multipart_stream(100 * CHUNK)  # 1.6 MB announced as a stream (no Content-Length)
    for path, limit in (("/v1/predict", SINGLE), ("/v1/predict/batch", BATCH)):
        status, headers, body, reads = run_asgi(small_limit_app, path, chunks, [(b"content-type", ctype)])
        assert status == 413
        assert headers["content-type"] == "application/problem+json"
        assert json.loads(body)["limit_bytes"] == limit
        # the multipart head, then the chunks up to the one that passes the limit; none after it
        assert reads == 1 + limit // CHUNK, reads


def test_content_length_over_the_limit_is_refused_before_reading(small_limit_app):
    chunks, ctype = multipart_stream(10 * CHUNK)
    for path, limit in (("/v1/predict", SINGLE), ("/v1/predict/batch", BATCH)):
        headers = [(b"content-type", ctype), (b"content-length", str(limit + 1).encode())]
        status, _, body, reads = run_asgi(small_limit_app, path, chunks, headers)
        assert status == 413 and reads == 0 and json.loads(body)["limit_bytes"] == limit
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
    status, *_ = run_asgi(wrapped, "/x", [b"a" * 60, b"a" * 41], [])
    assert status == 413 and seen == [60]
    seen.clear()
    status, *_ = run_asgi(wrapped, "/x", [b"a" * 60, b"a" * 40], [])  # exactly at the limit
    assert status == 200 and seen == [60, 40]
    for path in ("/big", "/big/"):
        status, *_ = run_asgi(wrapped, path, [b"a" * 600, b"a" * 400], [])
        assert status == 200
        status, *_ = run_asgi(wrapped, path, [b"a" * 600, b"a" * 401], [])
        assert status == 413
    status, *_ = run_asgi(wrapped, "/x", [b"a" * 100], [(b"content-length", b"100")])
    assert status == 200
    # only the trailing slash is ignored: /bigX is another path, with the default limit
    status, *_ = run_asgi(wrapped, "/bigX", [b"a" * 600], [])
    assert status == 413
    root = BodyLimitMiddleware(app, max_bytes=100, path_limits={"/": 1000})
    for path, status_600 in (("/", 200), ("//", 200), ("/a", 413)):
        status, *_ = run_asgi(root, path, [b"a" * 600], [])
        assert status == status_600, path
    status, _, _, reads = run_asgi(wrapped, "/x", [b"a" * 101], [(b"content-length", b"101")])
    assert status == 413 and reads == 0


def test_limit_messages_say_how_much_was_sent_and_what_to_do():
    """Declared: the size sent; streamed: "more than" the limit; the limit in bytes and in MiB
    (996,148 bytes is 0.950001 MiB: "1.0")."""

    async def app(scope, receive, send):
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    limit = 996_148
    wrapped = BodyLimitMiddleware(app, max_bytes=limit)
    advice = "; send a smaller image (re-encode it as JPEG or reduce its size)"
    _, _, body, _ = run_asgi(wrapped, "/x", [b"a"], [(b"content-length", str(limit + 5).encode())])
    assert json.loads(body)["detail"] == f"the request body is {limit + 5} bytes, over the limit of {limit} bytes (1.0 MiB){advice}"
    _, _, body, _ = run_asgi(wrapped, "/x", [b"a" * limit, b"a"], [])
    assert json.loads(body)["detail"] == f"the request body is more than {limit} bytes, over the limit of {limit} bytes (1.0 MiB){advice}"


def test_the_middleware_answers_complete_problems():
    """What the middleware answers by itself: problem+json with type, title, status, detail and
    the path as instance; a refused body also closes the connection (the rest is never read)."""

    async def app(scope, receive, send):
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    wrapped = BodyLimitMiddleware(app, max_bytes=10, idle_timeout=0.05)
    cases = [
        ([b"a"], [(b"content-length", b" 1e3 ")], False, 400, "bad-content-length", "Bad Request",
         "Content-Length '1e3' is not a number", {}),
        ([b"a"], [(b"content-length", b"11")], False, 413, "upload-too-large", "Request Entity Too Large",
         None, {"limit_bytes": 10}),
        ([b"a" * 11], [], False, 413, "upload-too-large", "Request Entity Too Large", None, {"limit_bytes": 10}),
        ([b"a"], [], True, 408, "body-timeout", "Request Timeout", None, {"idle_timeout_s": 0.05}),
    ]
    for chunks, headers, stall, status, slug, title, detail, extra in cases:
        got, got_headers, body, _ = run_asgi(wrapped, "/v1/predict", chunks, headers, stall=stall)
        problem = json.loads(body)
        assert got == status and got_headers["content-type"] == "application/problem+json"
        assert problem["type"] == TYPE_PREFIX + slug and problem["title"] == title and problem["status"] == status
        assert problem["instance"] == "/v1/predict"
        assert {k: problem[k] for k in extra} == extra
        if detail is not None:
            assert problem["detail"] == detail
        if status != 400:
            assert got_headers["connection"] == "close"


def test_the_idle_timeout_ends_with_the_body():
    """Once the whole body arrived, a wait on receive() (for the client's disconnect, say, during
    a long computation) is the application's business: the body timeout no longer applies."""

    async def app(scope, receive, send):
        while (await receive()).get("more_body"):
            pass
        try:
            await asyncio.wait_for(receive(), 0.5)  # nothing comes: run_asgi's client stays silent
        except asyncio.TimeoutError:
            pass
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    status, _, body, _ = run_asgi(BodyLimitMiddleware(app, max_bytes=100, idle_timeout=0.05), "/x", [b"a" * 10], [])
    assert (status, body) == (200, b"ok")


def test_a_final_message_without_more_body_ends_the_body():
    """ASGI's more_body defaults to false: a last message without the key ends the body, and the
    idle timeout with it."""
    messages = [{"type": "http.request", "body": b"a" * 10}]
    sent = []

    async def receive():
        if messages:
            return messages.pop(0)
        await asyncio.sleep(3600)

    async def app(scope, receive, send):
        await receive()
        try:
            await asyncio.wait_for(receive(), 0.5)
        except asyncio.TimeoutError:
            pass
        await send({"type": "http.response.start", "status": 200, "headers": []})

    async def send(message):
        sent.append(message)

    wrapped = BodyLimitMiddleware(app, max_bytes=100, idle_timeout=0.05)
    asyncio.run(wrapped({"type": "http", "path": "/x", "headers": []}, receive, send))
    assert [m.get("status") for m in sent] == [200]


def test_a_limit_passed_after_the_response_began_is_not_answered_twice():
    """Once the application started its response, the middleware cannot answer 413 any more:
    the error goes up (the server closes the connection)."""
    from api.limits import BodyTooLarge

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        while (await receive()).get("more_body"):
            pass

    with pytest.raises(BodyTooLarge):
        run_asgi(BodyLimitMiddleware(app, max_bytes=10), "/x", [b"a" * 5, b"a" * 6], [])


# --------------------------------------------------------------------------- the pixel limit

PIXELS = 64 * 64  # XCEPTION_MAX_IMAGE_PIXELS: far below Pillow's own limit, so only the setting can refuse


@pytest.fixture(scope="module")
def pixel_client(tiny_model):
    with pytest.MonkeyPatch.context() as mp:  # read once, when the app is made; no other test sees it
        mp.setenv("XCEPTION_MAX_IMAGE_PIXELS", str(PIXELS))
        app = make_app(tiny_model)
    assert app.state.settings.max_image_pixels == PIXELS
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def sized_png(photo_images, width: int, height: int) -> bytes:
    return encode(photo_images[0].convert("RGB").resize((width, height)), "PNG")


def test_max_image_pixels_is_enforced_by_every_endpoint_that_decodes(pixel_client, client, photo_images):
    at_limit, over = sized_png(photo_images, 64, 64), sized_png(photo_images, 64, 65)
    assert pixel_client.post("/v1/predict", files=files(at_limit)).status_code == 200
    assert client.post("/v1/predict", files=files(over)).status_code == 200  # the default limit lets it through
    for path in (
        "/v1/predict",
        "/v1/activations?layer=entry.block2.sep1",
        "/v1/decomposition?layer=entry.block2.sep1&channel=0",
        "/v1/attributions?method=saliency&auc_steps=0",
    ):
        problem = assert_problem(pixel_client.post(path, files=files(over)), 413, "64x65", "over the limit", "send a smaller image")
        assert problem["type"].endswith("image-too-large"), problem


def test_max_image_pixels_in_a_batch_refuses_only_the_large_image(pixel_client, photo_images):
    parts = [("images", (f"{w}x{h}.png", sized_png(photo_images, w, h), "image/png")) for w, h in ((64, 64), (65, 64), (32, 128))]
    r = pixel_client.post("/v1/predict/batch", files=parts)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [item["ok"] for item in results] == [True, False, True]
    error = results[1]["error"]
    assert error["status"] == 413 and error["type"].endswith("image-too-large") and "65x64" in error["detail"]


# --------------------------------------------------------------------------- deadlines, queues, memory


def test_attribution_deadline_is_504_and_stops_the_work(tiny_model, png):
    """Only the call that must time out runs under the tiny deadline: the model is warmed first and
    the follow-up gets the normal one, so a loaded machine cannot fail the test. The deadline is read
    from the app's settings on every request, which is how the test changes it between calls."""
    with make_client(tiny_model, attribution_workers=1) as c:
        runtime = c.app.state.features.runtime
        normal = c.app.state.settings
        saliency = "/v1/attributions?method=saliency&auc_steps=0"
        assert c.post(saliency, files=files(png)).status_code == 200  # model loaded, image decoded and cached
        c.app.state.settings = normal.model_copy(update={"attribution_timeout_s": 0.3})
        try:
            started = time.perf_counter()
            r = c.post("/v1/attributions?method=integrated_gradients&n_steps=256&internal_batch_size=1&auc_steps=0", files=files(png))
            body = assert_problem(r, 504, "deadline of 0.3 s")
            assert body["type"].endswith("deadline-exceeded")
            assert time.perf_counter() - started < 5
        finally:
            c.app.state.settings = normal
        # the running job notices the deadline in its next forward pass and frees the worker
        wait_until(lambda: runtime.attribution_pool.pending == 0, "the timed-out attribution still runs")
        # the single worker is free again (another seed: not an attribution-cache hit, which needs no worker)
        again = c.post(saliency + "&seed=1", files=files(png))
        assert again.status_code == 200 and again.headers["x-cache"] == "miss"
        metrics = c.get("/metrics").text
        assert 'xception_deadline_exceeded_total{kind="attribution"} 1.0' in metrics
        # the integrated-gradients job was aborted, not finished in the background: it never recorded a duration
        assert 'xception_attribution_seconds_count{device="cpu",method="saliency"} 2.0' in metrics
        assert 'method="integrated_gradients"' not in metrics


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
        wait_until(
            lambda: c.get("/readyz").status_code == 200 and runtime.inference_pool.pending == 0, "the default model's preload"
        )

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


def test_parts_shared_by_entries_are_counted_once_and_freed_with_the_last():
    sizes = []
    cache = ByteLRU(2000, on_size=lambda total, count: sizes.append((total, count)))
    array = torch.zeros(250)  # 1,000 bytes, held by both entries below
    cache.put(("attribution", "map"), ("map", array), 10, shared=(array,))
    cache.put(("attribution", "full"), ("full", array), 30, shared=(array,))
    assert cache.bytes == 1040 and sizes[-1] == (1040, 2)
    cache.put(("attribution", "full"), ("full", array), 50, shared=(array,))  # replaced: the array stays counted once
    assert cache.bytes == 1060
    cache.put(("other", "a"), torch.zeros(100))  # 400 bytes
    assert cache.get(("attribution", "full")) is not None and cache.bytes == 1460  # order now: map, a, full
    cache.put(("other", "b"), torch.zeros(136))  # 544 bytes: 2,004 in all, the map goes; its array stays with "full"
    assert ("attribution", "map") not in cache and ("attribution", "full") in cache
    assert cache.bytes == 50 + 1000 + 400 + 544 and cache.stats()["evictions"] == 1
    cache.put(("other", "c"), torch.zeros(250))  # 1,000 bytes: "a" goes, then "full", and the array with it
    assert ("attribution", "full") not in cache and ("other", "a") not in cache
    assert cache.bytes == 544 + 1000 and cache.stats()["evictions"] == 3
    assert cache.put(("x", 1), "x", 1500, shared=(torch.zeros(250),)) is False  # 1,500 + 1,000 alone exceed the cache
    cache.clear()
    assert cache.bytes == 0 and len(cache) == 0


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
    problem = json.loads(body)
    assert status == 408 and problem["idle_timeout_s"] == 0.2
    assert problem["detail"] == "no part of the request body arrived for 0.2 s; send the whole body without pausing"
    assert time.perf_counter() - started < 10
