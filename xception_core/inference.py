"""Batch prediction and folder evaluation on top of a loaded model (no HTTP here)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .folders import list_class_folder
from .locks import model_lock
from .decode import ALLOWED_FORMATS, decode_image
from .transform import PreprocessConfig, eval_transform

@dataclass(frozen=True)
class Prediction:
    index: int
    label: str
    probability: float

    def to_dict(self) -> dict:
        return {"index": self.index, "label": self.label, "probability": self.probability}


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def classify(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Softmax probabilities ``[N, classes]`` (float32, on the CPU) for a preprocessed batch.

    Holds the model's shared lock: a hook-based attribution running at the same
    time (exclusive) would otherwise see this forward pass.
    """
    device = model_device(model)
    with model_lock(model).shared(), torch.inference_mode():
        logits = model(batch.to(device).contiguous(memory_format=torch.channels_last))
        return torch.softmax(logits.float(), dim=1).cpu()


def top_k(probabilities: torch.Tensor, k: int, class_names: Sequence[str]) -> list[list[Prediction]]:
    """The ``k`` most probable classes of each row, most probable first."""
    k = max(1, min(k, probabilities.shape[1]))
    values, indices = torch.topk(probabilities, k, dim=1)
    return [
        [Prediction(int(i), class_names[int(i)], float(p)) for p, i in zip(row_p, row_i)]
        for row_p, row_i in zip(values.tolist(), indices.tolist())
    ]


def load_image_tensor(data: bytes, cfg: PreprocessConfig, max_pixels: int | None = None) -> torch.Tensor:
    kwargs = {} if max_pixels is None else {"max_pixels": max_pixels}
    return eval_transform(decode_image(data, formats=ALLOWED_FORMATS, **kwargs), cfg)


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
        from tqdm import tqdm

        chunks = tqdm(chunks, desc="eval", unit="batch")
    for start in chunks:
        chunk = samples[start : start + batch_size]
        batch = torch.stack([load_image_tensor(path.read_bytes(), cfg) for path, _ in chunk])
        probs = classify(model, batch)
        k = min(5, probs.shape[1])
        top = torch.topk(probs, k, dim=1).indices
        labels = torch.tensor([label for _, label in chunk])
        hits1 += int((top[:, 0] == labels).sum())
        hits5 += int((top == labels[:, None]).any(dim=1).sum())
    n = len(samples)
    return EvalResult(n=n, top1=hits1 / n, top5=hits5 / n, classes=classes)
