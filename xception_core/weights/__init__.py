"""Models and their weights: the registry, the cache, download and import.

A *model* is an architecture configuration plus weights plus the facts needed to
use them (class names, preprocessing, provenance), described by a
:class:`ModelCard`. Three kinds exist:

* the **bundled** model (:data:`BUNDLED_ID`), shipped as package data so the
  product works offline (``bundled.py``);
* **pretrained** models (:data:`PRETRAINED`, e.g. ``xception-imagenet``; ``pretrained.py``),
  downloaded on request by :func:`download_weights` (``download.py``);
* **imported** models, converted from a local checkpoint by :func:`import_weights`
  (``importing.py``).

:func:`list_models`, :func:`get_card` and :func:`load_model` (``catalog.py``) see
all three. Every error derives from :class:`WeightsError` (``errors.py``) and
carries, where there is one, a :class:`Remedy` whose commands each front end
words its own way.
"""

from .bundled import bundled_card, bundled_dir, export_bundled
from .card import ModelCard
from .catalog import default_model_id, get_card, list_models, load_model
from .checkpoint import detect_format, infer_config, read_checkpoint
from .download import download_weights
from .errors import (
    CardError,
    CheckpointError,
    Command,
    DownloadError,
    DownloadHashMismatch,
    IntegrityError,
    InvalidModelNameError,
    LabelsError,
    ModelExistsError,
    Remedy,
    UnknownModelError,
    WeightsError,
    WeightsMissingError,
)
from .importing import CardOverrides, import_weights
from .pretrained import BUNDLED_ID, IMAGENET_ID, PRETRAINED, reserved_ids
from .store import MODEL_ID_PATTERN, models_dir, sha256_file, validate_model_id, xception_home

__all__ = [
    "BUNDLED_ID",
    "IMAGENET_ID",
    "PRETRAINED",
    "reserved_ids",
    "MODEL_ID_PATTERN",
    "ModelCard",
    "CardOverrides",
    "Command",
    "Remedy",
    "WeightsError",
    "UnknownModelError",
    "InvalidModelNameError",
    "ModelExistsError",
    "CheckpointError",
    "LabelsError",
    "CardError",
    "WeightsMissingError",
    "IntegrityError",
    "DownloadError",
    "DownloadHashMismatch",
    "xception_home",
    "models_dir",
    "bundled_dir",
    "bundled_card",
    "export_bundled",
    "list_models",
    "get_card",
    "load_model",
    "default_model_id",
    "read_checkpoint",
    "detect_format",
    "infer_config",
    "import_weights",
    "download_weights",
    "sha256_file",
    "validate_model_id",
]
