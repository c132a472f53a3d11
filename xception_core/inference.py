"""Batch prediction and folder evaluation on top of a loaded model (no HTTP here)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .folders import list_class_folder
from .locks import model_lock
from .model import model_device
from .transform import PreprocessConfig, preprocess_bytes


@dataclass(frozen=True)
class Prediction:
    index: int
    label: str
    probability: float

    def to_dict(self) -> dict:
        return {"index": self.index, "label": self.label, "probability": self.probability}


def predict_logits(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Logits ``[N, classes]`` (float32, on the CPU) for a preprocessed batch.

    Holds the model's shared lock: a hook-based attribution running at the same
    time (exclusive) would otherwise see this forward pass.
    """
    device = model_device(model)
    with model_lock(model).shared(), torch.inference_mode():
        logits = model(batch.to(device).contiguous(memory_format=torch.channels_last))
        return logits.float().cpu()


def classify(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Softmax probabilities ``[N, classes]`` (float32, on the CPU) for a preprocessed batch."""
    return torch.softmax(predict_logits(model, batch), dim=1)


def top_k(logits: torch.Tensor | np.ndarray, k: int, class_names: Sequence[str]) -> list[list[Prediction]]:
    """The ``k`` most probable classes of each row of ``logits`` ``[N, classes]``, most probable first.

    The softmax is taken in float64 with NumPy (so the API can call this on its event loop
    without a torch kernel); equal probabilities keep class order. ``k`` is clamped to
    1..classes.
    """
    z = np.asarray(logits.detach().cpu() if isinstance(logits, torch.Tensor) else logits, dtype=np.float64)
    if z.ndim != 2:
        raise ValueError(f"logits must be [N, classes], got shape {list(z.shape)}")
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    k = max(1, min(int(k), z.shape[1]))
    order = np.argsort(-p, axis=1, kind="stable")[:, :k]
    return [
        [Prediction(int(i), class_names[int(i)], float(row[i])) for i in row_order]
        for row, row_order in zip(p, order)
    ]


@dataclass(frozen=True)
class EvalResult:
    n: int
    top1: float
    top5: float
    classes: list[str]

    def to_dict(self) -> dict:
        return {"n": self.n, "top1": self.top1, "top5": self.top5, "classes": self.classes}


def evaluate_folder(
    model: torch.nn.Module, cfg: PreprocessConfig, root: str | Path, batch_size: int = 32, progress: bool = False
) -> EvalResult:
    """Top-1 / top-5 accuracy on a folder laid out one sub-folder per class."""
    classes, samples = list_class_folder(root)
    num_classes = model.fc.out_features
    if len(classes) > num_classes:
        raise ValueError(f"{root} has {len(classes)} class folders but the model has {num_classes} classes")
    hits1 = hits5 = 0
    chunks = range(0, len(samples), batch_size)
    if progress:
        chunks = tqdm(chunks, desc="eval", unit="batch")
    for start in chunks:
        chunk = samples[start : start + batch_size]
        batch = torch.stack([preprocess_bytes(path.read_bytes(), cfg) for path, _ in chunk])
        probs = classify(model, batch)
        top = torch.topk(probs, min(5, probs.shape[1]), dim=1).indices
        labels = torch.tensor([label for _, label in chunk])
        hits1 += int((top[:, 0] == labels).sum())
        hits5 += int((top == labels[:, None]).any(dim=1).sum())
    n = len(samples)
    return EvalResult(n=n, top1=hits1 / n, top5=hits5 / n, classes=classes)
