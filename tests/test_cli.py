"""The ``xception-demo`` command line, run in-process and as a real subprocess."""

import io
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from xception_core.convert import ours_to_timm
from xception_core.inference import classify
from xception_core.model import Xception
from xception_core.transform import preprocess_bytes
from xception_core.weights import get_card, import_weights, load_model
from xception_demo.cli import main


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def imported_small(tmp_path, small_config):
    torch.manual_seed(1)
    model = Xception(small_config)
    path = tmp_path / "small.pth"
    torch.save(ours_to_timm(model.state_dict(), small_config), path)
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"thing {i}" for i in range(small_config.num_classes)) + "\n")
    import_weights(path, "small-test", format="timm", labels=labels)
    return "small-test"


def test_info_json_matches_the_paper(capsys):
    code, out, _ = run_cli(capsys, "info", "--json")
    assert code == 0
    info = json.loads(out)
    assert info["total_params"] == 22_855_952
    assert info["total_macs"] == 8_357_403_496
    assert len(info["separable_layers"]) == 34
    row = info["layers"][0]
    assert {"name", "flow", "kind", "in_channels", "out_channels", "output_size", "params", "macs"} <= set(row)


def test_info_table(capsys):
    code, out, _ = run_cli(capsys, "info", "--input-size", "150")
    assert code == 0 and "22,855,952" in out and "exit.block14.sep2.pointwise" in out


def test_models_lists_bundled_and_imagenet(capsys, imported_small):
    code, out, _ = run_cli(capsys, "models", "--json")
    assert code == 0
    rows = {r["id"]: r for r in json.loads(out)}
    assert rows["xception-imagenet"]["weights"] == "missing"
    assert rows["xception-imagenet"]["classes"] == 1000
    assert rows["small-test"]["weights"] == "available" and rows["small-test"]["classes"] == 7
    assert "xception-mini-synthetic" in rows


def _png(seed: int, size=(120, 100)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_predict_json_contract(capsys, tmp_path, imported_small):
    files = []
    for i in range(2):
        f = tmp_path / f"img{i}.png"
        f.write_bytes(_png(i))
        files.append(str(f))
    code, out, _ = run_cli(capsys, "predict", *files, "--model", imported_small, "--top-k", "3", "--json")
    assert code == 0
    result = json.loads(out)
    assert [r["file"] for r in result] == files
    model, card = load_model(imported_small)
    for r, f in zip(result, files):
        assert [set(p) for p in r["predictions"]] == [{"index", "label", "probability"}] * 3
        probs = classify(model, preprocess_bytes(open(f, "rb").read(), card.preprocess)[None])[0]
        expected = torch.topk(probs, 3).indices.tolist()
        assert [p["index"] for p in r["predictions"]] == expected
        assert r["predictions"][0]["label"] == f"thing {expected[0]}"
        assert r["predictions"][0]["probability"] == pytest.approx(float(probs[expected[0]]), abs=1e-6)


def test_eval_exact_top1_top5(capsys, tmp_path, imported_small):
    model, card = load_model(imported_small)
    root = tmp_path / "data"
    hits1 = hits5 = n = 0
    for c in range(3):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(4):
            data = _png(100 * c + i)
            (root / f"class{c}" / f"{i}.png").write_bytes(data)
            probs = classify(model, preprocess_bytes(data, card.preprocess)[None])[0]
            top = torch.topk(probs, 5).indices.tolist()
            hits1 += top[0] == c
            hits5 += c in top
            n += 1
    (root / "class0" / "0.mask.png").write_bytes(_png(999))  # masks are not samples
    code, out, _ = run_cli(capsys, "eval", "--model", imported_small, "--data", str(root), "--json")
    assert code == 0
    result = json.loads(out)
    assert result["n"] == n == 12
    assert result["top1"] == pytest.approx(hits1 / n)
    assert result["top5"] == pytest.approx(hits5 / n)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["predict", "/nonexistent.png"], "no such file"),
        (["info", "--model", "nope"], "nope"),
        (["info", "--input-size", "40"], "at least 71"),
        (["eval", "--data", "/nonexistent-dir", "--model", "xception-imagenet"], "xception-imagenet"),
        (["weights", "import", "/nonexistent.pth", "--name", "x"], "nonexistent"),
        (["weights", "import", "/etc/hostname", "--name", "../evil"], "evil"),
    ],
)
def test_errors_are_one_line_without_traceback(capsys, argv, message):
    code, out, err = run_cli(capsys, *argv)
    assert code == 1 and out == ""
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_predict_rejects_a_non_image(capsys, tmp_path, imported_small):
    f = tmp_path / "notes.txt"
    f.write_text("hello")
    code, _, err = run_cli(capsys, "predict", str(f), "--model", imported_small)
    assert code == 1 and "notes.txt" in err and "Traceback" not in err


def test_console_script_runs_as_a_subprocess(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "xception_demo", "info", "--json", "--input-size", "96"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["input_size"] == 96


def test_weights_download_offline_names_url_and_manual_route(capsys, monkeypatch):
    import socket

    def refuse(*args, **kwargs):
        raise OSError("network is unreachable (test)")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    code, _, err = run_cli(capsys, "weights", "download", "xception-imagenet", "--quiet")
    assert code == 1
    assert "then run: xception-demo weights download xception-imagenet --file PATH/xception-43020ad28.pth" in err
    assert "Traceback" not in err


def test_weights_remedies_are_this_programs_command_lines(capsys, tmp_path, imported_small):
    """The core names no program: the CLI words each remedy's commands as its own command lines."""
    image = tmp_path / "a.png"
    image.write_bytes(_png(0))
    code, _, err = run_cli(capsys, "predict", str(image), "--model", "xception-imagenet")
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert err.startswith("error: weights of xception-imagenet are not in the cache (")
    assert "; run: xception-demo weights download xception-imagenet (offline: download https://" in err
    assert "then run: xception-demo weights download xception-imagenet --file PATH/xception-43020ad28.pth)" in err

    code, _, err = run_cli(capsys, "weights", "import", str(image), "--name", "xception-imagenet")
    assert code == 1
    assert "reserved for a built-in model; choose another --name; to fill it, run: " in err
    assert "run: xception-demo weights download xception-imagenet (or with --file PATH)" in err

    get_card(imported_small).weights_path.unlink()
    code, _, err = run_cli(capsys, "predict", str(image), "--model", imported_small)
    assert code == 1
    assert f"to re-import it, run: xception-demo weights import FILE --name {imported_small} --overwrite" in err


def test_weights_download_from_a_local_file(capsys, tmp_path, small_config, monkeypatch):
    import hashlib

    from xception_core import weights

    torch.manual_seed(3)
    state = ours_to_timm(Xception(small_config).state_dict(), small_config)
    path = tmp_path / "mirror.pth"
    torch.save(state, path)
    prefix = hashlib.sha256(path.read_bytes()).hexdigest()[:9]
    entry = {**weights.PRETRAINED["xception-imagenet"], "config": small_config, "sha256_prefix": prefix,
             "url": f"http://127.0.0.1:9/xception-{prefix}.pth", "labels": [f"c{i}" for i in range(small_config.num_classes)]}
    monkeypatch.setitem(weights.PRETRAINED, "xception-imagenet", entry)
    code, out, err = run_cli(capsys, "weights", "download", "xception-imagenet", "--file", str(path), "--quiet")
    assert code == 0, err
    model, card = load_model("xception-imagenet")
    assert card.status == "available"
    assert torch.equal(model.fc.weight, state["fc.weight"])


def test_unknown_ablation_variant_is_refused_before_training_with_the_list(capsys, tmp_path):
    code, _, err = run_cli(capsys, "ablate", "--out", str(tmp_path / "ab"), "--variants", "gelu+residual", "--quiet")
    assert code == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "gelu+residual" in err and "none+residual" in err and "none-no-residual" in err
    assert not (tmp_path / "ab" / "ablation.csv").exists()


def test_export_refuses_an_old_opset(capsys, tmp_path):
    code, _, err = run_cli(capsys, "export", "onnx", "--out", str(tmp_path / "x.onnx"), "--opset", "12")
    assert code == 1 and err.strip() == "error: --opset must be at least 13"
