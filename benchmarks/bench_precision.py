"""Top-1 / top-5 agreement of reduced-precision predictions with float32, on a trained model.

    python benchmarks/bench_precision.py [--n 1000] [--seed 424242] [--model xception-mini-synthetic] [--json]

The model (default: the bundled ``xception-mini-synthetic``, the one trained model available
offline) classifies ``--n`` generated images it never saw (a fresh generator seed), decoded and
preprocessed as the API does, through :class:`xception_core.engine.Predictor` in float32, in
bfloat16 and in float16 autocast -- each without the float32 guard (``margin=0``: what the
reduced precision alone gives), with the API's default guard (``margin=0.05`` over the top-5:
near-ties recomputed in float32) and with a top-1 guard (``mixed_precision_guard_top=1``). Reduced precision is measured even where the hardware only emulates it
(``require_native=False``): agreement does not depend on speed.

Prints, per precision: top-1 agreement with float32, identical top-5 (same classes, same order),
largest |logit difference|, the share of images the guard recomputed, and top-1 accuracy.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from bench_forward import machine


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--seed", type=int, default=424242, help="generator seed (training used 1, validation 2)")
    p.add_argument("--model", default=None, help="model id (default: the bundled model)")
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    from PIL import Image

    from xception_core import synthetic
    from xception_core.engine import EngineOptions, Predictor
    from xception_core.transform import eval_transform
    from xception_core.weights import BUNDLED_ID, load_model

    started = time.perf_counter()
    model, card = load_model(args.model or BUNDLED_ID)
    size = card.preprocess.input_size
    images, labels, _ = synthetic.generate(args.n, args.seed, size=max(size, 128))
    x = torch.stack([eval_transform(Image.fromarray(img), card.preprocess) for img in images])
    labels_t = torch.from_numpy(labels)

    def run(predictor: Predictor) -> tuple[torch.Tensor, torch.Tensor]:
        outs, reduced = [], []
        for chunk in x.split(args.batch):
            logits, red = predictor.predict(chunk)
            outs.append(logits)
            reduced.append(red)
        return torch.cat(outs), torch.cat(reduced)

    exact, _ = run(Predictor(model, input_size=size, options=EngineOptions(backend="eager")))
    rows = [{"precision": "fp32", "guard": "-", "top1_agreement": 1.0, "top5_identical": 1.0, "max_abs_logit_diff": 0.0,
             "recomputed": 0.0, "accuracy": float((exact.argmax(1) == labels_t).float().mean())}]
    for precision in ("bf16", "fp16"):
        for margin, top in ((0.0, 5), (0.05, 5), (0.05, 1)):
            options = EngineOptions(backend="eager", precision=precision, margin=margin, guard_top=top)
            predictor = Predictor(model, input_size=size, options=options, require_native=False)
            logits, reduced = run(predictor)
            rows.append({
                "precision": precision,
                "guard": f"top-{top}, margin {margin:g}" if margin else "none",
                "top1_agreement": float((logits.argmax(1) == exact.argmax(1)).float().mean()),
                "top5_identical": float((logits.topk(5, 1).indices == exact.topk(5, 1).indices).all(1).float().mean()),
                "max_abs_logit_diff": float((logits - exact).abs().max()),
                "recomputed": float((~reduced).float().mean()),
                "accuracy": float((logits.argmax(1) == labels_t).float().mean()),
            })
    info = machine()
    info["wall_s"] = round(time.perf_counter() - started, 1)
    if args.json:
        print(json.dumps({"machine": info, "model": card.id, "n": args.n, "seed": args.seed, "rows": rows}, indent=2))
        return 0
    print(f"Model {card.id} at {size} px, {args.n} generated images (seed {args.seed}, never seen in training); "
          f"reduced precision emulated where not native; {info['cpu']}, torch {info['torch']}, {info['wall_s']} s.\n")
    print("| precision | float32 guard | top-1 = fp32 top-1 | top-5 = fp32 top-5 | max abs logit diff | recomputed in fp32 | top-1 accuracy |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['precision']} | {r['guard']} | {r['top1_agreement']:.1%} | {r['top5_identical']:.1%} | "
              f"{r['max_abs_logit_diff']:.3g} | {r['recomputed']:.1%} | {r['accuracy']:.1%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
