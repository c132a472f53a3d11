"""The model card: everything needed to use a set of weights, stored as JSON beside them."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..labels import LabelsFileError, imagenet_class_names, load_class_names
from ..model import XceptionConfig
from ..transform import PreprocessConfig
from .errors import CardError, LabelsError
from .store import validate_model_id

__all__ = ["ModelCard", "Status", "class_names_for"]

CARD_VERSION = 1

Status = Literal["available", "missing"]
Labels = str | os.PathLike[str] | Sequence[str]


@dataclass
class ModelCard:
    """Everything needed to use a set of weights, stored as JSON beside them.

    ``sha256`` is the digest of the stored safetensors file. ``weights_path`` and
    ``status`` describe the local installation and are not part of the stored JSON.
    """

    id: str
    description: str
    config: XceptionConfig
    class_names: list[str]
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    source: str = ""
    weights_path: Path | None = None
    sha256: str | None = None
    status: Status = "missing"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def to_dict(self) -> dict[str, Any]:
        """Full description (for ``models --json`` and the API), local fields included."""
        d = self._stored()
        d["status"] = self.status
        d["weights_path"] = str(self.weights_path) if self.weights_path is not None else None
        d["num_classes"] = self.num_classes
        return d

    def _stored(self) -> dict[str, Any]:
        return {
            "card_version": CARD_VERSION,
            "id": self.id,
            "description": self.description,
            "config": self.config.to_dict(),
            "class_names": list(self.class_names),
            "preprocess": self.preprocess.to_dict(),
            "source": self.source,
            "sha256": self.sha256,
            "extra": self.extra,
        }

    def to_json(self) -> str:
        """The stored form: no local path, no status (both are derived on reading)."""
        return json.dumps(self._stored(), indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def from_json(
        cls, text: str, *, weights_path: Path | None = None, status: Status | None = None, where: str = "card"
    ) -> ModelCard:
        """Parse and validate a stored card; ``where`` names it in error messages.

        ``status`` defaults to "available" when ``weights_path`` is an existing file.
        """
        try:
            d = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CardError(f"{where}: not valid JSON ({exc})") from None
        if not isinstance(d, dict):
            raise CardError(f"{where}: expected a JSON object")
        try:
            model_id = validate_model_id(d["id"])
            config = XceptionConfig.from_dict(d["config"])
            names = d["class_names"]
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise ValueError("class_names must be a list of strings")
            if len(names) != config.num_classes:
                raise ValueError(f"{len(names)} class names for {config.num_classes} classes")
            preprocess = PreprocessConfig.from_dict(d.get("preprocess") or {})
            sha = d.get("sha256")
            if sha is not None and not re.fullmatch(r"[0-9a-f]{64}", str(sha)):
                raise ValueError(f"sha256 must be 64 hex digits, got {sha!r}")
            extra = d.get("extra") or {}
            if not isinstance(extra, dict):
                raise ValueError("extra must be an object")
        except (KeyError, TypeError, ValueError) as exc:
            detail = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
            raise CardError(f"{where}: invalid model card ({detail})") from None
        if status is None:
            status = "available" if weights_path is not None and Path(weights_path).is_file() else "missing"
        return cls(
            id=model_id,
            description=str(d.get("description", "")),
            config=config,
            class_names=list(names),
            preprocess=preprocess,
            source=str(d.get("source", "")),
            weights_path=weights_path,
            sha256=sha,
            status=status,
            extra=extra,
        )


def class_names_for(labels: Labels | None, num_classes: int, where: str) -> list[str]:
    """The class names a card gets: from a labels file or a list, else defaults.

    Without labels, 1000-class models get the ImageNet names, others "class 0".."class N-1".
    """
    if labels is None:
        if num_classes == 1000:
            return imagenet_class_names()
        return [f"class {i}" for i in range(num_classes)]
    if isinstance(labels, (str, os.PathLike)):
        try:
            return load_class_names(labels, expected=num_classes)
        except LabelsFileError as exc:
            raise LabelsError(str(exc)) from None
    names = [str(n) for n in labels]
    if len(names) != num_classes:
        raise LabelsError(f"{where}: {len(names)} class names given but the model has {num_classes} classes")
    return names
