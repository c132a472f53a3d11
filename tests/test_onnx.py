"""ONNX export: a dynamic batch dimension, onnxruntime logits within 1e-4 of PyTorch's, the CLI."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch

from support import calibrate_batchnorm, photo_batch
from xception_core.model import Xception
from xception_core.transform import PreprocessConfig

onnx = pytest.importorskip("onnx", reason="needs onnx: pip install 'xception-explorer[deploy]'")
pytest.importorskip("onnxruntime", reason="needs onnxruntime: pip install 'xception-explorer[deploy]'")

from xception_core.export import BATCH_DIM, INPUT_NAME, OUTPUT_NAME, onnx_bytes, onnx_logits, read_metadata, write_onnx  # noqa: E402
from xception_demo.cli import main  # noqa: E402

SIZE = 96


@pytest.fixture(scope="module")
def calibrated(small_config, photos) -> Xception:
    """Random weights, BatchNorm statistics of real photographs: logits that depend on the image."""
    torch.manual_seed(0)
    model = Xception(small_config)
    calibrate_batchnorm(model, photo_batch(photos, SIZE))
    return model


def test_onnxruntime_matches_pytorch_for_batches_of_1_and_3(tmp_path, calibrated, photos):
    path = write_onnx(calibrated, tmp_path / "tiny.onnx", input_size=SIZE)
    graph = onnx.load(str(path)).graph
    (inp,), (out,) = graph.input, graph.output
    assert (inp.name, out.name) == (INPUT_NAME, OUTPUT_NAME)
    assert inp.type.tensor_type.shape.dim[0].dim_param == BATCH_DIM
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim[1:]] == [3, SIZE, SIZE]
    assert out.type.tensor_type.shape.dim[0].dim_param == BATCH_DIM

    batch = photo_batch(photos, SIZE)
    for n in (1, 3):
        x = batch[:n]
        with torch.no_grad():
            expected = calibrated(x).numpy()
        got = onnx_logits(path, x)
        assert got.shape == (n, calibrated.config.num_classes)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)
        assert expected.std() > 1e-2  # the comparison means something: logits vary
    assert not list(tmp_path.glob(".*.part"))  # the temporary file is gone


def test_cli_export_onnx_writes_a_checked_file_with_its_card(tmp_path, calibrated, capsys):
    from xception_core.weights import CardOverrides, import_weights

    checkpoint = tmp_path / "tiny.pt"
    torch.save(calibrated.state_dict(), checkpoint)
    names = [f"thing {i}" for i in range(calibrated.config.num_classes)]
    import_weights(checkpoint, "tiny-onnx", format="ours", labels=names, card=CardOverrides(preprocess=PreprocessConfig(input_size=SIZE)))

    out = tmp_path / "tiny.onnx"
    assert main(["export", "onnx", "--model", "tiny-onnx", "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["checked_batches"] == [1, 3] and report["max_abs_diff"] <= 1e-4
    assert report["input"]["shape"] == [BATCH_DIM, 3, SIZE, SIZE]
    meta = read_metadata(out)
    assert meta["model_id"] == "tiny-onnx" and meta["class_names"] == names
    assert meta["preprocess"]["input_size"] == SIZE

    assert main(["export", "onnx", "--model", "no-such-model", "--out", str(tmp_path / "x.onnx")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and len(err.strip().splitlines()) == 1


def test_concurrent_exports_do_not_break_each_other(small_config):
    """torch.onnx.export keeps process-wide state: two models loading at once in the API used to
    make all but one export fail (and their engines fall back to eager)."""
    models = [Xception(small_config).eval() for _ in range(3)]
    barrier = threading.Barrier(len(models))
    results: list[object] = []

    def export(model: Xception) -> None:
        barrier.wait()
        try:
            results.append(len(onnx_bytes(model, input_size=96)))
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            results.append(exc)

    threads = [threading.Thread(target=export, args=(m,)) for m in models]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(isinstance(r, int) and r > 0 for r in results), results
