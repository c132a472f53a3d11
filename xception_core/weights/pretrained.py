"""The built-in model ids, and the downloadable models as data (like timm's pretrained cfgs).

The bundled model's id lives here, beside the table, rather than in ``bundled.py``:
the store refuses both kinds of id for imports, and must not depend on the
bundled model's code to know them.
"""

from __future__ import annotations

from typing import Any

from ..labels import imagenet_class_names
from ..model import XceptionConfig
from ..transform import PreprocessConfig
from .errors import Command

__all__ = ["BUNDLED_ID", "IMAGENET_ID", "PRETRAINED", "reserved_ids", "pretrained_class_names", "manual_route"]

BUNDLED_ID = "xception-mini-synthetic"
IMAGENET_ID = "xception-imagenet"

#: Downloadable models. ``sha256_prefix`` is the hex digest prefix carried in the
#: file name (torch.hub convention); ``labels`` is "imagenet" or a list of names.
PRETRAINED: dict[str, dict[str, Any]] = {
    IMAGENET_ID: {
        "description": "Xception (paper configuration) with ImageNet-1k weights "
        "(timm legacy_xception.tf_in1k, a port of the Keras weights; top-1 79.06 / top-5 94.40)",
        "url": "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-cadene/xception-43020ad28.pth",
        "sha256_prefix": "43020ad28",
        "format": "timm",
        "config": XceptionConfig(),
        "preprocess": PreprocessConfig(),
        "labels": "imagenet",
        "extra": {"imagenet_top1": 79.06, "imagenet_top5": 94.40, "timm_name": "legacy_xception.tf_in1k"},
    }
}


def reserved_ids() -> frozenset[str]:
    """Ids that ``import_weights`` may not use: the bundled and the pretrained models."""
    return frozenset({BUNDLED_ID, *PRETRAINED})


def pretrained_class_names(model_id: str) -> list[str]:
    labels = PRETRAINED[model_id]["labels"]
    return imagenet_class_names() if labels == "imagenet" else list(labels)


def manual_route(model_id: str) -> tuple[str | Command, ...]:
    """Remedy parts for a machine without internet: fetch the file elsewhere, verify it here."""
    url = PRETRAINED[model_id]["url"]
    local = "PATH/" + url.rsplit("/", 1)[-1]
    return (
        f"download {url} on a machine with internet, then ",
        Command(("weights", "download", model_id, "--file", local)),
    )
