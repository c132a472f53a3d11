"""Forward-pass latency of our Xception against timm's ``legacy_xception``, in ONE process.

    python benchmarks/bench_forward.py [--runs 15] [--warmup 3] [--batches 1,8] [--size 299]
                                       [--threads N] [--no-compile] [--json]

Variants (fp32, random weights, eval mode, ``torch.inference_mode``, channels_last input and
weights, paper architecture at ``--size`` px):

* ``timm legacy_xception`` -- the baseline;
* ``ours`` -- :class:`xception_core.model.Xception` as the API's attributions use it;
* ``ours fused`` -- :func:`xception_core.fuse.fuse_for_inference` (BatchNorm folded), what the
  API predicts with (``XCEPTION_FUSE_BATCHNORM=true``);
* ``ours fused + onnxruntime`` -- the folded model exported to ONNX and run by onnxruntime,
  through :class:`xception_core.engine.Predictor` (the API's default on a CPU);
* ``ours fused + torch.compile`` -- the same Predictor with ``backend="compile"``;
* ``ours fused, bf16 autocast`` -- on CPUs with native bfloat16 only.

A variant that is not available here says ``n/a`` and why. The variants are measured in
interleaved rounds (one call of each per round, in a shuffled order, after warm-up)
so that a machine whose load drifts penalises them alike; the table gives the median and
the ratio ``timm ms / variant ms`` (above 1: faster than timm).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


#: the CPU flags that decide what runs natively: AVX2, AVX-512, bf16 / fp16 / VNNI, AMX
FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile")


def cpu_flags() -> list[str]:
    """Which of :data:`FLAGS` this CPU has (``/proc/cpuinfo``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return [f for f in FLAGS if f in have]
    except OSError:
        pass
    return []


def machine() -> dict:
    return {
        "cpu": cpu_model(),
        "flags": cpu_flags(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "loadavg": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def interleaved_medians(calls: dict, runs: int) -> dict[str, float]:
    """Median milliseconds of each call: one warm-up round, then ``runs`` rounds, every round
    calling each in turn, so that a drift of the machine touches all of them alike."""
    for call in calls.values():
        call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(runs):
        for name, call in calls.items():
            t0 = time.perf_counter()
            call()
            times[name].append((time.perf_counter() - t0) * 1000)
    return {name: statistics.median(t) for name, t in times.items()}


def build_variants(compile_: bool, size: int) -> tuple[dict, dict]:
    """``{name: callable(x)}`` and ``{name: reason}`` for the variants that are n/a."""
    import timm

    from xception_core.engine import EngineOptions, Predictor, native_reduced_precision
    from xception_core.fuse import fuse_for_inference
    from xception_core.model import Xception

    torch.manual_seed(0)
    cl = torch.channels_last
    reference = timm.create_model("legacy_xception", pretrained=False).eval().to(memory_format=cl)
    ours = Xception().eval().to(memory_format=cl)
    variants = {"timm legacy_xception": reference, "ours": ours, "ours fused": fuse_for_inference(ours)}
    missing = {}
    wanted = [("ours fused + onnxruntime", "onnxruntime", "fp32")]
    if compile_:
        wanted.append(("ours fused + torch.compile", "compile", "fp32"))
    else:
        missing["ours fused + torch.compile"] = "skipped (--no-compile)"
    why = native_reduced_precision("bf16", torch.device("cpu"))
    if why is None:
        wanted.append(("ours fused, bf16 autocast", "eager", "bf16"))
    else:
        missing["ours fused, bf16 autocast"] = why
    for name, backend, precision in wanted:
        # the API's own prediction path (xception_core.engine), with its checks and fallbacks
        predictor = Predictor(ours, input_size=size, options=EngineOptions(backend=backend, precision=precision))
        if predictor.backend == backend and predictor.precision == precision:
            variants[name] = predictor
        else:
            missing[name] = "; ".join(predictor.notes)[:200]
    return variants, missing


def measure(variants: dict, batch: int, size: int, runs: int, warmup: int) -> dict[str, list[float]]:
    torch.manual_seed(batch)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    times: dict[str, list[float]] = {name: [] for name in variants}
    order = list(variants.items())
    rng = random.Random(batch)
    with torch.inference_mode():
        for _ in range(warmup):
            for model in variants.values():
                model(x)
        for _ in range(runs):
            rng.shuffle(order)  # no variant always runs right after the same one
            for name, model in order:
                t0 = time.perf_counter()
                model(x)
                times[name].append((time.perf_counter() - t0) * 1000)
    return times


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=15)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batches", default="1,8")
    p.add_argument("--size", type=int, default=299)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    p.add_argument("--json", action="store_true", help="print JSON instead of Markdown")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",") if b.strip()]

    started = time.perf_counter()
    variants, missing = build_variants(not args.no_compile, args.size)
    results: dict[int, dict[str, float]] = {}
    for batch in batches:
        times = measure(variants, batch, args.size, args.runs, args.warmup)
        results[batch] = {name: statistics.median(t) for name, t in times.items()}
    info = machine()
    info["wall_s"] = round(time.perf_counter() - started, 1)
    names = ["timm legacy_xception", "ours", "ours fused", "ours fused + onnxruntime", "ours fused + torch.compile", "ours fused, bf16 autocast"]

    if args.json:
        print(json.dumps({"machine": info, "size": args.size, "runs": args.runs, "median_ms": results, "n/a": missing}, indent=2))
        return 0
    print(
        f"Machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']}, {info['threads']} threads, "
        f"load average {info['loadavg']:.2f} at the end; fp32, {args.size} px, channels_last, inference_mode, "
        f"median of {args.runs} interleaved runs after {args.warmup} warm-up rounds.\n"
    )
    header = "| variant | " + " | ".join(f"batch {b} ms | vs timm" for b in batches) + " |"
    print(header)
    print("| --- |" + " --- | --- |" * len(batches))
    for name in names:
        cells = []
        for b in batches:
            if name in results[b]:
                ms = results[b][name]
                ratio = results[b]["timm legacy_xception"] / ms
                cells += [f"{ms:.1f}", f"{ratio:.2f}x"]
            else:
                cells += ["n/a", "n/a"]
        print(f"| {name} | " + " | ".join(cells) + " |")
    for name, reason in missing.items():
        print(f"\n{name}: n/a ({reason})")
    print("\nvs timm = timm median / variant median (above 1: faster than timm; the target, at most 0.8x timm's time, is 1.25x).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
