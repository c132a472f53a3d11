"""Interactive use of the paper model through the API, as ratios against timm, ONE process.

    python benchmarks/bench_interactive.py [--rounds 5] [--auc-rounds 2] [--ig-rounds 1]
                                           [--size 299] [--threads N] [--device cpu] [--json]

The API runs in this process (FastAPI's TestClient over httpx, no network) with the paper
architecture (random weights, seeded) as an in-memory model at ``--size`` px, default settings
otherwise (BatchNorm folding, onnxruntime predictions, warm-up on load). The image is a 640x480
JPEG (scikit-image's cat).

Baselines, measured in the same rounds (interleaved: one call of each per round):

* **timm forward**: ``timm.create_model("legacy_xception")`` (the same seeded random weights
  loaded into it), eval, channels_last, ``inference_mode``, batch 1, on the image exactly as
  the API preprocesses it;
* **Captum IG on timm**: ``IntegratedGradients(model).attribute(x, target=t, n_steps=32)``, as
  Captum's documentation calls it (the model as ``timm.create_model`` returns it).

Integrated Gradients is called once untimed on each side before its rounds (the first call of
Captum's batch of 32 costs 1.5-3x the next ones).

Measured through the API (whole request: upload or id, the method, the overlay PNG, JSON):

* saliency and Grad-CAM (``exit.block14.sep2`` pointwise, timm's ``conv4.pointwise``) with
  ``quality=none`` (map only) and ``quality=auc`` (deletion / insertion AUC, the default 8 steps); each
  request has its own ``seed`` so the attribution cache cannot answer it;
* the identical saliency request again: an attribution cache hit (``X-Cache: hit``);
* Integrated Gradients, 32 steps, ``quality=none``;
* ``POST /v1/predict`` (cached logits) and ``POST /v1/activations`` (cached layer, NPY) with
  the body and with ``image_id``;
* the first ``POST /v1/predict`` after the model loaded (and warmed up) against later ones of
  images the server has not seen (the same cat, JPEG-encoded at other qualities).

The allocator (``--allocator``): ``kept`` (the default) applies
:func:`xception_core.allocator.keep_freed_memory` before anything else, as the API's start-up
does before any model exists (here the models are built before the app, and glibc's arena
limit set later does not reach threads that already have an arena); ``default`` keeps glibc's
defaults (``keep_freed_memory=False``). Either way the baselines share the process's allocator.

Targets (issue 12): map only <= 4x timm's forward, with AUC <= 10x, cache hit <= 0.5x, IG <=
0.25x Captum on timm, ``image_id`` no slower than the body. Medians; one run takes 2-5 minutes
on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from bench_forward import FLAGS, machine

from xception_core.allocator import keep_freed_memory
from xception_core.timing import sync

TARGET = 3
GRADCAM = "layer=exit.block14.sep2&part=pointwise"


def jpeg(quality: int = 90) -> bytes:
    """The cat at 640x480; another ``quality`` gives other bytes (an image the server has not seen)."""
    from PIL import Image
    from skimage import data

    buf = io.BytesIO()
    Image.fromarray(data.chelsea()).resize((640, 480), Image.BICUBIC).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def build(size: int, device: str = "cpu", keep_freed_memory: bool = True):
    """The API client (paper model, random weights, on ``device``) and timm's model with the
    same weights (on the CPU; :func:`run` moves it)."""
    import timm
    from fastapi.testclient import TestClient
    from soak import random_model

    from api.main import create_app
    from api.registry import InMemoryModel, ModelRegistry
    from api.settings import Settings
    from xception_core.convert import ours_to_timm
    from xception_core.transform import PreprocessConfig

    net, names, size = random_model("random-paper", size)
    reference = timm.create_model("legacy_xception", pretrained=False).eval()
    reference.load_state_dict(ours_to_timm(net.state_dict(), net.config))
    registry = ModelRegistry.from_models([InMemoryModel("paper", net, names, PreprocessConfig(input_size=size), "random weights")])
    app = create_app(Settings(access_log=False, log_json=False, log_level="WARNING", device=device, keep_freed_memory=keep_freed_memory), registry=registry)
    return app, TestClient(app, raise_server_exceptions=True), reference


#: Pause before each timed call: torch's and onnxruntime's idle threads spin for a moment after
#: a run (and the API's worker threads have their own thread teams); the next call would pay it.
SETTLE_S = 0.1


def timed(fn, device: torch.device | None = None) -> float:
    time.sleep(SETTLE_S)
    started = time.perf_counter()
    fn()
    sync(device)
    return (time.perf_counter() - started) * 1000


def run(args: argparse.Namespace) -> dict:
    from captum.attr import IntegratedGradients

    from xception_core.decode import decode_image
    from xception_core.transform import PreprocessConfig, eval_transform

    if args.allocator == "kept" and (why := keep_freed_memory()) is not None:
        print(f"allocator: {why}", file=sys.stderr)
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    image = jpeg()
    image_id = hashlib.sha256(image).hexdigest()
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    _, client, reference = build(args.size, str(device), keep_freed_memory=args.allocator == "kept")
    reference = reference.to(device)
    x = eval_transform(decode_image(image), PreprocessConfig(input_size=args.size))[None].to(device)
    timm_cl = reference.to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    ms: dict[str, list[float]] = {}

    def note(name: str, value: float) -> None:
        ms.setdefault(name, []).append(value)

    def post(query: str, *, by_id: bool = False, expect_cache: str | None = None, body: bytes | None = None) -> None:
        if by_id:
            r = client.post(f"{query}&image_id={image_id}")
        else:
            r = client.post(query, files={"image": ("cat.jpg", body or image, "image/jpeg")})
        assert r.status_code == 200, r.text[:300]
        if expect_cache is not None:
            assert r.headers["x-cache"] == expect_cache, (query, r.headers.get("x-cache"))

    def timm_forward() -> None:
        with torch.inference_mode():
            timm_cl(x_cl)

    with client:
        t0 = time.perf_counter()
        client.get("/readyz")
        while client.get("/readyz").status_code != 200:
            time.sleep(0.2)
        load_s = time.perf_counter() - t0
        detail = client.get("/v1/models/paper").json()
        warmup = detail["warmup_ms"]
        # first requests (the model is warm): predict, then the layer maps, both cached afterwards
        note("first predict (after warm-up)", timed(lambda: post("/v1/predict?top_k=5")))
        post(f"/v1/activations?{GRADCAM}&top=8&format=npy")
        for _ in range(2):
            timm_forward()
        sal = f"/v1/attributions?method=saliency&target={TARGET}"
        cam = f"/v1/attributions?method=layer_gradcam&{GRADCAM}&target={TARGET}"
        post(f"{sal}&quality=none&seed=999999")  # one of each first: their replicas' first use
        post(f"{cam}&quality=none&seed=999999")
        for i in range(args.rounds):
            note("timm forward", timed(timm_forward, device))
            other = jpeg(80 + i)
            note("predict, a new image", timed(lambda: post("/v1/predict?top_k=5", body=other)))
            note("saliency, quality=none", timed(lambda: post(f"{sal}&quality=none&seed={i}", expect_cache="miss")))
            note("Grad-CAM, quality=none", timed(lambda: post(f"{cam}&quality=none&seed={i}", expect_cache="miss")))
            note("saliency again (cache hit)", timed(lambda: post(f"{sal}&quality=none&seed={i}", expect_cache="hit")))
            note("saliency again by image_id (cache hit)", timed(lambda: post(f"{sal}&quality=none&seed={i}", by_id=True, expect_cache="hit")))
            note("predict, body (cached logits)", timed(lambda: post("/v1/predict?top_k=5")))
            note("predict, image_id (cached logits)", timed(lambda: post("/v1/predict?top_k=5", by_id=True)))
            note("activations NPY, body (cached layer)", timed(lambda: post(f"/v1/activations?{GRADCAM}&top=8&format=npy")))
            note("activations NPY, image_id (cached layer)", timed(lambda: post(f"/v1/activations?{GRADCAM}&top=8&format=npy", by_id=True)))
        for i in range(args.auc_rounds):
            note("timm forward", timed(timm_forward, device))
            note("saliency, quality=auc", timed(lambda: post(f"{sal}&quality=auc&seed={100 + i}", expect_cache="miss")))
            note("Grad-CAM, quality=auc", timed(lambda: post(f"{cam}&quality=auc&seed={100 + i}", expect_cache="miss")))
            if i < args.rounds:  # the map of round i is cached (quality=none): only the figures are computed
                note("saliency, quality=auc after its map (map-hit)", timed(lambda: post(f"{sal}&quality=auc&seed={i}", expect_cache="map-hit")))
                note("Grad-CAM, quality=auc after its map (map-hit)", timed(lambda: post(f"{cam}&quality=auc&seed={i}", expect_cache="map-hit")))
        def captum_ig() -> None:
            IntegratedGradients(reference).attribute(x, target=TARGET, n_steps=32)

        def ours_ig(seed: int) -> None:
            post(f"/v1/attributions?method=integrated_gradients&n_steps=32&target={TARGET}&quality=none&seed={seed}", expect_cache="miss")

        if args.ig_rounds:  # one untimed call of each first: its first run pays page faults and new kernels
            captum_ig()
            ours_ig(199)
        for i in range(args.ig_rounds):
            note("Captum IG on timm, 32 steps", timed(captum_ig, device))
            note("IG 32 steps, quality=none", timed(lambda i=i: ours_ig(200 + i)))
    med = {k: statistics.median(v) for k, v in ms.items()}
    fwd, ig = med["timm forward"], med.get("Captum IG on timm, 32 steps")
    ratios = {
        "saliency, quality=none": ("timm forward", 4.0),
        "Grad-CAM, quality=none": ("timm forward", 4.0),
        "saliency, quality=auc": ("timm forward", 10.0),
        "Grad-CAM, quality=auc": ("timm forward", 10.0),
        "saliency, quality=auc after its map (map-hit)": ("timm forward", None),
        "Grad-CAM, quality=auc after its map (map-hit)": ("timm forward", None),
        "saliency again (cache hit)": ("timm forward", 0.5),
        "saliency again by image_id (cache hit)": ("timm forward", 0.5),
        "IG 32 steps, quality=none": ("Captum IG on timm, 32 steps", 0.25),
        "predict, image_id (cached logits)": ("predict, body (cached logits)", 1.0),
        "first predict (after warm-up)": ("predict, a new image", None),
        "activations NPY, image_id (cached layer)": ("activations NPY, body (cached layer)", 1.0),
    }
    rows = []
    for name, values in ms.items():
        base, target = ratios.get(name, (None, None))
        ratio = med[name] / med[base] if base in med else None
        rows.append({"measurement": name, "n": len(values), "median_ms": med[name], "baseline": base, "ratio": ratio, "target": target})
    return {
        "machine": machine(),
        "device": str(device),
        "allocator": args.allocator,
        "size": args.size,
        "load_s": load_s,
        "warmup_ms": warmup,
        "attribution_precision": detail.get("attribution_precision"),
        "quality_engine": detail.get("quality_engine"),
        "timm_forward_ms": fwd,
        "captum_ig_ms": ig,
        "rows": rows,
    }


def table(result: dict) -> str:
    m = result["machine"]
    lines = [
        (
            f"{m['cpu']}, {m['cores']} cores, {m['threads']} torch threads, flags: {' '.join(m['flags']) or 'none of ' + ', '.join(FLAGS)}; "
            f"torch {m['torch']}; {result['size']} px; device {result.get('device', 'cpu')}; allocator {result.get('allocator', 'default')}"
        ),
        "",
        "| measurement | n | median | ratio | target |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in result["rows"]:
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f}x {r['baseline']}"
        target = "" if r["target"] is None else f"<= {r['target']:g}x"
        lines.append(f"| {r['measurement']} | {r['n']} | {r['median_ms']:.1f} ms | {ratio} | {target} |")
    lines.append("")
    lines.append("warm-up on load: " + ", ".join(f"{k} {v:.0f} ms" for k, v in (result["warmup_ms"] or {}).items()))
    precision, engine = result.get("attribution_precision") or {}, result.get("quality_engine") or {}
    lines.append(f"attributions: {precision.get('precision')} ({precision.get('reason') or 'as asked'}); "
                 f"quality curves: {engine.get('backend')} {engine.get('precision')} ({'; '.join(engine.get('notes') or []) or 'as asked'})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--auc-rounds", type=int, default=2)
    parser.add_argument("--ig-rounds", type=int, default=1)
    parser.add_argument("--size", type=int, default=299)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or auto: the API's model and timm's, both there")
    parser.add_argument("--allocator", choices=("kept", "default"), default="kept", help="glibc's malloc as the API sets it (kept) or left alone")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = run(args)
    print(json.dumps(result, indent=2) if args.json else table(result))


if __name__ == "__main__":
    main()
