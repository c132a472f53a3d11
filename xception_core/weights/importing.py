"""Importing a local checkpoint (timm / Cadene ``legacy_xception``, or this package's layout) into the cache."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..convert import StateDictMismatch, infer_timm_config, timm_to_ours
from ..model import ORDERS, XceptionConfig
from ..transform import PreprocessConfig
from .card import Labels, ModelCard, class_names_for
from .checkpoint import detect_format, infer_config, read_checkpoint_and_config, verified_state
from .errors import CheckpointError, ModelExistsError
from .installed import register
from .store import CARD_FILE, model_dir, sha256_file, validate_model_id

__all__ = ["CardOverrides", "Format", "import_weights"]

Format = Literal["auto", "timm", "ours"]


@dataclass(frozen=True)
class CardOverrides:
    """What the imported model's card says instead of what would be inferred or defaulted.

    ``config`` replaces the configuration inferred from the tensor shapes (e.g. for
    the ELU/ReLU ablations, whose activation has no parameters); ``preprocess``
    defaults to the Xception evaluation transform; ``extra`` is added to the card's.
    """

    config: XceptionConfig | None = None
    preprocess: PreprocessConfig | None = None
    description: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


def import_weights(
    path: str | os.PathLike[str],
    name: str,
    format: Format = "auto",
    labels: Labels | None = None,
    home: str | os.PathLike[str] | None = None,
    *,
    overwrite: bool = False,
    card: CardOverrides | None = None,
) -> ModelCard:
    """Convert a local checkpoint into the cache as model ``name``.

    ``format``: "timm" (timm / Cadene ``legacy_xception``), "ours" (this
    package's layout) or "auto" (decided from the keys). ``labels`` is a labels
    file (one name per line, exactly ``num_classes`` lines) or a list; without it
    1000-class models get the ImageNet names, others "class 0".."class N-1".

    Nothing is registered unless every check passed. Raises
    :class:`InvalidModelNameError`, :class:`ModelExistsError`,
    :class:`CheckpointError`, :class:`LabelsError`.
    """
    card = card or CardOverrides()
    validate_model_id(name, allow_reserved=False)
    if (model_dir(name, home) / CARD_FILE).exists() and not overwrite:
        raise ModelExistsError(
            f"a model named {name!r} already exists; choose another --name or replace it with --overwrite"
        )
    if format not in ("auto", "timm", "ours"):
        raise CheckpointError(f"unknown checkpoint format {format!r}; use auto, timm or ours")
    src = Path(path)
    state, embedded = read_checkpoint_and_config(src)
    where = str(src)
    try:
        layout = detect_format(state) if format == "auto" else format
        if layout == "timm":
            cfg = card.config if card.config is not None else infer_timm_config(state)
            ours = timm_to_ours(state, cfg)
        else:
            cfg = card.config if card.config is not None else infer_config(state, **_unlearnable_of(embedded))
            ours = dict(state)
    except StateDictMismatch as exc:
        raise CheckpointError(f"{where}: {exc}") from None
    except ValueError as exc:  # e.g. key_map refusing a config timm has no layout for
        raise CheckpointError(f"{where}: {exc}") from None
    names = class_names_for(labels, cfg.num_classes, where)
    verified = verified_state(ours, cfg, where)
    imported = ModelCard(
        id=name,
        description=card.description or f"imported from {src.name} ({layout} layout)",
        config=cfg,
        class_names=names,
        preprocess=card.preprocess or PreprocessConfig(),
        source=f"imported from {src.name}",
        extra={"format": layout, "source_sha256": sha256_file(src), **card.extra},
    )
    return register(imported, verified, home)


def _unlearnable_of(embedded: Mapping[str, Any] | None) -> dict[str, str]:
    """What weights cannot tell, from a checkpoint's embedded config: the intermediate activation,
    and the order of a spectrum point whose layers all have C_in = C_out."""
    found = {}
    if embedded and embedded.get("intermediate_activation") in ("none", "relu", "elu"):
        found["intermediate_activation"] = embedded["intermediate_activation"]
    if embedded and embedded.get("order") in ORDERS:
        found["order"] = embedded["order"]
    return found
