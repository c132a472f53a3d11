"""Model registry, weights cache, download and import.

A *model* is an architecture configuration plus weights plus the facts needed to
use them (class names, preprocessing, provenance), described by a
:class:`ModelCard`.  Three kinds exist:

* the **bundled** model (:data:`BUNDLED_ID`), shipped as package data in
  ``xception_core/data/bundled/<id>.safetensors`` + ``<id>.json`` so the product
  works offline;
* **pretrained** models (:data:`PRETRAINED`, e.g. ``xception-imagenet``),
  downloaded on request by :func:`download_weights` and converted into the cache;
* **imported** models, converted from a local checkpoint by :func:`import_weights`.

Cache layout (``<home>`` is :func:`xception_home`)::

    <home>/models/<id>/model.safetensors   weights in our layout (xception_core.model)
    <home>/models/<id>/card.json           the ModelCard; written last
    <home>/downloads/                      partial downloads (*.part), removed on exit

A model is registered if and only if its ``card.json`` exists.  Every file is
written to a temporary file in the same directory and moved into place with
``os.replace``; the card is written only after the weights were verified to load
(strict) into the architecture, so a crash or an error never leaves a
half-registered model.  The card records the sha256 of the safetensors file and
:func:`load_model` checks it.

Offline route for the pretrained weights: download the file named by the URL on
any machine, then ``xception-demo weights download xception-imagenet --file PATH``
runs exactly the verification a download runs (sha256 prefix from the file name
in the URL) on the local file.  ``weights import`` refuses reserved ids, so this
is the only way to fill ``xception-imagenet`` -- it can only ever hold the
published file.

Every error raised here derives from :class:`WeightsError`; messages are single
lines meant to be printed as they are by the CLI and the API.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import re
import shutil
import socket
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import torch

try:  # Python >= 3.11
    from importlib.resources.abc import Traversable
except ImportError:  # pragma: no cover
    from importlib.abc import Traversable

from .convert import StateDictMismatch, check_shapes, infer_timm_config, timm_to_ours
from .labels import LabelsFileError, imagenet_class_names, load_class_names
from .model import Xception, XceptionConfig
from .transform import PreprocessConfig

__all__ = [
    "BUNDLED_ID",
    "PRETRAINED",
    "reserved_ids",
    "MODEL_ID_PATTERN",
    "ModelCard",
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

log = logging.getLogger(__name__)

BUNDLED_ID = "xception-mini-synthetic"
IMAGENET_ID = "xception-imagenet"
CLI = "xception-demo"

WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "card.json"
CARD_VERSION = 1

#: Downloadable models, as data (like timm's pretrained cfgs).  ``sha256_prefix``
#: is the hex digest prefix carried in the file name (torch.hub convention).
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


MODEL_ID_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
# torch.hub / timm: the sha256 prefix is the hex run after the last '-' of the file name.
_HASH_IN_NAME = re.compile(r"-([a-f0-9]{6,64})\.")

Status = Literal["available", "missing"]
Format = Literal["auto", "timm", "ours"]


# --------------------------------------------------------------------------- errors


class WeightsError(Exception):
    """Base class of every error of this module; ``str(err)`` is one line for the user."""


class UnknownModelError(WeightsError, KeyError):
    """No model with that id; the message lists the valid ids."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class InvalidModelNameError(WeightsError, ValueError):
    """A model name that is malformed or reserved."""


class ModelExistsError(WeightsError):
    """Importing under a name that is already registered (without ``overwrite``)."""


class CheckpointError(WeightsError, ValueError):
    """A checkpoint file that cannot be read or does not fit the architecture."""


class LabelsError(WeightsError, ValueError):
    """A labels file that does not fit the model (count, encoding, blank lines...)."""


class CardError(WeightsError, ValueError):
    """A model card (JSON) that is malformed."""


class WeightsMissingError(WeightsError):
    """The model is known but its weights are not there; the message says how to get them."""


class IntegrityError(WeightsError):
    """A file whose sha256 differs from the one it must have."""


class DownloadError(WeightsError):
    """A download failed (HTTP error, network, truncated, wrong hash)."""


class DownloadHashMismatch(DownloadError, IntegrityError):
    """The downloaded bytes do not have the expected sha256 prefix."""


# --------------------------------------------------------------------------- locations


def xception_home() -> Path:
    """``$XCEPTION_HOME`` if set (and not empty), else the user cache directory."""
    env = os.environ.get("XCEPTION_HOME", "").strip()
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_path("xception-explorer"))


def _home(home: str | os.PathLike[str] | None) -> Path:
    return Path(home).expanduser() if home is not None else xception_home()


def models_dir(home: str | os.PathLike[str] | None = None) -> Path:
    return _home(home) / "models"


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
        hint = (
            f"; to fill it, run: {CLI} weights download {name} (or with --file PATH)"
            if name in PRETRAINED
            else ""
        )
        raise InvalidModelNameError(
            f"model name {name!r} is reserved for a built-in model; choose another --name{hint}"
        )
    return name


def _model_dir(model_id: str, home: str | os.PathLike[str] | None) -> Path:
    """``<home>/models/<id>``, after checking that it really is a child of ``models/``."""
    validate_model_id(model_id)
    root = models_dir(home)
    path = root / model_id
    if path.resolve().parent != root.resolve():
        raise InvalidModelNameError(f"model directory {path} resolves outside {root}; refusing to use it")
    return path


def bundled_dir() -> Traversable:
    """Where the bundled model lives (package data; tests monkeypatch this).

    Falls back to the directory beside this file where ``importlib.resources``
    cannot resolve the package (e.g. a namespace package seen through an
    editable-install finder).
    """
    try:
        return resources.files("xception_core") / "data" / "bundled"
    except (NotADirectoryError, TypeError, ModuleNotFoundError):
        return Path(__file__).resolve().parent / "data" / "bundled"


# --------------------------------------------------------------------------- the card


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


# --------------------------------------------------------------------------- file helpers


def sha256_file(path: str | os.PathLike[str] | Traversable, chunk: int = 1 << 20) -> str:
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


def _temp_path(directory: Path, prefix: str, suffix: str) -> Path:
    fd, name = tempfile.mkstemp(dir=directory, prefix=prefix, suffix=suffix)
    os.close(fd)
    return Path(name)


def _unlink(path: Path | None) -> None:
    if path is not None:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = _temp_path(path.parent, "." + path.name + ".", ".tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        _unlink(tmp)
        raise


def _stage_safetensors(state: Mapping[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> tuple[Path, str]:
    """Write ``state`` to a temporary file beside ``path``; return (temp path, its sha256).

    The caller moves it into place with ``os.replace`` (or unlinks it).
    """
    from safetensors.torch import save_file

    tmp = _temp_path(path.parent, "." + path.name + ".", ".tmp")
    try:
        save_file({k: v.detach().contiguous() for k, v in state.items()}, str(tmp), metadata=metadata)
        _fsync(tmp)
        return tmp, sha256_file(tmp)
    except BaseException:
        _unlink(tmp)
        raise


# --------------------------------------------------------------------------- reading checkpoints

_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")
_PREFIXES = ("module.", "_orig_mod.")


def _looks_like_safetensors(path: Path) -> bool:
    """safetensors files start with a little-endian u64 header length, then '{'."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < (1 << 30)


def _torch_load_problem(exc: BaseException, path: Path) -> str:
    """One line saying why ``torch.load(weights_only=True)`` refused a file."""
    text = str(exc)
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError:
        head = b""
    if not head:
        return "the file is empty"
    if head == b"PK\x03\x04" and not re.search(r"Unsupported global|[Uu]nsupported class", text):
        return "it is a PyTorch zip archive that is truncated or corrupted (download or copy it again)"
    if "Unsupported operand" in text or "invalid load key" in text or isinstance(exc, UnicodeDecodeError):
        return "it is not a PyTorch checkpoint (unrecognised bytes)"
    if isinstance(exc, EOFError) or "unexpected EOF" in text or "Ran out of input" in text:
        return "the file ends too early (truncated download or copy?)"
    if "Weights only load failed" in text or "Unsupported global" in text or "nsupported class" in text:
        m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text) or re.search(r"[Uu]nsupported class ([\w.]+)", text)
        what = f" (found {m.group(1)})" if m else ""
        return (
            f"it contains Python objects other than tensors{what}, which are not loaded "
            f"for safety (torch.load weights_only=True); save only the model's state_dict"
        )
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return f"it could not be parsed as a PyTorch checkpoint ({type(exc).__name__}: {first[:200]})"


def _read_raw(path: Path) -> tuple[Any, dict[str, str]]:
    """Load the file's content (safetensors or torch) and safetensors metadata."""
    if path.suffix == ".safetensors" or _looks_like_safetensors(path):
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as fh:
                meta = dict(fh.metadata() or {})
                return {k: fh.get_tensor(k) for k in fh.keys()}, meta
        except Exception as exc:  # noqa: BLE001 - SafetensorError and friends
            raise CheckpointError(
                f"{path}: not a readable safetensors file ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
            ) from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except MemoryError:
        raise CheckpointError(f"{path}: not enough memory to load this checkpoint") from None
    except Exception as exc:  # noqa: BLE001 - UnpicklingError, RuntimeError, EOFError, OSError...
        raise CheckpointError(f"{path}: cannot load checkpoint: {_torch_load_problem(exc, path)}") from None
    return obj, {}


def _unwrap(obj: Any, path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Find the state dict in a loaded object; also return an embedded config dict, if any."""
    config: dict[str, Any] | None = None
    for _ in range(2):  # e.g. {"model": {"state_dict": ...}} at most
        if not isinstance(obj, Mapping):
            break
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        if isinstance(obj.get("config"), Mapping):
            config = dict(obj["config"])
        obj = inner
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{path}: expected a state dict (a mapping of names to tensors), found {type(obj).__name__}"
        )
    if not obj:
        raise CheckpointError(f"{path}: the checkpoint holds no tensors")
    bad = [(k, v) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        k, v = bad[0]
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise CheckpointError(
            f"{path}: expected a state dict of tensors, but entry {k!r} is a {type(v).__name__}{more}"
        )
    state = dict(obj)
    for prefix in _PREFIXES:  # DataParallel / torch.compile wrappers
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state, config


def _read_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: file not found")
    if not p.is_file():
        raise CheckpointError(f"{p}: not a regular file")
    obj, meta = _read_raw(p)
    state, config = _unwrap(obj, p)
    if config is None and "xception_config" in meta:
        try:
            config = json.loads(meta["xception_config"])
        except json.JSONDecodeError:
            config = None
    return state, config


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a checkpoint file into a flat ``{name: tensor}`` dict on the CPU.

    ``.safetensors`` (by suffix or content) via safetensors, anything else with
    ``torch.load(weights_only=True)`` -- never a full unpickle, so a hostile file
    cannot run code. ``{"state_dict": ...}`` / ``{"model": ...}`` wrappers are
    unwrapped and a ``module.`` (DataParallel) or ``_orig_mod.`` (torch.compile)
    prefix common to all keys is stripped. Raises :class:`CheckpointError`.
    """
    return _read_checkpoint(path)[0]


# --------------------------------------------------------------------------- layouts and configs


def detect_format(state: Mapping[str, torch.Tensor]) -> Literal["timm", "ours"]:
    """"timm" (``block1.rep.0.conv1.weight``) or "ours" (``entry.block2.sep1.depthwise.weight``)."""
    if "entry.block1.conv1.weight" in state or any(k.startswith("entry.block2.sep1.") for k in state):
        return "ours"
    if "conv1.weight" in state and any(k.startswith("block1.rep.") for k in state):
        return "timm"
    sample = ", ".join(list(state)[:4])
    raise StateDictMismatch(
        "not an Xception checkpoint: expected timm/Cadene legacy_xception keys (conv1.weight, "
        f"block1.rep.0.conv1.weight, ...) or xception_core keys (entry.block2.sep1.depthwise.weight, ...); "
        f"found {sample}{', ...' if len(state) > 4 else ''}"
    )


def _shape(state: Mapping[str, torch.Tensor], key: str, dim: int = 0) -> int:
    t = state[key]
    if t.dim() <= dim:
        raise StateDictMismatch(f"{key} has shape {tuple(t.shape)}, expected at least {dim + 1} dimensions")
    return int(t.shape[dim])


def infer_config(state: Mapping[str, torch.Tensor], **overrides: Any) -> XceptionConfig:
    """Read widths, middle repeats, classes and residual on/off off our key layout.

    The intermediate activation (none / relu / elu) has no parameters and cannot
    be read from weights: it comes from ``overrides`` (or an embedded config), else
    "none". Raises :class:`StateDictMismatch` when the layout is not ours.
    """
    try:
        middle = sorted(
            {int(m.group(1)) for k in state if (m := re.match(r"middle\.block(\d+)\.", k))}
        )
        repeats = len(middle)
        if middle and middle != list(range(5, 5 + repeats)):
            raise StateDictMismatch(f"middle-flow blocks are not numbered 5..{4 + repeats}: {middle}")
        n = 5 + repeats  # exit block 13 in the paper numbering
        cfg = dict(
            num_classes=_shape(state, "fc.weight"),
            in_chans=_shape(state, "entry.block1.conv1.weight", 1),
            stem_channels=(_shape(state, "entry.block1.conv1.weight"), _shape(state, "entry.block1.conv2.weight")),
            entry_channels=tuple(_shape(state, f"entry.block{b}.sep2.pointwise.weight") for b in (2, 3, 4)),
            middle_repeats=repeats,
            exit_channels=(
                _shape(state, f"exit.block{n}.sep2.pointwise.weight"),
                _shape(state, f"exit.block{n + 1}.sep1.pointwise.weight"),
                _shape(state, f"exit.block{n + 1}.sep2.pointwise.weight"),
            ),
            residual="entry.block2.skip.weight" in state,
        )
    except KeyError as exc:
        raise StateDictMismatch(
            f"not an xception_core state dict (could not find {exc}); expected keys like "
            "entry.block1.conv1.weight, entry.block2.sep1.depthwise.weight, fc.weight"
        ) from None
    cfg.update(overrides)
    try:
        return XceptionConfig(**cfg)
    except (TypeError, ValueError) as exc:
        raise StateDictMismatch(f"inferred configuration is invalid: {exc}") from None


def _verified_state(
    state: Mapping[str, torch.Tensor], config: XceptionConfig, where: str
) -> dict[str, torch.Tensor]:
    """Load ``state`` strictly into a fresh model; return that model's (canonical) state dict."""
    try:
        model = Xception(config)
    except (ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{where}: cannot build the architecture: {exc}") from None
    reference = model.state_dict()
    # Checkpoints from old PyTorch lack BatchNorm's step counter (unused in eval).
    state = dict(state)
    for k, v in reference.items():
        if k.endswith("num_batches_tracked") and k not in state:
            state[k] = torch.zeros_like(v)
    try:
        check_shapes(state, reference)
    except StateDictMismatch as exc:
        raise CheckpointError(f"{where}: does not fit the Xception architecture: {exc}") from None
    for k, v in state.items():
        # a float64 sum of finite float32 values cannot overflow: inf/NaN iff one is there
        if v.is_floating_point() and not bool(v.sum(dtype=torch.float64).isfinite()):
            raise CheckpointError(f"{where}: tensor {k} contains NaN or infinite values")
        if v.is_complex():
            raise CheckpointError(f"{where}: tensor {k} is complex ({v.dtype})")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise CheckpointError(f"{where}: weights do not load into the architecture: {' '.join(first)[:300]}") from None
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------- registering


def _register(
    model_id: str,
    state: Mapping[str, torch.Tensor],
    *,
    config: XceptionConfig,
    class_names: list[str],
    preprocess: PreprocessConfig,
    source: str,
    description: str,
    extra: dict[str, Any],
    home: str | os.PathLike[str] | None,
) -> ModelCard:
    """Store verified weights and their card in ``<home>/models/<id>/`` (the one storing path).

    The weights are first written to a temporary file (a failure there leaves
    any previous version intact); then an existing card is removed (the model is
    unregistered while its files change), the weights are moved into place, and
    the card goes last.
    """
    directory = _model_dir(model_id, home)
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    card_path, weights_path = directory / CARD_FILE, directory / WEIGHTS_FILE
    staged: Path | None = None
    try:
        staged, digest = _stage_safetensors(
            state, weights_path, {"format": "pt", "xception_config": json.dumps(config.to_dict())}
        )
        _unlink(card_path)
        os.replace(staged, weights_path)
        staged = None
        card = ModelCard(
            id=model_id,
            description=description,
            config=config,
            class_names=list(class_names),
            preprocess=preprocess,
            source=source,
            weights_path=weights_path,
            sha256=digest,
            status="available",
            extra=dict(extra),
        )
        _write_text_atomic(card_path, card.to_json())
    except BaseException:
        _unlink(staged)
        if not card_path.exists():
            _unlink(weights_path)
        if created:
            shutil.rmtree(directory, ignore_errors=True)
        raise
    return card


def _class_names_for(
    labels: str | os.PathLike[str] | Sequence[str] | None, num_classes: int, where: str
) -> list[str]:
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


def import_weights(
    path: str | os.PathLike[str],
    name: str,
    format: Format = "auto",
    labels: str | os.PathLike[str] | Sequence[str] | None = None,
    home: str | os.PathLike[str] | None = None,
    *,
    config: XceptionConfig | None = None,
    preprocess: PreprocessConfig | None = None,
    description: str | None = None,
    extra: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> ModelCard:
    """Convert a local checkpoint into the cache as model ``name``.

    ``format``: "timm" (timm / Cadene ``legacy_xception``), "ours" (this
    package's layout) or "auto" (decided from the keys). The configuration is
    inferred from the tensor shapes (``config`` overrides it, e.g. for the
    ELU/ReLU ablations, which have no parameters of their own). ``labels`` is a
    labels file (one name per line, exactly ``num_classes`` lines) or a list;
    without it 1000-class models get the ImageNet names, others "class 0".."class N-1".
    ``preprocess`` defaults to the Xception evaluation transform.

    Nothing is registered unless every check passed. Raises
    :class:`InvalidModelNameError`, :class:`ModelExistsError`,
    :class:`CheckpointError`, :class:`LabelsError`.
    """
    validate_model_id(name, allow_reserved=False)
    directory = _model_dir(name, home)
    if (directory / CARD_FILE).exists() and not overwrite:
        raise ModelExistsError(
            f"a model named {name!r} already exists; choose another --name or replace it with --overwrite"
        )
    if format not in ("auto", "timm", "ours"):
        raise CheckpointError(f"unknown checkpoint format {format!r}; use auto, timm or ours")
    src = Path(path)
    state, embedded = _read_checkpoint(src)
    where = str(src)
    try:
        layout = detect_format(state) if format == "auto" else format
        if layout == "timm":
            cfg = config or infer_timm_config(state)
            ours = timm_to_ours(state, cfg)
        else:
            if config is not None:
                cfg = config
            else:
                overrides = {}
                if embedded and embedded.get("intermediate_activation") in ("none", "relu", "elu"):
                    overrides["intermediate_activation"] = embedded["intermediate_activation"]
                cfg = infer_config(state, **overrides)
            ours = dict(state)
    except StateDictMismatch as exc:
        raise CheckpointError(f"{where}: {exc}") from None
    except ValueError as exc:  # e.g. key_map refusing a config timm has no layout for
        raise CheckpointError(f"{where}: {exc}") from None
    names = _class_names_for(labels, cfg.num_classes, where)
    verified = _verified_state(ours, cfg, where)
    card_extra = {"format": layout, "source_sha256": sha256_file(src), **dict(extra or {})}
    return _register(
        name,
        verified,
        config=cfg,
        class_names=names,
        preprocess=preprocess or PreprocessConfig(),
        source=f"imported from {src.name}",
        description=description or f"imported from {src.name} ({layout} layout)",
        extra=card_extra,
        home=home,
    )


# --------------------------------------------------------------------------- bundled model


def _bundled_files() -> tuple[Traversable, Traversable]:
    base = bundled_dir()
    return base / f"{BUNDLED_ID}.safetensors", base / f"{BUNDLED_ID}.json"


def _missing_bundled_card() -> ModelCard:
    try:
        from .synthetic import CLASS_NAMES
    except Exception:  # noqa: BLE001 - a placeholder must never fail
        CLASS_NAMES = tuple(f"class {i}" for i in range(20))

    return ModelCard(
        id=BUNDLED_ID,
        description="small Xception trained on the generated pattern x colour data (files not in this installation)",
        config=XceptionConfig(num_classes=len(CLASS_NAMES)),  # placeholder: the real one is in the card
        class_names=list(CLASS_NAMES),
        preprocess=PreprocessConfig(),
        source="bundled",
        weights_path=None,
        sha256=None,
        status="missing",
        extra={},
    )


def bundled_card() -> ModelCard:
    """The bundled model's card; status "missing" when its files are not in the package."""
    weights, card = _bundled_files()
    if not card.is_file():
        return _missing_bundled_card()
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

    The bundled model's build (``xception-demo train``) writes it this way;
    ``directory`` defaults to :func:`bundled_dir` (must be a real directory).
    """
    model_id = validate_model_id(model_id)
    out = Path(str(directory if directory is not None else bundled_dir()))
    out.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    state = _verified_state(model.state_dict(), cfg, "bundled model")
    names = _class_names_for(list(class_names), cfg.num_classes, "bundled model")
    weights = out / f"{model_id}.safetensors"
    staged, digest = _stage_safetensors(
        state, weights, {"format": "pt", "xception_config": json.dumps(cfg.to_dict())}
    )
    os.replace(staged, weights)
    card = ModelCard(
        id=model_id,
        description=description,
        config=cfg,
        class_names=names,
        preprocess=preprocess or PreprocessConfig(),
        source="bundled" if model_id == BUNDLED_ID else "trained by xception-demo train",
        weights_path=weights,
        sha256=digest,
        status="available",
        extra=dict(extra or {}),
    )
    _write_text_atomic(out / f"{model_id}.json", card.to_json())
    return card


# --------------------------------------------------------------------------- registry


def _missing_pretrained_card(model_id: str) -> ModelCard:
    spec = PRETRAINED[model_id]
    names = imagenet_class_names() if spec["labels"] == "imagenet" else list(spec["labels"])
    return ModelCard(
        id=model_id,
        description=spec["description"],
        config=spec["config"],
        class_names=names,
        preprocess=spec["preprocess"],
        source=spec["url"],
        weights_path=None,
        sha256=None,
        status="missing",
        extra=dict(spec.get("extra", {})),
    )


def _cached_card(model_id: str, home: str | os.PathLike[str] | None) -> ModelCard | None:
    """The card of ``<home>/models/<id>``; None when not registered."""
    directory = _model_dir(model_id, home)
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


def _imported_ids(home: str | os.PathLike[str] | None) -> list[str]:
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


def _pretrained_card(model_id: str, home: str | os.PathLike[str] | None) -> ModelCard:
    try:
        card = _cached_card(model_id, home)
    except CardError as exc:
        log.warning("ignoring damaged card: %s", exc)
        card = None
    return card if card is not None else _missing_pretrained_card(model_id)


def list_models(home: str | os.PathLike[str] | None = None) -> list[ModelCard]:
    """The bundled model, every pretrained model, then imported models sorted by id.

    Imported models whose card is damaged are skipped (with a logged warning).
    """
    try:
        cards = [bundled_card()]
    except CardError as exc:
        log.warning("ignoring damaged bundled card: %s", exc)
        cards = [_missing_bundled_card()]
    cards += [_pretrained_card(mid, home) for mid in PRETRAINED]
    for mid in _imported_ids(home):
        try:
            card = _cached_card(mid, home)
        except CardError as exc:
            log.warning("ignoring damaged card: %s", exc)
            continue
        if card is not None:
            cards.append(card)
    return cards


def _known_ids(home: str | os.PathLike[str] | None) -> list[str]:
    return [BUNDLED_ID, *PRETRAINED, *_imported_ids(home)]


def get_card(model_id: str, home: str | os.PathLike[str] | None = None) -> ModelCard:
    """The card of a model id; :class:`UnknownModelError` (listing valid ids) otherwise."""
    if model_id == BUNDLED_ID:
        return bundled_card()
    if model_id in PRETRAINED:
        return _pretrained_card(model_id, home)
    card = None
    if isinstance(model_id, str) and MODEL_ID_PATTERN.fullmatch(model_id):
        card = _cached_card(model_id, home)
    if card is None:
        raise UnknownModelError(
            f"unknown model {model_id!r}; valid ids: {', '.join(_known_ids(home))}"
        )
    return card


def _missing_message(card: ModelCard, home: str | os.PathLike[str] | None) -> str:
    if card.id in PRETRAINED:
        url = PRETRAINED[card.id]["url"]
        return (
            f"weights of {card.id} are not in the cache ({models_dir(home) / card.id}); "
            f"run: {CLI} weights download {card.id} "
            f"(offline: fetch {url} on a machine with internet, then run: "
            f"{CLI} weights download {card.id} --file PATH/{url.rsplit('/', 1)[-1]})"
        )
    if card.id == BUNDLED_ID:
        return (
            f"the bundled model's files ({BUNDLED_ID}.safetensors / .json) are missing from "
            f"{bundled_dir()}; reinstall xception-explorer, or use another model ({CLI} models)"
        )
    return (
        f"weights file of {card.id} is missing ({card.weights_path}); re-import it with: "
        f"{CLI} weights import FILE --name {card.id} --overwrite"
    )


def load_model(
    model_id: str, device: str | torch.device = "cpu", home: str | os.PathLike[str] | None = None
) -> tuple[Xception, ModelCard]:
    """Build the architecture of ``model_id`` and load its weights (eval mode, on ``device``).

    Checks the safetensors file against the card's sha256, then keys and shapes,
    then ``load_state_dict(strict=True)``. Raises :class:`UnknownModelError`,
    :class:`WeightsMissingError` (message: the command that gets the weights),
    :class:`IntegrityError`, :class:`CheckpointError`.
    """
    from safetensors.torch import load_file

    card = get_card(model_id, home)
    if card.status != "available" or card.weights_path is None:
        raise WeightsMissingError(_missing_message(card, home))
    if card.id == BUNDLED_ID:
        weights_ref: Traversable = _bundled_files()[0]
    else:
        weights_ref = card.weights_path
    with resources.as_file(weights_ref) as weights_path:
        if not Path(weights_path).is_file():
            raise WeightsMissingError(_missing_message(card, home))
        if card.sha256 is not None:
            actual = sha256_file(weights_path)
            if actual != card.sha256:
                fix = (
                    "reinstall xception-explorer"
                    if card.id == BUNDLED_ID
                    else (
                        f"run: {CLI} weights download {card.id} --force"
                        if card.id in PRETRAINED
                        else f"re-import it with: {CLI} weights import FILE --name {card.id} --overwrite"
                    )
                )
                raise IntegrityError(
                    f"{weights_path}: sha256 is {actual[:12]}..., but the card of {card.id} says "
                    f"{card.sha256[:12]}...; the file is corrupted or was replaced; {fix}"
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


def default_model_id(home: str | os.PathLike[str] | None = None) -> str:
    """``xception-imagenet`` when its weights are available, else the bundled model."""
    return IMAGENET_ID if _pretrained_card(IMAGENET_ID, home).status == "available" else BUNDLED_ID


# --------------------------------------------------------------------------- download


def _expected_prefix(url: str) -> str | None:
    name = urllib.parse.urlparse(url).path.rsplit("/", 1)[-1]
    m = None
    for m in _HASH_IN_NAME.finditer(name):
        pass
    return m.group(1) if m else None


def _manual_route(model_id: str) -> str:
    url = PRETRAINED[model_id]["url"]
    return (
        f"download {url} on a machine with internet, then run: "
        f"{CLI} weights download {model_id} --file PATH/{url.rsplit('/', 1)[-1]}"
    )


def _network_reason(exc: BaseException) -> str:
    if isinstance(exc, _Truncated):
        return str(exc)
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return "timed out"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, socket.gaierror):
        return f"host name lookup failed ({reason.strerror or reason})"
    if isinstance(reason, http.client.IncompleteRead):
        return f"truncated: the connection closed {reason.expected} bytes early"
    text = str(reason).strip() or type(reason).__name__
    return text.splitlines()[0]


class _Truncated(Exception):
    def __init__(self, received: int, expected: int) -> None:
        super().__init__(f"truncated: received {received} of {expected} bytes")


def _fetch(url: str, dest: Path, timeout: float, progress: bool) -> tuple[str, int]:
    """Stream ``url`` into ``dest``; return (sha256 hex, bytes).

    Raises OSError / HTTPException subclasses, or :class:`_Truncated` when fewer
    bytes than Content-Length arrived (http.client returns a short read silently).
    """
    from tqdm.auto import tqdm

    h = hashlib.sha256()
    received = 0
    request = urllib.request.Request(url, headers={"User-Agent": "xception-explorer"})
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - scheme checked
        length_header = response.headers.get("Content-Length")
        expected = int(length_header) if length_header and length_header.isdigit() else None
        with open(dest, "wb") as out, tqdm(
            total=expected,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=url.rsplit("/", 1)[-1],
            file=sys.stderr,
            disable=not progress,
            leave=False,
        ) as bar:
            while chunk := response.read(1 << 20):
                out.write(chunk)
                h.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
            out.flush()
            os.fsync(out.fileno())
    if expected is not None and received != expected:
        raise _Truncated(received, expected)
    return h.hexdigest(), received


def download_weights(
    model_id: str = IMAGENET_ID,
    home: str | os.PathLike[str] | None = None,
    url: str | None = None,
    progress: bool = True,
    timeout: float = 30,
    *,
    sha256_prefix: str | None = None,
    file: str | os.PathLike[str] | None = None,
    force: bool = False,
) -> ModelCard:
    """Download (or take from ``file``) a pretrained checkpoint, verify it and store it.

    The expected sha256 prefix is ``sha256_prefix`` if given, else the hex run
    in the URL's file name (``name-<hex>.pth``, torch.hub's convention), else the
    one in :data:`PRETRAINED`. ``url`` overrides the published URL (mirrors,
    tests). ``file`` skips the network: the local file goes through the same
    checks (the manual route for machines without internet). An already
    available model is returned as is unless ``force``.

    The bytes are streamed into ``<home>/downloads/*.part`` with a progress bar
    on stderr and hashed while writing; the part file is always removed.
    Raises :class:`DownloadError` (HTTP errors, network failures, truncation;
    :class:`DownloadHashMismatch` for a wrong hash), :class:`IntegrityError` for a
    local file with the wrong hash, :class:`CheckpointError`.
    """
    if model_id not in PRETRAINED:
        raise UnknownModelError(
            f"no downloadable model {model_id!r}; downloadable ids: {', '.join(PRETRAINED)}"
        )
    spec = PRETRAINED[model_id]
    if not force:
        existing = _pretrained_card(model_id, home)
        if existing.status == "available":
            return existing
    source_url = url or spec["url"]
    expected = (sha256_prefix or _expected_prefix(source_url) or spec["sha256_prefix"]).lower()
    part: Path | None = None
    try:
        if file is not None:
            src = Path(file)
            if not src.is_file():
                raise CheckpointError(f"{src}: file not found")
            digest = sha256_file(src)
            if not digest.startswith(expected):
                raise IntegrityError(
                    f"{src}: sha256 starts with {digest[:len(expected)]}, expected {expected}; "
                    f"this is not the {model_id} weights file ({spec['url']})"
                )
            checkpoint = src
            source = f"{spec['url']} (verified local copy {src.name})"
        else:
            scheme = urllib.parse.urlparse(source_url).scheme
            if scheme not in ("http", "https"):
                raise DownloadError(f"cannot download {source_url}: only http and https URLs are supported")
            downloads = _home(home) / "downloads"
            downloads.mkdir(parents=True, exist_ok=True)
            part = _temp_path(downloads, f".{model_id}-", ".part")
            try:
                digest, _ = _fetch(source_url, part, timeout, progress)
            except (OSError, http.client.HTTPException, ValueError, _Truncated) as exc:
                raise DownloadError(
                    f"could not download {source_url} ({_network_reason(exc)}); {_manual_route(model_id)}"
                ) from None
            if not digest.startswith(expected):
                raise DownloadHashMismatch(
                    f"downloaded {source_url} but its sha256 starts with {digest[:len(expected)]}, "
                    f"expected {expected}; the file was discarded (damaged download or wrong file); "
                    f"try again, or {_manual_route(model_id)}"
                )
            checkpoint = part
            source = source_url
        state, _ = _read_checkpoint(checkpoint)
        where = str(file) if file is not None else source_url
        try:
            if spec["format"] == "timm":
                ours = timm_to_ours(state, spec["config"])
            else:
                ours = state
        except StateDictMismatch as exc:
            raise CheckpointError(f"{where}: {exc}") from None
        verified = _verified_state(ours, spec["config"], where)
        names = imagenet_class_names() if spec["labels"] == "imagenet" else list(spec["labels"])
        return _register(
            model_id,
            verified,
            config=spec["config"],
            class_names=names,
            preprocess=spec["preprocess"],
            source=source,
            description=spec["description"],
            extra={**spec.get("extra", {}), "source_sha256": digest, "sha256_prefix": expected},
            home=home,
        )
    finally:
        _unlink(part)
