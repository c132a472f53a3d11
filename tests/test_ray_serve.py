"""Ray Serve: the Serve config and builder, and the same answers from two Serve replicas as from the plain app.

The slow test starts a local Ray (2 CPUs, no dashboard), deploys ``deploy.serve_app``
with two CPU replicas of a tiny model imported into a temporary weights cache, and
compares ``/v1/predict`` and ``/v1/activations`` through Serve's HTTP proxy with the
app of ``api.main.create_app`` called in-process.
"""

from __future__ import annotations

import io
import math
import os
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from support import calibrate_batchnorm, photo_batch
from xception_core.allocator import GLIBC_TUNABLES
from xception_core.model import Xception
from xception_core.transform import PreprocessConfig

serve_app = pytest.importorskip("deploy.serve_app", reason="needs ray[serve]: pip install 'xception-explorer[deploy]'")

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "deploy" / "serve_config.yaml"
MODEL_ID = "tiny-serve"
INPUT_SIZE = 96
LAYER = "middle.block5.sep2"


# ----------------------------------------------------------------------------- config and builder (fast)


def test_serve_config_is_valid_and_builds():
    from ray.serve.schema import ServeDeploySchema

    config = yaml.safe_load(CONFIG.read_text())
    schema = ServeDeploySchema.model_validate(config) if hasattr(ServeDeploySchema, "model_validate") else ServeDeploySchema.parse_obj(config)
    (app,) = schema.applications
    assert app.import_path == "deploy.serve_app:build_app"
    assert app.route_prefix == "/"
    (deployment,) = app.deployments
    assert deployment.name == serve_app.DEPLOYMENT_NAME
    auto = config["applications"][0]["deployments"][0]["autoscaling_config"]
    assert 1 <= auto["min_replicas"] <= auto["max_replicas"] and auto["target_ongoing_requests"] > 0
    assert config["http_options"]["request_timeout_s"] > 180  # longer than the default attribution deadline
    # the builder accepts the file's arguments (Ray is not running here: CPU replicas)
    options, settings = serve_app.deployment_options(config["applications"][0]["args"])
    assert options["ray_actor_options"] == {
        "num_cpus": 2.0, "num_gpus": 0.0, "runtime_env": {"env_vars": {"GLIBC_TUNABLES": GLIBC_TUNABLES}},
    }
    assert settings["device"] == "cpu" and settings["cache_max_bytes"] == 536870912
    assert serve_app.build_app(config["applications"][0]["args"]) is not None


def test_builder_gpu_replicas_fixed_replicas_and_bad_arguments():
    options, settings = serve_app.deployment_options({"gpus_per_replica": "1", "max_replicas": "8"})
    assert options["ray_actor_options"]["num_gpus"] == 1.0
    assert "device" not in settings  # the replica's own GPU (Ray sets CUDA_VISIBLE_DEVICES)
    assert options["autoscaling_config"]["max_replicas"] == 8
    assert options["autoscaling_config"]["target_ongoing_requests"] == serve_app.DEFAULT_TARGET_ONGOING["gpu"]

    options, settings = serve_app.deployment_options({"num_replicas": 2, "default_model": "x", "settings": {"max_top_k": 5}})
    assert options["num_replicas"] == 2 and options["autoscaling_config"] is None
    assert settings["default_model"] == "x" and settings["max_top_k"] == 5

    with pytest.raises(ValueError, match="unknown argument"):
        serve_app.deployment_options({"gpu_per_replica": 1})
    with pytest.raises(ValueError, match="max_replicas"):
        serve_app.deployment_options({"min_replicas": 3, "max_replicas": 2})


def test_a_replica_whose_model_cannot_load_fails_with_the_reason(tmp_path, monkeypatch):
    monkeypatch.setattr("api.logs.configure", lambda *a, **k: None)  # keep this process's loggers as they are
    with pytest.raises(RuntimeError, match="could not be loaded.*no-such-model"):
        serve_app.build_api({"home": str(tmp_path), "default_model": "no-such-model", "device": "cpu"})


# ----------------------------------------------------------------------------- Serve vs the plain app (slow)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _png(photo: np.ndarray, width: int = 112) -> bytes:
    img = Image.fromarray(photo)
    img = img.resize((width, round(img.height * width / img.width)), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _import_tiny_model(home: Path, photos, small_config) -> None:
    from xception_core.weights import CardOverrides, import_weights

    torch.manual_seed(0)
    model = Xception(small_config)
    calibrate_batchnorm(model, photo_batch(photos, INPUT_SIZE))
    path = home.parent / "tiny.pt"
    torch.save(model.state_dict(), path)
    names = [f"class {i}" for i in range(small_config.num_classes)]
    import_weights(path, MODEL_ID, format="ours", labels=names, home=home, card=CardOverrides(preprocess=PreprocessConfig(input_size=INPUT_SIZE)))


def _same(a, b, path="") -> None:
    """JSON answers equal, floats within 1e-4 (relative) / 1e-5, timings and cache flags aside."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (path, a, b)
        for key in a:
            if key in ("timing_ms", "cached", "png"):
                continue
            _same(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), (path, a, b)
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{path}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-5), (path, a, b)
    else:
        assert a == b, (path, a, b)


def _wait_ready(get, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while (r := get("/readyz")).status_code != 200:
        assert time.monotonic() < deadline, r.text
        time.sleep(0.1)


def _wait_replicas(name: str, expected: int, timeout: float = 120.0) -> dict:
    from ray import serve

    deadline = time.monotonic() + timeout
    states: dict = {}
    while time.monotonic() < deadline:
        status = serve.status().applications[serve_app.APP_NAME].deployments[name]
        states = {str(getattr(k, "value", k)): v for k, v in status.replica_states.items()}
        if states.get("RUNNING") == expected:
            return states
        time.sleep(0.5)
    raise AssertionError(f"replicas of {name}: {states}")


@pytest.mark.slow
def test_two_serve_replicas_answer_like_the_plain_app(tmp_path, photos, small_config, monkeypatch):
    import httpx
    import ray
    from fastapi.testclient import TestClient
    from ray import serve

    from api.main import create_app
    from api.settings import Settings

    for key in [k for k in os.environ if k.startswith("XCEPTION_")]:
        monkeypatch.delenv(key)
    home = tmp_path / "home"
    _import_tiny_model(home, photos, small_config)
    settings = {
        "home": str(home),
        "default_model": MODEL_ID,
        "inference_workers": 1,
        "attribution_workers": 1,
        "batch_max_wait_ms": 0,
        "access_log": False,
        "log_level": "WARNING",
    }
    images = [_png(p) for p in photos[:3]]
    queries = [
        ("/v1/predict?top_k=5", None),
        (f"/v1/activations?layer={LAYER}&part=pointwise&top=4&sort=max", None),
        (f"/v1/activations?layer={LAYER}&part=depthwise&channels=0,3,5&format=npy", "npy"),
    ]

    # the plain app, in this process
    expected = []
    with TestClient(create_app(Settings(device="cpu", **settings))) as client:
        _wait_ready(client.get)
        for data in images:
            for path, kind in queries:
                r = client.post(path, files={"image": ("image.png", data, "image/png")})
                assert r.status_code == 200, r.text
                expected.append(r.content if kind else r.json())
        bad_expected = client.post("/v1/predict", files={"image": ("x.png", b"not an image", "image/png")})
    assert bad_expected.status_code == 415, bad_expected.text

    port = _free_port()
    pythonpath = os.pathsep.join([str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))])
    ray.init(
        num_cpus=2,
        num_gpus=0,
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=128 * 1024 * 1024,
        runtime_env={"env_vars": {"PYTHONPATH": pythonpath, "OMP_NUM_THREADS": "1"}},
    )
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        app = serve_app.build_app({"num_replicas": 2, "cpus_per_replica": 1, "settings": settings})
        serve.run(app, name=serve_app.APP_NAME, route_prefix="/")
        assert _wait_replicas(serve_app.DEPLOYMENT_NAME, 2) == {"RUNNING": 2}

        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=60) as http:
            # the replicas loaded their model before Serve marked them running: ready at once
            ready = http.get("/readyz")
            assert ready.status_code == 200 and ready.json()["default_model"] == MODEL_ID
            got = []
            for data in images:
                for path, kind in queries:
                    r = http.post(path, files={"image": ("image.png", data, "image/png")})
                    assert r.status_code == 200, r.text
                    got.append(r.content if kind else r.json())
            # errors keep their problem+json form through the proxy
            bad = http.post("/v1/predict", files={"image": ("x.png", b"not an image", "image/png")})
            assert bad.status_code == bad_expected.status_code
            assert bad.headers["content-type"].startswith("application/problem+json")
            same_problem = {k: v for k, v in bad_expected.json().items() if k != "request_id"}
            assert {k: v for k, v in bad.json().items() if k != "request_id"} == same_problem

        for i, (want, have) in enumerate(zip(expected, got)):
            if isinstance(want, bytes):
                a = np.load(io.BytesIO(want), allow_pickle=False)
                b = np.load(io.BytesIO(have), allow_pickle=False)
                np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5, err_msg=f"answer {i}")
            else:
                _same(want, have, f"answer {i}")
        assert [g["image_id"] for g in got[:: len(queries)]] == [e["image_id"] for e in expected[:: len(queries)]]
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.mark.parametrize(("args", "env", "kept"), [
    ({}, None, True),
    ({"keep_freed_memory": "false"}, None, False),
    ({}, "0", False),
    ({"keep_freed_memory": True}, "false", True),  # the argument wins over the environment
])
def test_replicas_start_with_the_allocator_kept_unless_told_not_to(monkeypatch, args, env, kept):
    """A replica's worker has threads before the app exists: the setting goes to the process at
    its start (GLIBC_TUNABLES), as XCEPTION_KEEP_FREED_MEMORY or the argument says."""
    if env is None:
        monkeypatch.delenv("XCEPTION_KEEP_FREED_MEMORY", raising=False)
    else:
        monkeypatch.setenv("XCEPTION_KEEP_FREED_MEMORY", env)
    options, _ = serve_app.deployment_options(args)
    got = options["ray_actor_options"].get("runtime_env", {}).get("env_vars", {}).get("GLIBC_TUNABLES")
    assert got == (GLIBC_TUNABLES if kept else None)
