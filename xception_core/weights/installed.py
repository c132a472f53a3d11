"""Models installed in the cache: registering verified weights with their card, and reading cards back.

A model is registered if and only if ``<home>/models/<id>/card.json`` exists. The
card is written only after the weights were verified and moved into place, so a
crash or an error never leaves a half-registered model; the card records the
sha256 of the safetensors file, which loading checks.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

import torch

from .card import ModelCard
from .errors import CardError
from .pretrained import reserved_ids
from .store import (
    CARD_FILE,
    MODEL_ID_PATTERN,
    WEIGHTS_FILE,
    model_dir,
    models_dir,
    stage_safetensors,
    unlink,
    write_text_atomic,
)

__all__ = ["register", "installed_card", "imported_ids"]


def register(card: ModelCard, state: Mapping[str, torch.Tensor], home: str | os.PathLike[str] | None) -> ModelCard:
    """Store verified weights and their card in ``<home>/models/<id>/`` (the one storing path).

    ``card`` says everything but where the weights are and their digest; the
    stored card, with both, is returned. The weights are first written to a
    temporary file (a failure there leaves any previous version intact); then an
    existing card is removed (the model is unregistered while its files change),
    the weights are moved into place, and the card goes last.
    """
    directory = model_dir(card.id, home)
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    card_path, weights_path = directory / CARD_FILE, directory / WEIGHTS_FILE
    staged: Path | None = None
    try:
        staged, digest = stage_safetensors(state, weights_path, card.config)
        unlink(card_path)
        os.replace(staged, weights_path)
        staged = None
        stored = dataclasses.replace(card, weights_path=weights_path, sha256=digest, status="available")
        write_text_atomic(card_path, stored.to_json())
    except BaseException:
        unlink(staged)
        if not card_path.exists():
            unlink(weights_path)
        if created:
            shutil.rmtree(directory, ignore_errors=True)
        raise
    return stored


def installed_card(model_id: str, home: str | os.PathLike[str] | None) -> ModelCard | None:
    """The card of ``<home>/models/<id>``; None when not registered."""
    directory = model_dir(model_id, home)
    card_path = directory / CARD_FILE
    if not card_path.is_file():
        return None
    try:
        text = card_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CardError(f"{card_path}: cannot read model card ({exc})") from None
    card = ModelCard.from_json(text, weights_path=directory / WEIGHTS_FILE, where=str(card_path))
    if card.id != model_id:
        raise CardError(f"{card_path}: card id {card.id!r} does not match its directory {model_id!r}")
    return card


def imported_ids(home: str | os.PathLike[str] | None) -> list[str]:
    """Ids of the registered models other than the built-in ones, sorted."""
    root = models_dir(home)
    if not root.is_dir():
        return []
    ids = []
    for entry in root.iterdir():
        name = entry.name
        if name in reserved_ids() or not MODEL_ID_PATTERN.fullmatch(name) or entry.is_symlink():
            continue
        if (entry / CARD_FILE).is_file():
            ids.append(name)
    return sorted(ids)
