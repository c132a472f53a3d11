"""Health, readiness, the model endpoints, metrics, request ids, CORS and the API key."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from apihelpers import CLASS_NAMES, INPUT_SIZE, MODEL_ID, assert_problem, files, make_app, make_client, wait_until
from xception_core.profile import profile_model
from apifixtures import *  # noqa: F401,F403 -- the shared fixtures


def test_healthz(client):
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_readyz_turns_ready_once_the_default_model_is_loaded(tiny_model):
    app = make_app(tiny_model, preload_default_model=False)
    with TestClient(app) as c:
        assert_problem(c.get("/readyz"), 503, "not loaded")
        assert c.post("/v1/predict", files=files(_png(tiny_model))).status_code == 200
        r = c.get("/readyz")
        assert r.status_code == 200
        assert r.json()["default_model"] == MODEL_ID and r.json()["loaded_models"] == [MODEL_ID]


def test_readyz_preloads_at_start_up(tiny_model):
    with make_client(tiny_model) as c:
        wait_until(lambda: c.get("/readyz").status_code == 200, "/readyz after start-up")
        assert c.get("/readyz").json()["loaded_models"] == [MODEL_ID]


def test_readyz_explains_a_default_model_without_weights(tmp_path):
    from api.main import create_app
    from api.registry import ModelRegistry
    from apihelpers import make_settings

    registry = ModelRegistry(home=tmp_path, device="cpu", default_model="xception-imagenet")
    with TestClient(create_app(make_settings(), registry=registry)) as c:
        wait_until(lambda: "could not be loaded" in c.get("/readyz").json()["detail"], "/readyz reporting the failed load")
        body = assert_problem(c.get("/readyz"), 503, "xception-imagenet", "weights download")
        # the model list still shows it, as missing; analysis on it is a 409 that says how to fix it
        models = {m["id"]: m for m in c.get("/v1/models").json()["models"]}
        assert models["xception-imagenet"]["status"] == "missing"
        body = assert_problem(
            c.post("/v1/predict?model=xception-imagenet", files=files(b"x")),
            409,
            "run on the server: xception-demo weights download xception-imagenet (offline: download https://",
            "then run on the server: xception-demo weights download xception-imagenet --file PATH/xception-43020ad28.pth)",
        )
        assert body["type"].endswith(":model-weights-missing")


def test_weights_remedies_are_worded_for_api_clients(monkeypatch, tmp_path):
    """A remedy's commands are things the server's operator runs; listing models is an API call."""
    from api.errors import translate
    from xception_core.weights import BUNDLED_ID, WeightsMissingError, bundled, load_model

    monkeypatch.setattr(bundled, "bundled_dir", lambda: tmp_path / "no-bundled-files")
    with pytest.raises(WeightsMissingError) as err:
        load_model(BUNDLED_ID)
    problem = translate(err.value)
    assert problem.status == 409 and problem.slug == "model-weights-missing"
    assert problem.detail.endswith("; reinstall xception-explorer, or use another model (see GET /v1/models)")


def _png(model) -> bytes:
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray((np.arange(100 * 100 * 3) % 251).astype("uint8").reshape(100, 100, 3)).save(buf, "PNG")
    return buf.getvalue()


def test_models_list(client):
    body = client.get("/v1/models").json()
    assert body["default_model"] == MODEL_ID
    (m,) = body["models"]
    assert m["id"] == MODEL_ID and m["status"] == "available" and m["num_classes"] == len(CLASS_NAMES)
    assert m["input_size"] == INPUT_SIZE and m["default"] is True


def test_model_detail(client, tiny_model):
    body = client.get(f"/v1/models/{MODEL_ID}").json()
    profile = profile_model(tiny_model.config, INPUT_SIZE)
    assert body["total_params"] == profile.total_params
    assert body["separable_layers"] == [s.name for s in profile.separable]
    assert body["preprocess"]["input_size"] == INPUT_SIZE
    assert body["config"]["entry_channels"] == list(tiny_model.config.entry_channels)


def test_layer_table_matches_the_profile(client, tiny_model):
    body = client.get(f"/v1/models/{MODEL_ID}/layers").json()
    profile = profile_model(tiny_model.config, INPUT_SIZE)
    assert [row["name"] for row in body["layers"]] == [r.name for r in profile.layers]
    assert body["separable_layers"] == [s.to_dict() for s in profile.separable]
    first = body["layers"][0]
    assert set(first) == {"name", "flow", "kind", "in_channels", "out_channels", "output_size", "params", "macs"}


def test_classes(client):
    body = client.get(f"/v1/models/{MODEL_ID}/classes").json()
    assert body["num_classes"] == len(CLASS_NAMES)
    assert [c["label"] for c in body["classes"]] == CLASS_NAMES
    assert [c["index"] for c in body["classes"]] == list(range(len(CLASS_NAMES)))


@pytest.mark.parametrize("path", ["/v1/models/nope", "/v1/models/nope/layers", "/v1/models/nope/classes", "/v1/models/..%2F..%2Fetc"])
def test_unknown_model_is_404_naming_the_valid_ids(client, path):
    if "nope" in path:
        body = assert_problem(client.get(path), 404, "unknown model 'nope'", f"valid ids: {MODEL_ID}")
        assert body["valid_choices"] == [MODEL_ID] and body["type"].endswith("unknown-model")
    else:  # the encoded slashes make it another route, which does not exist: never a path on disk
        assert_problem(client.get(path), 404, "no route /v1/models/../../etc")


def test_methods_and_colormaps(client):
    from xception_core.attributions import METHODS
    from xception_core.render import COLORMAPS

    methods = client.get("/v1/methods").json()["methods"]
    assert [m["name"] for m in methods] == list(METHODS)
    ig = next(m for m in methods if m["name"] == "integrated_gradients")
    steps = next(p for p in ig["params"] if p["name"] == "n_steps")
    assert steps["minimum"] == 1 and steps["maximum"] == 256
    assert client.get("/v1/colormaps").json()["colormaps"] == list(COLORMAPS)


def test_metrics_count_requests_by_route_and_status(client, photo_images):
    from apihelpers import encode
    from PIL import Image

    fresh = encode(photo_images[0].transpose(Image.Transpose.FLIP_TOP_BOTTOM))  # not cached by other tests
    client.get("/v1/models")
    client.get("/v1/models/nope")
    client.post("/v1/predict", files=files(fresh))
    text = client.get("/metrics").text
    assert 'xception_http_requests_total{method="GET",route="/v1/models",status="200"}' in text
    assert 'xception_http_requests_total{method="GET",route="/v1/models/{model_id}",status="404"}' in text
    assert "xception_http_request_duration_seconds_bucket" in text
    assert "xception_http_requests_in_flight" in text
    assert 'xception_inference_seconds_count{device="cpu",kind="predict",model="tiny"}' in text
    assert "xception_batch_size_bucket" in text
    assert "xception_cache_misses_total" in text


def test_request_id_is_returned_and_a_sane_client_id_is_kept(client):
    r = client.get("/healthz")
    assert len(r.headers["x-request-id"]) == 32
    r = client.get("/healthz", headers={"X-Request-ID": "client-42.abc"})
    assert r.headers["x-request-id"] == "client-42.abc"
    for insane in ("has space", "x" * 500, "new\\nline", "<script>"):
        r = client.get("/healthz", headers={"X-Request-ID": insane})
        assert r.headers["x-request-id"] != insane and len(r.headers["x-request-id"]) == 32
    body = client.get("/v1/models/nope", headers={"X-Request-ID": "trace-1"}).json()
    assert body["request_id"] == "trace-1"


def test_json_logs_carry_the_request_id():
    import json
    import logging

    from api.context import request_id_var
    from api.logs import JsonFormatter

    token = request_id_var.set("rid-7")
    try:
        record = logging.LogRecord("api.access", logging.INFO, __file__, 1, "GET %s %d", ("/healthz", 200), None)
        record.status = 200
        line = json.loads(JsonFormatter().format(record))
    finally:
        request_id_var.reset(token)
    assert line["request_id"] == "rid-7" and line["message"] == "GET /healthz 200" and line["status"] == 200
    assert line["level"] == "INFO" and "ts" in line


def test_api_key(tiny_model, png):
    with make_client(tiny_model, api_key="s3cret") as c:
        assert c.get("/healthz").status_code == 200  # probes stay open
        assert_problem(c.get("/v1/models"), 401, "X-API-Key")
        assert_problem(c.get("/v1/models", headers={"X-API-Key": "wrong"}), 401, "not valid")
        assert_problem(c.post("/v1/predict", files=files(png)), 401)
        assert c.get("/v1/models", headers={"X-API-Key": "s3cret"}).status_code == 200
        assert c.post("/v1/predict", files=files(png), headers={"X-API-Key": "s3cret"}).status_code == 200
        schema = c.get("/openapi.json").json()
        assert "APIKeyHeader" in schema["components"]["securitySchemes"]


def test_cors_is_closed_by_default_and_configurable(client, tiny_model):
    preflight = {"Origin": "https://ui.example", "Access-Control-Request-Method": "POST"}
    r = client.options("/v1/predict", headers=preflight)
    assert "access-control-allow-origin" not in r.headers
    assert "access-control-allow-origin" not in client.get("/v1/models", headers={"Origin": "https://ui.example"}).headers
    with make_client(tiny_model, cors_origins="https://ui.example") as c:
        r = c.options("/v1/predict", headers=preflight)
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://ui.example"
        r = c.get("/v1/models", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in r.headers


def test_unknown_route_and_wrong_method_are_problems(client):
    assert_problem(client.get("/v2/predict"), 404, "/v1")
    body = assert_problem(client.get("/v1/predict"), 405, "POST")
    assert body["type"] == "about:blank"


def test_an_imported_model_is_hosted_from_the_cache(tiny_model, tmp_path, png):
    """A model imported into the weights cache is listed, loaded lazily on first use and served;
    its id is looked up in the registry, never used as a path."""
    import torch

    from api.main import create_app
    from api.registry import ModelRegistry
    from apihelpers import PREPROCESS, make_settings
    from xception_core import weights

    ckpt = tmp_path / "tiny.pth"
    torch.save(tiny_model.state_dict(), ckpt)
    home = tmp_path / "home"
    weights.import_weights(
        ckpt, "my-tiny", labels=list(CLASS_NAMES), home=home,
        card=weights.CardOverrides(preprocess=PREPROCESS, config=tiny_model.config),
    )
    registry = ModelRegistry(home=home, device="cpu", default_model="my-tiny")
    with TestClient(create_app(make_settings(preload_default_model=False), registry=registry)) as c:
        models = {m["id"]: m for m in c.get("/v1/models").json()["models"]}
        assert models["my-tiny"]["status"] == "available" and models["my-tiny"]["loaded"] is False
        assert {"xception-mini-synthetic", "xception-imagenet"} <= set(models)
        body = c.post("/v1/predict?model=my-tiny&top_k=7", files=files(png)).json()
        with torch.no_grad():
            from apihelpers import preprocess

            ref = torch.softmax(tiny_model(preprocess(png)), dim=1)[0]
        assert [p["index"] for p in body["predictions"]] == torch.argsort(ref, descending=True).tolist()
        assert c.get("/v1/models/my-tiny").json()["loaded"] is True
        assert_problem(c.post("/v1/predict?model=my-tiny%2F..%2F..", files=files(png)), 404, "valid ids")


def test_least_recently_used_model_is_unloaded_but_never_the_default(tiny_model, png):
    import copy

    from api.main import create_app
    from api.registry import InMemoryModel, ModelRegistry
    from apihelpers import PREPROCESS, make_settings

    models = [InMemoryModel(name, copy.deepcopy(tiny_model), CLASS_NAMES, PREPROCESS) for name in ("a", "b", "c")]
    registry = ModelRegistry.from_models(models, max_loaded=2)
    with TestClient(create_app(make_settings(preload_default_model=False), registry=registry)) as c:
        for name in ("a", "b", "c", "b"):
            assert c.post(f"/v1/predict?model={name}", files=files(png)).json()["model"] == name
        assert registry.loaded_ids() == ["a", "b"]  # c was unloaded for b; a is the default
        assert "xception_models_loaded 2.0" in c.get("/metrics").text


def test_readyz_reports_a_broken_registry_as_503(tiny_model, monkeypatch):
    app = make_app(tiny_model, preload_default_model=False)

    def broken():
        raise OSError("cannot read the model cards")

    monkeypatch.setattr(app.state.registry, "default_id", broken)
    with TestClient(app, raise_server_exceptions=False) as c:
        assert_problem(c.get("/readyz"), 503, "cannot read the model cards")
        assert c.get("/healthz").status_code == 200


@pytest.mark.parametrize(
    "settings, backend, precision, note",
    [
        ({}, "onnxruntime", "fp32", None),
        ({"predict_backend": "eager"}, "eager", "fp32", None),
        ({"predict_precision": "bf16"}, "onnxruntime", "fp32", "bf16 not used"),  # no native bf16 here: fp32, fastest backend
    ],
)
def test_model_detail_says_how_predictions_run(tiny_model, png, settings, backend, precision, note):
    from xception_core.engine import native_reduced_precision

    import torch

    if note and native_reduced_precision("bf16", torch.device("cpu")) is None:
        backend, precision, note = "eager", "bf16", None  # a CPU with AVX512-BF16 / AMX
    with make_client(tiny_model, preload_default_model=False, **settings) as c:
        assert c.get(f"/v1/models/{MODEL_ID}").json()["engine"] is None  # not loaded yet
        r = c.post("/v1/predict", files=files(png))
        assert r.status_code == 200 and r.json()["precision"] == "fp32"
        engine = c.get(f"/v1/models/{MODEL_ID}").json()["engine"]
    assert engine["backend"] == backend and engine["precision"] == precision
    assert engine["requested_backend"] == settings.get("predict_backend", "auto")
    assert engine["requested_precision"] == settings.get("predict_precision", "fp32")
    if note is None:
        assert engine["notes"] == []
    else:
        assert len(engine["notes"]) == 1 and note in engine["notes"][0], engine["notes"]


@pytest.mark.parametrize("name, value", [("predict_backend", "tensorrt"), ("predict_precision", "int8")])
def test_bad_engine_settings_are_refused(name, value):
    from pydantic import ValidationError

    from api.settings import Settings

    with pytest.raises(ValidationError, match=name):
        Settings(**{name: value})


def test_guard_settings_reach_the_predictor(tiny_model):
    app = make_app(tiny_model, mixed_precision_guard_top=1, mixed_precision_margin=0.25)
    predictor = app.state.registry.get(MODEL_ID).predictor
    assert predictor.options.guard_top == 1 and predictor.options.margin == 0.25


@pytest.mark.parametrize("enabled", [True, False])
def test_the_mixed_precision_setting_reaches_an_injected_registry(tiny_model, enabled):
    """`predict_mixed_precision` decides float16 on CUDA for registries the app did not build
    too (tests, benchmarks, embedders); a registry built with its own engine options keeps them."""
    from api.main import create_app
    from apihelpers import make_registry, make_settings

    from xception_core.engine import EngineOptions

    app = make_app(tiny_model, predict_mixed_precision=enabled)
    assert app.state.registry.engine.mixed_precision is enabled
    own = EngineOptions(mixed_precision=False)
    explicit = create_app(make_settings(predict_mixed_precision=True), registry=make_registry(tiny_model, engine=own))
    assert explicit.state.registry.engine is own
