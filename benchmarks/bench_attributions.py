"""Attribution latency: ours (as the API runs it) against the same Captum calls on timm, ONE process.

    python benchmarks/bench_attributions.py [--runs 3] [--size 299] [--steps 32] [--threads N]
                                            [--ig-batches 4,8,16] [--json]

Baseline: timm ``legacy_xception`` (random weights, eval mode, as ``timm.create_model`` returns
it) with Captum called the way its documentation shows, Captum's defaults for everything not
named here:

* Integrated Gradients: ``IntegratedGradients(model).attribute(x, target=t, n_steps=32)``
  (Gauss-Legendre, every step in one batch);
* Grad-CAM at the last separable convolution's pointwise output:
  ``LayerGradCam(model, model.conv4.pointwise).attribute(x, target=t)``;
* SmoothGrad: ``NoiseTunnel(Saliency(model)).attribute(x, nt_type="smoothgrad", nt_samples=16,
  stdevs=0.15, target=t)`` (our defaults for the two numbers that define the method; Captum's
  default batches all samples at once).

Ours: :class:`xception_core.attributions.Attributor` ``.attribute(...)`` as the API calls it (no
quality metrics: ``auc_steps=0``), whole call timed: the model's prediction, the method, the
heat map. Input methods run on the BatchNorm-folded replica
(:func:`~xception_core.fuse.fuse_for_inference`, what the API uses with ``fuse_batchnorm``),
Grad-CAM on the original model, everything channels_last; Integrated Gradients once per
``--ig-batches`` internal batch size.

Rounds are interleaved (one call of each per round); the table gives medians and the ratio
``ours / timm`` (under 1: faster than timm + Captum).
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


def variants(size: int, steps: int, ig_batches: list[int]) -> tuple[dict, dict]:
    """``{name: callable()}`` for the baselines and for ours, and ``{ours name: baseline name}``."""
    import timm
    from captum.attr import IntegratedGradients, LayerGradCam, NoiseTunnel, Saliency

    from xception_core.attributions import Attributor
    from xception_core.fuse import fuse_for_inference
    from xception_core.model import Xception

    torch.manual_seed(0)
    reference = timm.create_model("legacy_xception", pretrained=False).eval()
    model = Xception().eval().to(memory_format=torch.channels_last)
    fused = fuse_for_inference(model)
    x = torch.rand(1, 3, size, size) * 2 - 1

    def timm_ig():
        IntegratedGradients(reference).attribute(x, target=TARGET, n_steps=steps)

    def timm_gradcam():
        LayerGradCam(reference, reference.conv4.pointwise).attribute(x, target=TARGET)

    def timm_smoothgrad():
        NoiseTunnel(Saliency(reference)).attribute(x, nt_type="smoothgrad", nt_samples=16, stdevs=0.15, target=TARGET)

    def ours(target_model, method, **params):
        return lambda: Attributor(target_model).attribute(x, method, target=TARGET, auc_steps=0, **params)

    calls = {
        f"timm + Captum IG, {steps} steps": timm_ig,
        "timm + Captum Grad-CAM": timm_gradcam,
        "timm + Captum SmoothGrad, 16 samples": timm_smoothgrad,
    }
    baseline_of = {}
    for b in ig_batches:
        name = f"ours IG, {steps} steps, batch {b}"
        calls[name] = ours(fused, "integrated_gradients", n_steps=steps, internal_batch_size=b)
        baseline_of[name] = f"timm + Captum IG, {steps} steps"
    calls["ours Grad-CAM"] = ours(model, "layer_gradcam", layer="exit.block14.sep2", part="pointwise")
    baseline_of["ours Grad-CAM"] = "timm + Captum Grad-CAM"
    calls["ours SmoothGrad, 16 samples"] = ours(fused, "smoothgrad", nt_samples=16, stdev=0.15)
    baseline_of["ours SmoothGrad, 16 samples"] = "timm + Captum SmoothGrad, 16 samples"
    return calls, baseline_of


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--size", type=int, default=299)
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--ig-batches", default="4,16", help="internal batch sizes of our IG")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    started = time.perf_counter()
    calls, baseline_of = variants(args.size, args.steps, [int(b) for b in args.ig_batches.split(",") if b.strip()])
    medians = interleaved_medians(calls, args.runs)
    info = machine()
    info["wall_s"] = round(time.perf_counter() - started, 1)
    if args.json:
        print(json.dumps({"machine": info, "size": args.size, "runs": args.runs, "median_ms": medians, "baseline_of": baseline_of}, indent=2))
        return 0
    print(
        f"Machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']}, {info['threads']} threads, "
        f"load average {info['loadavg']:.2f} at the end; fp32, {args.size} px, random weights, "
        f"median of {args.runs} interleaved runs after one warm-up round, {info['wall_s']} s in all.\n"
    )
    print("| call | median ms | ours / timm + Captum |")
    print("| --- | --- | --- |")
    for name, ms in medians.items():
        ratio = f"{ms / medians[baseline_of[name]]:.2f}x" if name in baseline_of else "1.00x (baseline)"
        print(f"| {name} | {ms:.0f} | {ratio} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
