"""Attribution quality on generated images whose objects are known (issue: bundled model).

For each method: the share of positive attribution inside the object, the
pointing-game hit rate, the object's mean area fraction (the random baseline of
both), and the rank correlation with the same method on a model whose top half
was re-initialised (model-randomisation sanity check; lower is better).

    python benchmarks/bench_attribution_quality.py [--n 100] [--model xception-mini-synthetic]
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from xception_core.attributions import attribution_quality, randomized_copy
from xception_core.weights import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="xception-mini-synthetic")
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, card = load_model(args.model)
    layers = list(model.separable_layers())
    entry_last = [n for n in layers if n.startswith("entry")][-1]
    methods = {
        "integrated_gradients (32 steps)": {"method": "integrated_gradients", "n_steps": 32},
        "saliency": {"method": "saliency"},
        "input_x_gradient": {"method": "input_x_gradient"},
        "guided_backprop": {"method": "guided_backprop"},
        f"layer_gradcam {entry_last} pointwise": {"method": "layer_gradcam", "layer": entry_last, "part": "pointwise"},
        f"layer_gradcam {layers[-1]} pointwise": {"method": "layer_gradcam", "layer": layers[-1], "part": "pointwise"},
    }
    start = time.perf_counter()
    report = attribution_quality(
        model, methods, n=args.n, size=card.preprocess.input_size, randomized=randomized_copy(model)
    )
    print(f"model {card.id}, {args.n} generated images (seed 10000), {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, {time.perf_counter() - start:.0f} s")
    print(f"| method | positive mass in object | pointing game | object area (baseline) | rank corr. vs randomised |")
    print("| --- | --- | --- | --- | --- |")
    for name, r in report.items():
        print(f"| {name} | {r['mass_in_object']:.3f} | {r['pointing_game']:.2f} | {r['area_fraction']:.3f} | {r['rank_correlation']:.3f} |")


if __name__ == "__main__":
    main()
