"""Bounded soak test of the REST API: mixed requests from a second process, on loopback only.

    python benchmarks/soak.py [--duration 120] [--max-requests 3000] [--concurrency 4]
                              [--model random-small|random-paper|<model id>] [--json]

Starts the API in a subprocess on 127.0.0.1 (a free port), warms it up, then sends a mix
of requests from this process for at most ``--duration`` seconds and ``--max-requests``
requests: predictions (new and repeated images), batches, activations in every format,
decompositions, cheap attributions, and hostile inputs (text, truncated files, a
decompression bomb, out-of-range parameters). It reports the answers by endpoint and
status, every unexpected answer (any 5xx, a connection error, a status other than the
expected one), latency percentiles per endpoint, and the server's memory (RSS) after
warm-up, at its peak and at the end. Exit status 1 when something unexpected happened or
memory grew by more than ``--max-growth-mb`` beyond the cache's own bound.

``--url http://127.0.0.1:PORT`` soaks an already running server instead (loopback only;
memory is then not measured).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter, defaultdict
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LOOPBACK = {"127.0.0.1", "localhost", "::1"}

# --------------------------------------------------------------------------- the server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def random_model(name: str, input_size: int | None = None):
    """``(model, class names, input size)`` of ``random-paper`` or ``random-small``: seeded, so
    every process that builds one gets the same weights."""
    import torch

    from xception_core.labels import imagenet_class_names
    from xception_core.model import Xception, XceptionConfig

    torch.manual_seed(0)
    if name == "random-paper":
        return Xception(XceptionConfig()).eval(), imagenet_class_names(), input_size or 299
    config = XceptionConfig(num_classes=10, stem_channels=(16, 32), entry_channels=(32, 64, 128), middle_repeats=4, exit_channels=(160, 192, 256))
    return Xception(config).eval(), [f"class {i}" for i in range(10)], input_size or 128


def serve(model: str, port: int, input_size: int | None) -> None:
    """Run the API on 127.0.0.1:port (used in the server subprocess)."""
    import uvicorn

    from api.main import create_app, default_registry
    from api.registry import InMemoryModel, ModelRegistry
    from api.settings import Settings
    from xception_core.transform import PreprocessConfig

    settings = Settings(host="127.0.0.1", port=port, access_log=False)
    if model.startswith("random-"):
        net, names, size = random_model(model, input_size)
        registry = ModelRegistry.from_models(
            [InMemoryModel(model, net, names, PreprocessConfig(input_size=size), f"random weights, {size} px")],
            device=settings.device,
        )
    else:
        settings = Settings(host="127.0.0.1", port=port, access_log=False, default_model=model)
        registry = default_registry(settings)
    app = create_app(settings, registry=registry)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


class Server:
    """The API in a subprocess; ``rss_mb()`` reads its resident memory from /proc."""

    def __init__(self, model: str, input_size: int | None = None, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--serve", "--model", model, "--port", str(self.port)]
        if input_size:
            cmd += ["--input-size", str(input_size)]
        self.proc = subprocess.Popen(cmd, env={**os.environ, **(env or {}), "PYTHONPATH": str(ROOT)}, cwd=str(ROOT))

    def wait_ready(self, timeout: float = 300) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with status {self.proc.returncode}")
            try:
                if httpx.get(self.url + "/readyz", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"the server at {self.url} was not ready after {timeout:.0f} s")

    def rss_mb(self) -> float | None:
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            return None
        return None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


# --------------------------------------------------------------------------- the requests


def make_images(n: int, size: int = 160, seed: int = 0) -> list[bytes]:
    """Distinct smooth RGB images as PNG and JPEG bytes (no data set needed)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(n):
        f = rng.uniform(1, 6, 3)
        phase = rng.uniform(0, 6.28, 3)
        rgb = np.stack([np.sin(f[c] * (xx + yy * (c + 1)) * 3.14 + phase[c]) for c in range(3)], axis=-1)
        img = Image.fromarray(((rgb + 1) * 127.5).astype("uint8"))
        buf = io.BytesIO()
        img.save(buf, format="PNG" if i % 2 else "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def png_bomb() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", 60000, 60000, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + chunk(b"IEND", b"")


def request_mix(layers: list[str], images: list[bytes], fresh: list[bytes]) -> list[tuple[str, str, str, dict, tuple[int, ...]]]:
    """(name, path with query, field, files, expected statuses)."""
    one = images[0]
    l0, lm = layers[0], layers[len(layers) // 2]
    mix = []
    for i, img in enumerate(images):
        mix.append(("predict", "/v1/predict?top_k=5", "image", {"image": (f"{i}.img", img, "application/octet-stream")}, (200,)))
    mix += [
        ("predict-new", "/v1/predict", "image", "fresh", (200,)),
        ("batch", "/v1/predict/batch?top_k=3", "images", [("images", (f"{k}.img", images[k], "image/png")) for k in range(4)], (200,)),
        ("activations-json", f"/v1/activations?layer={lm}&part=depthwise&top=8", "image", {"image": ("a", one, "image/png")}, (200,)),
        ("activations-npy", f"/v1/activations?layer={lm}&part=pointwise&top=16&format=npy", "image", {"image": ("a", one, "image/png")}, (200,)),
        ("activations-png", f"/v1/activations?layer={l0}&part=pointwise&top=9&format=png", "image", {"image": ("a", images[1], "image/png")}, (200,)),
        ("decomposition", f"/v1/decomposition?layer={lm}&channel=3&top=4", "image", {"image": ("a", images[2], "image/png")}, (200,)),
        ("attr-saliency", "/v1/attributions?method=saliency&auc_steps=4&format=npy", "image", {"image": ("a", images[3], "image/png")}, (200,)),
        ("attr-gradcam", f"/v1/attributions?method=layer_gradcam&layer={lm}&part=pointwise&auc_steps=4", "image", {"image": ("a", one, "image/png")}, (200,)),
        ("hostile-text", "/v1/predict", "image", {"image": ("x.png", b"not an image at all", "image/png")}, (415,)),
        ("hostile-truncated", "/v1/predict", "image", {"image": ("x.jpg", one[: len(one) // 3], "image/jpeg")}, (415, 422)),
        ("hostile-bomb", "/v1/predict", "image", {"image": ("b.png", png_bomb(), "image/png")}, (413,)),
        ("hostile-range", "/v1/attributions?method=integrated_gradients&n_steps=100000", "image", {"image": ("a", one, "image/png")}, (422,)),
        ("hostile-layer", "/v1/activations?layer=nope", "image", {"image": ("a", one, "image/png")}, (422,)),
        ("hostile-field", "/v1/predict", "file", {"file": ("a", one, "image/png")}, (422,)),
    ]
    return mix


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def soak(url: str, duration: float, max_requests: int, concurrency: int, seed: int, sample_rss=None) -> dict:
    import httpx

    host = urlparse(url).hostname
    if host not in LOOPBACK:
        raise SystemExit(f"refusing to soak {url}: loopback (127.0.0.1) only")
    with httpx.Client(base_url=url, timeout=120) as c:
        models = c.get("/v1/models").json()
        default = models["default_model"]
        layers = c.get(f"/v1/models/{default}/layers").json()["separable_layers"]
    layer_names = [row["name"] for row in layers]
    images = make_images(8, seed=seed)
    fresh_pool = make_images(max(16, max_requests // 4), seed=seed + 1)
    mix = request_mix(layer_names, images, fresh_pool)
    rng = random.Random(seed)
    lock = threading.Lock()
    stop_at = time.monotonic() + duration
    issued = 0
    fresh_i = 0
    latencies: dict[str, list[float]] = defaultdict(list)
    statuses: Counter = Counter()
    unexpected: list[str] = []
    rss: list[float] = []

    def next_request():
        nonlocal issued, fresh_i
        with lock:
            if issued >= max_requests or time.monotonic() >= stop_at:
                return None
            issued += 1
            item = rng.choice(mix)
            if item[3] == "fresh":
                data = fresh_pool[fresh_i % len(fresh_pool)]
                fresh_i += 1
                item = (item[0], item[1], item[2], {"image": ("new", data, "image/png")}, item[4])
            return item

    def worker():
        with httpx.Client(base_url=url, timeout=300) as client:
            while (item := next_request()) is not None:
                name, path, _, files, expected = item
                t0 = time.perf_counter()
                try:
                    r = client.post(path, files=files)
                    status = r.status_code
                except httpx.HTTPError as exc:
                    status = f"error:{type(exc).__name__}"
                elapsed = (time.perf_counter() - t0) * 1000
                with lock:
                    latencies[name].append(elapsed)
                    statuses[(name, status)] += 1
                    if status not in expected:
                        unexpected.append(f"{name} {path} -> {status}")

    def sampler():
        while time.monotonic() < stop_at and any(t.is_alive() for t in threads):
            if sample_rss is not None and (v := sample_rss()) is not None:
                rss.append(v)
            time.sleep(1.0)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    side = threading.Thread(target=sampler, daemon=True)
    side.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    with httpx.Client(base_url=url, timeout=30) as c:
        healthy = c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200
        metrics = c.get("/metrics").text
    cache_bytes = next((float(line.split()[-1]) for line in metrics.splitlines() if line.startswith("xception_cache_bytes ")), None)
    return {
        "url": url,
        "model": default,
        "requests": issued,
        "wall_s": wall,
        "throughput_rps": issued / wall if wall else 0.0,
        "healthy_after": healthy,
        "unexpected": unexpected,
        "statuses": {f"{n} {s}": k for (n, s), k in sorted(statuses.items(), key=lambda kv: str(kv[0]))},
        "latency_ms": {
            name: {"n": len(v), "p50": percentile(v, 0.5), "p95": percentile(v, 0.95), "p99": percentile(v, 0.99), "max": max(v)}
            for name, v in sorted(latencies.items())
        },
        "rss_samples_mb": rss,
        "cache_bytes": cache_bytes,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=120.0, help="seconds of load (at most 1800)")
    p.add_argument("--max-requests", type=int, default=3000, help="requests at most (at most 100000)")
    p.add_argument("--concurrency", type=int, default=4, help="client threads (1..64)")
    p.add_argument("--model", default="random-small", help="random-small, random-paper or a model id of the cache")
    p.add_argument("--input-size", type=int, default=None)
    p.add_argument("--url", default=None, help="soak a running server on 127.0.0.1 instead of starting one")
    p.add_argument("--max-growth-mb", type=float, default=300.0, help="allowed RSS growth after warm-up, beyond the cache")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        serve(args.model, args.port, args.input_size)
        return 0
    duration = min(max(args.duration, 1.0), 1800.0)
    max_requests = min(max(args.max_requests, 1), 100_000)
    concurrency = min(max(args.concurrency, 1), 64)

    if args.url:
        report = soak(args.url, duration, max_requests, concurrency, args.seed)
        growth = None
    else:
        with Server(args.model, args.input_size, env={"XCEPTION_TORCH_THREADS": os.environ.get("XCEPTION_TORCH_THREADS", "1")}) as server:
            server.wait_ready()
            # warm-up: every kind of request once, so lazily built state is not counted as growth
            soak(server.url, 60.0, 40, 2, args.seed + 100)
            before = server.rss_mb()
            report = soak(server.url, duration, max_requests, concurrency, args.seed, sample_rss=server.rss_mb)
            after = server.rss_mb()
        samples = report["rss_samples_mb"]
        growth = (after - before) if (before is not None and after is not None) else None
        report["rss_mb"] = {"after_warmup": before, "peak": max(samples) if samples else None, "end": after, "growth": growth}
    report.pop("rss_samples_mb", None)
    cache_mb = (report.get("cache_bytes") or 0) / 1e6
    ok = not report["unexpected"] and report["healthy_after"] and (growth is None or growth <= args.max_growth_mb + cache_mb)
    report["ok"] = ok
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"soak of {report['url']} ({report['model']}): {report['requests']} requests in {report['wall_s']:.0f} s "
              f"({report['throughput_rps']:.1f}/s), concurrency {concurrency}")
        print(f"{'endpoint':<20} {'n':>5} {'p50 ms':>9} {'p95 ms':>9} {'p99 ms':>9} {'max ms':>9}")
        for name, s in report["latency_ms"].items():
            print(f"{name:<20} {s['n']:>5} {s['p50']:>9.1f} {s['p95']:>9.1f} {s['p99']:>9.1f} {s['max']:>9.1f}")
        print("statuses:", ", ".join(f"{k}: {v}" for k, v in report["statuses"].items()))
        if "rss_mb" in report:
            r = report["rss_mb"]
            print(f"server RSS: {r['after_warmup']:.0f} MB after warm-up, peak {r['peak'] or float('nan'):.0f} MB, "
                  f"end {r['end']:.0f} MB (growth {r['growth']:+.0f} MB; cache holds {cache_mb:.0f} MB)")
        print("unexpected answers:", len(report["unexpected"]), *report["unexpected"][:20], sep="\n  ")
        print("healthy afterwards:", report["healthy_after"], "-> OK" if ok else "-> FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
