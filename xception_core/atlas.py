"""The channel atlas: per layer, part and channel, the data-set images that drive it most.

:func:`build_atlas` reads one folder once -- one forward per batch, capturing every part
of every separable layer -- and keeps, per channel, the top-k images by *objective*
(the spatial mean of the part's output channel, the quantity :mod:`.featurevis` maximises),
each with the largest value of the map and where it is, plus running statistics and the
objectives of an evenly spaced sample of images (for a histogram).

On disk (``<home>/models/<id>/atlas/``): ``atlas.npz`` (NumPy arrays, read back with
``allow_pickle=False``) and ``atlas.json`` (file names, layers, settings). A build writes a
checkpoint (``partial.npz`` / ``partial.json``) every few batches and resumes from it when
started again on the same folder with the same settings. Only the folder the caller names
is read; file names in the index are relative to it and are only ever resolved under it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .folders import IMAGE_EXTENSIONS, is_image_file
from .introspect import forward_with_capture
from .locks import file_lock
from .model import Xception, model_device
from .receptive import ReceptiveField, receptive_fields
from .synthetic import MANIFEST_FILE, write_folder
from .transform import PreprocessConfig, preprocess_bytes, to_pixels
from .weights import BUNDLED_ID, ModelCard
from .weights.store import model_dir, temp_path, unlink, write_text_atomic

__all__ = [
    "ATLAS_VERSION",
    "MAX_K",
    "AtlasBuildRequest",
    "AtlasEntry",
    "AtlasError",
    "AtlasExample",
    "AtlasIndex",
    "atlas_dir",
    "build_atlas",
    "list_images",
    "open_atlas",
]

ATLAS_VERSION = 1
MAX_K = 64
MAX_IMAGES = 200_000
MAX_BATCH = 256
INDEX, PARTIAL = "atlas", "partial"
#: The bundled model's atlas: generated images (seed unused by its training data), built on first use.
BUNDLED_ATLAS_IMAGES = 2000
BUNDLED_ATLAS_SEED = 1013
BUNDLED_ATLAS_SIZE = 128


class AtlasError(ValueError):
    """A bad build request, a missing or stale index, or a channel the index does not have."""


def atlas_dir(model_id: str, home: str | os.PathLike | None = None) -> Path:
    """``<home>/models/<id>/atlas`` (the id is validated; it cannot leave ``models/``)."""
    return model_dir(model_id, home) / "atlas"


def list_images(folder: Path) -> list[str]:
    """Image files under ``folder`` (recursively, hidden entries skipped; what counts as one:
    :func:`~xception_core.folders.is_image_file`), as sorted relative names."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder of images")
    names = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if is_image_file(name):
                names.append((Path(root) / name).relative_to(folder).as_posix())
    if not names:
        raise FileNotFoundError(f"{folder} has no image files ({', '.join(IMAGE_EXTENSIONS)})")
    if len(names) > MAX_IMAGES:
        raise AtlasError(f"{folder} has {len(names)} images; an atlas takes at most {MAX_IMAGES}")
    return sorted(names)


@dataclass(frozen=True)
class AtlasBuildRequest:
    """``folder``: the images (recursively); ``k``: examples kept per channel; ``sample``:
    how many images' objectives are kept for every channel (evenly spaced)."""

    folder: Path
    k: int = 16
    batch_size: int = 32
    checkpoint_every: int = 20
    sample: int = 512

    def __post_init__(self) -> None:
        object.__setattr__(self, "folder", Path(self.folder))
        for name, lo, hi in (("k", 1, MAX_K), ("batch_size", 1, MAX_BATCH), ("checkpoint_every", 1, 10_000), ("sample", 0, 10_000)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise AtlasError(f"{name} must be an integer in {lo}..{hi}, got {value!r}")

    def settings(self) -> dict:
        return {"k": self.k, "sample": self.sample}


@dataclass
class _Part:
    """Running state of one (layer, part): top-k per channel, statistics, the sample."""

    top_obj: np.ndarray  # [C, k] float32, -inf where empty
    top_img: np.ndarray  # [C, k] int32, -1 where empty
    top_max: np.ndarray  # [C, k] float32
    top_pos: np.ndarray  # [C, k] int32, flat index into the map
    total: np.ndarray  # [C] float64
    total_sq: np.ndarray  # [C] float64
    low: np.ndarray  # [C] float32
    high: np.ndarray  # [C] float32
    sample: np.ndarray  # [S, C] float32

    FIELDS = ("top_obj", "top_img", "top_max", "top_pos", "total", "total_sq", "low", "high", "sample")

    @classmethod
    def empty(cls, channels: int, k: int, samples: int) -> _Part:
        return cls(
            top_obj=np.full((channels, k), -np.inf, np.float32),
            top_img=np.full((channels, k), -1, np.int32),
            top_max=np.zeros((channels, k), np.float32),
            top_pos=np.zeros((channels, k), np.int32),
            total=np.zeros(channels, np.float64),
            total_sq=np.zeros(channels, np.float64),
            low=np.full(channels, np.inf, np.float32),
            high=np.full(channels, -np.inf, np.float32),
            sample=np.zeros((samples, channels), np.float32),
        )

    def update(self, maps: torch.Tensor, first: int, sample_slots: dict[int, int]) -> None:
        """Fold in a batch ``[B, C, H, W]`` of images ``first .. first + B - 1``."""
        flat = maps.float().flatten(2)
        obj = flat.mean(dim=2).numpy()  # [B, C]
        high, pos = flat.max(dim=2)
        b = obj.shape[0]
        images = np.arange(first, first + b, dtype=np.int32)
        # existing entries first: a stable sort keeps the earlier image on equal objectives
        cand_obj = np.concatenate([self.top_obj, obj.T], axis=1)
        order = np.argsort(-cand_obj, axis=1, kind="stable")[:, : self.top_obj.shape[1]]
        pick = lambda old, new: np.take_along_axis(np.concatenate([old, new], axis=1), order, axis=1)  # noqa: E731
        self.top_obj = pick(self.top_obj, obj.T)
        self.top_img = pick(self.top_img, np.broadcast_to(images, obj.T.shape))
        self.top_max = pick(self.top_max, high.numpy().T)
        self.top_pos = pick(self.top_pos, pos.numpy().astype(np.int32).T)
        self.total += obj.sum(axis=0)
        self.total_sq += np.square(obj, dtype=np.float64).sum(axis=0)
        self.low = np.minimum(self.low, obj.min(axis=0))
        self.high = np.maximum(self.high, obj.max(axis=0))
        for row, image in enumerate(images):
            slot = sample_slots.get(int(image))
            if slot is not None:
                self.sample[slot] = obj[row]


def _key(layer: str, part: str, name: str) -> str:
    return f"{layer}|{part}|{name}"


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    tmp = temp_path(path.parent, "." + path.name + ".", ".tmp.npz")
    try:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, path)
    except BaseException:
        unlink(tmp)
        raise


def _sample_slots(n: int, samples: int) -> dict[int, int]:
    picks = np.unique(np.linspace(0, n - 1, num=min(n, samples)).round().astype(int)) if samples else []
    return {int(image): slot for slot, image in enumerate(picks)}


def _identity(request: AtlasBuildRequest, files: list[str], model_sha: str | None, cfg: PreprocessConfig) -> dict:
    """What a checkpoint must match to be resumed."""
    return {
        "version": ATLAS_VERSION,
        "folder": str(request.folder.resolve()),
        "files": files,
        "model_sha256": model_sha,
        "preprocess": cfg.to_dict(),
        **request.settings(),
    }


def build_atlas(
    model: Xception,
    preprocess: PreprocessConfig,
    request: AtlasBuildRequest,
    out: Path,
    model_sha: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> AtlasIndex:
    """Scan ``request.folder`` and write the index to ``out`` (created); resumes a checkpoint.

    ``model_sha`` (the weights' sha256, from the card) is stored so that a stale index can
    be told apart; ``progress(done, total)`` is called after every batch (and once at the
    start with what a checkpoint already covers).
    """
    if model.training:
        raise ValueError("build the atlas with the model in eval mode (model.eval())")
    files = list_images(request.folder)
    out.mkdir(parents=True, exist_ok=True)
    identity = _identity(request, files, model_sha, preprocess)
    layers = list(model.separable_layers())
    fields = receptive_fields(model)
    slots = _sample_slots(len(files), request.sample)
    state, done, skipped = _resume(out, identity)
    if progress is not None:
        progress(done, len(files))
    device = model_device(model)
    started = time.perf_counter()
    batches = 0
    shapes: dict[str, dict[str, list[int]]] = {}
    while done < len(files):
        names = files[done : done + request.batch_size]
        tensors, kept_index = [], []
        for offset, name in enumerate(names):
            try:
                tensors.append(preprocess_bytes((request.folder / name).read_bytes(), preprocess))
                kept_index.append(offset)
            except (OSError, ValueError) as exc:
                skipped.append(f"{name}: {exc}")
        if tensors:
            _fold(model, torch.stack(tensors).to(device), layers, (state, done, kept_index, slots, request, shapes))
        done += len(names)
        batches += 1
        if progress is not None:
            progress(done, len(files))
        if done < len(files) and batches % request.checkpoint_every == 0:
            _write(out, PARTIAL, state, {**identity, "done": done, "skipped": skipped})
    meta = {
        **identity,
        "done": done,
        "skipped": skipped,
        "layers": {layer: {part: {"channels": int(s.top_obj.shape[0]), "map": shapes.get(layer, {}).get(part),
                                  "receptive_field": fields[(layer, part)].to_dict()}
                           for part, s in parts.items()} for layer, parts in state.items()},
        "sample_images": sorted(slots, key=slots.get),
        "seconds": time.perf_counter() - started,
    }
    _write(out, INDEX, state, meta)
    unlink(out / f"{PARTIAL}.npz")
    unlink(out / f"{PARTIAL}.json")
    return AtlasIndex.open(out)


def _fold(model: Xception, batch: torch.Tensor, layers: list[str], ctx: tuple) -> None:
    state, first, kept_index, slots, request, shapes = ctx
    with torch.inference_mode():
        _, kept = forward_with_capture(model, batch, layers)
    for layer, parts in kept.items():
        for part, maps in parts.items():
            maps = maps.float().cpu()
            shapes.setdefault(layer, {})[part] = list(maps.shape[2:])
            if layer not in state or part not in state[layer]:
                state.setdefault(layer, {})[part] = _Part.empty(maps.shape[1], request.k, len(slots))
            # images that failed to decode are left out: fold each contiguous run separately
            for run_start, run in _runs(kept_index):
                state[layer][part].update(maps[run_start : run_start + len(run)], first + run[0], slots)


def _runs(offsets: list[int]) -> list[tuple[int, list[int]]]:
    """Contiguous runs of ``offsets`` as (position in the batch, [offsets])."""
    runs: list[tuple[int, list[int]]] = []
    for position, offset in enumerate(offsets):
        if runs and runs[-1][1][-1] == offset - 1:
            runs[-1][1].append(offset)
        else:
            runs.append((position, [offset]))
    return runs


def _write(out: Path, stem: str, state: dict[str, dict[str, _Part]], meta: dict) -> None:
    arrays = {_key(layer, part, name): getattr(s, name) for layer, parts in state.items() for part, s in parts.items() for name in _Part.FIELDS}
    arrays["__parts__"] = np.array([f"{layer}|{part}" for layer, parts in state.items() for part in parts])
    _save_npz(out / f"{stem}.npz", arrays)
    write_text_atomic(out / f"{stem}.json", json.dumps(meta))


def _read_state(path: Path) -> dict[str, dict[str, _Part]]:
    state: dict[str, dict[str, _Part]] = {}
    with np.load(path, allow_pickle=False) as data:
        for item in data["__parts__"].tolist():
            layer, part = item.split("|")
            state.setdefault(layer, {})[part] = _Part(**{n: data[_key(layer, part, n)] for n in _Part.FIELDS})
    return state


def _resume(out: Path, identity: dict) -> tuple[dict, int, list[str]]:
    meta_path, npz = out / f"{PARTIAL}.json", out / f"{PARTIAL}.npz"
    if not (meta_path.is_file() and npz.is_file()):
        return {}, 0, []
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if {k: meta.get(k) for k in identity} != identity:
            return {}, 0, []
        return _read_state(npz), int(meta["done"]), list(meta.get("skipped", []))
    except (OSError, ValueError, KeyError):  # a damaged checkpoint: start again
        return {}, 0, []


@dataclass(frozen=True)
class AtlasExample:
    """One top image of a channel: ``objective`` (spatial mean), ``max`` and where it is."""

    rank: int
    file: str
    objective: float
    max: float
    y: int
    x: int
    box: tuple[int, int, int, int]  # receptive field of (y, x) in the model's input: top, left, bottom, right

    def to_dict(self) -> dict:
        return {"rank": self.rank, "file": self.file, "objective": self.objective, "max": self.max,
                "argmax": [self.y, self.x], "box": list(self.box)}


@dataclass(frozen=True)
class AtlasEntry:
    layer: str
    part: str
    channel: int
    examples: tuple[AtlasExample, ...]
    mean: float
    std: float
    min: float
    max: float
    count: int
    sample: np.ndarray = field(repr=False)  # objectives of the sampled images (histogram)

    def to_dict(self) -> dict:
        return {"layer": self.layer, "part": self.part, "channel": self.channel,
                "examples": [e.to_dict() for e in self.examples],
                "stats": {"mean": self.mean, "std": self.std, "min": self.min, "max": self.max, "count": self.count}}


class AtlasIndex:
    """A built atlas, read-only. ``entry(layer, part, channel, k)`` is the public question."""

    def __init__(self, path: Path, meta: dict, arrays: dict[str, np.ndarray]) -> None:
        self.path, self.meta, self._arrays = path, meta, arrays
        self.root = Path(meta["folder"])
        self.files: list[str] = meta["files"]
        self.k: int = int(meta["k"])
        self.preprocess = PreprocessConfig.from_dict(meta["preprocess"])

    @classmethod
    def exists(cls, path: Path) -> bool:
        return (path / f"{INDEX}.json").is_file() and (path / f"{INDEX}.npz").is_file()

    @classmethod
    def open(cls, path: Path) -> AtlasIndex:
        if not cls.exists(path):
            raise AtlasError(f"no atlas in {path}; build one with the atlas build command")
        meta = json.loads((path / f"{INDEX}.json").read_text(encoding="utf-8"))
        if meta.get("version") != ATLAS_VERSION:
            raise AtlasError(f"the atlas in {path} has version {meta.get('version')}; rebuild it")
        with np.load(path / f"{INDEX}.npz", allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
        return cls(path, meta, arrays)

    @property
    def model_sha256(self) -> str | None:
        return self.meta.get("model_sha256")

    def layers(self) -> dict[str, dict[str, int]]:
        """``{layer: {part: channels}}``."""
        return {layer: {part: info["channels"] for part, info in parts.items()} for layer, parts in self.meta["layers"].items()}

    def receptive_field(self, layer: str, part: str) -> ReceptiveField:
        return ReceptiveField(**self._part_meta(layer, part)["receptive_field"])

    def _part_meta(self, layer: str, part: str) -> dict:
        layers = self.meta["layers"]
        if layer not in layers:
            raise AtlasError(f"unknown layer {layer!r}; the atlas has {', '.join(layers)}")
        if part not in layers[layer]:
            raise AtlasError(f"unknown part {part!r} of {layer}; the atlas has {', '.join(layers[layer])}")
        return layers[layer][part]

    def top(self, layer: str, part: str) -> tuple[np.ndarray, np.ndarray]:
        """``(objectives, image indices)``, each ``[channels, k]``, largest first (-inf / -1 where empty)."""
        self._part_meta(layer, part)
        return self._arrays[_key(layer, part, "top_obj")], self._arrays[_key(layer, part, "top_img")]

    def entry(self, layer: str, part: str, channel: int, k: int | None = None) -> AtlasEntry:
        """The top ``k`` (default: all kept) examples of ``channel``, largest objective first."""
        info = self._part_meta(layer, part)
        if isinstance(channel, bool) or not isinstance(channel, (int, np.integer)) or not 0 <= channel < info["channels"]:
            raise AtlasError(f"channel must be in 0..{info['channels'] - 1} for {layer} {part}, got {channel!r}")
        k = self.k if k is None else k
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.k:
            raise AtlasError(f"k must be in 1..{self.k} (the atlas keeps {self.k} per channel), got {k!r}")
        get = lambda name: self._arrays[_key(layer, part, name)][channel]  # noqa: E731
        width = info["map"][1]
        field_ = self.receptive_field(layer, part)
        size = self.preprocess.input_size
        examples = []
        for rank, (image, obj, high, pos) in enumerate(zip(get("top_img"), get("top_obj"), get("top_max"), get("top_pos"))):
            if image < 0 or rank >= k:
                break
            y, x = divmod(int(pos), width)
            examples.append(AtlasExample(rank, self.files[image], float(obj), float(high), y, x, field_.box(y, x, size)))
        count = self.meta["done"] - len(self.meta["skipped"])
        mean = float(get("total")) / max(count, 1)
        var = max(float(get("total_sq")) / max(count, 1) - mean * mean, 0.0)
        return AtlasEntry(layer, part, channel, tuple(examples), mean, var**0.5, float(get("low")), float(get("high")),
                          count, self._arrays[_key(layer, part, "sample")][:, channel])

    def image_path(self, file: str) -> Path:
        """The path of an indexed file, only ever under the atlas's folder."""
        if file not in set(self.files):
            raise AtlasError(f"{file!r} is not an image of this atlas")
        path = (self.root / file).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise AtlasError(f"{file!r} resolves outside {self.root}")
        return path

    def pixels(self, file: str) -> np.ndarray:
        """What the model saw of ``file``: uint8 ``[S, S, 3]``."""
        return to_pixels(preprocess_bytes(self.image_path(file).read_bytes(), self.preprocess), self.preprocess)

    def crop(self, example: AtlasExample) -> np.ndarray:
        """``example``'s image cropped to the receptive field of its maximum."""
        top, left, bottom, right = example.box
        return np.ascontiguousarray(self.pixels(example.file)[top:bottom, left:right])



def open_atlas(
    card: ModelCard,
    home: str | os.PathLike | None = None,
    model: Xception | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> AtlasIndex:
    """The atlas of ``card``'s model; the bundled model's is built on first use (given ``model``),
    by one process at a time (:func:`~xception_core.locks.file_lock`; the others wait and open it).

    An index built from other weights than the card's (sha256) is refused for an ordinary
    model and rebuilt for the bundled one.
    """
    path = atlas_dir(card.id, home)
    index = _current(card, path, model)
    if index is not None:
        return index
    with file_lock(path.with_name(path.name + ".build.lock")):
        index = _current(card, path, model)  # built by another process while this one waited
        if index is not None:
            return index
        data = path / "data"
        if not (data / MANIFEST_FILE).is_file():
            write_folder(data, BUNDLED_ATLAS_IMAGES, BUNDLED_ATLAS_SEED, size=BUNDLED_ATLAS_SIZE)
        return build_atlas(model, card.preprocess, AtlasBuildRequest(data), path, card.sha256, progress)


def _current(card: ModelCard, path: Path, model: Xception | None) -> AtlasIndex | None:
    """The index at ``path`` if it is ``card``'s; ``None`` where the bundled model's is to be built."""
    build = f"build it: atlas build --model {card.id} --data DIR"
    if AtlasIndex.exists(path):
        index = AtlasIndex.open(path)
        if card.sha256 is None or index.model_sha256 in (None, card.sha256):
            return index
        if card.id != BUNDLED_ID or model is None:
            raise AtlasError(f"the atlas of {card.id} was built from other weights; {build}")
    elif card.id != BUNDLED_ID or model is None:
        raise AtlasError(f"{card.id} has no atlas yet; {build}")
    return None
