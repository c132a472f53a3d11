"""The paper's hypothesis, measured on the atlas of the generated data set.

The generated classes cross 5 spatial patterns with 4 colour schemes
(:mod:`xception_core.synthetic`). For each channel, take its top-k data-set images and ask
how often two of them share the *pattern*, and how often they share the *scheme*: the
pairwise agreement ``sum_v n_v (n_v - 1) / (k (k - 1))`` over the factor's values ``v``.
Chance is the same quantity for two images drawn at random without replacement from the
folder (1/5 and 1/4 for a balanced folder). Per layer and part we report the mean over
live channels (a channel whose k-th example ties its best carries no ranking: dead), a
bootstrap interval over channels, and a permutation null (labels shuffled over images,
the channels' top-k sets kept) -- what a layer of channels blind to the factor would show.
Pattern and scheme have different chance levels (and so different largest ratios to
chance), so they are compared as kappa = (agreement - chance) / (1 - chance): 0 at chance,
1 when a channel's top-k images all share the value.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .atlas import AtlasError, AtlasIndex
from .synthetic import NUM_CLASSES, PATTERNS, folder_name

__all__ = ["FACTORS", "SelectivityRow", "synthetic_labels", "selectivity", "write_report"]

FACTORS = ("pattern", "scheme")


def synthetic_labels(files: list[str]) -> np.ndarray:
    """Class index of every file of an atlas of the generated data set (from its class folder)."""
    by_folder = {folder_name(i): i for i in range(NUM_CLASSES)}
    labels = []
    for name in files:
        folder = name.split("/", 1)[0]
        if folder not in by_folder:
            raise AtlasError(f"{name} is not in a class folder of the generated data set; selectivity needs that atlas")
        labels.append(by_folder[folder])
    return np.array(labels)


def _factors(labels: np.ndarray) -> dict[str, np.ndarray]:
    scheme, pattern = np.divmod(labels, len(PATTERNS))
    return {"pattern": pattern, "scheme": scheme}


def _agreement(values: np.ndarray) -> np.ndarray:
    """Pairwise agreement of each row of ``values`` ``[channels, k]``."""
    k = values.shape[1]
    same = (values[:, :, None] == values[:, None, :]).sum(axis=(1, 2)) - k
    return same / (k * (k - 1))


def _chance(values: np.ndarray) -> float:
    counts = np.bincount(values).astype(np.float64)
    n = counts.sum()
    return float((counts * (counts - 1)).sum() / (n * (n - 1)))


@dataclass(frozen=True)
class SelectivityRow:
    layer: str
    part: str
    channels: int
    dead: int
    pattern: float
    pattern_low: float
    pattern_high: float
    pattern_null95: float
    pattern_chance: float
    scheme: float
    scheme_low: float
    scheme_high: float
    scheme_null95: float
    scheme_chance: float
    pattern_over_scheme: float  # share of channels more selective to pattern than to scheme (kappa)

    def kappa(self, factor: str, field: str = "") -> float:
        """Agreement rescaled so that chance is 0 and a top-k sharing one value is 1."""
        chance = getattr(self, f"{factor}_chance")
        return (getattr(self, f"{factor}{field}") - chance) / (1 - chance)


def _top_images(index: AtlasIndex, layer: str, part: str, k: int) -> tuple[np.ndarray, int]:
    """Top-k image indices of the live channels ``[live, k]`` and the count of dead ones."""
    objective, images = (a[:, :k] for a in index.top(layer, part))
    live = (objective[:, 0] > objective[:, k - 1]) & (images[:, k - 1] >= 0)
    return images[live], int((~live).sum())


def selectivity(index: AtlasIndex, labels: np.ndarray, k: int | None = None, permutations: int = 200, seed: int = 0) -> list[SelectivityRow]:
    """One row per (layer, part) of ``index``; ``labels``: class index of every file."""
    k = k or index.k
    if not 2 <= k <= index.k:
        raise AtlasError(f"k must be in 2..{index.k}, got {k}")
    if not 0 <= permutations <= 10_000:
        raise AtlasError(f"permutations must be in 0..10000, got {permutations}")
    rng = np.random.default_rng(seed)
    factors = _factors(np.asarray(labels))
    shuffles = [rng.permutation(len(labels)) for _ in range(permutations)]
    rows = []
    for layer, parts in index.layers().items():
        for part in parts:
            images, dead = _top_images(index, layer, part, k)
            stats = {}
            for name, values in factors.items():
                per_channel = _agreement(values[images]) if len(images) else np.zeros(0)
                boot = [per_channel[rng.integers(0, len(per_channel), len(per_channel))].mean() for _ in range(1000)] if len(per_channel) else [np.nan]
                null = [_agreement(values[s][images]).mean() for s in shuffles] if len(images) else [np.nan]
                stats[name] = (per_channel, float(np.mean(per_channel)) if len(per_channel) else float("nan"),
                               float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5)),
                               float(np.percentile(null, 95)) if permutations else float("nan"), _chance(values))
            kappa = {name: (s[0] - s[5]) / (1 - s[5]) for name, s in stats.items()}
            rows.append(SelectivityRow(
                layer, part, len(images), dead,
                *stats["pattern"][1:], *stats["scheme"][1:],
                float(np.mean(kappa["pattern"] > kappa["scheme"])) if len(images) else float("nan"),
            ))
    return rows


def write_report(rows: list[SelectivityRow], out: Path, meta: dict) -> dict[str, Path]:
    """``selectivity.csv``, ``selectivity.json`` and ``selectivity.png`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(asdict(rows[0])), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(row).items()})
    paths = {"csv": out / "selectivity.csv", "json": out / "selectivity.json", "png": out / "selectivity.png"}
    paths["csv"].write_text(buffer.getvalue(), encoding="utf-8")
    paths["json"].write_text(json.dumps({**meta, "rows": [asdict(r) for r in rows]}, indent=1), encoding="utf-8")
    _plot(rows, paths["png"], meta)
    return paths


def _plot(rows: list[SelectivityRow], path: Path, meta: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = list(dict.fromkeys(r.layer for r in rows))
    x = np.arange(len(layers))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
    for ax, part in zip(axes, ("depthwise", "pointwise")):
        part_rows = {r.layer: r for r in rows if r.part == part}
        for factor, colour in (("pattern", "tab:blue"), ("scheme", "tab:red")):
            get = lambda field: np.array([part_rows[layer].kappa(factor, field) for layer in layers])  # noqa: E731
            ax.plot(x, get(""), "o-", color=colour, label=f"{factor}")
            ax.fill_between(x, get("_low"), get("_high"), color=colour, alpha=0.2)
            ax.plot(x, get("_null95"), ":", color=colour, label=f"{factor}: 95% of label-shuffled nulls")
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.set_title(f"{part} channels")
        ax.set_xticks(x, [name.replace("block", "b").replace(".sep", "s") for name in layers], rotation=60, fontsize=8)
    axes[0].set_ylabel(f"top-{meta.get('k')} agreement, kappa (0 = chance, 1 = all share it)")
    axes[1].legend(fontsize=8)
    fig.suptitle(f"{meta.get('model')}: what the top-{meta.get('k')} of {meta.get('images')} generated images of a channel share "
                 "(band: 95% bootstrap over channels)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
