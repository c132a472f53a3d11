"""GET /v1/spectrum/results: the committed spectrum run, served from the copy shipped as package data."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from apihelpers import assert_problem, make_settings
from xception_core.profile import profile_model
from xception_core.spectrum_report import read_results
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


def test_unreadable_results_are_a_503_that_says_so(c, monkeypatch, tmp_path):
    import api.routers.spectrum as route

    damaged = tmp_path / "spectrum.json"
    damaged.write_text(json.dumps({"points": [{"key": "k1-s0"}]}))
    monkeypatch.setattr(route, "committed_results", lambda: read_results(damaged))
    route._results.cache_clear()
    try:
        assert_problem(c.get("/v1/spectrum/results"), 503, "cannot be read", "a point lacks segments")
    finally:
        route._results.cache_clear()
