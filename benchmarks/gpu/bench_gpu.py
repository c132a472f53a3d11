"""CUDA checks and figures for Xception Explorer, in one process (see ``run.sh``).

    python benchmarks/gpu/bench_gpu.py [--runs 20] [--throughput-batch 256] [--ig-steps 32]
                                       [--no-compile] [--json OUT.json]

Exits 2 at once, saying so, when CUDA is not available. Otherwise:

1. correctness on CUDA (fp32, TF32 off, random weights with BatchNorm statistics calibrated on
   real photographs): our model on CUDA against the same model on the CPU, the BatchNorm-folded
   model (``xception_core.fuse``) against the unfused one, and a ``POST /v1/predict`` through the
   API (``device=cuda``, fuse_batchnorm on, mixed precision on) against a direct fp32 forward:
   same top-5;
2. batch-1 latency, fp32 eager, channels_last, ``inference_mode``: timm ``legacy_xception``,
   ours, ours fused (median of ``--runs`` after warm-up, CUDA-synchronised);
3. batch-``--throughput-batch`` throughput (img/s) under bf16 and fp16 autocast, channels_last:
   timm eager, ours fused eager, ours fused + ``torch.compile`` (n/a with the reason if it fails);
4. Integrated Gradients latency (``--ig-steps`` steps, internal batch = steps, no quality figures)
   through :class:`xception_core.attributions.Attributor` on the original model, fp32.

Prints a Markdown table per part. Random weights: figures are speed, not accuracy.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import torch

CL = torch.channels_last


def require_cuda() -> None:
    if not torch.cuda.is_available():
        print(
            "bench_gpu.py: CUDA is not available here (torch "
            f"{torch.__version__}, built for CUDA {torch.version.cuda}); run it on a machine with an NVIDIA GPU.",
            file=sys.stderr,
        )
        raise SystemExit(2)


def timed(fn, runs: int, warmup: int) -> list[float]:
    """Milliseconds of ``fn()`` per call, CUDA-synchronised."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def calibrated_paper_model():
    from support import calibrate_batchnorm, photo_batch, sample_photos

    from xception_core.model import Xception

    torch.manual_seed(0)
    model = Xception()
    batch = photo_batch(sample_photos(), 299)
    calibrate_batchnorm(model, batch)
    return model.eval(), batch


def correctness(model, batch) -> list[tuple[str, str, bool]]:
    import copy

    from xception_core.fuse import fuse_for_inference

    rows = []
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    with torch.inference_mode():
        cpu = model(batch)
        on_gpu = copy.deepcopy(model).cuda().to(memory_format=CL)
        xg = batch.cuda().contiguous(memory_format=CL)
        gpu = on_gpu(xg).cpu()
        fused = fuse_for_inference(on_gpu)(xg).cpu()
    d1 = (gpu - cpu).abs().max().item()
    d2 = (fused - gpu).abs().max().item()
    same = torch.equal(gpu.topk(5).indices, cpu.topk(5).indices)
    rows.append(("CUDA vs CPU logits (fp32, TF32 off)", f"max |diff| {d1:.2e}, top-5 equal: {same}", d1 < 1e-3 and same))
    rows.append(("fused vs unfused on CUDA", f"max |diff| {d2:.2e}", d2 < 1e-4))
    rows.append(api_round_trip(model))
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return rows


def api_round_trip(model) -> tuple[str, str, bool]:
    import copy
    import io

    from fastapi.testclient import TestClient
    from PIL import Image
    from support import sample_photos

    from api.main import create_app
    from api.registry import InMemoryModel, ModelRegistry
    from api.settings import Settings
    from xception_core.decode import decode_image
    from xception_core.transform import PreprocessConfig, eval_transform

    names = [f"class {i}" for i in range(model.config.num_classes)]
    cfg = PreprocessConfig()
    registry = ModelRegistry.from_models([InMemoryModel("paper", copy.deepcopy(model), names, cfg)], device="cuda")
    app = create_app(Settings(device="cuda", fuse_batchnorm=True, log_json=False, access_log=False), registry=registry)
    buf = io.BytesIO()
    Image.fromarray(sample_photos()[1]).save(buf, format="PNG")
    data = buf.getvalue()
    with TestClient(app) as client:
        r = client.post("/v1/predict", files={"image": ("cat.png", data, "image/png")}, params={"top_k": 5})
    if r.status_code != 200:
        return ("API /v1/predict on CUDA (fused, mixed precision)", f"HTTP {r.status_code}: {r.text[:200]}", False)
    body = r.json()
    x = eval_transform(decode_image(data), cfg)[None]
    with torch.inference_mode():
        top = model(x).topk(5).indices[0].tolist()
    got = [p["index"] for p in body["predictions"]]
    return (
        "API /v1/predict on CUDA (fused, mixed precision)",
        f"device {body.get('device')}, precision {body.get('precision')}, top-5 equal to CPU fp32: {got == top}",
        got == top and str(body.get("device", "")).startswith("cuda"),
    )


def latency_b1(model, runs: int) -> dict[str, float]:
    import timm

    from xception_core.fuse import fuse_for_inference

    torch.manual_seed(0)
    variants = {
        "timm legacy_xception": timm.create_model("legacy_xception", pretrained=False).eval().cuda().to(memory_format=CL),
        "ours": model.cuda().to(memory_format=CL),
    }
    variants["ours fused"] = fuse_for_inference(variants["ours"])
    x = torch.randn(1, 3, 299, 299, device="cuda").contiguous(memory_format=CL)
    out = {}
    with torch.inference_mode():
        for name, m in variants.items():
            out[name] = statistics.median(timed(lambda m=m: m(x), runs, 5))
    return out


def throughput(model, batch: int, runs: int, compile_: bool) -> dict[str, dict[str, str]]:
    import timm

    from xception_core.fuse import fuse_for_inference

    torch.manual_seed(0)
    timm_model = timm.create_model("legacy_xception", pretrained=False).eval().cuda().to(memory_format=CL)
    fused = fuse_for_inference(model.cuda().to(memory_format=CL))
    x = torch.randn(batch, 3, 299, 299, device="cuda").contiguous(memory_format=CL)
    table: dict[str, dict[str, str]] = {}
    for dtype_name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        row: dict[str, str] = {}

        def run(m, dtype=dtype):
            with torch.inference_mode(), torch.autocast("cuda", dtype=dtype):
                return m(x)

        for name, m in (("timm eager", timm_model), ("ours fused eager", fused)):
            ms = statistics.median(timed(lambda m=m: run(m), runs, 3))
            row[name] = f"{batch / ms * 1000:.0f}"
        if compile_:
            try:
                torch._dynamo.reset()
                compiled = torch.compile(fuse_for_inference(model))
                t0 = time.perf_counter()
                run(compiled)
                torch.cuda.synchronize()
                compile_s = time.perf_counter() - t0
                ms = statistics.median(timed(lambda c=compiled: run(c), runs, 3))
                row["ours fused + torch.compile"] = f"{batch / ms * 1000:.0f} (compile {compile_s:.0f} s)"
            except Exception as exc:  # noqa: BLE001
                traceback.print_exc(file=sys.stderr)
                row["ours fused + torch.compile"] = f"n/a ({type(exc).__name__}: {str(exc).splitlines()[0][:100] if str(exc) else ''})"
        else:
            row["ours fused + torch.compile"] = "n/a (--no-compile)"
        table[dtype_name] = row
    return table


def ig_latency(model, steps: int, runs: int) -> float:
    from xception_core.attributions import Attributor

    attributor = Attributor(model.cuda().to(memory_format=CL))
    x = torch.randn(1, 3, 299, 299)
    times = []
    for i in range(runs + 1):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        attributor.attribute(x, "integrated_gradients", target=1, n_steps=steps, internal_batch_size=steps, auc_steps=0)
        torch.cuda.synchronize()
        if i:  # the first is warm-up
            times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--throughput-batch", type=int, default=256)
    p.add_argument("--ig-steps", type=int, default=32)
    p.add_argument("--ig-runs", type=int, default=5)
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args(argv)
    require_cuda()
    torch.backends.cudnn.benchmark = True

    props = torch.cuda.get_device_properties(0)
    print(
        f"GPU: {props.name} ({props.total_memory / 2**30:.0f} GiB), torch {torch.__version__}, CUDA {torch.version.cuda}, "
        f"cuDNN {torch.backends.cudnn.version()}, Python {platform.python_version()}; 299 px, channels_last, random weights.\n"
    )
    results: dict = {"gpu": props.name, "torch": torch.__version__}
    failed = False

    model, batch = calibrated_paper_model()
    rows = correctness(model, batch)
    results["correctness"] = rows
    print("| check | result | ok |\n| --- | --- | --- |")
    for name, detail, ok in rows:
        print(f"| {name} | {detail} | {'yes' if ok else 'NO'} |")
        failed |= not ok

    b1 = latency_b1(model, args.runs)
    results["batch1_ms"] = b1
    base = b1["timm legacy_xception"]
    print("\n| batch 1, fp32 eager | ms (median) | vs timm |\n| --- | --- | --- |")
    for name, ms in b1.items():
        print(f"| {name} | {ms:.2f} | {base / ms:.2f}x |")

    tp = throughput(model, args.throughput_batch, max(5, args.runs // 2), not args.no_compile)
    results["throughput_img_s"] = tp
    names = list(next(iter(tp.values())))
    print(f"\n| batch {args.throughput_batch} img/s | " + " | ".join(names) + " |")
    print("| --- |" + " --- |" * len(names))
    for dtype_name, row in tp.items():
        print(f"| autocast {dtype_name} | " + " | ".join(row[n] for n in names) + " |")

    ig = ig_latency(model, args.ig_steps, args.ig_runs)
    results["ig_ms"] = ig
    print(f"\n| Integrated Gradients, {args.ig_steps} steps, internal batch {args.ig_steps}, fp32 | {ig:.0f} ms (median of {args.ig_runs}) |")
    print("| --- | --- |")

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")
    if failed:
        print("\nA correctness check FAILED (see the first table).", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
