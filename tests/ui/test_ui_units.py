"""The UI's plain parts, without a server: the HTTP client's errors, the spectrum arithmetic,
the sample images, the launcher's commands."""

from __future__ import annotations

import io

import httpx
import pytest
from PIL import Image

from ui import launch, samples, spectrum
from ui.client import UNREACHABLE, ApiClient, ApiError


def _client(handler) -> ApiClient:
    return ApiClient("http://api.test", transport=httpx.MockTransport(handler))


def test_client_sends_image_as_multipart_and_parameters_in_the_query():
    seen = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen["url"] = request.url
        seen["body"] = request.read()
        return httpx.Response(200, json={"channels": []})

    _client(handler).activations(b"IMAGEBYTES", layer="middle.block5.sep1", part="pointwise", channels=[3, 1], model="m")
    query = dict(seen["url"].params)
    assert query["layer"] == "middle.block5.sep1" and query["part"] == "pointwise" and query["channels"] == "3,1"
    assert "top" not in query and "sort" not in query  # channels override top/sort
    assert b'name="image"' in seen["body"] and b"IMAGEBYTES" in seen["body"]

    _client(handler).attributions(b"x", method="smoothgrad", params={"nt_samples": 4, "absolute": False})
    query = dict(seen["url"].params)
    assert query["nt_samples"] == "4" and query["absolute"] == "false" and "target" not in query


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


def test_spectrum_from_regular_to_separable():
    points = spectrum.layer_spectrum(728, 728, (19, 19))
    ks = [p.segments for p in points]
    assert ks[0] == 1 and ks[-1] == 728 and all(728 % k == 0 for k in ks[1:-1])
    by_k = {p.segments: p for p in points}
    assert by_k[1].params == 728 * 728 * 9  # regular 3x3 convolution
    assert by_k[728].params == 728 * 9 + 728 * 728  # depthwise separable
    assert by_k[4].params == 728 * 728 + 4 * 182 * 182 * 9  # Inception-like, 4 segments
    assert all(p.macs == p.params * 19 * 19 for p in points)
    assert [p.params for p in points] == sorted((p.params for p in points), reverse=True)
    with pytest.raises(ValueError):
        spectrum.spectrum_params(16, 24, 5)  # 5 does not divide 24


def test_generated_samples_carry_their_class():
    data = samples.generated_bytes(7, 2)
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG" and image.size == (samples.GENERATED_SIZE,) * 2
    assert samples.generated_index(7, 2) % samples.NUM_CLASSES == 7
    assert samples.generated_bytes(7, 2) == data  # deterministic


def test_launch_commands():
    command = launch.streamlit_command(8599, "0.0.0.0")
    assert command[1:4] == ["-m", "streamlit", "run"] and command[4].endswith("ui/app.py")
    flags = dict(zip(command[5::2], command[6::2]))
    assert flags["--server.port"] == "8599" and flags["--server.headless"] == "true"
    assert flags["--browser.gatherUsageStats"] == "false" and flags["--server.address"] == "0.0.0.0"
    assert launch._url("0.0.0.0", 8501) == "http://127.0.0.1:8501"
    assert launch._url("::", 8000) == "http://[::1]:8000"
    env = launch._child_env(XCEPTION_UI_API_URL="http://127.0.0.1:1")
    assert env["PYTHONPATH"].split(":")[0] == str(launch.PACKAGE_ROOT)
    assert env["XCEPTION_UI_API_URL"] == "http://127.0.0.1:1"
