"""A tiny spectrum run end to end (xception_core.spectrum, ``xception-demo spectrum``): CSV, JSON and
plot with sane values, resuming, refusals, saving the points as hosted models."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from PIL import Image

import xception_core.spectrum as spectrum
from xception_core.model import Xception
from xception_core.profile import profile_model
from xception_core.spectrum import PointSpec, SpectrumRequest, parse_segments, run_spectrum, spectrum_points
from xception_core.spectrum_report import CSV_FIELDS
from xception_core.train import TrainConfig
from xception_core.weights import load_model, read_checkpoint
from xception_demo.cli import main

TINY = dict(
    stem_channels=(4, 8), entry_channels=(8, 12, 16), middle_repeats=1, exit_channels=(16, 20, 24),
    input_size=72, epochs=1, batch_size=8, train_size=16, val_size=10, eval_every=1, threads=1,
)
TINY_ARGS = ["--stem", "4,8", "--entry", "8,12,16", "--middle-repeats", "1", "--exit", "16,20,24",
             "--input-size", "72", "--epochs", "1", "--batch-size", "8", "--train-size", "16",
             "--val-size", "10", "--eval-every", "1", "--threads", "1", "--timing-rounds", "2", "--timing-batch", "2"]


def _request(out, points, **overrides) -> SpectrumRequest:
    return SpectrumRequest(
        base=TrainConfig(**{**TINY, **overrides}), out_dir=out, points=tuple(points), timing_batch=2, timing_rounds=2,
    )


def _rows(out) -> list[dict[str, str]]:
    return list(csv.DictReader((out / "spectrum.csv").open()))


def test_points_of_a_grid():
    assert parse_segments("1, 2,4,c,C,4") == [1, 2, 4, "C"]
    points = spectrum_points([1, 4, "C"], ["depthwise-first", "pointwise-first"], [0, 3])
    assert [p.key for p in points[:5]] == [
        "k1-s0", "k4-depthwise-first-s0", "k4-pointwise-first-s0", "kc-depthwise-first-s0", "kc-pointwise-first-s0",
    ]
    assert len(points) == 10  # k = 1 once per seed: a regular convolution has no order
    assert PointSpec("C", "pointwise-first", 0).kind == "extreme Inception"
    assert PointSpec(4, "pointwise-first", 0).kind == "Inception-like"
    assert PointSpec("C", "depthwise-first", 0).kind == "depthwise separable"
    for text in ("0", "1,x", "-2", ""):
        with pytest.raises(ValueError, match="positive integers or C"):
            parse_segments(text)
    with pytest.raises(ValueError, match="orders must be some of depthwise-first, pointwise-first; got sideways"):
        spectrum_points([2], ["sideways"], [0])


def test_a_tiny_run_writes_sane_results_and_resumes(tmp_path, monkeypatch):
    points = spectrum_points([1, 2, "C"], ["depthwise-first"], [0])
    csv_path = run_spectrum(_request(tmp_path, points), progress=False, log=lambda line: None)
    rows = _rows(tmp_path)
    assert csv_path == tmp_path / "spectrum.csv"
    assert set(CSV_FIELDS) <= set(rows[0]) and {"segments", "order", "params", "macs", "val_top1", "train_seconds", "infer_ms"} <= set(rows[0])
    assert [(r["segments"], r["order"]) for r in rows] == [("1", ""), ("2", "depthwise-first"), ("C", "depthwise-first")]
    for r, p in zip(rows, points):
        model = Xception(p.train_config(TrainConfig(**TINY)).model_config())
        assert int(r["params"]) == sum(t.numel() for t in model.parameters())
        assert int(r["macs"]) == profile_model(model.config, 72).total_macs
        assert 0.0 <= float(r["val_top1"]) <= 1.0 and float(r["val_top1"]) * 10 == round(float(r["val_top1"]) * 10)
        assert float(r["train_seconds"]) >= 0 and float(r["infer_ms"]) > 0 and int(r["steps"]) == 2
        assert float(r["train_step_ms"]) > 0
        card = json.loads((tmp_path / "points" / f"{r['key']}.json").read_text())
        assert card["config"]["segments"] == p.segments and card["extra"]["metrics"]["val_top1"] == float(r["val_top1"])
    params = [int(r["params"]) for r in rows]
    assert params == sorted(params, reverse=True)  # fewer segments, more parameters
    summary = json.loads((tmp_path / "spectrum.json").read_text())
    assert summary["base"]["train_size"] == 16 and summary["machine"]["before_timing"]["cpu"]
    assert [len(p["curve"]) for p in summary["points"]] == [2, 2, 2]
    with Image.open(tmp_path / "spectrum.png") as plot:
        assert plot.size[0] > 600

    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "points").iterdir()}
    trained = []
    real_train = spectrum.train
    monkeypatch.setattr(spectrum, "train", lambda config, **kw: trained.append(config) or real_train(config, **kw))
    more = spectrum_points([1, 2, "C"], ["depthwise-first", "pointwise-first"], [0])
    run_spectrum(_request(tmp_path, more), progress=False, log=lambda line: None)
    assert [(c.segments, c.order) for c in trained] == [(2, "pointwise-first"), ("C", "pointwise-first")]
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())  # finished points are kept
    assert [r["key"] for r in _rows(tmp_path)] == [
        "k1-s0", "k2-depthwise-first-s0", "k2-pointwise-first-s0", "kc-depthwise-first-s0", "kc-pointwise-first-s0",
    ]
    assert _rows(tmp_path)[0]["val_top1"] == rows[0]["val_top1"]

    with pytest.raises(ValueError, match=r"trained with other settings \(epochs\)"):
        run_spectrum(_request(tmp_path, points, epochs=2), progress=False, log=lambda line: None)


def test_a_point_that_does_not_fit_the_widths_is_refused_before_training(tmp_path):
    with pytest.raises(ValueError, match="k = 3, pointwise-first .* does not fit this architecture: segments=3 must divide"):
        _request(tmp_path, spectrum_points([3], ["pointwise-first"], [0]))
    assert not (tmp_path / "points").exists()


def test_interleaved_timing(monkeypatch):
    """Round r starts at model r mod n; each model's figure is its own median, per image."""
    clock, calls = [0.0], []

    class Fake(torch.nn.Module):
        def __init__(self, index, cost):
            super().__init__()
            self.index, self.cost = index, cost

        def forward(self, x):
            calls.append(self.index)
            clock[0] += self.cost

    monkeypatch.setattr(spectrum.time, "perf_counter", lambda: clock[0])
    ms = spectrum.time_inference([Fake(0, 0.004), Fake(1, 0.010), Fake(2, 0.002)], torch.zeros(2, 3, 8, 8), rounds=3)
    assert calls == [0, 1, 2] + [0, 1, 2] + [1, 2, 0] + [2, 0, 1]  # warm-up, then rotated rounds
    assert ms == pytest.approx([2.0, 5.0, 1.0])


def test_training_step_timing_trains(monkeypatch):
    torch.manual_seed(0)
    models = [torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)) for _ in range(2)]
    before = [m[1].weight.detach().clone() for m in models]
    ms = spectrum.time_training(models, torch.randn(4, 3, 2, 2), torch.tensor([0, 1, 2, 0]), rounds=2)
    assert len(ms) == 2 and all(t > 0 for t in ms)
    assert all(not torch.equal(m[1].weight, b) for m, b in zip(models, before))  # three optimiser steps each


def test_cli_spectrum_shows_progress_resumes_and_saves(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["spectrum", "--out", str(out), "--segments", "2,C", "--orders", "pointwise-first", "--save", *TINY_ARGS]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "training point 1/2: k = 2, pointwise-first (Inception-like), seed 0" in captured.err
    assert "train:" in captured.err  # the progress bar
    assert "k = C, pointwise-first (extreme Inception)" in captured.out and "wrote" in captured.out
    model, card = load_model("spectrum-k2-pointwise-first-s0")
    assert card.config.segments == 2 and card.config.order == "pointwise-first"
    stored = read_checkpoint(out / "points" / "k2-pointwise-first-s0.safetensors")
    assert torch.equal(model.state_dict()["fc.weight"], stored["fc.weight"])
    assert card.extra["metrics"]["val_top1"] == float(_rows(out)[0]["val_top1"])
    assert card.preprocess.input_size == 72

    assert main(args) == 0  # again: nothing to train, the saved models are already there
    assert "2 of 2 points already trained" in capsys.readouterr().err


@pytest.mark.parametrize("extra,code,message", [
    (["--segments", "1,x"], 2, "positive integers or C"),
    (["--orders", "sideways"], 1, "orders must be some of"),
    (["--segments", "3"], 1, "does not fit this architecture"),
    (["--seeds", "0,a"], 2, "seeds are comma-separated integers"),
])
def test_cli_refusals(tmp_path, capsys, extra, code, message):
    with pytest.raises(SystemExit) if code == 2 else _nothing():
        assert main(["spectrum", "--out", str(tmp_path), *TINY_ARGS, *extra]) == code
    assert message in capsys.readouterr().err


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_train_takes_one_point_of_the_spectrum(tmp_path, capsys):
    args = ["train", "--out", str(tmp_path), "--name", "grouped", "--segments", "2", "--order", "pointwise-first",
            "--quiet", *TINY_ARGS[:-4]]
    assert main(args) == 0
    card = json.loads((tmp_path / "grouped.json").read_text())
    assert card["config"]["segments"] == 2 and card["config"]["order"] == "pointwise-first"
    assert card["extra"]["training"]["segments"] == 2
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["train", "--out", str(tmp_path), "--segments", "2,4"])
    assert "expected one value" in capsys.readouterr().err
