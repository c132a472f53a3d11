"""The REST API end to end against our own forward pass and timm's, in the same session.

    python benchmarks/bench_api.py [--model random-paper|random-small|<model id>] [--n 30]
                                   [--clients 8] [--per-client 6] [--ig-runs 1] [--ig-steps 32]
                                   [--threads N] [--env KEY=VALUE ...] [--json]

Starts the API in a subprocess on 127.0.0.1 (see ``soak.py``; ``--env`` passes settings such
as ``XCEPTION_BATCH_MAX_WAIT_MS=2``) and measures, from this process over loopback:

* ``POST /v1/predict`` of 640x480 JPEGs it has not seen (upload, decode, resize, crop,
  forward, top-5; the cache cannot help), one request at a time: p50 / p95;
* the same images again (logits from the cache);
* one layer's maps once cached (``/v1/activations``: JSON with tiles, and NPY) after a
  first, uncached call;
* throughput and latency percentiles (p50 / p99) of ``--clients`` concurrent clients, each
  posting ``--per-client`` new images, against one client posting the same number of new
  images; errors counted;
* Integrated Gradients through the API (``--ig-steps`` steps, the API's defaults otherwise).

Interleaved with the sequential predictions (one request, then one forward), in this process
with the same number of threads: **our own forward**, the same model through the same
:class:`~xception_core.engine.Predictor` backend the server reports, on the same image
preprocessed -- the baseline of the ``/v1/predict`` target (at most 1.15x).

After the server has stopped:

* timm's in-process prediction of the same JPEGs (for ``random-paper``): decode (PIL), timm's
  eval transform, ``legacy_xception`` forward (channels_last, inference_mode), top-5.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_forward import machine  # noqa: E402
from soak import Server, percentile, random_model  # noqa: E402


#: Pause between an API request and our own forward: onnxruntime's idle threads spin for a
#: moment after a run, and the two processes would slow each other down.
SETTLE_S = 0.1


def stats(ms: list[float]) -> dict[str, float]:
    return {
        "n": len(ms),
        "p50": percentile(ms, 0.5),
        "p95": percentile(ms, 0.95),
        "p99": percentile(ms, 0.99),
        "mean": sum(ms) / len(ms),
    }


def make_jpegs(n: int, seed: int, width: int = 640, height: int = 480) -> list[bytes]:
    """Distinct 640x480 photographs-like JPEGs: scikit-image's sample photos, shifted and tinted."""
    import numpy as np
    from PIL import Image
    from skimage import data

    photos = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img = Image.fromarray(photos[i % len(photos)]).resize((width + 64, height + 64), Image.BICUBIC)
        dx, dy = rng.integers(0, 64, 2)
        tint = rng.uniform(0.8, 1.2, 3)
        arr = np.clip(np.asarray(img.crop((dx, dy, dx + width, dy + height)), dtype=np.float32) * tint, 0, 255)
        buf = io.BytesIO()
        Image.fromarray(arr.astype("uint8")).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def post(client, path: str, data: bytes) -> float:
    t0 = time.perf_counter()
    r = client.post(path, files={"image": ("img.jpg", data, "image/jpeg")})
    ms = (time.perf_counter() - t0) * 1000
    if r.status_code != 200:
        raise RuntimeError(f"{path}: {r.status_code} {r.text[:300]}")
    return ms


def sequential(client, path: str, payloads: list[bytes]) -> list[float]:
    return [post(client, path, data) for data in payloads]


def concurrent(url: str, path: str, groups: list[list[bytes]]) -> dict:
    """One client thread per group, all started together; throughput over the whole run."""
    import httpx

    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(len(groups) + 1)

    def client(payloads: list[bytes]) -> None:
        with httpx.Client(base_url=url, timeout=600) as c:
            barrier.wait()
            for data in payloads:
                try:
                    ms = post(c, path, data)
                    with lock:
                        latencies.append(ms)
                except Exception as exc:  # noqa: BLE001 -- counted and reported
                    with lock:
                        errors.append(str(exc)[:200])

    threads = [threading.Thread(target=client, args=(g,)) for g in groups]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    done = len(latencies)
    return {"clients": len(groups), "requests": done, "errors": len(errors), "error_samples": errors[:3],
            "wall_s": wall, "throughput_rps": done / wall if wall else 0.0, **({} if not latencies else stats(latencies))}


def own_predictor(model_name: str, input_size: int, backend: str, precision: str, images: list[bytes]):
    """Our model, built as the server built it, through the same backend, and the images
    preprocessed as the server does; None for a model that is not ``random-*``."""
    from xception_core.engine import EngineOptions, Predictor
    from xception_core.decode import decode_image
    from xception_core.transform import PreprocessConfig, eval_transform

    if not model_name.startswith("random-"):
        return None
    model, _, _ = random_model(model_name, input_size)  # the server's model, same seed
    predictor = Predictor(model, input_size=input_size, options=EngineOptions(backend=backend, precision=precision))
    cfg = PreprocessConfig(input_size=input_size)
    xs = [eval_transform(decode_image(data), cfg)[None] for data in images]
    for _ in range(3):
        predictor(xs[0])  # warm-up
    return predictor, xs


def timed_forward(predictor, x) -> float:
    t0 = time.perf_counter()
    predictor(x)
    return (time.perf_counter() - t0) * 1000


def timm_inprocess(images: list[bytes], input_size: int) -> dict[str, float] | None:
    try:
        import timm
        import torch
        from PIL import Image
        from timm.data import create_transform, resolve_data_config
    except ImportError:
        return None
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
    p.add_argument("--n", type=int, default=30, help="sequential predictions per measurement (1..1000)")
    p.add_argument("--clients", type=int, default=8, help="concurrent clients (1..64)")
    p.add_argument("--per-client", type=int, default=6, help="new images each concurrent client posts (1..100)")
    p.add_argument("--ig-runs", type=int, default=1)
    p.add_argument("--ig-steps", type=int, default=32)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads, server and this process")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="extra server environment (settings)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    n = min(max(args.n, 1), 1000)
    clients = min(max(args.clients, 1), 64)
    per_client = min(max(args.per_client, 1), 100)
    import httpx
    import torch

    torch.set_num_threads(args.threads)
    env = {"XCEPTION_TORCH_THREADS": str(args.threads)}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key.startswith("XCEPTION_"):
            p.error(f"--env wants XCEPTION_NAME=VALUE, got {item!r}")
        env[key] = value
    images = make_jpegs(1 + n + clients * per_client * 2, seed=7)
    warm, seq, rest = images[0], images[1 : 1 + n], images[1 + n :]
    one_client, many_clients = rest[: clients * per_client], rest[clients * per_client :]
    report: dict = {"machine": machine(), "model": args.model, "env": env, "image": "640x480 JPEG, quality 90"}
    with Server(args.model, args.input_size, env=env) as server:
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=600) as c:
            model = c.get("/v1/models").json()["default_model"]
            card = c.get(f"/v1/models/{model}").json()
            size, layers = card["input_size"], card["separable_layers"]
            for _ in range(3):
                post(c, "/v1/predict", warm)  # warm-up (the first runs of a session are slower)
            engine = c.get(f"/v1/models/{model}").json()["engine"]
            report.update({"served_model": model, "input_size": size, "device": c.get("/readyz").json()["device"], "engine": engine})
            own = own_predictor(args.model, size, engine["backend"], engine["precision"], seq)
            # interleaved: one API prediction, then our own forward of the same (preprocessed) image
            api_ms, own_ms = [], []
            for i, data in enumerate(seq):
                api_ms.append(post(c, "/v1/predict", data))
                if own is not None:
                    time.sleep(SETTLE_S)
                    own_ms.append(timed_forward(own[0], own[1][i]))
                    time.sleep(SETTLE_S)
            report["predict_new_ms"] = stats(api_ms)
            report["own_forward_ms"] = {"backend": own[0].backend, **stats(own_ms)} if own else None
            del own
            report["predict_cached_ms"] = stats(sequential(c, "/v1/predict", seq))
            layer = layers[len(layers) // 2]
            maps = f"/v1/activations?layer={layer}&part=depthwise&top=16"
            report["layer_maps"] = {
                "layer": layer,
                "first_call_ms": post(c, maps, seq[0]),
                "cached_json_ms": stats(sequential(c, maps, [seq[0]] * 20)),
                "cached_npy_ms": stats(sequential(c, maps + "&format=npy", [seq[0]] * 20)),
            }
            if args.ig_runs > 0:
                ig = f"/v1/attributions?method=integrated_gradients&n_steps={args.ig_steps}&auc_steps=0"
                report["integrated_gradients_ms"] = {"n_steps": args.ig_steps, **stats(sequential(c, ig, seq[1 : 1 + args.ig_runs]))}
        report["one_client"] = concurrent(server.url, "/v1/predict", [one_client])
        report["many_clients"] = concurrent(server.url, "/v1/predict", [many_clients[i::clients] for i in range(clients)])
    if args.model == "random-paper":
        report["timm_inprocess_ms"] = timm_inprocess(seq, size)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print_report(report, args)
    return 0


def print_report(report: dict, args) -> None:
    m = report["machine"]
    e = report["engine"]
    print(f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, {args.threads} torch thread(s) in server and "
          f"bench; model {report['served_model']} at {report['input_size']} px on {report['device']}, predictions by "
          f"{e['backend']} ({e['precision']}); {report['image']}; server environment {report['env']}.\n")
    print("| measurement | n | p50 ms | p95 ms | ratio |")
    print("| --- | --- | --- | --- | --- |")
    own = report.get("own_forward_ms")
    new = report["predict_new_ms"]
    rows = [("POST /v1/predict, new images", new, f"{new['p50'] / own['p50']:.2f}x own forward" if own else "")]
    if own:
        rows.append((f"own forward ({own['backend']}), interleaved with the requests", own, "1.00x (baseline)"))
    rows.append(("POST /v1/predict, cached logits", report["predict_cached_ms"], ""))
    if report.get("timm_inprocess_ms"):
        t = report["timm_inprocess_ms"]
        rows.append(("timm in-process: decode, transform, forward, top-5", t, f"{new['p50'] / t['p50']:.2f}x: API / timm"))
    lm = report["layer_maps"]
    rows += [(f"layer maps, cached, JSON ({lm['layer']})", lm["cached_json_ms"], ""), ("layer maps, cached, NPY", lm["cached_npy_ms"], "")]
    if report.get("integrated_gradients_ms"):
        rows.append((f"Integrated Gradients via the API, {report['integrated_gradients_ms']['n_steps']} steps", report["integrated_gradients_ms"], ""))
    for name, s, ratio in rows:
        print(f"| {name} | {s['n']} | {s['p50']:.1f} | {s['p95']:.1f} | {ratio} |")
    print(f"\nFirst (uncached) layer-maps call: {lm['first_call_ms']:.1f} ms.\n")
    print("| clients | requests | errors | throughput img/s | p50 ms | p99 ms |")
    print("| --- | --- | --- | --- | --- | --- |")
    for key in ("one_client", "many_clients"):
        r = report[key]
        print(f"| {r['clients']} | {r['requests']} | {r['errors']} | {r['throughput_rps']:.2f} | {r.get('p50', float('nan')):.0f} | {r.get('p99', float('nan')):.0f} |")
    one, many = report["one_client"], report["many_clients"]
    if one["throughput_rps"]:
        print(f"\n{many['clients']} clients / 1 client throughput: {many['throughput_rps'] / one['throughput_rps']:.2f}x")
    for sample in many["error_samples"]:
        print(f"error: {sample}")


if __name__ == "__main__":
    raise SystemExit(main())
