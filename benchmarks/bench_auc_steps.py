"""How far deletion / insertion AUCs with few steps lie from 64 steps: the cost of a cheaper default.

    python benchmarks/bench_auc_steps.py [--images 24] [--seed 7] [--steps 4 6 8 12 16] [--json]

The bundled model (trained: its curves mean something) on ``--images`` generated images of
its own data set, each with its true class as the target; saliency and Grad-CAM (last
separable convolution, pointwise) maps, each scored with ``steps=64`` (the reference) and with
each of ``--steps``, all through the model itself in float32. Prints, per step count, the mean
and largest |AUC - AUC at 64 steps| of deletion and of insertion. No timing: the cost of a
step count is ``2 * steps + 1`` forwards (``bench_interactive.py`` times the default).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

REFERENCE_STEPS = 64


def run(args: argparse.Namespace) -> dict:
    from xception_core.attributions import Attributor, deletion_insertion_auc
    from xception_core.synthetic import generate, to_tensor
    from xception_core.weights.catalog import default_model_id, load_model

    warnings.filterwarnings("ignore")
    model, card = load_model(default_model_id())
    model.eval()
    images, labels, _ = generate(args.images, seed=args.seed, size=card.preprocess.input_size)
    attributor = Attributor(model)
    last = list(model.separable_layers())[-1]
    errors = {s: {"deletion": [], "insertion": []} for s in args.steps}
    for image, label in zip(images, labels):
        x, target = to_tensor(image)[None], int(label)
        maps = (
            attributor.attribute(x, "saliency", target=target, auc_steps=0).heatmap,
            attributor.attribute(x, "layer_gradcam", target=target, layer=last, part="pointwise", auc_steps=0).heatmap,
        )
        for heat in maps:
            ref = deletion_insertion_auc(model, x, heat, target, steps=REFERENCE_STEPS, batch_size=64)
            for s in args.steps:
                got = deletion_insertion_auc(model, x, heat, target, steps=s, batch_size=64)
                errors[s]["deletion"].append(abs(got.deletion_auc - ref.deletion_auc))
                errors[s]["insertion"].append(abs(got.insertion_auc - ref.insertion_auc))
    rows = [
        {"steps": s, **{f"{k}_{f.__name__}": float(f(v)) for k, v in e.items() for f in (np.mean, np.max)}}
        for s, e in errors.items()
    ]
    return {"model": card.id, "images": args.images, "maps": 2 * args.images, "reference_steps": REFERENCE_STEPS, "rows": rows}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=24)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--steps", type=int, nargs="+", default=[4, 6, 8, 12, 16])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = run(args)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{result['model']}: {result['maps']} maps, |AUC - AUC at {REFERENCE_STEPS} steps|")
    print("| steps | deletion mean | deletion max | insertion mean | insertion max |\n| --- | --- | --- | --- | --- |")
    for r in result["rows"]:
        print(f"| {r['steps']} | {r['deletion_mean']:.4f} | {r['deletion_max']:.4f} | {r['insertion_mean']:.4f} | {r['insertion_max']:.4f} |")


if __name__ == "__main__":
    main()
