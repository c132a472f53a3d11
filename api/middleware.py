"""Pure ASGI middleware: request id, access log and HTTP metrics; API key.

Order (outermost first): :class:`RequestContextMiddleware` (every answer gets
``X-Request-ID`` and is counted), CORS (when configured, so preflights need no
key), :class:`ApiKeyMiddleware` (refuses before the body is read), then
:class:`~api.limits.BodyLimitMiddleware`.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .auth import api_key_valid, unauthorized
from .context import request_id_var
from .errors import api_error_response
from .metrics import Metrics

access_log = logging.getLogger("api.access")

REQUEST_ID_HEADER = "X-Request-ID"
#: A client-supplied request id is honoured when it looks like one (no spaces, no control characters).
_SANE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


def sane_request_id(value: str | None) -> str | None:
    if value and _SANE_ID.fullmatch(value):
        return value
    return None


def route_template(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    return "unmatched"


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics, access: bool = True) -> None:
        self.app = app
        self.metrics = metrics
        self.access = access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        rid = sane_request_id(headers.get(REQUEST_ID_HEADER)) or uuid.uuid4().hex
        token = request_id_var.set(rid)
        scope.setdefault("state", {})["request_id"] = rid
        status = 500
        started = time.perf_counter()
        self.metrics.in_flight.inc()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = rid
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            self.metrics.in_flight.dec()
            route = route_template(scope)
            method = scope.get("method", "")
            self.metrics.requests.labels(route, method, str(status)).inc()
            self.metrics.latency.labels(route, method, str(status)).observe(elapsed)
            if self.access:
                client = scope.get("client")
                access_log.info(
                    "%s %s %d %.1f ms",
                    method,
                    scope.get("path", ""),
                    status,
                    elapsed * 1000,
                    extra={
                        "method": method,
                        "path": scope.get("path", ""),
                        "route": route,
                        "status": status,
                        "duration_ms": round(elapsed * 1000, 3),
                        "client": f"{client[0]}:{client[1]}" if client else None,
                        "request_id": rid,
                    },
                )
            request_id_var.reset(token)


class ApiKeyMiddleware:
    """With an API key configured, ``/v1`` requests without the right ``X-API-Key`` get 401 at once."""

    def __init__(self, app: ASGIApp, settings) -> None:  # noqa: ANN001
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.settings.api_key is not None and scope.get("path", "").startswith("/v1"):
            presented = Headers(scope=scope).get("x-api-key")
            if not api_key_valid(self.settings, presented):
                response = api_error_response(unauthorized(presented), instance=scope.get("path"))
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
