"""What a spectrum run writes: ``spectrum.csv`` (one row per point), ``spectrum.json`` (settings,
machine, points with their validation curves) and ``spectrum.png`` (validation top-1 against
parameters and against MACs); and reading a run's ``spectrum.json`` back, the committed run
(``docs/spectrum``, shipped as package data ``data/spectrum.json``) by default."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = ["CSV_FIELDS", "write_report", "plot_spectrum", "read_results", "committed_results"]

CSV_FIELDS = (
    "key", "segments", "order", "seed", "kind", "label", "params", "macs",
    "val_top1", "train_seconds", "train_step_ms", "infer_ms", "steps",
)


def write_report(out_dir: Path, rows: Sequence[dict[str, Any]], meta: dict[str, Any]) -> Path:
    """Write the three files for ``rows`` (each with the :data:`CSV_FIELDS` and a ``curve``); returns the CSV."""
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / "spectrum.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    (out_dir / "spectrum.json").write_text(json.dumps({**meta, "points": list(rows)}, indent=2) + "\n")
    plot_spectrum(rows, out_dir / "spectrum.png")
    return csv_path


_STYLE = {"": ("o", "#444444"), "depthwise-first": ("s", "#4C78A8"), "pointwise-first": ("^", "#F58518")}


def plot_spectrum(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Validation top-1 against parameters (left) and MACs (right), log scale; one marker per order."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), dpi=110, sharey=True)
    for ax, column, title in zip(axes, ("params", "macs"), ("parameters", "multiply-accumulates per image")):
        for order in ("depthwise-first", "pointwise-first"):  # each order's path from k = 1 to k = C, per seed
            for seed in sorted({r["seed"] for r in rows}):
                line = sorted((r for r in rows if r["seed"] == seed and r["order"] in ("", order)), key=lambda r: r[column])
                if sum(r["order"] == order for r in line) > 1:
                    ax.plot([r[column] for r in line], [r["val_top1"] for r in line], color=_STYLE[order][1],
                            alpha=0.35, lw=1, zorder=2)
        for order, (marker, colour) in _STYLE.items():
            mine = [r for r in rows if r["order"] == order]
            if not mine:
                continue
            name = {"": "k = 1, regular"}.get(order, order)
            ax.scatter([r[column] for r in mine], [r["val_top1"] for r in mine], marker=marker, color=colour,
                       s=42, label=name, zorder=3)
            first_seed = min(r["seed"] for r in rows)
            for r in mine:  # later seeds' labels below their marker, so that equal results stay legible
                later = r["seed"] != first_seed
                ax.annotate(f"{r['segments']}" + (f" s{r['seed']}" if later else ""), (r[column], r["val_top1"]),
                            textcoords="offset points", xytext=(5, -11 if later else 4), fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel(title)
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("validation top-1")
    axes[0].legend(title="order", fontsize=8)
    fig.suptitle("Xception's spectrum: segments k of each 3x3 convolution (labels), same data and steps")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def committed_results() -> dict[str, Any]:
    """The committed run (``docs/spectrum/spectrum.json``), shipped with the package."""
    return read_results(resources.files("xception_core") / "data" / "spectrum.json")


def read_results(path: Any) -> dict[str, Any]:
    """A run's ``spectrum.json`` (a path or a package resource): ``base``, ``machine``, ``timing``
    and ``points``, each point with the :data:`CSV_FIELDS` and its ``curve``; ValueError otherwise."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a spectrum run's JSON ({exc})") from None
    points = data.get("points") if isinstance(data, dict) else None
    if not isinstance(points, list) or not points:
        raise ValueError(f"{path}: no points")
    for point in points:
        missing = [f for f in (*CSV_FIELDS, "curve") if not isinstance(point, dict) or f not in point]
        if missing:
            raise ValueError(f"{path}: a point lacks {', '.join(missing)}")
    return data
