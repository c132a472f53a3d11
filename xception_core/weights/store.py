"""Where models live on disk, what their ids may be, and how files get there safely.

Cache layout (``<home>`` is :func:`xception_home`)::

    <home>/models/<id>/model.safetensors   weights in our layout (xception_core.model)
    <home>/models/<id>/card.json           the ModelCard; written last
    <home>/downloads/                      partial downloads (*.part), removed on exit

Every file is written to a temporary file in the same directory and moved into
place with ``os.replace``, so a reader never sees half a file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path

import platformdirs
import torch
from safetensors.torch import save_file

try:  # Python >= 3.11
    from importlib.resources.abc import Traversable
except ImportError:  # pragma: no cover
    from importlib.abc import Traversable

from ..model import XceptionConfig
from .errors import InvalidModelNameError, remedy
from .pretrained import PRETRAINED, reserved_ids

__all__ = ["MODEL_ID_PATTERN", "xception_home", "models_dir", "validate_model_id", "sha256_file"]

MODEL_ID_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "card.json"
#: safetensors metadata key holding the model's configuration as JSON
CONFIG_KEY = "xception_config"

PathLike = str | os.PathLike[str]


def xception_home() -> Path:
    """``$XCEPTION_HOME`` if set (and not empty), else the user cache directory."""
    env = os.environ.get("XCEPTION_HOME", "").strip()
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_cache_path("xception-explorer"))


def resolve_home(home: PathLike | None) -> Path:
    return Path(home).expanduser() if home is not None else xception_home()


def models_dir(home: PathLike | None = None) -> Path:
    return resolve_home(home) / "models"


def validate_model_id(name: str, *, allow_reserved: bool = True) -> str:
    """Return ``name`` if it is a valid model id, else raise :class:`InvalidModelNameError`.

    Ids are lower-case ``[a-z0-9][a-z0-9._-]{0,63}``: no separators, no leading
    dot, so an id can never name a path outside ``<home>/models/``.
    """
    if not isinstance(name, str) or not MODEL_ID_PATTERN.fullmatch(name):
        raise InvalidModelNameError(
            f"invalid model name {name!r}: use 1-64 characters of a-z, 0-9, '.', '_', '-', "
            f"starting with a letter or digit (e.g. 'my-xception')"
        )
    if not allow_reserved and name in reserved_ids():
        fill = ("; to fill it, ", ("weights", "download", name), " (or with --file PATH)") if name in PRETRAINED else ()
        raise InvalidModelNameError(
            f"model name {name!r} is reserved for a built-in model", remedy("choose another --name", *fill)
        )
    return name


def model_dir(model_id: str, home: PathLike | None) -> Path:
    """``<home>/models/<id>``, after checking that it really is a child of ``models/``."""
    validate_model_id(model_id)
    root = models_dir(home)
    path = root / model_id
    if path.resolve().parent != root.resolve():
        raise InvalidModelNameError(f"model directory {path} resolves outside {root}; refusing to use it")
    return path


# --------------------------------------------------------------------------- files


def sha256_file(path: PathLike | Traversable, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    opened = open(path, "rb") if isinstance(path, (str, os.PathLike)) else path.open("rb")
    with opened as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_path(directory: Path, prefix: str, suffix: str) -> Path:
    """A new empty file in ``directory`` (the same file system as its final place)."""
    fd, name = tempfile.mkstemp(dir=directory, prefix=prefix, suffix=suffix)
    os.close(fd)
    return Path(name)


def unlink(path: Path | None) -> None:
    """Remove ``path`` if there is one; a missing file is not an error."""
    if path is not None:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def write_text_atomic(path: Path, text: str) -> None:
    tmp = temp_path(path.parent, "." + path.name + ".", ".tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        unlink(tmp)
        raise


def stage_safetensors(state: Mapping[str, torch.Tensor], path: Path, config: XceptionConfig) -> tuple[Path, str]:
    """Write ``state`` to a temporary file beside ``path``; return (temp path, its sha256).

    The configuration goes into the file's metadata (:data:`CONFIG_KEY`), so the
    file alone can be imported again. The caller moves it into place with
    ``os.replace`` (or unlinks it).
    """
    metadata = {"format": "pt", CONFIG_KEY: json.dumps(config.to_dict())}
    tmp = temp_path(path.parent, "." + path.name + ".", ".tmp")
    try:
        save_file({k: v.detach().contiguous() for k, v in state.items()}, str(tmp), metadata=metadata)
        _fsync(tmp)
        return tmp, sha256_file(tmp)
    except BaseException:
        unlink(tmp)
        raise
