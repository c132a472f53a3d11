"""Latency of the REST API against timm's in-process prediction, in the same run.

    python benchmarks/bench_api.py [--model random-paper|random-small|<model id>] [--n 40]
                                   [--ig-runs 3] [--ig-steps 16] [--json]

Starts the API in a subprocess on 127.0.0.1 (see ``soak.py``) and measures, from this
process over loopback:

* ``POST /v1/predict`` p50 / p95 on images it has not seen (upload, decode, preprocessing,
  forward, top-5: the cache cannot help), one request at a time, and the same on repeated
  images (logits from the cache);
* timm's in-process prediction of the same images in this process, same work without HTTP:
  decode (PIL), timm's eval transform, ``legacy_xception`` forward (random weights, eval,
  channels_last, inference_mode), softmax top-5 -- for ``random-paper``, the same
  architecture and input size as the API's model;
* the latency of one layer's maps once the layer is cached (``/v1/activations``: JSON
  with tiles, and NPY), after a first, uncached call;
* Integrated Gradients latency (``--ig-steps`` steps, internal batch 8, no AUC).

Both sides use ``--threads`` torch threads (default 1: the development machine has 2
shared cores; the server gets ``XCEPTION_TORCH_THREADS``).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from soak import Server, make_images, percentile  # noqa: E402


def stats(ms: list[float]) -> dict[str, float]:
    return {"n": len(ms), "p50": percentile(ms, 0.5), "p95": percentile(ms, 0.95), "mean": sum(ms) / len(ms)}


def timed_posts(client, path: str, payloads: list[bytes], field: str = "image") -> list[float]:
    out = []
    for data in payloads:
        t0 = time.perf_counter()
        r = client.post(path, files={field: ("img", data, "application/octet-stream")})
        out.append((time.perf_counter() - t0) * 1000)
        if r.status_code != 200:
            raise RuntimeError(f"{path}: {r.status_code} {r.text[:300]}")
    return out


def timm_inprocess(images: list[bytes], input_size: int, threads: int) -> dict[str, float] | None:
    try:
        import timm
        import torch
        from PIL import Image
        from timm.data import create_transform, resolve_data_config
    except ImportError:
        return None
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = timm.create_model("legacy_xception", pretrained=False).eval().to(memory_format=torch.channels_last)
    cfg = resolve_data_config({"input_size": (3, input_size, input_size), "crop_pct": 0.8975, "interpolation": "bicubic", "mean": (0.5,) * 3, "std": (0.5,) * 3})
    transform = create_transform(**cfg)

    def predict(data: bytes):
        img = Image.open(io.BytesIO(data)).convert("RGB")
        x = transform(img)[None].contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            probs = torch.softmax(model(x), dim=1)
        return torch.topk(probs, 5)

    predict(images[0])  # warm-up
    ms = []
    for data in images:
        t0 = time.perf_counter()
        predict(data)
        ms.append((time.perf_counter() - t0) * 1000)
    return stats(ms)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="random-paper")
    p.add_argument("--input-size", type=int, default=None, help="random models only (default 299 paper, 128 small)")
    p.add_argument("--n", type=int, default=40, help="predictions per measurement (1..1000)")
    p.add_argument("--ig-runs", type=int, default=3)
    p.add_argument("--ig-steps", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    n = min(max(args.n, 1), 1000)
    import httpx

    images = make_images(n + 1, size=400, seed=7)
    report: dict = {"python": platform.python_version(), "cpus": os.cpu_count(), "threads": args.threads, "model": args.model}
    with Server(args.model, args.input_size, env={"XCEPTION_TORCH_THREADS": str(args.threads)}) as server:
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=600) as c:
            model = c.get("/v1/models").json()["default_model"]
            card = c.get(f"/v1/models/{model}").json()
            size = card["input_size"]
            layers = card["separable_layers"]
            report.update({"served_model": model, "input_size": size, "device": c.get("/readyz").json()["device"]})
            timed_posts(c, "/v1/predict", images[:1])  # warm-up
            report["predict_new_ms"] = stats(timed_posts(c, "/v1/predict", images[1:]))
            report["predict_cached_ms"] = stats(timed_posts(c, "/v1/predict", images[1:]))

            layer = layers[len(layers) // 2]
            img = images[1]
            first = timed_posts(c, f"/v1/activations?layer={layer}&part=depthwise&top=16", [img])[0]
            report["layer_maps"] = {
                "layer": layer,
                "first_call_ms": first,
                "cached_json_ms": stats(timed_posts(c, f"/v1/activations?layer={layer}&part=depthwise&top=16", [img] * 10)),
                "cached_npy_ms": stats(timed_posts(c, f"/v1/activations?layer={layer}&part=pointwise&top=16&format=npy", [img] * 10)),
            }
            ig = f"/v1/attributions?method=integrated_gradients&n_steps={args.ig_steps}&internal_batch_size=8&auc_steps=0"
            report["integrated_gradients_ms"] = {"n_steps": args.ig_steps, **stats(timed_posts(c, ig, images[2 : 2 + max(1, args.ig_runs)]))}
    if args.model == "random-paper":
        report["timm_inprocess_ms"] = timm_inprocess(images[1:], report["input_size"], args.threads)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"model {report['served_model']} at {report['input_size']} px on {report['device']}, {args.threads} torch thread(s), "
          f"python {report['python']}, {report['cpus']} CPUs")
    rows = [("POST /v1/predict, new images", report["predict_new_ms"]), ("POST /v1/predict, cached", report["predict_cached_ms"])]
    if report.get("timm_inprocess_ms"):
        rows.append(("timm legacy_xception in-process", report["timm_inprocess_ms"]))
    rows += [
        (f"layer maps, cached, JSON ({report['layer_maps']['layer']})", report["layer_maps"]["cached_json_ms"]),
        ("layer maps, cached, NPY", report["layer_maps"]["cached_npy_ms"]),
        (f"integrated gradients, {args.ig_steps} steps", report["integrated_gradients_ms"]),
    ]
    print(f"{'measurement':<48} {'n':>4} {'p50 ms':>9} {'p95 ms':>9}")
    for name, s in rows:
        print(f"{name:<48} {s['n']:>4} {s['p50']:>9.1f} {s['p95']:>9.1f}")
    print(f"first (uncached) layer-maps call: {report['layer_maps']['first_call_ms']:.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
