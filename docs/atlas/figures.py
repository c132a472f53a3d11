"""The README's channel figures: one depthwise and one pointwise channel of the bundled model.

    XCEPTION_HOME=... python docs/atlas/figures.py [--layer entry.block3.sep2] [--depthwise 1] [--pointwise 5]

Each figure: the channel's feature visualisation (256 steps, seed 0) and its top-9 images of the
bundled atlas (built on first use), each with the receptive field of its maximum drawn in.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from xception_core.atlas import open_atlas  # noqa: E402
from xception_core.featurevis import VisualisationRequest, visualise  # noqa: E402
from xception_core.weights import BUNDLED_ID, load_model  # noqa: E402


def figure(model, card, index, layer: str, part: str, channel: int, out: Path) -> None:
    result = visualise(model, VisualisationRequest(layer, part, (channel,), steps=256, size=card.preprocess.input_size), card.preprocess)
    entry = index.entry(layer, part, channel, k=9)
    fig = plt.figure(figsize=(9.6, 4.2))
    ax = fig.add_axes([0.01, 0.08, 0.36, 0.8])
    ax.imshow(result.image)
    ax.set_title(f"visualisation: objective {result.images[0].objective_final:.2f}", fontsize=9)
    ax.axis("off")
    for i, example in enumerate(entry.examples):
        ax = fig.add_axes([0.40 + (i % 3) * 0.2, 0.62 - (i // 3) * 0.29, 0.19, 0.26])
        ax.imshow(index.pixels(example.file))
        top, left, bottom, right = example.box
        ax.add_patch(Rectangle((left - 0.5, top - 0.5), right - left, bottom - top, fill=False, ec="yellow", lw=1.2))
        ax.set_title(f"{example.objective:.2f}  {example.file.split('/')[0][3:]}", fontsize=6.5)
        ax.axis("off")
    fig.suptitle(f"{card.id} {layer} {part} channel {channel}: top-9 of {len(index.files)} generated images "
                 f"(box: receptive field of the maximum)", fontsize=9)
    fig.savefig(out, dpi=90)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--layer", default="entry.block3.sep2")
    p.add_argument("--depthwise", type=int, default=1)
    p.add_argument("--pointwise", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(1)
    model, card = load_model(BUNDLED_ID)
    model.to(memory_format=torch.channels_last)
    index = open_atlas(card, model=model)
    here = Path(__file__).resolve().parent
    figure(model, card, index, args.layer, "depthwise", args.depthwise, here / "channel-depthwise.png")
    figure(model, card, index, args.layer, "pointwise", args.pointwise, here / "channel-pointwise.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
