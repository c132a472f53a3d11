"""The paper's spectrum trained and measured: one model per point, same data, seeds and steps.

A *point* is ``segments`` k (1, an integer, or ``"C"``: one segment per channel), an
order (which part runs first; none for k = 1, a regular convolution) and a training
seed. :func:`run_spectrum` trains the points that ``DIR/points/`` does not hold yet
(``<key>.safetensors`` + ``<key>.json``, the card with the validation curve), so an
interrupted run resumes where it stopped; then it times inference and a training step of
every finished point, interleaved, and writes ``spectrum.csv``, ``spectrum.json`` and ``spectrum.png``
for all of them. Parameters and MACs come from :func:`~xception_core.profile.profile_model`
of each point's model, whose 3x3 layers :func:`~xception_core.profile.segment_spectrum` counts.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from . import synthetic
from .fuse import fuse_for_inference
from .model import ORDERS, PER_CHANNEL, Xception
from .profile import profile_model
from .spectrum_report import write_report
from .train import TrainConfig, preprocess_for, save, to_input, train
from .weights import (
    CardOverrides, ModelCard, ModelExistsError, UnknownModelError, get_card, import_weights, read_checkpoint, sha256_file,
)

__all__ = [
    "PointSpec", "SpectrumRequest", "parse_segments", "spectrum_points", "run_spectrum",
    "interleaved", "time_inference", "time_training", "machine",
]


@dataclass(frozen=True)
class PointSpec:
    """One trained point: ``segments`` (1, k or "C"), ``order`` (None for k = 1) and ``seed``."""

    segments: int | str
    order: str | None
    seed: int

    @property
    def key(self) -> str:
        """File and model-id friendly name, e.g. ``k4-pointwise-first-s0``, ``kc-depthwise-first-s1`` (C: one segment per channel)."""
        order = f"-{self.order}" if self.order else ""
        return f"k{str(self.segments).lower()}{order}-s{self.seed}"

    @property
    def kind(self) -> str:
        if self.segments == 1:
            return "regular"
        if self.segments == PER_CHANNEL:
            return "depthwise separable" if self.order == "depthwise-first" else "extreme Inception"
        return "Inception-like" if self.order == "pointwise-first" else "grouped, then 1x1"

    @property
    def label(self) -> str:
        if self.segments == 1:
            return "k = 1 (regular conv)"
        return f"k = {self.segments}, {self.order} ({self.kind})"

    def train_config(self, base: TrainConfig) -> TrainConfig:
        return replace(base, segments=self.segments, order=self.order or "depthwise-first", seed=self.seed)


def parse_segments(text: str) -> list[int | str]:
    """``"1,2,4,8,C"`` -> ``[1, 2, 4, 8, "C"]``; refuses anything else with a clear message."""
    values: list[int | str] = []
    for item in (t.strip() for t in text.split(",")):
        if item.upper() == PER_CHANNEL:
            values.append(PER_CHANNEL)
        elif item.isdigit() and int(item) >= 1:
            values.append(int(item))
        else:
            raise ValueError(f"segments are positive integers or C (one per channel), comma-separated; got {item!r}")
    return list(dict.fromkeys(values))


def spectrum_points(
    segments: Sequence[int | str], orders: Sequence[str], seeds: Sequence[int]
) -> list[PointSpec]:
    """Every (k, order, seed), k = 1 once per seed (a regular convolution has no order)."""
    bad = [o for o in orders if o not in ORDERS]
    if bad or not orders:
        raise ValueError(f"orders must be some of {', '.join(ORDERS)}; got {', '.join(bad) or 'none'}")
    points = []
    for seed in seeds:
        for k in segments:
            for order in ([None] if k == 1 else orders):
                points.append(PointSpec(k, order, int(seed)))
    return list(dict.fromkeys(points))


@dataclass(frozen=True)
class SpectrumRequest:
    """A spectrum run: the shared training settings, the points, where results go.

    ``save``: register each finished point in the model home (``home``; default
    ``$XCEPTION_HOME``) as ``<name_prefix>-<key>``, as ``weights import`` does.
    ``timing_batch`` images are timed ``timing_rounds`` times per point, interleaved.
    """

    base: TrainConfig
    out_dir: Path
    points: tuple[PointSpec, ...]
    save: bool = False
    home: Path | None = None
    name_prefix: str = "spectrum"
    timing_batch: int = 16
    timing_rounds: int = 7

    def __post_init__(self) -> None:
        if not self.points:
            raise ValueError("a spectrum run needs at least one point")
        if self.timing_batch < 1 or self.timing_rounds < 1:
            raise ValueError("timing_batch and timing_rounds must be positive")
        for point in self.points:  # every point must exist for these widths before anything trains
            try:
                point.train_config(self.base)
            except ValueError as exc:
                raise ValueError(f"point {point.label} does not fit this architecture: {exc}") from None


Log = Callable[[str], None]


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    """What every point of one run shares: the training settings but the point and its seed."""
    return {k: v for k, v in config.items() if k not in ("segments", "order", "seed", "threads")}


def _finished(request: SpectrumRequest) -> dict[str, tuple[PointSpec, dict[str, Any]]]:
    """Points already trained in ``DIR/points`` with the same settings; refuses other settings."""
    found = {}
    for card_path in sorted((request.out_dir / "points").glob("*.json")):
        card = json.loads(card_path.read_text())
        training = card.get("extra", {}).get("training", {})
        theirs, ours = _comparable(training), _comparable(request.base.to_dict())
        if theirs != ours:
            diff = sorted(k for k in {*theirs, *ours} if theirs.get(k) != ours.get(k))
            raise ValueError(
                f"{card_path} was trained with other settings ({', '.join(diff)}); "
                "use another --out for these settings, or the same options to resume"
            )
        k = training["segments"]
        point = PointSpec(k, None if k == 1 else training["order"], int(training["seed"]))
        if card_path.stem != point.key or not card_path.with_suffix(".safetensors").is_file():
            raise ValueError(f"{card_path}: not a finished point of this run (expected {point.key}.json with its weights)")
        found[point.key] = (point, card)
    return found


def _train_point(request: SpectrumRequest, point: PointSpec, progress: bool) -> dict[str, Any]:
    result = train(point.train_config(request.base), progress=progress)
    card = save(result, request.out_dir / "points", point.key, description=f"Xception spectrum point {point.label}")
    return json.loads(Path(card.weights_path).with_suffix(".json").read_text())


def _load(request: SpectrumRequest, point: PointSpec) -> Xception:
    model = Xception(point.train_config(request.base).model_config())
    model.load_state_dict(read_checkpoint(request.out_dir / "points" / f"{point.key}.safetensors"))
    return model.eval()


def interleaved(calls: Sequence[Callable[[], Any]], rounds: int) -> list[float]:
    """Median seconds of each call over ``rounds`` rounds, after one warm-up call each.

    The rounds are interleaved (round r starts at call r mod n) so that a machine
    that slows down or speeds up during the measurement favours no call.
    """
    n = len(calls)
    times: list[list[float]] = [[] for _ in calls]
    for call in calls:
        call()  # warm-up
    for r in range(rounds):
        for i in [(r + j) % n for j in range(n)]:
            start = time.perf_counter()
            calls[i]()
            times[i].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def time_inference(models: Sequence[torch.nn.Module], images: torch.Tensor, rounds: int) -> list[float]:
    """Milliseconds per image of each model's forward pass on ``images`` (:func:`interleaved`)."""
    with torch.inference_mode():
        seconds = interleaved([functools.partial(model, images) for model in models], rounds)
    return [s * 1000 / len(images) for s in seconds]


def time_training(
    models: Sequence[torch.nn.Module], images: torch.Tensor, labels: torch.Tensor, rounds: int
) -> list[float]:
    """Milliseconds per image of one training step (forward, backward, AdamW) of each model (:func:`interleaved`).

    A measure of training cost that, unlike a whole run's wall time, does not depend on what
    else the machine did while that run trained. The models' weights change.
    """
    def step(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    calls = [functools.partial(step, m.train(), torch.optim.AdamW(m.parameters())) for m in models]
    return [s * 1000 / len(images) for s in interleaved(calls, rounds)]


def machine() -> dict[str, Any]:
    """The CPU's name, its vector extensions, core count and load (recorded beside every timing)."""
    name, flags = platform.processor() or platform.machine(), []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
            elif key.strip() == "flags":
                flags = sorted(f for f in value.split() if f.startswith(("avx", "amx", "fma", "sse4")))
                break
    except OSError:
        pass
    load = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return {"cpu": name, "flags": flags, "cores": os.cpu_count(), "loadavg": load, "torch": torch.__version__}


def _row(request: SpectrumRequest, point: PointSpec, card: dict[str, Any]) -> dict[str, Any]:
    profile = profile_model(point.train_config(request.base).model_config(), request.base.input_size)
    extra = card["extra"]
    curve = extra["validation_curve"]
    return {
        "key": point.key, "segments": point.segments, "order": point.order or "", "seed": point.seed,
        "kind": point.kind, "label": point.label, "params": profile.total_params, "macs": profile.total_macs,
        "val_top1": extra["metrics"]["val_top1"], "train_seconds": extra["training_seconds"],
        "infer_ms": None, "train_step_ms": None, "steps": curve[-1]["step"], "curve": curve,
    }


def _register(request: SpectrumRequest, point: PointSpec, log: Log) -> ModelCard:
    """The point as a hosted model ``<prefix>-<key>``; unchanged weights are not stored twice."""
    weights = request.out_dir / "points" / f"{point.key}.safetensors"
    name = f"{request.name_prefix}-{point.key}".lower()
    digest = sha256_file(weights)
    try:
        existing = get_card(name, request.home)
        if existing.extra.get("source_sha256") == digest:
            return existing
    except UnknownModelError:
        pass
    config = point.train_config(request.base)
    card = json.loads(weights.with_suffix(".json").read_text())
    try:
        stored = import_weights(
            weights, name, format="ours", labels=list(synthetic.CLASS_NAMES), home=request.home,
            card=CardOverrides(
                config=config.model_config(), preprocess=preprocess_for(config),
                description=f"Xception spectrum point {point.label}, trained on generated pattern x colour data",
                extra=card["extra"],
            ),
        )
    except ModelExistsError:
        raise ValueError(
            f"a model named {name!r} already exists with other weights; choose another --name-prefix "
            f"(or remove it from the model home)"
        ) from None
    log(f"saved {point.label} as model {stored.id}")
    return stored


def run_spectrum(request: SpectrumRequest, progress: bool = True, log: Log = print) -> Path:
    """Train the missing points, time all finished ones, write CSV, JSON and plot; returns the CSV path."""
    (request.out_dir / "points").mkdir(parents=True, exist_ok=True)
    finished = _finished(request)
    todo = [p for p in request.points if p.key not in finished]
    log(f"{len(request.points) - len(todo)} of {len(request.points)} points already trained in {request.out_dir}")
    for i, point in enumerate(todo, start=1):
        log(f"training point {i}/{len(todo)}: {point.label}, seed {point.seed}")
        finished[point.key] = (point, _train_point(request, point, progress))
    ordered = sorted(finished.values(), key=lambda pc: _sort_key(pc[0]))
    rows = [_row(request, point, card) for point, card in ordered]
    log(
        f"timing {len(rows)} points, {request.timing_rounds} interleaved rounds: inference on {request.timing_batch} "
        f"images, a training step on {request.base.batch_size}"
    )
    before = machine()
    images, labels = _timing_images(request, max(request.timing_batch, request.base.batch_size))
    previous = torch.get_num_threads()
    torch.set_num_threads(request.base.threads)
    try:
        models = [fuse_for_inference(_load(request, point)) for point, _ in ordered]
        for row, ms in zip(rows, time_inference(models, images[: request.timing_batch], request.timing_rounds)):
            row["infer_ms"] = round(ms, 3)
        models = [_load(request, point).to(memory_format=torch.channels_last) for point, _ in ordered]
        batch = slice(0, request.base.batch_size)
        for row, ms in zip(rows, time_training(models, images[batch], labels[batch], request.timing_rounds)):
            row["train_step_ms"] = round(ms, 3)
    finally:
        torch.set_num_threads(previous)
    if request.save:
        for point, _ in ordered:
            _register(request, point, log)
    meta = {"base": request.base.to_dict(), "machine": {"before_timing": before, "after_timing": machine()},
            "timing": {"batch": request.timing_batch, "rounds": request.timing_rounds, "threads": request.base.threads,
                       "model": "BatchNorm folded (fuse_for_inference), eval, channels_last"}}
    return write_report(request.out_dir, rows, meta)


def _sort_key(point: PointSpec) -> tuple:
    k = point.segments
    return (float("inf") if k == PER_CHANNEL else k, point.order or "", point.seed)


def _timing_images(request: SpectrumRequest, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    raw, labels, _ = synthetic.generate(n, request.base.val_seed, request.base.input_size)
    return to_input(torch.from_numpy(raw)), torch.from_numpy(labels).long()
