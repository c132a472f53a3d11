"""The bundled model: shipped as package data so that the product works offline.

Its files are ``xception_core/data/bundled/<id>.safetensors`` and ``<id>.json``
(the card, with the sha256 of the weights); ``xception_core.train`` writes them
with :func:`export_bundled`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from ..model import Xception, XceptionConfig
from ..transform import PreprocessConfig
from ..synthetic import CLASS_NAMES
from .card import ModelCard, class_names_for
from .checkpoint import verified_state
from .errors import CardError, WeightsMissingError, remedy
from .pretrained import BUNDLED_ID
from .store import Traversable, stage_safetensors, validate_model_id, write_text_atomic

__all__ = ["bundled_dir", "bundled_card", "export_bundled"]


def bundled_dir() -> Traversable:
    """Where the bundled model lives (package data; tests monkeypatch this).

    Falls back to the package's directory on disk where ``importlib.resources``
    cannot resolve the package (e.g. a namespace package seen through an
    editable-install finder).
    """
    try:
        return resources.files("xception_core") / "data" / "bundled"
    except (NotADirectoryError, TypeError, ModuleNotFoundError):
        return Path(__file__).resolve().parent.parent / "data" / "bundled"


def bundled_files() -> tuple[Traversable, Traversable]:
    """The bundled model's weights and card (either may be missing)."""
    base = bundled_dir()
    return base / f"{BUNDLED_ID}.safetensors", base / f"{BUNDLED_ID}.json"


def missing_files_error() -> WeightsMissingError:
    return WeightsMissingError(
        f"the bundled model's files ({BUNDLED_ID}.safetensors / .json) are missing from {bundled_dir()}",
        remedy("reinstall xception-explorer, or use another model (", ("models",), ")"),
    )


def missing_bundled_card() -> ModelCard:
    """A stand-in card for an installation without the bundled files (status "missing")."""
    return ModelCard(
        id=BUNDLED_ID,
        description="small Xception trained on the generated pattern x colour data (files not in this installation)",
        config=XceptionConfig(num_classes=len(CLASS_NAMES)),  # placeholder: the real one is in the card
        class_names=list(CLASS_NAMES),
        preprocess=PreprocessConfig(),
        source="bundled",
        status="missing",
    )


def bundled_card() -> ModelCard:
    """The bundled model's card; status "missing" when its files are not in the package."""
    weights, card = bundled_files()
    if not card.is_file():
        return missing_bundled_card()
    c = ModelCard.from_json(
        card.read_text(encoding="utf-8"),
        weights_path=Path(str(weights)),
        status="available" if weights.is_file() else "missing",
        where=f"bundled card {card}",
    )
    if c.id != BUNDLED_ID:
        raise CardError(f"bundled card {card}: id is {c.id!r}, expected {BUNDLED_ID!r}")
    if c.sha256 is None:
        raise CardError(f"bundled card {card}: has no sha256")
    c.source = c.source or "bundled"
    return c


def export_bundled(
    model: Xception,
    *,
    class_names: Sequence[str],
    description: str,
    preprocess: PreprocessConfig | None = None,
    extra: Mapping[str, Any] | None = None,
    directory: str | os.PathLike[str] | None = None,
    model_id: str = BUNDLED_ID,
) -> ModelCard:
    """Write ``<id>.safetensors`` + ``<id>.json`` (weights and card with their sha256).

    The bundled model's build (``xception_core.train``) writes it this way;
    ``directory`` defaults to :func:`bundled_dir` (must be a real directory).
    """
    model_id = validate_model_id(model_id)
    out = Path(str(directory if directory is not None else bundled_dir()))
    out.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    state = verified_state(model.state_dict(), cfg, "bundled model")
    names = class_names_for(list(class_names), cfg.num_classes, "bundled model")
    weights = out / f"{model_id}.safetensors"
    staged, digest = stage_safetensors(state, weights, cfg)
    os.replace(staged, weights)
    card = ModelCard(
        id=model_id,
        description=description,
        config=cfg,
        class_names=names,
        preprocess=preprocess or PreprocessConfig(),
        source="bundled" if model_id == BUNDLED_ID else "trained locally",
        weights_path=weights,
        sha256=digest,
        status="available",
        extra=dict(extra or {}),
    )
    write_text_atomic(out / f"{model_id}.json", card.to_json())
    return card
