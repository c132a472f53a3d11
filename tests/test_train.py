"""Training and ablation smoke tests: a few steps on tiny models (the full runs are documented commands)."""

import csv
import json
import math

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from xception_core import synthetic
from xception_core.train import ABLATION_VARIANTS, TrainConfig, ablate, save, train
from xception_core.weights import import_weights, load_model
from xception_demo.cli import main

TINY = dict(
    stem_channels=(4, 8),
    entry_channels=(8, 12, 16),
    middle_repeats=1,
    exit_channels=(16, 20, 24),
    input_size=72,
    epochs=2,
    batch_size=8,
    train_size=32,
    val_size=20,
    eval_every=2,
    threads=1,
)


def test_a_few_steps_are_deterministic():
    a = train(TrainConfig(**TINY), progress=False)
    b = train(TrainConfig(**TINY), progress=False)
    assert [p["step"] for p in a.curve] == [2, 4, 6, 8]
    assert a.curve == b.curve
    for (ka, va), (kb, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka
    c = train(TrainConfig(**{**TINY, "seed": 1}), progress=False)
    assert not torch.equal(c.model.fc.weight, a.model.fc.weight)
    assert a.model.config.num_classes == synthetic.NUM_CLASSES


def test_a_short_run_lowers_the_loss_and_learns_its_training_images():
    """50 steps on 40 generated images (2 per class) take a few seconds; the test measures the
    trained model itself on those images (validation uses the training seed and size here)."""
    widths = {"stem_channels": (8, 16), "entry_channels": (16, 24, 32), "exit_channels": (32, 40, 48)}
    budget = {"epochs": 10, "train_size": 40, "val_size": 40, "val_seed": 1, "eval_every": 10, "lr": 1e-2}
    config = TrainConfig(**{**TINY, **widths, **budget})
    assert config.val_seed == config.data_seed
    result = train(config, progress=False)
    images, labels, _ = synthetic.generate(40, config.data_seed, config.input_size)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    labels = torch.from_numpy(labels).long()
    with torch.no_grad():
        logits = result.model.eval()(x)
    top1 = (logits.argmax(1) == labels).float().mean().item()
    # chance is 1/20 (2 of 40); 8 or more right by chance has probability ~1e-4 (measured: 18 of 40)
    assert top1 >= 0.2
    assert result.val_top1 == pytest.approx(top1)
    # a guess that learned nothing scores ln(20) = 3.0 at best (measured: 2.19)
    assert F.cross_entropy(logits, labels).item() < math.log(synthetic.NUM_CLASSES) - 0.4
    losses = [p["train_loss"] for p in result.curve]
    assert losses[-1] < losses[0] - 0.3  # the running training loss falls (measured: 3.02 -> 2.40)


def test_saved_model_and_card_load_back(tmp_path):
    result = train(TrainConfig(**TINY), progress=False)
    card = save(result, tmp_path, "tiny-run")
    assert (tmp_path / "tiny-run.safetensors").is_file()
    stored = json.loads((tmp_path / "tiny-run.json").read_text())
    assert stored["sha256"] == card.sha256
    extra = stored["extra"]
    assert extra["training"]["train_size"] == 32 and extra["data"]["train_seed"] == 1
    assert len(extra["validation_curve"]) == 4 and "training_seconds" in extra
    assert stored["preprocess"]["input_size"] == 72
    imported = import_weights(tmp_path / "tiny-run.safetensors", "tiny-run", format="ours")
    model, _ = load_model(imported.id)
    assert torch.equal(model.fc.weight, result.model.fc.weight)


def test_invalid_settings_are_named():
    with pytest.raises(ValueError, match="input_size=40"):
        TrainConfig(**{**TINY, "input_size": 40})
    with pytest.raises(ValueError, match="intermediate_activation"):
        TrainConfig(**{**TINY, "intermediate_activation": "gelu"})


def test_tiny_ablation_writes_csv_and_plot(tmp_path):
    variants = ["none+residual", "relu+residual"]
    csv_path = ablate(TrainConfig(**{**TINY, "epochs": 1}), tmp_path, variants=variants, progress=False)
    rows = list(csv.DictReader(csv_path.open()))
    by_variant = {v: [r for r in rows if r["variant"] == v] for v in variants}
    assert len(rows) == 4
    for v in variants:
        assert [int(r["step"]) for r in by_variant[v]] == [2, 4]  # 32 images / 8 per step, every 2 steps
    # each variant trains its own model: the intermediate ReLU changes the losses
    assert [r["train_loss"] for r in by_variant[variants[0]]] != [r["train_loss"] for r in by_variant[variants[1]]]
    summary = json.loads((tmp_path / "ablation.json").read_text())
    assert summary["base"]["epochs"] == 1 and list(summary["variants"]) == variants
    for v in variants:
        assert summary["variants"][v]["val_top1"] == float(by_variant[v][-1]["val_top1"])
    with Image.open(tmp_path / "ablation.png") as plot:
        assert plot.size[0] > 300
    with pytest.raises(ValueError, match="variants are"):
        ablate(TrainConfig(**TINY), tmp_path, variants=["gelu"])
    assert ABLATION_VARIANTS["relu+residual"] == {"intermediate_activation": "relu", "residual": True}


def test_cli_train_and_synthetic(tmp_path, capsys):
    args = ["--stem", "4,8", "--entry", "8,12,16", "--middle-repeats", "1", "--exit", "16,20,24",
            "--input-size", "72", "--epochs", "1", "--batch-size", "8", "--train-size", "16",
            "--val-size", "10", "--threads", "1", "--quiet"]
    assert main(["train", "--out", str(tmp_path / "run"), "--name", "cli-run", *args]) == 0
    assert (tmp_path / "run" / "cli-run.json").is_file()
    assert main(["synthetic", "--out", str(tmp_path / "data"), "--n", str(synthetic.NUM_CLASSES), "--size", "72"]) == 0
    capsys.readouterr()
    folders = sorted(p.name for p in (tmp_path / "data").iterdir() if p.is_dir())
    assert len(folders) == synthetic.NUM_CLASSES
