"""Feature visualisation and the channel atlas: times against the issue-13 targets.

    python benchmarks/bench_featurevis.py [--only bundled atlas paper share] [--steps 256]
        [--paper-steps 256] [--atlas-images 2000] [--share-channels 4] [--threads N] [--device cpu]
        [--out FILE.json]

* bundled: one channel, 256 steps, 96 px, at three depths (precision auto and fp32); target <= 3 s;
* atlas: the bundled model's atlas of 2,000 generated images (generation not timed); target <= 60 s;
* paper: the paper model (random weights: the time does not depend on them), one channel at
  128 px, 256 steps, at three depths, and 8 channels of each of those layers in one run; targets
  <= 10 s and 8 channels <= 3x one. ``--paper-steps`` below 256 times fewer steps and scales
  the time to 256 (said in the output);
* share: on the bundled model, for ``--share-channels`` evenly spaced channels of every part of
  every separable layer, whether the visualisation's final objective (256 steps) exceeds the
  channel's best example among the atlas's 2,000 images.

Each timed run follows a 2-step run of the same kind, whose time is reported as ``first_call_s``
(the model's visualisation copy is built on the first call, and ``auto`` times steps in bf16 and
in fp32 once per layer, part, size and channel count). Times are wall clock and CPU seconds of
this process (CPU time is robust to a shared machine; with one thread it is the time on one
dedicated core); the load average is printed at the start and at the end. The models run in
channels_last (the CLI does the same). The CPU's name and bf16-related flags are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench_forward  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from xception_core.atlas import AtlasBuildRequest, build_atlas  # noqa: E402
from xception_core.featurevis import VisualisationRequest, native_bf16, visualise  # noqa: E402
from xception_core.model import Xception  # noqa: E402
from xception_core.synthetic import write_folder  # noqa: E402
from xception_core.timing import sync  # noqa: E402
from xception_core.weights import BUNDLED_ID, load_model  # noqa: E402

BUNDLED_LAYERS = ("entry.block3.sep1", "middle.block6.sep2", "exit.block9.sep2")
PAPER_LAYERS = ("entry.block4.sep2", "middle.block8.sep2", "exit.block14.sep2")


def machine() -> dict:
    return {**bench_forward.machine(), "bf16_native": native_bf16(torch.device("cpu"))}


#: Where the bundled and paper runs go (``--device``); the atlas and share runs stay on the CPU.
DEVICE = torch.device("cpu")


def timed(fn):
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    sync(DEVICE)
    return out, time.perf_counter() - w0, time.process_time() - c0


def run_vis(model, cfg, layer, channels, steps, size, precision, scale_to=256):
    """One timed visualisation after a 2-step one of the same kind (``first_call_s``: it builds the
    model's visualisation copy and, for ``auto``, times a step in bf16 and in fp32 once)."""
    req = VisualisationRequest(layer, "pointwise", tuple(channels), steps=steps, size=size, precision=precision)
    _, first, _ = timed(lambda: visualise(model, replace(req, steps=2), cfg))
    result, wall, cpu = timed(lambda: visualise(model, req, cfg))
    f = scale_to / steps
    return {"layer": layer, "channels": len(channels), "size": size, "steps_timed": steps, "steps": scale_to,
            "precision": result.precision, "wall_s": wall * f, "cpu_s": cpu * f, "first_call_s": first,
            "objective_final": [c.objective_final for c in result.images]}


def bench_bundled(args, report):
    model, card = load_model(BUNDLED_ID)
    model.to(DEVICE, memory_format=torch.channels_last)
    visualise(model, VisualisationRequest(BUNDLED_LAYERS[0], "pointwise", (0,), steps=3), card.preprocess)  # warm-up
    rows = []
    for layer in BUNDLED_LAYERS:
        for precision in ("auto", "fp32"):
            rows.append(run_vis(model, card.preprocess, layer, (0,), args.steps, 96, precision, args.steps))
            print(f"bundled {layer:20s} {rows[-1]['precision']:4s} 1 ch: {rows[-1]['wall_s']:6.2f} s wall, "
                  f"{rows[-1]['cpu_s']:6.2f} s CPU (first call of the kind {rows[-1]['first_call_s']:.2f} s)", flush=True)
    report["bundled"] = rows


def bench_atlas(args, report, work: Path):
    model, card = load_model(BUNDLED_ID)
    model.to(memory_format=torch.channels_last)
    data = work / "data"
    if not data.is_dir():
        write_folder(data, args.atlas_images, 1013, size=128)
    out = work / "atlas"
    index, wall, cpu = timed(lambda: build_atlas(model, card.preprocess, AtlasBuildRequest(data, batch_size=64), out, card.sha256))
    report["atlas"] = {"images": len(index.files), "wall_s": wall, "cpu_s": cpu}
    print(f"atlas of {len(index.files)} generated images: {wall:.1f} s wall, {cpu:.1f} s CPU", flush=True)
    return index


def bench_paper(args, report):
    torch.manual_seed(0)
    model = Xception().eval().to(DEVICE, memory_format=torch.channels_last)
    visualise(model, VisualisationRequest(PAPER_LAYERS[0], "pointwise", (0,), steps=2, size=128))  # warm-up
    rows = []
    for layer in PAPER_LAYERS:
        rows.append(run_vis(model, None, layer, (0,), args.paper_steps, 128, "auto"))
        print(f"paper {layer:20s} {rows[-1]['precision']} 1 ch: {rows[-1]['wall_s']:6.2f} s wall, {rows[-1]['cpu_s']:6.2f} s CPU"
              f" (first call of the kind {rows[-1]['first_call_s']:.2f} s; 256 steps{'' if args.paper_steps == 256 else f', scaled from {args.paper_steps}'})", flush=True)
    for layer in PAPER_LAYERS:
        one = next(r for r in rows if r["layer"] == layer)
        eight = run_vis(model, None, layer, range(8), args.paper_steps, 128, "auto")
        eight["ratio_cpu_vs_one"] = eight["cpu_s"] / one["cpu_s"]
        eight["ratio_wall_vs_one"] = eight["wall_s"] / one["wall_s"]
        rows.append(eight)
        print(f"paper {layer:20s} {eight['precision']} 8 ch: {eight['wall_s']:6.2f} s wall, {eight['cpu_s']:6.2f} s CPU, "
              f"{eight['ratio_cpu_vs_one']:.2f}x one channel (CPU), {eight['ratio_wall_vs_one']:.2f}x (wall); first call of the kind {eight['first_call_s']:.2f} s", flush=True)
    report["paper"] = rows


def bench_share(args, report, index):
    model, card = load_model(BUNDLED_ID)
    model.to(memory_format=torch.channels_last)
    rows = []
    for layer, parts in index.layers().items():
        for part, count in parts.items():
            channels = sorted(set(np.linspace(0, count - 1, args.share_channels).round().astype(int).tolist()))
            req = VisualisationRequest(layer, part, tuple(channels), steps=args.steps, size=card.preprocess.input_size)
            result = visualise(model, req, card.preprocess)
            for image in result.images:
                best = index.entry(layer, part, image.channel).examples[0].objective
                rows.append({"layer": layer, "part": part, "channel": image.channel, "visualisation": image.objective_final,
                             "best_example": best, "exceeds": image.objective_final > best,
                             "dead": best == 0.0 and image.objective_final == 0.0})  # never positive, on data or optimised
            done = [r for r in rows if r["layer"] == layer and r["part"] == part]
            print(f"share {layer:20s} {part:9s}: {sum(r['exceeds'] for r in done)}/{len(done)} exceed", flush=True)
    summary = {}
    for part in ("depthwise", "pointwise"):
        live = [r for r in rows if r["part"] == part and not r["dead"]]
        summary[part] = {"channels": len(live), "exceed": sum(r["exceeds"] for r in live),
                         "dead": sum(r["dead"] for r in rows if r["part"] == part)}
    report["share"] = {"rows": rows, "summary": summary, "steps": args.steps}
    print(f"share: {summary}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", default=["bundled", "atlas", "paper", "share"])
    p.add_argument("--steps", type=int, default=256)
    p.add_argument("--paper-steps", type=int, default=256)
    p.add_argument("--atlas-images", type=int, default=2000)
    p.add_argument("--share-channels", type=int, default=4)
    p.add_argument("--threads", type=int)
    p.add_argument("--device", default="cpu", help="device of the bundled and paper runs (cpu, cuda)")
    p.add_argument("--work", help="folder for the generated images and the atlas (default: a temporary one)")
    p.add_argument("--out", help="write the report as JSON")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    global DEVICE
    DEVICE = torch.device(args.device)
    report = {"machine": machine(), "device": str(DEVICE)}
    print(json.dumps(report["machine"]), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        index = None
        if "bundled" in args.only:
            bench_bundled(args, report)
        if "atlas" in args.only or "share" in args.only:
            index = bench_atlas(args, report, work)
        if "paper" in args.only:
            bench_paper(args, report)
        if "share" in args.only:
            bench_share(args, report, index)
    report["loadavg_end"] = os.getloadavg()[0]
    print(f"load average at the end: {report['loadavg_end']:.2f}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
