"""``xception-demo visualize`` and ``atlas build|show``: JSON, files, units, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from xception_core import atlas as atlas_mod
from xception_core.introspect import capture
from xception_core.synthetic import write_folder
from xception_core.transform import preprocess_bytes
from xception_core.weights import BUNDLED_ID, load_model
from xception_demo.cli import main

LAYER = "entry.block3.sep2"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("cli-atlas-data"), 16, seed=11, size=128)


def test_visualize_writes_the_png_and_its_json(capsys, tmp_path):
    out = tmp_path / "v.png"
    args = ("visualize", "--layer", LAYER, "--part", "depthwise", "--channel", "3", "--steps", "8", "--seed", "4",
            "--precision", "fp32", "--out", str(out), "--json")
    code, stdout, _ = run_cli(capsys, *args)
    assert code == 0
    result = json.loads(stdout)
    for key in ("objective_start", "objective_final", "steps", "seconds", "precision"):
        assert key in result
    assert result["steps"] == 8 and result["precision"] == "fp32" and result["size"] == 96
    assert result["model"] == BUNDLED_ID and result["layer"] == LAYER and result["channel"] == 3
    first = np.asarray(Image.open(out))
    assert first.shape == (96, 96, 3)
    code, stdout, _ = run_cli(capsys, *args)
    np.testing.assert_array_equal(np.asarray(Image.open(out)), first)  # same seed, same image
    assert json.loads(stdout)["objective_final"] == result["objective_final"]


def test_visualize_human_output(capsys, tmp_path):
    code, stdout, _ = run_cli(capsys, "visualize", "--layer", LAYER, "--part", "pointwise", "--channel", "0",
                              "--steps", "2", "--size", "72", "--out", str(tmp_path / "v.png"))
    assert code == 0 and "objective" in stdout and "2 steps" in stdout


@pytest.mark.parametrize(
    "extra,message",
    [
        (("--steps", "0"), "--steps: steps must be an integer in 1..1024"),
        (("--steps", "5000"), "--steps"),
        (("--size", "20"), "--size: size must be an integer in 71..512"),
        (("--seed", "-3"), "--seed"),
        (("--channel", "999"), "--channel: channel must be in 0..63"),
        (("--objective", "max"), "--objective"),
        (("--precision", "fp8"), "--precision"),
        (("--lr", "0"), "--lr"),
        (("--part", "grouped"), "has no grouped"),
        (("--layer", "entry.block9.sep9"), "unknown layer"),
    ],
)
def test_visualize_errors_are_one_line(capsys, tmp_path, extra, message):
    base = {"--layer": LAYER, "--part": "pointwise", "--channel": "0", "--steps": "2"}
    for flag, value in zip(extra[::2], extra[1::2]):
        base[flag] = value
    argv = ["visualize", *[x for kv in base.items() for x in kv], "--out", str(tmp_path / "v.png")]
    code, _, err = run_cli(capsys, *argv)
    assert code == 1 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_visualize_refuses_a_bad_out(capsys, tmp_path):
    base = ("visualize", "--layer", LAYER, "--part", "pointwise", "--channel", "0", "--out")
    code, _, err = run_cli(capsys, *base, str(tmp_path / "v.jpg"))
    assert code == 1 and ".png" in err
    code, _, err = run_cli(capsys, *base, str(tmp_path / "missing" / "v.png"))
    assert code == 1 and "does not exist" in err


def test_atlas_build_then_show_in_visualize_units(capsys, folder):
    code, stdout, _ = run_cli(capsys, "atlas", "build", "--data", str(folder), "--k", "4", "--batch-size", "5", "--json")
    assert code == 0
    built = json.loads(stdout)
    assert built["images"] == 16 and built["k"] == 4 and built["skipped"] == []
    code, stdout, _ = run_cli(capsys, "atlas", "show", "--layer", LAYER, "--part", "pointwise", "--channel", "5",
                              "--k", "3", "--json")
    assert code == 0
    shown = json.loads(stdout)
    objectives = [e["objective"] for e in shown["examples"]]
    assert len(objectives) == 3 and objectives == sorted(objectives, reverse=True)
    # the objective is the spatial mean of the channel on what the model saw: visualize's units
    model, card = load_model(BUNDLED_ID)
    top = shown["examples"][0]
    x = preprocess_bytes((folder / top["file"]).read_bytes(), card.preprocess)[None]
    with torch.no_grad(), capture(model, [LAYER], ["pointwise"]) as kept:
        model.forward_features(x)
    assert top["objective"] == pytest.approx(kept[LAYER]["pointwise"][0, 5].mean().item(), rel=1e-4, abs=1e-5)
    code, stdout, _ = run_cli(capsys, "atlas", "show", "--layer", LAYER, "--part", "depthwise", "--channel", "1")
    assert code == 0 and "objective" in stdout and len(stdout.strip().splitlines()) == 1 + 4


@pytest.mark.parametrize(
    "extra,message",
    [
        (("--channel", "64"), r"channel must be in 0..63"),
        (("--k", "5"), "k must be in 1..4"),
        (("--part", "conv"), "unknown part"),
        (("--layer", "nope"), "unknown layer"),
    ],
)
def test_atlas_show_errors(capsys, folder, extra, message):
    assert run_cli(capsys, "atlas", "build", "--data", str(folder), "--k", "4", "--json")[0] == 0
    base = {"--layer": LAYER, "--part": "pointwise", "--channel": "0"}
    for flag, value in zip(extra[::2], extra[1::2]):
        base[flag] = value
    code, _, err = run_cli(capsys, "atlas", "show", *[x for kv in base.items() for x in kv], "--json")
    assert code == 1 and message in err and "Traceback" not in err


def test_atlas_show_builds_the_bundled_atlas_on_first_use(capsys, monkeypatch):
    monkeypatch.setattr(atlas_mod, "BUNDLED_ATLAS_IMAGES", 10)
    code, stdout, err = run_cli(capsys, "atlas", "show", "--layer", LAYER, "--part", "pointwise", "--channel", "0", "--json")
    assert code == 0 and "first use" in err
    assert json.loads(stdout)["stats"]["count"] == 10


def test_atlas_build_errors(capsys, tmp_path):
    code, _, err = run_cli(capsys, "atlas", "build", "--data", str(tmp_path / "nope"))
    assert code == 1 and "is not a folder" in err
    code, _, err = run_cli(capsys, "atlas", "build", "--data", str(tmp_path), "--k", "0")
    assert code == 1 and "k must be an integer in 1..64" in err
    code, _, err = run_cli(capsys, "atlas", "build", "--data", str(tmp_path))
    assert code == 1 and "no image files" in err


def test_atlas_show_of_a_model_without_one(capsys):
    code, _, err = run_cli(capsys, "atlas", "show", "--model", "xception-imagenet", "--layer", LAYER,
                           "--part", "pointwise", "--channel", "0")
    assert code == 1 and ("atlas build" in err or "weights" in err)


def test_atlas_selectivity_writes_its_report(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(atlas_mod, "BUNDLED_ATLAS_IMAGES", 40)
    code, stdout, _ = run_cli(capsys, "atlas", "selectivity", "--permutations", "3", "--k", "4", "--out", str(tmp_path), "--json")
    assert code == 0
    report = json.loads(stdout)
    assert report["images"] == 40 and report["k"] == 4
    rows = json.loads((tmp_path / "selectivity.json").read_text())["rows"]
    assert len(rows) == 2 * 19 and {"pattern", "scheme", "pattern_chance", "scheme_null95"} <= set(rows[0])
    assert (tmp_path / "selectivity.png").is_file() and (tmp_path / "selectivity.csv").is_file()
    code, _, err = run_cli(capsys, "atlas", "selectivity", "--k", "1", "--out", str(tmp_path))
    assert code == 1 and "k must be in 2.." in err
