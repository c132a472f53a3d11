"""Request-body size limit, enforced while the body streams in (pure ASGI).

Starlette does not cap the size of an uploaded multipart part and uvicorn has
no body limit, so without this a client could make the service spool any
amount of data. :class:`BodyLimitMiddleware`

* refuses at once, before reading a byte of the body, a request whose
  ``Content-Length`` exceeds the limit (413), or whose ``Content-Length`` is
  not a number (400);
* otherwise counts the bytes of every ``http.request`` message as the
  application receives them and, as soon as the count passes the limit,
  raises :class:`BodyTooLarge` out of ``receive()``: the rest of the body is
  never read, and the client gets 413 (from FastAPI's exception handling, or
  from this middleware when the exception reaches it before a response began).

The limit depends on the path (``/v1/predict/batch`` takes several images).

A client that stops sending in the middle of its body gets 408 once no byte arrived
for ``idle_timeout`` seconds, instead of holding a connection (and a request slot) forever.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import problem_response


class BodyTooLarge(HTTPException):
    """The request body passed the limit (raised from ``receive``)."""

    slug = "upload-too-large"

    def __init__(self, limit: int, received: int | None = None) -> None:
        what = f"more than {limit} bytes" if received is None else f"{received} bytes"
        detail = (
            f"the request body is {what}, over the limit of {limit} bytes ({limit / 1048576:.1f} MiB); "
            f"send a smaller image (re-encode it as JPEG or reduce its size)"
        )
        super().__init__(status_code=413, detail=detail)
        self.limit = limit
        self.extra = {"limit_bytes": limit}


class BodyTimeout(HTTPException):
    """No body bytes arrived for ``idle_timeout`` seconds (raised from ``receive``)."""

    slug = "body-timeout"

    def __init__(self, seconds: float) -> None:
        super().__init__(
            status_code=408,
            detail=f"no part of the request body arrived for {seconds:g} s; send the whole body without pausing",
        )
        self.extra = {"idle_timeout_s": seconds}


class BodyLimitMiddleware:
    def __init__(
        self, app: ASGIApp, max_bytes: int, path_limits: Mapping[str, int] | None = None, idle_timeout: float | None = None
    ) -> None:
        self.app = app
        self.max_bytes = int(max_bytes)
        self.path_limits = dict(path_limits or {})
        self.idle_timeout = idle_timeout

    def limit_for(self, path: str) -> int:
        return self.path_limits.get(path.rstrip("/") or "/", self.max_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope.get("path", ""))
        declared = None
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                text = value.decode("latin-1").strip()
                if not text.isdigit():
                    response = problem_response(
                        400, "bad-content-length", f"Content-Length {text!r} is not a number", instance=scope.get("path")
                    )
                    await response(scope, receive, send)
                    return
                declared = int(text)
        if declared is not None and declared > limit:
            exc = BodyTooLarge(limit, declared)
            response = problem_response(
                413, exc.slug, exc.detail, instance=scope.get("path"), headers={"Connection": "close"}, extra=exc.extra
            )
            await response(scope, receive, send)
            return

        received = 0
        started = False
        body_done = False

        async def limited_receive() -> Message:
            nonlocal received, body_done
            if body_done or self.idle_timeout is None:
                message = await receive()
            else:
                try:
                    message = await asyncio.wait_for(receive(), self.idle_timeout)
                except (TimeoutError, asyncio.TimeoutError):
                    raise BodyTimeout(self.idle_timeout) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if not message.get("more_body", False):
                    body_done = True
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except (BodyTooLarge, BodyTimeout) as exc:
            if started:
                raise
            response = problem_response(
                exc.status_code, exc.slug, str(exc.detail), instance=scope.get("path"), headers={"Connection": "close"}, extra=exc.extra
            )
            await response(scope, receive, send)
