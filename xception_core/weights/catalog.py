"""Which models there are, and loading one: the bundled model, the pretrained ones, then imported ones."""

from __future__ import annotations

import logging
import os
from importlib import resources
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..convert import StateDictMismatch, check_shapes
from ..model import Xception
from .bundled import bundled_card, bundled_files, missing_bundled_card, missing_files_error
from .card import ModelCard
from .errors import CardError, CheckpointError, IntegrityError, Remedy, UnknownModelError, WeightsMissingError, remedy
from .installed import imported_ids, installed_card
from .pretrained import BUNDLED_ID, IMAGENET_ID, PRETRAINED, manual_route, pretrained_class_names
from .store import MODEL_ID_PATTERN, Traversable, models_dir, sha256_file

__all__ = ["list_models", "get_card", "load_model", "default_model_id"]

log = logging.getLogger(__name__)

Home = str | os.PathLike[str] | None


def _missing_pretrained_card(model_id: str) -> ModelCard:
    spec = PRETRAINED[model_id]
    return ModelCard(
        id=model_id,
        description=spec["description"],
        config=spec["config"],
        class_names=pretrained_class_names(model_id),
        preprocess=spec["preprocess"],
        source=spec["url"],
        status="missing",
        extra=dict(spec.get("extra", {})),
    )


def _pretrained_card(model_id: str, home: Home) -> ModelCard:
    try:
        card = installed_card(model_id, home)
    except CardError as exc:
        log.warning("ignoring damaged card: %s", exc)
        card = None
    return card if card is not None else _missing_pretrained_card(model_id)


def list_models(home: Home = None) -> list[ModelCard]:
    """The bundled model, every pretrained model, then imported models sorted by id.

    Imported models whose card is damaged are skipped (with a logged warning).
    """
    try:
        cards = [bundled_card()]
    except CardError as exc:
        log.warning("ignoring damaged bundled card: %s", exc)
        cards = [missing_bundled_card()]
    cards += [_pretrained_card(mid, home) for mid in PRETRAINED]
    for mid in imported_ids(home):
        try:
            card = installed_card(mid, home)
        except CardError as exc:
            log.warning("ignoring damaged card: %s", exc)
            continue
        if card is not None:
            cards.append(card)
    return cards


def get_card(model_id: str, home: Home = None) -> ModelCard:
    """The card of a model id; :class:`UnknownModelError` (listing valid ids) otherwise."""
    if model_id == BUNDLED_ID:
        return bundled_card()
    if model_id in PRETRAINED:
        return _pretrained_card(model_id, home)
    card = None
    if isinstance(model_id, str) and MODEL_ID_PATTERN.fullmatch(model_id):
        card = installed_card(model_id, home)
    if card is None:
        known = [BUNDLED_ID, *PRETRAINED, *imported_ids(home)]
        raise UnknownModelError(f"unknown model {model_id!r}; valid ids: {', '.join(known)}")
    return card


def _reimport(model_id: str) -> Remedy:
    return remedy("to re-import it, ", ("weights", "import", "FILE", "--name", model_id, "--overwrite"))


def _missing_error(card: ModelCard, home: Home) -> WeightsMissingError:
    """What to say when a known model's weights are not there: the command that gets them."""
    if card.id in PRETRAINED:
        return WeightsMissingError(
            f"weights of {card.id} are not in the cache ({models_dir(home) / card.id})",
            remedy(("weights", "download", card.id), " (offline: ", *manual_route(card.id), ")"),
        )
    if card.id == BUNDLED_ID:
        return missing_files_error()
    return WeightsMissingError(f"weights file of {card.id} is missing ({card.weights_path})", _reimport(card.id))


def _integrity_remedy(model_id: str) -> Remedy:
    if model_id == BUNDLED_ID:
        return remedy("reinstall xception-explorer")
    if model_id in PRETRAINED:
        return remedy(("weights", "download", model_id, "--force"))
    return _reimport(model_id)


def load_model(model_id: str, device: str | torch.device = "cpu", home: Home = None) -> tuple[Xception, ModelCard]:
    """Build the architecture of ``model_id`` and load its weights (eval mode, on ``device``).

    Checks the safetensors file against the card's sha256, then keys and shapes,
    then ``load_state_dict(strict=True)``. Raises :class:`UnknownModelError`,
    :class:`WeightsMissingError` (its remedy: the command that gets the weights),
    :class:`IntegrityError`, :class:`CheckpointError`.
    """
    card = get_card(model_id, home)
    if card.status != "available" or card.weights_path is None:
        raise _missing_error(card, home)
    weights_ref: Traversable = bundled_files()[0] if card.id == BUNDLED_ID else card.weights_path
    with resources.as_file(weights_ref) as weights_path:
        if not Path(weights_path).is_file():
            raise _missing_error(card, home)
        if card.sha256 is not None:
            actual = sha256_file(weights_path)
            if actual != card.sha256:
                raise IntegrityError(
                    f"{weights_path}: sha256 is {actual[:12]}..., but the card of {card.id} says "
                    f"{card.sha256[:12]}...; the file is corrupted or was replaced",
                    _integrity_remedy(card.id),
                )
        try:
            state = load_file(str(weights_path), device="cpu")
        except Exception as exc:  # noqa: BLE001
            raise CheckpointError(f"{weights_path}: not a readable safetensors file ({exc})") from None
    model = Xception(card.config)
    try:
        check_shapes(state, model.state_dict())
        model.load_state_dict(state, strict=True)
    except (StateDictMismatch, RuntimeError) as exc:
        raise CheckpointError(f"{card.weights_path}: does not match the card of {card.id}: {exc}") from None
    model.eval()
    return model.to(device), card


def default_model_id(home: Home = None) -> str:
    """``xception-imagenet`` when its weights are available, else the bundled model."""
    return IMAGENET_ID if _pretrained_card(IMAGENET_ID, home).status == "available" else BUNDLED_ID
