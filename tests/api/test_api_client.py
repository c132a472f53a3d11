"""A client generated from the served ``/openapi.json`` by ``openapi-python-client`` (locally, no
network) uploads an image and gets the same answers as a hand-written request: predict,
activations and attributions, without and with an API key.

This is what breaks when a file field loses ``format: binary`` (the generated code then sends
the image as a text part, and the server answers 422 ``image-not-a-file``), when an operation id
changes (the function is gone), or when a response stops matching its schema (parsing fails).
"""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from apifixtures import *  # noqa: F401,F403 -- the shared fixtures
from apihelpers import make_app, serve

pytestmark = pytest.mark.slow

LAYER = "entry.block2.sep1"
#: what a user of the generated client can set too: sample images (JPEG or PNG) come back as bytes
GENERATOR_CONFIG = {
    "post_hooks": [],  # no formatter run: the same code, sooner
    "content_type_overrides": {"image/jpeg": "application/octet-stream", "image/png": "application/octet-stream"},
}


def generate_client(url: str, directory: Path, package: str) -> str:
    """``openapi-python-client generate`` over the service's schema; returns its output."""
    spec = directory / "openapi.json"
    spec.write_bytes(httpx.get(f"{url}/openapi.json", timeout=30).content)
    config = directory / "generator.json"
    config.write_text(json.dumps(GENERATOR_CONFIG))
    command = [
        sys.executable, "-m", "openapi_python_client", "generate", "--path", str(spec),
        "--output-path", str(directory / package), "--meta", "none", "--config", str(config),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


class Generated:
    """The generated package's modules, imported by name."""

    def __init__(self, package: str) -> None:
        self.package = package
        self.root = importlib.import_module(package)
        self.models = importlib.import_module(f"{package}.models")
        self.types = importlib.import_module(f"{package}.types")

    def operation(self, tag: str, operation_id: str):
        return importlib.import_module(f"{self.package}.api.{tag}.{_snake(operation_id)}")

    def file(self, data: bytes):
        return self.types.File(payload=io.BytesIO(data), file_name="image.png", mime_type="image/png")

    def client(self, url: str, api_key: str | None):
        timeout = httpx.Timeout(120.0)
        if api_key is None:
            return self.root.Client(base_url=url, timeout=timeout)
        return self.root.AuthenticatedClient(base_url=url, token=api_key, auth_header_name="X-API-Key", prefix="", timeout=timeout)


def _direct(url: str, path: str, params: dict, png: bytes, api_key: str | None) -> dict:
    headers = {"X-API-Key": api_key} if api_key else {}
    r = httpx.post(f"{url}{path}", params=params, files={"image": ("image.png", png, "image/png")}, headers=headers, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def _same(parsed, direct: dict) -> None:
    """The generated model holds every field of the hand-made request's answer, equal (timings
    and whether the cache answered aside)."""

    def steady(answer: dict) -> dict:
        return {k: v for k, v in answer.items() if not k.endswith("_ms") and k not in ("cached", "cache")}

    assert steady(parsed.to_dict()) == steady(direct)


@pytest.mark.parametrize("api_key", [None, "client-test-key"], ids=["no-key", "key"])
def test_a_generated_client_predicts_shows_maps_and_explains(tiny_model, png, api_key, tmp_path, monkeypatch):
    package = "xception_client_keyed" if api_key else "xception_client_open"
    app = make_app(tiny_model, api_key=api_key)
    spec = app.openapi()
    with serve(app) as url:
        output = generate_client(url, tmp_path, package)
        assert "WARNING" not in output, output
        monkeypatch.syspath_prepend(str(tmp_path))
        gen = Generated(package)
        for path_item in spec["paths"].values():  # every operation has its function, named by its id
            for op in path_item.values():
                assert callable(gen.operation(op["tags"][0], op["operationId"]).sync_detailed), op["operationId"]
        client = gen.client(url, api_key)

        r = gen.operation("predict", "predict").sync_detailed(client=client, body=gen.models.BodyPredict(image=gen.file(png)), top_k=3)
        assert r.status_code == 200, r.content[:500]
        assert isinstance(r.parsed, gen.models.PredictResponse)
        assert r.parsed.image_id == hashlib.sha256(png).hexdigest()
        _same(r.parsed, _direct(url, "/v1/predict", {"top_k": 3}, png, api_key))

        r = gen.operation("activations", "activations").sync_detailed(
            client=client, body=gen.models.BodyActivations(image=gen.file(png)), layer=LAYER, part=gen.models.ActivationsPart.POINTWISE, channels="0,5,2"
        )
        assert r.status_code == 200, r.content[:500]
        assert [c.index for c in r.parsed.channels] == [0, 5, 2]
        _same(r.parsed, _direct(url, "/v1/activations", {"layer": LAYER, "part": "pointwise", "channels": "0,5,2"}, png, api_key))

        r = gen.operation("attributions", "attributions").sync_detailed(
            client=client, body=gen.models.BodyAttributions(image=gen.file(png)), method=gen.models.AttributionsMethod.SALIENCY, auc_steps=0
        )
        assert r.status_code == 200, r.content[:500]
        assert (r.parsed.method, r.parsed.target_source) == ("saliency", "predicted")
        _same(r.parsed, _direct(url, "/v1/attributions", {"method": "saliency", "auc_steps": 0}, png, api_key))

        if api_key is not None:  # a wrong key: 401, read as the documented problem
            wrong = gen.client(url, "not-the-key")
            r = gen.operation("models", "listModels").sync_detailed(client=wrong)
            assert r.status_code == 401 and isinstance(r.parsed, gen.models.Problem), r.content[:300]
