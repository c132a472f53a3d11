"""Training and ablation smoke tests: a few steps on tiny models (the full runs are documented commands)."""

import csv
import json
import math
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from xception_core import synthetic
from xception_core.model import Xception
from xception_core.train import ABLATION_VARIANTS, TrainConfig, ablate, accuracy, save, to_input, train
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


def test_each_step_is_adamw_on_label_smoothed_cross_entropy_in_train_mode():
    """Six steps of ``train`` (two epochs of three) against its recipe written out here: each
    epoch's batch order and flips from the seeded generator, label-smoothed cross-entropy in train
    mode (BatchNorm on the batch, even after a validation put the model in eval mode), gradients
    cleared before each backward pass, AdamW with weight decay stepped under the one-cycle
    schedule; the curve (running loss, validation accuracy) after each step, as ``on_eval`` got it.
    Both run on one thread: the same operations then give the same numbers, bit for bit."""
    config = TrainConfig(**{**TINY, "epochs": 2, "train_size": 24, "val_size": 6, "eval_every": 1})
    seen = []
    before = time.perf_counter()
    result = train(config, progress=False, on_eval=seen.append)
    elapsed = time.perf_counter() - before

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(config.seed)
        generator = torch.Generator().manual_seed(config.seed)
        model = Xception(config.model_config()).to(memory_format=torch.channels_last)
        initial = {k: v.clone() for k, v in model.state_dict().items()}
        images, labels, _ = synthetic.generate(24, config.data_seed, config.input_size)
        val_images, val_labels, _ = synthetic.generate(6, config.val_seed, config.input_size)
        val_images, val_labels = torch.from_numpy(val_images), torch.from_numpy(val_labels)
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=6, pct_start=0.15)
        step, running, curve = 0, 0.0, []
        for _epoch in range(2):
            order = torch.randperm(24, generator=generator)
            for batch in (order[:8], order[8:16], order[16:]):
                model.train()
                x = torch.from_numpy(images[batch.numpy()]).permute(0, 3, 1, 2).float() / 127.5 - 1
                x = x.contiguous(memory_format=torch.channels_last)
                flip_h = torch.rand(8, generator=generator) < 0.5
                flip_v = torch.rand(8, generator=generator) < 0.5
                x = torch.where(flip_h[:, None, None, None], x.flip(3), x)
                x = torch.where(flip_v[:, None, None, None], x.flip(2), x)
                loss = F.cross_entropy(model(x), torch.from_numpy(labels[batch.numpy()]), label_smoothing=0.05)
                for p in model.parameters():
                    p.grad = None
                loss.backward()
                optimizer.step()
                schedule.step()
                step += 1
                running = 0.9 * running + 0.1 * loss.item() if step > 1 else loss.item()
                curve.append({"step": step, "epoch": round(step / 3, 3), "train_loss": round(running, 4),
                              "val_top1": accuracy(model, val_images, val_labels)})
    finally:
        torch.set_num_threads(threads)

    assert result.curve == curve
    assert seen == curve
    assert result.val_top1 == curve[-1]["val_top1"]
    assert result.config is config
    assert 0 < result.seconds <= elapsed
    trained = result.model.state_dict()
    assert trained.keys() == initial.keys()
    for k, v in model.state_dict().items():
        assert torch.equal(trained[k], v), k
    # the optimiser stepped: every parameter moved from its initial value
    moved = [k for k, _ in result.model.named_parameters() if not torch.equal(trained[k], initial[k])]
    assert moved == [k for k, _ in result.model.named_parameters()]
    assert result.model.training is False
    # back in the usual layout, as safetensors stores it
    assert all(v.is_contiguous() for v in trained.values())


class _Answers(nn.Module):
    """Predicts for each image the class written in its top-left pixel; records how it was called."""

    def __init__(self):
        super().__init__()
        self.norm = nn.BatchNorm2d(3)
        self.calls: list[tuple] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append((len(x), self.training, torch.is_inference_mode_enabled(), float(x.min()), float(x.max())))
        predicted = ((x[:, 0, 0, 0] + 1) * 127.5).round().long()
        return F.one_hot(predicted, synthetic.NUM_CLASSES).float() + 0.01 * torch.arange(synthetic.NUM_CLASSES)


def test_the_progress_bar_counts_the_steps_and_shows_loss_and_validation(capsys):
    """What someone running ``xception-demo train`` watches: "train", every step of the total,
    the running loss after each step and, after each evaluation, the validation top-1; nothing at
    all with ``progress=False``."""
    import re

    config = TrainConfig(**{**TINY, "eval_every": 3})
    train(config, progress=False)
    assert capsys.readouterr().err == ""
    result = train(config, progress=True)
    frames = [f.strip() for f in capsys.readouterr().err.split("\r") if f.strip()]
    assert frames and all(f.startswith("train:") for f in frames)
    total = config.epochs * (config.train_size // config.batch_size)
    counts = [int(m.group(1)) for f in frames if (m := re.search(rf"\| (\d+)/{total} \[", f))]
    assert counts[0] == 0 and set(range(total + 1)) <= set(counts) and counts == sorted(counts)
    assert all(re.search(r"[\d?](step/s|s/step)", f) for f in frames)  # the unit: steps
    for point in result.curve:
        shown = [f for f in frames if f" {point['step']}/{total} [" in f and "val=" in f]
        assert shown, f"no frame with the validation of step {point['step']}"
        loss, val = re.search(r"loss=([0-9.]+), val=([0-9.]+)\]", shown[-1]).groups()
        assert abs(float(loss) - point["train_loss"]) <= 6e-4 and val == f"{point['val_top1']:.3f}"
    plain = [f for f in frames if re.search(r", loss=\d+\.\d{3}\]$", f)]
    assert len({re.search(r" (\d+)/", f).group(1) for f in plain}) == total  # a loss after every step


def test_accuracy_is_the_share_of_right_top1_answers_over_every_batch():
    """7 images in batches of 3, 3 and 1: 4 right (the first and the last among them), in eval
    mode, without autograd, on the images as the model is trained on them ([-1, 1])."""
    images = torch.zeros(7, 8, 8, 3, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.tensor([3, 1, 4, 1, 5, 9, 2])
    images[0, 1, 1] = 255
    labels = torch.tensor([3, 0, 4, 7, 5, 6, 2])
    model = _Answers().train()
    assert accuracy(model, images, labels, batch_size=3) == pytest.approx(4 / 7)
    assert model.training is False
    assert [c[:3] for c in model.calls] == [(3, False, True), (3, False, True), (1, False, True)]
    assert (model.calls[0][3], model.calls[0][4]) == (-1.0, 1.0)
    assert accuracy(model, images[1:], labels[1:]) == pytest.approx(3 / 6)  # one batch of 200 at most
    assert model.calls[-1][0] == 6
    wrong = labels.clone()
    wrong[6] = 0
    assert accuracy(model, images, wrong, batch_size=3) == pytest.approx(3 / 7)


def test_to_input_maps_uint8_nhwc_to_nchw_in_minus_one_to_one():
    images = torch.tensor(np.arange(2 * 4 * 5 * 3).reshape(2, 4, 5, 3) * 2 % 256, dtype=torch.uint8)
    x = to_input(images)
    assert x.shape == (2, 3, 4, 5) and x.dtype == torch.float32
    assert x.is_contiguous(memory_format=torch.channels_last)
    expected = images.permute(0, 3, 1, 2).double() / 127.5 - 1
    torch.testing.assert_close(x.double(), expected, rtol=0, atol=1e-6)
    ends = to_input(torch.tensor([0, 255], dtype=torch.uint8).reshape(1, 1, 2, 1))
    assert ends.flatten().tolist() == [-1.0, 1.0]


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
