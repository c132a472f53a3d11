"""GET /healthz, GET /readyz, GET /metrics."""


from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from ..deps import get_runtime
from ..errors import ApiError
from ..runtime import Runtime
from ..schemas import Health, Readiness
from ..settings import Settings
from .common import problems


def build(settings: Settings) -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/healthz", response_model=Health, summary="Liveness")
    async def healthz() -> dict[str, str]:
        """200 while the process serves requests."""
        return {"status": "ok"}

    @router.get("/readyz", response_model=Readiness, summary="Readiness", responses=problems(503))
    async def readyz(request: Request, runtime: Runtime = Depends(get_runtime)) -> dict[str, Any]:
        """200 once the default model is loaded; 503 (with the reason) until then."""
        try:
            default = runtime.default_model()
        except Exception as exc:  # noqa: BLE001 - readiness reports why, never a 500
            raise ApiError(503, "not-ready", f"the default model cannot be determined: {exc}", headers={"Retry-After": "5"}) from None
        if not runtime.registry.is_loaded(default):
            error = getattr(request.app.state, "load_error", None)
            detail = f"the default model {default!r} is not loaded yet"
            if error:
                detail = f"the default model {default!r} could not be loaded: {error}"
            raise ApiError(503, "not-ready", detail, headers={"Retry-After": "5"})
        return {"status": "ready", "default_model": default, "device": runtime.device, "loaded_models": runtime.registry.loaded_ids()}

    if settings.metrics_enabled:

        @router.get(
            "/metrics",
            summary="Prometheus metrics",
            response_class=Response,
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus text format."}},
        )
        async def metrics(request: Request) -> Response:
            """Requests and latency by route and status, requests in flight, inference time by device
            and model, attribution time by device and method, micro-batch sizes, cache hits / misses /
            bytes, queue depths, rejections, deadlines exceeded, out-of-memory events."""
            m = request.app.state.metrics
            return Response(m.render(), media_type=m.content_type)

    return router
