"""The application factory and the server entry point.

``create_app(settings=None, registry=None)`` builds the FastAPI app;
``run(host, port)`` serves it with uvicorn (``xception-demo serve`` calls it).
Tests pass a :class:`~api.registry.ModelRegistry` of in-memory models::

    app = create_app(Settings(), registry=ModelRegistry.from_models([InMemoryModel("tiny", model, names, cfg)]))
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from typing import Any

import torch
from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi_offline import FastAPIOffline

from xception_core.allocator import keep_freed_memory

from . import errors, logs
from .deps import require_api_key
from .features import Features
from .limits import BodyLimitMiddleware
from .metrics import Metrics
from .middleware import REQUEST_ID_HEADER, ApiKeyMiddleware, RequestContextMiddleware
from .openapi import build_schema, operation_id
from .registry import ModelRegistry
from .routers import activations, atlas, attributions, health, images, models, predict, samples, spectrum
from .settings import Settings

log = logging.getLogger("api.main")

VERSION = "0.1.0"
DESCRIPTION = """
Look inside Xception (Chollet, CVPR 2017): classify an image, see the depthwise (spatial, per-channel)
and pointwise (cross-channel) maps of every separable convolution, how each pointwise channel is built
from depthwise channels, and Captum attributions of the prediction.

* Analysis endpoints take the image as the multipart field `image` (the body carries only the image);
  every other parameter, including `model`, goes in the query string.
* `image_id` is the sha256 of the uploaded bytes; the server caches by it, so repeated calls on one image are cheap.
  The image is kept for a while (`POST /v1/images` stores one without computing anything): instead of the
  `image` field, a request may name it with the query parameter `image_id` (404 once it is gone: upload again).
* Errors are `application/problem+json` (`type`, `title`, `status`, `detail`), with a `detail` that says what to fix.
* Every response carries `X-Request-ID` (a sane client-supplied one is kept).
"""


def default_registry(settings: Settings) -> ModelRegistry:
    """The models of the weights cache (``create_app`` gives it the settings' serving options)."""
    return ModelRegistry(
        home=settings.home,
        device=settings.device,
        max_loaded=settings.max_loaded_models,
        default_model=settings.default_model,
    )


def create_app(settings: Settings | None = None, registry: ModelRegistry | None = None) -> FastAPI:
    settings = settings or Settings()
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    if settings.keep_freed_memory and (why := keep_freed_memory()) is not None:
        log.info("keep_freed_memory not applied: %s", why)
    registry = registry or default_registry(settings)
    # attributions (and sort=attribution) borrow a private replica: one per thread that can ask
    registry.serve_with(
        settings.engine_options(), max_replicas=settings.attribution_workers + settings.inference_workers, warm_up=settings.warm_up,
        attribution_precision=settings.attribution_precision,
    )
    metrics = Metrics()
    features = Features.build(settings, registry, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        task = None
        if settings.preload_default_model:
            task = asyncio.create_task(_preload(app, features))
        try:
            yield
        finally:
            if task is not None and not task.done():
                task.cancel()
            await features.close()

    # FastAPIOffline serves Swagger UI's script and stylesheet from its own package, not a CDN
    factory = FastAPIOffline if settings.docs_enabled else FastAPI
    app = factory(
        title="Xception Explorer API",
        version=VERSION,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url="/docs" if settings.docs_enabled else None,
        redoc_url=None,
        openapi_url="/openapi.json" if settings.docs_enabled else None,
        generate_unique_id_function=operation_id,
    )
    app.state.settings = settings
    app.state.features = features
    app.state.metrics = metrics
    app.state.registry = registry
    app.state.load_error = None
    errors.install(app)

    app.include_router(health.build(settings))
    # the dependency declares the X-API-Key scheme in OpenAPI: only when there is a key to send
    secured = [Depends(require_api_key)] if settings.api_key is not None else []
    for module in (models, atlas, spectrum, samples, images, predict, activations, attributions):
        app.include_router(module.build(settings), dependencies=secured)

    # add_middleware: the last added runs first (outermost).
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_upload_bytes,
        path_limits={"/v1/predict/batch": settings.max_batch_upload_bytes},
        idle_timeout=settings.body_timeout_s,
    )
    app.add_middleware(ApiKeyMiddleware, settings=settings)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["X-API-Key", "X-Request-ID", "Content-Type"],
            expose_headers=[
                REQUEST_ID_HEADER, "X-Image-Id", "X-Channels", "X-Shape", "X-Target", "X-Attribution-Ms",
                "X-Objective-Start", "X-Objective-Final", "X-Steps", "X-Seconds", "X-Precision", "X-Cache",
            ],
            allow_credentials=False,
        )
    app.add_middleware(RequestContextMiddleware, metrics=metrics, access=settings.access_log)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_schema(app, settings)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


async def _preload(app: FastAPI, features: Features) -> None:
    try:
        entry = await features.runtime.model(None, None)
        log.info("default model %s ready on %s", entry.id, features.runtime.device)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - readiness reports it
        problem = errors.translate(exc)
        if problem is None:
            app.state.load_error = str(exc)
            log.exception("default model not loaded")
        else:
            app.state.load_error = problem.detail
            log.warning("default model not loaded: %s", problem.detail)


def run(host: str | None = None, port: int | None = None, settings: Settings | None = None) -> None:
    """Serve the API with uvicorn (structured logs, settings from the environment)."""
    import uvicorn

    settings = settings or Settings()
    logs.configure(settings.log_level, settings.log_json)
    app = create_app(settings)
    uvicorn.run(
        app,
        host=host or settings.host,
        port=port or settings.port,
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=10,
    )
