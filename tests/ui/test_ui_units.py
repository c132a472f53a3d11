"""The UI's plain parts, without a server: the HTTP client's requests and errors."""

from __future__ import annotations

import hashlib

import httpx
import pytest

from ui.client import UNREACHABLE, ActivationsQuery, ApiClient, ApiError, AttributionQuery


def _client(handler) -> ApiClient:
    return ApiClient("http://api.test", transport=httpx.MockTransport(handler))


def test_client_sends_image_as_multipart_and_parameters_in_the_query():
    seen = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen["url"] = request.url
        seen["body"] = request.read()
        return httpx.Response(200, json={"channels": []})

    _client(handler).activations(b"IMAGEBYTES", ActivationsQuery("middle.block5.sep1", part="pointwise", channels=(3, 1)), model="m")
    query = dict(seen["url"].params)
    assert query["layer"] == "middle.block5.sep1" and query["part"] == "pointwise" and query["channels"] == "3,1"
    assert query["model"] == "m"
    assert "top" not in query and "sort" not in query  # channels override top/sort
    assert b'name="image"' in seen["body"] and b"IMAGEBYTES" in seen["body"]

    _client(handler).attributions(b"x", AttributionQuery("smoothgrad", method_params={"nt_samples": 4, "absolute": False}))
    query = dict(seen["url"].params)
    assert query["nt_samples"] == "4" and query["absolute"] == "false" and "target" not in query and "model" not in query
    with pytest.raises(ValueError, match="clashes with a request parameter"):
        AttributionQuery("saliency", method_params={"layer": "x"}).params()


def test_client_turns_problem_details_into_api_error():
    problem = {"type": "urn:xception-explorer:problem:unknown-layer", "title": "Unprocessable Entity", "status": 422,
               "detail": "unknown layer 'x'; valid choices: a, b", "request_id": "r1"}

    def handler(request):
        return httpx.Response(422, json=problem, headers={"content-type": "application/problem+json"})

    with pytest.raises(ApiError) as caught:
        _client(handler).predict(b"x")
    error = caught.value
    assert error.status == 422 and error.slug == "unknown-layer" and error.request_id == "r1"
    assert error.message == "Unprocessable Entity (HTTP 422): unknown layer 'x'; valid choices: a, b"


def test_client_reports_non_api_answers_and_unreachable_services():
    with pytest.raises(ApiError) as caught:
        _client(lambda r: httpx.Response(502, text="<html>Bad gateway</html>")).models()
    assert caught.value.status == 502 and "Bad gateway" in caught.value.message

    def refuse(request):
        raise httpx.ConnectError("connection refused")

    with pytest.raises(ApiError) as caught:
        _client(refuse).models()
    assert caught.value.status == UNREACHABLE
    assert "cannot reach the API at http://api.test" in caught.value.message and "xception-demo" in caught.value.message


def test_client_falls_back_to_bytes_when_the_api_stores_no_images():
    """An API without POST /v1/images (404 or 405): the bytes go with every request, no image_id."""
    from ui.client import ImageRef

    for status in (404, 405):
        seen: list[tuple] = []

        def handler(request: httpx.Request, seen=seen, status=status) -> httpx.Response:
            seen.append((request.url.path, request.url.params.get("image_id"), b"IMAGEBYTES" in request.read()))
            if request.url.path == "/v1/images":
                return httpx.Response(status, json={"type": "about:blank", "title": "Not Found", "status": status, "detail": "Not Found"})
            return httpx.Response(200, json={"predictions": []})

        client = _client(handler)
        ref = ImageRef("ab" * 32, b"IMAGEBYTES")
        client.predict(ref)
        client.predict(ref)
        assert client.stores_images is False
        assert seen == [("/v1/images", None, True), ("/v1/predict", None, True), ("/v1/predict", None, True)], seen


def test_client_says_plainly_when_an_image_id_is_gone_and_it_has_no_bytes():
    from ui.client import IMAGE_GONE, ImageRef, image_gone

    problem = {"type": "urn:xception-explorer:problem:unknown-image-id", "title": "Not Found", "status": 404,
               "detail": "no stored image has image_id ...; upload the image again", "parameter": "image_id"}
    client = _client(lambda request: httpx.Response(404, json=problem))
    with pytest.raises(ApiError) as caught:
        client.predict(ImageRef("cd" * 32))
    assert image_gone(caught.value) and caught.value.detail == IMAGE_GONE
    # an unknown model is a 404 too, but not a forgotten image
    unknown_model = {"type": "urn:xception-explorer:problem:unknown-model", "title": "Not Found", "status": 404,
                     "detail": "unknown model 'x'", "parameter": "model"}
    with pytest.raises(ApiError) as caught:
        _client(lambda request: httpx.Response(404, json=unknown_model)).predict(ImageRef("cd" * 32), model="x")
    assert not image_gone(caught.value) and caught.value.slug == "unknown-model"


def test_client_sends_the_bytes_of_an_image_too_large_for_the_store():
    from ui.client import ImageRef

    seen = []
    too_small = {"type": "urn:xception-explorer:problem:image-store-too-small", "title": "Content Too Large", "status": 413,
                 "detail": "the image (10 bytes) is larger than the whole image store (0 bytes); send it with each request instead"}

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.path, request.url.params.get("image_id"), b"IMAGEBYTES" in request.read()))
        if request.url.path == "/v1/images":
            return httpx.Response(413, json=too_small)
        return httpx.Response(200, json={"predictions": []})

    client = _client(handler)
    ref = ImageRef(hashlib.sha256(b"IMAGEBYTES").hexdigest(), b"IMAGEBYTES")
    assert client.upload_image(ref.data) is None
    client.stores_images = True  # other images fit
    client.predict(ref)
    client.predict(ref)
    assert seen == [("/v1/images", None, True), ("/v1/predict", None, True), ("/v1/predict", None, True)], seen
