"""Prometheus metrics, in a registry private to each app (tests build many apps)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# The *_created series double the output and carry nothing a scraper needs.
disable_created_metrics()

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "xception_http_requests", "HTTP requests by route template, method and status", ("route", "method", "status"), registry=r
        )
        self.latency = Histogram(
            "xception_http_request_duration_seconds",
            "HTTP request latency by route template, method and status",
            ("route", "method", "status"),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("xception_http_requests_in_flight", "HTTP requests being served", registry=r)
        self.inference = Histogram(
            "xception_inference_seconds",
            "Forward passes (one micro-batch, an activation capture) by device, model and kind",
            ("device", "model", "kind"),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.attribution = Histogram(
            "xception_attribution_seconds", "Attribution time by device and method", ("device", "method"), buckets=LATENCY_BUCKETS, registry=r
        )
        self.attribution_quality = Histogram(
            "xception_attribution_quality_seconds",
            "Quality figures computed on their own, after a cached map (X-Cache: map-hit), by device and method",
            ("device", "method"),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "xception_batch_size", "Images per prediction micro-batch", ("model",), buckets=BATCH_BUCKETS, registry=r
        )
        self.cache_hits = Counter("xception_cache_hits", "Cache hits by kind (input, logits, layer, ...)", ("kind",), registry=r)
        self.cache_misses = Counter("xception_cache_misses", "Cache misses by kind", ("kind",), registry=r)
        self.cache_evictions = Counter("xception_cache_evictions", "Entries evicted from the cache", registry=r)
        self.cache_bytes = Gauge("xception_cache_bytes", "Bytes held by the cache", registry=r)
        self.cache_entries = Gauge("xception_cache_entries", "Entries held by the cache", registry=r)
        self.image_store_bytes = Gauge("xception_image_store_bytes", "Bytes of uploaded images kept for reuse by image_id", registry=r)
        self.image_store_entries = Gauge("xception_image_store_entries", "Uploaded images kept for reuse by image_id", registry=r)
        self.attribution_cache_bytes = Gauge(
            "xception_attribution_cache_bytes", "Bytes held by the cache of finished attributions (and their overlays)", registry=r
        )
        self.queue_depth = Gauge("xception_pool_pending_jobs", "Jobs queued or running per worker pool", ("pool",), registry=r)
        self.rejected = Counter("xception_pool_rejected", "Jobs refused because a pool was full (503)", ("pool",), registry=r)
        self.timeouts = Counter("xception_deadline_exceeded", "Requests that ran past their deadline (504)", ("kind",), registry=r)
        self.oom = Counter("xception_out_of_memory", "Jobs that ran out of (GPU) memory (503)", ("device",), registry=r)
        self.models_loaded = Gauge("xception_models_loaded", "Models currently loaded", registry=r)
        self.amp_fallbacks = Counter(
            "xception_mixed_precision_fallbacks", "Mixed-precision predictions redone in float32 (top-5 too close)", registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
