"""Ray Serve deployment of the Xception Explorer API: replicas across GPUs and machines.

The deployment wraps the very FastAPI app that ``xception-demo serve`` runs
(``api.main.create_app``) with ``serve.ingress``: every route, limit, error
format and metric is the same. Each replica

* builds its own app, with the settings of its ``XCEPTION_*`` environment plus
  the overrides given to :func:`build_app` (``settings``);
* loads the default model *before* Serve routes traffic to it, so a replica
  added by the autoscaler never answers 503 "not ready"; a model that cannot be
  loaded fails the replica, and ``serve status`` shows why;
* keeps its own image cache.

Requests are stateless -- the image travels with every request and the caches
are keyed by its sha256 -- so any replica can answer any request: no session
affinity is needed. (A repeated image may land on another replica and miss
that replica's cache; it is recomputed, never wrong.)

Run it (the README's section "Ray Serve" explains every argument)::

    serve run deploy/serve_config.yaml                       # one machine or a cluster
    serve run deploy.serve_app:build_app gpus_per_replica=1 max_replicas=4

:func:`build_app` takes the application arguments of the Serve config file
(``args:``) or of ``serve run ... key=value``: the deployment's shape
(:data:`DEPLOYMENT_ARGS`) and any API setting by its field name
(``default_model=xception-imagenet``, ``max_upload_bytes=5000000``, ...).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from typing import Any

from pydantic import TypeAdapter
from ray import serve
from ray.serve import Application

from xception_core.allocator import GLIBC_TUNABLES

log = logging.getLogger("deploy.serve_app")

DEPLOYMENT_NAME = "XceptionExplorer"
APP_NAME = "xception"
#: Concurrent requests one replica accepts (the app micro-batches predictions and queues the rest).
DEFAULT_MAX_ONGOING_REQUESTS = 32
#: The autoscaler adds replicas when the average replica has more requests in flight than this.
DEFAULT_TARGET_ONGOING = {"gpu": 8.0, "cpu": 2.0}

#: Arguments of :func:`build_app` that shape the deployment; every other key is an API setting.
DEPLOYMENT_ARGS = (
    "gpus_per_replica",  # "auto" (1 when the cluster has GPUs, else 0), or a number; 0.5 packs 2 replicas per GPU
    "cpus_per_replica",  # CPUs reserved per replica (also its torch threads unless torch_threads is set); default 1
    "num_replicas",  # a fixed number of replicas (turns autoscaling off)
    "min_replicas",  # autoscaling bounds; default 1
    "max_replicas",  # default: the cluster's GPUs (GPU replicas) or CPUs / cpus_per_replica
    "initial_replicas",
    "target_ongoing_requests",
    "max_ongoing_requests",
    "upscale_delay_s",
    "downscale_delay_s",
)


def build_api(overrides: Mapping[str, Any] | None = None):
    """The API app of one replica: ``create_app`` with the replica's settings, default model loaded.

    ``overrides`` beat the replica's ``XCEPTION_*`` environment. Raises RuntimeError (which
    fails the replica, and ``serve status`` shows the message) when the default model cannot load.
    """
    from api import logs
    from api.main import create_app
    from api.settings import Settings

    settings = Settings(**dict(overrides or {}))
    logs.configure(settings.log_level, settings.log_json)
    app = create_app(settings)
    if settings.preload_default_model:
        _load_default_model(app)
    return app


def _load_default_model(app) -> None:
    from api.errors import translate

    runtime = app.state.features.runtime
    try:
        entry = runtime.registry.get(None)  # blocking: the replica is still initialising
    except Exception as exc:
        runtime.close()
        problem = translate(exc)
        if problem is not None:
            raise RuntimeError(f"the default model could not be loaded: {problem.detail}") from None
        raise
    log.info("replica ready: model %s on %s", entry.id, runtime.device)


def _asgi_builder(overrides: dict[str, Any]):
    """A function without arguments that Serve calls on each replica to build its app."""

    def build_asgi_app():
        return build_api(overrides)

    return build_asgi_app


def make_deployment(settings: Mapping[str, Any] | None = None):
    """The Serve deployment: a class whose replicas serve ``build_api(settings)`` (``serve.ingress``).

    The app is built on the replica, not here: a FastAPI app with its thread pools and models
    cannot travel between processes, its settings can.
    """

    @serve.deployment(
        name=DEPLOYMENT_NAME,
        max_ongoing_requests=DEFAULT_MAX_ONGOING_REQUESTS,
        # attributions may run for minutes (XCEPTION_ATTRIBUTION_TIMEOUT_S): let them finish on scale-down
        graceful_shutdown_wait_loop_s=2,
        graceful_shutdown_timeout_s=60,
        health_check_period_s=10,
        health_check_timeout_s=30,
        ray_actor_options={"num_cpus": 1, "num_gpus": 0},
    )
    @serve.ingress(_asgi_builder(dict(settings or {})))
    class XceptionExplorer:
        """One replica of the Xception Explorer API."""

    return XceptionExplorer


# ----------------------------------------------------------------------------- the application builder


def _number(value: Any, name: str, *, minimum: float = 0.0) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number) or number < minimum:
        raise ValueError(f"{name} must be >= {minimum:g}, got {value!r}")
    return number


def _integer(value: Any, name: str, *, minimum: int = 0) -> int:
    number = _number(value, name, minimum=minimum)
    if number != int(number):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return int(number)


def _cluster_resources() -> dict[str, float]:
    """The Ray cluster's resources (empty when Ray is not running, e.g. when only validating)."""
    import ray

    if not ray.is_initialized():
        return {}
    try:
        return dict(ray.cluster_resources())
    except Exception:  # noqa: BLE001 - only used for defaults
        return {}


def _settings_overrides(args: dict[str, Any]) -> dict[str, Any]:
    """API settings among ``args`` (flat keys and/or a ``settings`` mapping), validated by field name."""
    from api.settings import Settings

    overrides: dict[str, Any] = {}
    nested = args.pop("settings", None) or {}
    if not isinstance(nested, Mapping):
        raise ValueError("settings must be a mapping of API settings (field names of api.settings.Settings)")
    overrides.update(nested)
    overrides.update(args)
    fields = Settings.model_fields
    unknown = sorted(key for key in overrides if key not in fields)
    if unknown:
        raise ValueError(
            f"unknown argument(s) {', '.join(unknown)}; deployment arguments are {', '.join(DEPLOYMENT_ARGS)}, "
            "API settings are the XCEPTION_* names in lower case without the prefix (api/README_SETTINGS.md)"
        )
    # host and port belong to `xception-demo serve`; Serve's proxy listens instead
    return {k: v for k, v in overrides.items() if k not in ("host", "port")}


def deployment_options(args: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(options for XceptionExplorer.options(...), API setting overrides)`` from builder arguments."""
    args = dict(args or {})
    shape = {key: args.pop(key) for key in DEPLOYMENT_ARGS if key in args}
    settings = _settings_overrides(args)
    resources = _cluster_resources()

    gpus_arg = shape.get("gpus_per_replica", "auto")
    if str(gpus_arg).strip().lower() == "auto":
        gpus = 1.0 if resources.get("GPU", 0) >= 1 else 0.0
    else:
        gpus = _number(gpus_arg, "gpus_per_replica")
    cpus = _number(shape.get("cpus_per_replica", 1), "cpus_per_replica")
    kind = "gpu" if gpus > 0 else "cpu"

    # Ray gives a GPU replica its own CUDA_VISIBLE_DEVICES, so "auto"/"cuda" means its GPU;
    # a CPU replica must not wander onto a GPU it did not reserve.
    if gpus == 0:
        settings.setdefault("device", "cpu")
    # one replica per reserved CPU: torch's default (all cores) would oversubscribe the node
    if cpus >= 1 and "XCEPTION_TORCH_THREADS" not in os.environ:
        settings.setdefault("torch_threads", int(cpus))

    actor: dict[str, Any] = {"num_cpus": cpus, "num_gpus": gpus}
    # A replica's worker has threads (and their malloc arenas) before the app is built, so the
    # allocator setting is given to the process at its start rather than applied in create_app.
    if TypeAdapter(bool).validate_python(settings.get("keep_freed_memory", os.environ.get("XCEPTION_KEEP_FREED_MEMORY", "true"))):
        actor["runtime_env"] = {"env_vars": {"GLIBC_TUNABLES": GLIBC_TUNABLES}}
    options: dict[str, Any] = {
        "ray_actor_options": actor,
        "max_ongoing_requests": _integer(
            shape.get("max_ongoing_requests", DEFAULT_MAX_ONGOING_REQUESTS), "max_ongoing_requests", minimum=1
        ),
    }
    if "num_replicas" in shape:
        options["num_replicas"] = _integer(shape["num_replicas"], "num_replicas", minimum=1)
        options["autoscaling_config"] = None
        return options, settings

    if gpus > 0:
        default_max = max(1, int(resources.get("GPU", 1) // gpus))
    else:
        default_max = max(1, int(resources.get("CPU", 1) // max(cpus, 1e-9)))
    min_replicas = _integer(shape.get("min_replicas", 1), "min_replicas", minimum=0)
    max_replicas = _integer(shape.get("max_replicas", max(default_max, min_replicas, 1)), "max_replicas", minimum=1)
    if max_replicas < min_replicas:
        raise ValueError(f"max_replicas ({max_replicas}) must be at least min_replicas ({min_replicas})")
    autoscaling: dict[str, Any] = {
        "min_replicas": min_replicas,
        "initial_replicas": _integer(shape.get("initial_replicas", max(min_replicas, 1)), "initial_replicas"),
        "max_replicas": max_replicas,
        "target_ongoing_requests": _number(
            shape.get("target_ongoing_requests", DEFAULT_TARGET_ONGOING[kind]), "target_ongoing_requests", minimum=1e-3
        ),
        # loading a model takes seconds: react within ~10 s, give capacity back slowly
        "upscale_delay_s": _number(shape.get("upscale_delay_s", 10), "upscale_delay_s"),
        "downscale_delay_s": _number(shape.get("downscale_delay_s", 300), "downscale_delay_s"),
    }
    options["autoscaling_config"] = autoscaling
    return options, settings


def build_app(args: Mapping[str, Any] | None = None) -> Application:
    """The Serve application (import path ``deploy.serve_app:build_app``).

    ``args`` come from the config file's ``args:`` or ``serve run ... key=value``
    (strings are accepted for numbers). Without a GPU in the cluster the replicas
    are CPU replicas (``device=cpu``); with GPUs each replica reserves
    ``gpus_per_replica`` of one.
    """
    options, settings = deployment_options(args)
    log.info("Xception Explorer on Ray Serve: %s, settings %s", options, sorted(settings))
    return make_deployment(settings).options(**options).bind()
