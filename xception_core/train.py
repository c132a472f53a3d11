"""Training a (small) Xception on the generated pattern x colour data, and the paper's ablations.

Deterministic on the CPU for a seed: the data come from the synthetic
generator's (seed, index) streams, the shuffling and flips from one seeded
``torch.Generator``, and the thread count is fixed for the run.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from . import synthetic
from .model import Xception, XceptionConfig
from .transform import PreprocessConfig
from .weights import export_bundled


@dataclass(frozen=True)
class TrainConfig:
    """One training run. The defaults build the bundled model."""

    stem_channels: tuple[int, int] = (12, 24)
    entry_channels: tuple[int, int, int] = (32, 64, 128)
    middle_repeats: int = 3
    exit_channels: tuple[int, int, int] = (160, 192, 256)
    intermediate_activation: str = "none"
    residual: bool = True
    segments: int | str = "C"  # the paper's spectrum (XceptionConfig): "C" and depthwise-first is Xception
    order: str = "depthwise-first"
    input_size: int = 96
    epochs: int = 6
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 5e-4
    label_smoothing: float = 0.05
    train_size: int = 16_000
    val_size: int = 1_000
    data_seed: int = 1
    val_seed: int = 2
    seed: int = 0
    eval_every: int = 250  # steps between validations; 0: once per epoch
    threads: int = 1  # on a busy 2-core machine one thread ran 10x faster than two

    def __post_init__(self) -> None:
        for name in ("stem_channels", "entry_channels", "exit_channels"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        checks = {
            "input_size": self.input_size >= 71,
            "epochs": self.epochs >= 1,
            "batch_size": self.batch_size >= 2,
            "train_size": self.train_size >= self.batch_size,
            "val_size": self.val_size >= 1,
            "lr": self.lr > 0,
            "threads": self.threads >= 1,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid training settings: {', '.join(f'{k}={getattr(self, k)}' for k in bad)}")
        object.__setattr__(self, "order", self.model_config().order)  # validates; k = 1 has no order

    def model_config(self) -> XceptionConfig:
        return XceptionConfig(
            num_classes=synthetic.NUM_CLASSES,
            stem_channels=self.stem_channels,
            entry_channels=self.entry_channels,
            middle_repeats=self.middle_repeats,
            exit_channels=self.exit_channels,
            intermediate_activation=self.intermediate_activation,  # type: ignore[arg-type]
            residual=self.residual,
            segments=self.segments,
            order=self.order,  # type: ignore[arg-type]
        )

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass
class TrainResult:
    model: Xception
    config: TrainConfig
    curve: list[dict[str, float]] = field(default_factory=list)  # step, epoch, train_loss, val_top1
    val_top1: float = 0.0
    seconds: float = 0.0

    def card_extra(self) -> dict[str, Any]:
        return {
            "training": self.config.to_dict(),
            "data": {
                "generator": "xception_core.synthetic",
                "train_seed": self.config.data_seed,
                "val_seed": self.config.val_seed,
                "train_size": self.config.train_size,
                "val_size": self.config.val_size,
                "image_size": self.config.input_size,
            },
            "training_seconds": round(self.seconds, 1),
            "validation_curve": self.curve,
            "metrics": {"val_top1": self.val_top1},
            "torch": torch.__version__,
        }


def _tensors(n: int, seed: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels, _ = synthetic.generate(n, seed, size)
    return torch.from_numpy(images), torch.from_numpy(labels)


def to_input(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [-1, 1], channels_last (faster convolutions on the CPU)."""
    x = images_uint8.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
    return x.contiguous(memory_format=torch.channels_last)


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 200) -> float:
    """Top-1 accuracy of ``model`` on uint8 NHWC images."""
    model.eval()
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            logits = model(to_input(images[start : start + batch_size]))
            correct += int((logits.argmax(1) == labels[start : start + batch_size]).sum())
    return correct / len(images)


def train(
    config: TrainConfig,
    progress: bool = True,
    on_eval: Callable[[dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train a fresh model from ``config``; validates on a generated set with another seed."""
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        return _train(config, progress, on_eval)
    finally:
        torch.set_num_threads(previous_threads)


def _train(config: TrainConfig, progress: bool, on_eval) -> TrainResult:
    start_time = time.perf_counter()
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    model = Xception(config.model_config()).to(memory_format=torch.channels_last)
    train_x, train_y = _tensors(config.train_size, config.data_seed, config.input_size)
    val_x, val_y = _tensors(config.val_size, config.val_seed, config.input_size)

    steps_per_epoch = config.train_size // config.batch_size
    total_steps = steps_per_epoch * config.epochs
    eval_every = config.eval_every or steps_per_epoch
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=total_steps, pct_start=0.15
    )
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    result = TrainResult(model=model, config=config)
    bar = tqdm(total=total_steps, desc="train", unit="step", disable=not progress)
    step, running = 0, 0.0
    for epoch in range(config.epochs):
        order = torch.randperm(config.train_size, generator=generator)
        for b in range(steps_per_epoch):
            model.train()
            idx = order[b * config.batch_size : (b + 1) * config.batch_size]
            x = to_input(train_x[idx])
            # Flips keep every label (90-degree turns would swap the stripe classes).
            flip_h = torch.rand(len(idx), generator=generator) < 0.5
            flip_v = torch.rand(len(idx), generator=generator) < 0.5
            x = torch.where(flip_h[:, None, None, None], x.flip(3), x)
            x = torch.where(flip_v[:, None, None, None], x.flip(2), x)
            loss = loss_fn(model(x), train_y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            running = 0.9 * running + 0.1 * loss.item() if step > 1 else loss.item()
            bar.update(1)
            bar.set_postfix(loss=f"{running:.3f}")
            if step % eval_every == 0 or step == total_steps:
                point = {
                    "step": step,
                    "epoch": round(step / steps_per_epoch, 3),
                    "train_loss": round(running, 4),
                    "val_top1": accuracy(model, val_x, val_y),
                }
                result.curve.append(point)
                bar.set_postfix(loss=f"{running:.3f}", val=f"{point['val_top1']:.3f}")
                if on_eval is not None:
                    on_eval(point)
    bar.close()
    model.eval()
    result.model = model.to(memory_format=torch.contiguous_format)
    result.val_top1 = result.curve[-1]["val_top1"]
    result.seconds = time.perf_counter() - start_time
    return result


def preprocess_for(config: TrainConfig) -> PreprocessConfig:
    """The generated images are already square at the training size: no resize margin."""
    return PreprocessConfig(input_size=config.input_size, crop_pct=1.0)


def save(result: TrainResult, directory: str | Path, model_id: str, description: str | None = None):
    """Write ``<directory>/<model_id>.safetensors`` and its JSON model card; returns the card."""
    return export_bundled(
        result.model,
        class_names=synthetic.CLASS_NAMES,
        description=description
        or "Small Xception trained on generated pattern x colour images (needs spatial and cross-channel features)",
        preprocess=preprocess_for(result.config),
        extra=result.card_extra(),
        directory=directory,
        model_id=model_id,
    )


# ----------------------------------------------------------------------------- ablations

ABLATION_VARIANTS: dict[str, dict[str, Any]] = {
    "none+residual": {"intermediate_activation": "none", "residual": True},
    "elu+residual": {"intermediate_activation": "elu", "residual": True},
    "relu+residual": {"intermediate_activation": "relu", "residual": True},
    "none-no-residual": {"intermediate_activation": "none", "residual": False},
}


def ablate(
    base: TrainConfig,
    out_dir: str | Path,
    variants: Sequence[str] | None = None,
    progress: bool = True,
) -> Path:
    """Train each paper variant with the same budget and seeds; write CSV and PNG plot.

    Returns the CSV path (``ablation.csv`` beside ``ablation.png``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = list(variants or ABLATION_VARIANTS)
    unknown = [n for n in names if n not in ABLATION_VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; variants are {', '.join(ABLATION_VARIANTS)}")
    rows: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    for name in names:
        result = train(replace(base, **ABLATION_VARIANTS[name]), progress=progress)
        for point in result.curve:
            rows.append({"variant": name, **point})
        summary[name] = {"val_top1": result.val_top1, "seconds": round(result.seconds, 1)}
    csv_path = out / "ablation.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["variant", "step", "epoch", "train_loss", "val_top1"])
        writer.writeheader()
        writer.writerows(rows)
    (out / "ablation.json").write_text(
        json.dumps({"base": base.to_dict(), "variants": summary}, indent=2) + "\n"
    )
    plot_ablation(rows, out / "ablation.png")
    return csv_path


def plot_ablation(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for name in dict.fromkeys(r["variant"] for r in rows):
        points = [r for r in rows if r["variant"] == name]
        ax.plot([p["step"] for p in points], [p["val_top1"] for p in points], marker="o", ms=3, label=name)
    ax.set_xlabel("training step")
    ax.set_ylabel("validation top-1")
    ax.set_title("Xception ablations on generated pattern x colour data")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
