"""GET /v1/spectrum/results: the committed spectrum run, served from the copy shipped as package data."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from apihelpers import assert_problem, make_settings
from xception_core.profile import profile_model
from xception_core.train import TrainConfig

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "spectrum"


@pytest.fixture(scope="module")
def c():
    from api.main import create_app
    from api.registry import ModelRegistry

    with TestClient(create_app(make_settings(preload_default_model=False), registry=ModelRegistry.from_models([]))) as client:
        yield client


def test_the_shipped_copy_is_the_committed_run():
    """xception_core/data/spectrum.json must follow docs/spectrum/spectrum.json (copy it after a new run)."""
    shipped = ROOT / "xception_core" / "data" / "spectrum.json"
    assert shipped.read_bytes() == (DOCS / "spectrum.json").read_bytes()


def test_the_results_are_the_committed_csv(c):
    body = c.get("/v1/spectrum/results").json()
    rows = list(csv.DictReader((DOCS / "spectrum.csv").open()))
    assert [p["key"] for p in body["points"]] == [r["key"] for r in rows]
    for point, row in zip(body["points"], rows):
        assert str(point["segments"]) == row["segments"] and (point["order"] or "") == row["order"]
        assert point["params"] == int(row["params"]) and point["macs"] == int(row["macs"])
        assert point["val_top1"] == float(row["val_top1"]) and point["infer_ms"] == float(row["infer_ms"])
        assert point["curve"] is None
    assert {p["order"] for p in body["points"] if p["segments"] == 1} == {None}
    assert body["settings"]["input_size"] == 96 and body["machine"]["cpu"] and body["timing"]["rounds"] >= 1
    assert "docs/spectrum" in body["source"]


def test_each_points_size_is_the_cores_count(c):
    """The measured points and the arithmetic table count with one definition (profile_model)."""
    body = c.get("/v1/spectrum/results").json()
    for p in body["points"]:
        config = TrainConfig(**{**body["settings"], "segments": p["segments"], "order": p["order"] or "depthwise-first"}).model_config()
        profile = profile_model(config, body["settings"]["input_size"])
        assert (p["params"], p["macs"]) == (profile.total_params, profile.total_macs), p["key"]


def test_curves_on_request(c):
    points = c.get("/v1/spectrum/results?curves=true").json()["points"]
    for p in points:
        assert p["curve"] and p["curve"][-1]["step"] == p["steps"] and p["curve"][-1]["val_top1"] == p["val_top1"]
    assert_problem(c.get("/v1/spectrum/results?curves=maybe"), 422, "curves")


def _client(**settings) -> TestClient:
    from api.main import create_app
    from api.registry import ModelRegistry

    return TestClient(create_app(make_settings(preload_default_model=False, **settings), registry=ModelRegistry.from_models([])))


def test_a_configured_run_is_served_instead(tmp_path):
    """``spectrum_dir``: the operator's own run, read on each request (a run may still be adding points)."""
    data = json.loads((DOCS / "spectrum.json").read_text())
    data["points"] = data["points"][:2]
    (tmp_path / "spectrum.json").write_text(json.dumps(data))
    with _client(spectrum_dir=tmp_path) as c:
        body = c.get("/v1/spectrum/results").json()
        assert [p["key"] for p in body["points"]] == ["k1-s0", "k2-pointwise-first-s0"] and "spectrum_dir" in body["source"]
        data["points"] = data["points"][:1]
        (tmp_path / "spectrum.json").write_text(json.dumps(data))
        assert [p["key"] for p in c.get("/v1/spectrum/results").json()["points"]] == ["k1-s0"]


@pytest.mark.parametrize("content,why", [
    (None, "not a spectrum run's json"),
    ("{", "not a spectrum run's json"),
    (json.dumps({"points": []}), "no points"),
    (json.dumps({"points": [{"key": "k1-s0"}]}), "a point lacks segments"),
])
def test_unreadable_results_are_a_503_that_says_so(tmp_path, content, why):
    if content is not None:
        (tmp_path / "spectrum.json").write_text(content)
    with _client(spectrum_dir=tmp_path) as c:
        body = assert_problem(c.get("/v1/spectrum/results"), 503, "results of the configured run (setting spectrum_dir) cannot be read", why)
    assert str(tmp_path) not in body["detail"]
