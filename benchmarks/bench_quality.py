"""Attributions with their quality figures on the paper model: old path against new, ONE process.

    python benchmarks/bench_quality.py [--runs 2] [--size 299] [--steps 32] [--auc-steps 16]
                                       [--check-images 2] [--threads N] [--json]

The paper model (random weights, eval mode, channels_last) at ``--size`` px, one image, target 3.
Baselines measured in the same run, interleaved with ours:

* timm's own forward: ``timm.create_model("legacy_xception")``, channels_last,
  ``inference_mode``, batch 1 -- the unit of the saliency / Grad-CAM targets (map <= 4x, map
  with AUC figures <= 10x);
* Captum's documented Integrated Gradients on timm:
  ``IntegratedGradients(model).attribute(x, target=t, n_steps=32)`` -- the unit of the IG target
  (<= 0.25x).

Ours, as the API calls it (``Attributor.attribute``, the whole call): saliency on the
BatchNorm-folded replica, Grad-CAM on the original model at the last separable convolution's
pointwise output, IG on the folded replica (internal batch 16).

* **old**: float32, deletion / insertion curves (``--auc-steps``) on the attributed model itself;
* **new**: precision per family from :func:`~xception_core.attributions.fast.choose_attribution_precision`
  (bf16 where native and its heat maps agree with float32), curves on
  :func:`~xception_core.attributions.fast.quality_engine` (folded, channels_last, bf16 where native
  and agreeing, else float32 / onnxruntime), and the map alone (``auc_steps=0``);
* **bf16 forced**: the map in bf16 whatever the check said (what the check costs or saves).

The two checks run once, before the timing (their time is reported: the API pays it when a
model loads). Medians of ``--runs`` interleaved rounds after a warm-up round.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from bench_forward import interleaved_medians, machine

TARGET = 3
GRADCAM = {"layer": "exit.block14.sep2", "part": "pointwise"}


def setup(args: argparse.Namespace) -> tuple[dict, dict, dict]:
    """``{name: call}``, ``{name: unit name}`` and the facts of the checks."""
    import timm
    from captum.attr import IntegratedGradients

    from xception_core.attributions import Attributor, AttributorOptions
    from xception_core.attributions.fast import PrecisionCheck, choose_attribution_precision, quality_engine
    from xception_core.fuse import fuse_for_inference
    from xception_core.model import Xception

    torch.manual_seed(0)
    cl = torch.channels_last
    reference = timm.create_model("legacy_xception", pretrained=False).eval()
    reference_cl = timm.create_model("legacy_xception", pretrained=False).eval().to(memory_format=cl)
    model = Xception().eval().to(memory_format=cl)
    fused = fuse_for_inference(model)
    x = torch.rand(1, 3, args.size, args.size) * 2 - 1
    x_cl = x.contiguous(memory_format=cl)

    t0 = time.perf_counter()
    choice = choose_attribution_precision(model, PrecisionCheck(images=args.check_images, size=args.size))
    check_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    engine = quality_engine(model, input_size=args.size)
    engine_s = time.perf_counter() - t0
    facts = {
        "attribution_precision": choice.to_dict(),
        "attribution_check_s": round(check_s, 1),
        "quality_engine": engine.info().to_dict(),
        "quality_engine_build_s": round(engine_s, 1),
    }

    def timm_forward():
        with torch.inference_mode():
            reference_cl(x_cl)

    def timm_ig():
        IntegratedGradients(reference).attribute(x, target=TARGET, n_steps=args.steps)

    def call(target_model, method, options=None, **params):
        attributor = Attributor(target_model, options)
        return lambda: attributor.attribute(x, method, target=TARGET, **params)

    new = {m: AttributorOptions(precision=choice.precision_for(m), curves=engine) for m in ("saliency", "layer_gradcam", "integrated_gradients")}
    bf16 = AttributorOptions(precision="bf16", curves=engine)
    auc = {"auc_steps": args.auc_steps}
    calls = {
        "timm forward (channels_last)": timm_forward,
        f"timm + Captum IG, {args.steps} steps": timm_ig,
        "saliency + AUC, old": call(fused, "saliency", **auc),
        "saliency + AUC, new": call(fused, "saliency", new["saliency"], **auc),
        "saliency map, new": call(fused, "saliency", new["saliency"], auc_steps=0),
        "saliency map, bf16 forced": call(fused, "saliency", bf16, auc_steps=0),
        "Grad-CAM + AUC, old": call(model, "layer_gradcam", **auc, **GRADCAM),
        "Grad-CAM + AUC, new": call(model, "layer_gradcam", new["layer_gradcam"], **auc, **GRADCAM),
        "Grad-CAM map, new": call(model, "layer_gradcam", new["layer_gradcam"], auc_steps=0, **GRADCAM),
        "Grad-CAM map, bf16 forced": call(model, "layer_gradcam", bf16, auc_steps=0, **GRADCAM),
        f"IG {args.steps} steps, old (fp32)": call(fused, "integrated_gradients", n_steps=args.steps, auc_steps=0),
        f"IG {args.steps} steps, new": call(fused, "integrated_gradients", new["integrated_gradients"], n_steps=args.steps, auc_steps=0),
        f"IG {args.steps} steps, bf16 forced": call(fused, "integrated_gradients", bf16, n_steps=args.steps, auc_steps=0),
    }
    unit = {name: "timm forward (channels_last)" for name in calls if not name.startswith(("timm", "IG"))}
    unit.update({name: f"timm + Captum IG, {args.steps} steps" for name in calls if name.startswith("IG")})
    return calls, unit, facts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--size", type=int, default=299)
    p.add_argument("--steps", type=int, default=32, help="Integrated Gradients steps")
    p.add_argument("--auc-steps", type=int, default=16)
    p.add_argument("--check-images", type=int, default=2, help="generated images of the bf16 agreement check")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    started = time.perf_counter()
    calls, unit, facts = setup(args)
    medians = interleaved_medians(calls, args.runs)
    info = machine()
    info["wall_s"] = round(time.perf_counter() - started, 1)
    if args.json:
        print(json.dumps({"machine": info, "args": vars(args), "facts": facts, "median_ms": medians, "unit": unit}, indent=2))
        return 0
    print(
        f"Machine: {info['cpu']} ({' '.join(info['flags']) or 'none of avx2 / avx512 / amx'}), {info['cores']} cores, torch {info['torch']}, "
        f"{info['threads']} threads, load average {info['loadavg']:.2f} at the end; {args.size} px, random weights, "
        f"median of {args.runs} interleaved runs after a warm-up round, {info['wall_s']} s in all.\n"
    )
    print(json.dumps(facts, indent=2), "\n")
    print("| call | median ms | ratio |")
    print("| --- | --- | --- |")
    for name, ms in medians.items():
        ratio = f"{ms / medians[unit[name]]:.2f}x {'timm forward' if 'forward' in unit[name] else 'Captum IG on timm'}" if name in unit else "1.00x (unit)"
        print(f"| {name} | {ms:.0f} | {ratio} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
