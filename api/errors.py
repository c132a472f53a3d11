"""Every error answer is ``application/problem+json`` (RFC 9457).

``ApiError`` is what the service raises; :func:`translate` maps the core
library's exceptions to it; :func:`install` registers handlers so that
FastAPI's own errors (validation, unknown routes, wrong methods) and any
unexpected exception come out in the same shape:
``{"type", "title", "status", "detail", "instance", "request_id", ...}``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from xception_core.attributions import (
    AttributionError,
    MissingParamError,
    ParamError,
    ParamRangeError,
    UnknownLayerParamError,
    UnknownMethodError,
)
from xception_core.atlas import AtlasError
from xception_core.decode import ImageDecodeError
from xception_core.featurevis import VisualisationError
from xception_core.introspect import UnknownLayerError, ViewNotApplicableError
from xception_core.render import RenderError
from xception_core.weights import Command, UnknownModelError, WeightsError, WeightsMissingError

from .context import request_id_var

log = logging.getLogger("api.errors")

PROBLEM_MEDIA_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:xception-explorer:problem:"


class ApiError(Exception):
    """An error answer: ``status``, a slug for ``type``, a ``detail`` that says what to fix.

    Extra keyword arguments become extension members of the problem object
    (e.g. ``valid_choices``, ``allowed_range``).
    """

    def __init__(
        self,
        status: int,
        slug: str,
        detail: str,
        *,
        title: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = int(status)
        self.slug = slug
        self.detail = detail
        self.title = title or HTTPStatus(self.status).phrase
        self.headers = headers or {}
        self.extra = {k: v for k, v in extra.items() if v is not None}


def choices_text(choices: Iterable[Any]) -> str:
    return ", ".join(str(c) for c in choices)


def invalid_choice(name: str, value: Any, choices: Sequence[Any], *, status: int = 422, what: str | None = None) -> ApiError:
    """``name`` has a value outside ``choices``: 422 (or 404) listing them."""
    what = what or name
    return ApiError(
        status,
        f"unknown-{what.replace('_', '-')}",
        f"unknown {what} {value!r}; valid choices: {choices_text(choices)}",
        parameter=name,
        valid_choices=[str(c) for c in choices],
    )


def out_of_range(name: str, value: Any, lo: int | float, hi: int | float, why: str = "") -> ApiError:
    suffix = f" ({why})" if why else ""
    return ApiError(
        422,
        "parameter-out-of-range",
        f"{name}={value} is out of range; allowed range: {lo}..{hi}{suffix}",
        parameter=name,
        allowed_range=[lo, hi],
    )


def problem_body(
    status: int, slug: str | None, title: str, detail: str, instance: str | None, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": f"{TYPE_PREFIX}{slug}" if slug else "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    rid = request_id_var.get()
    if rid:
        body["request_id"] = rid
    if extra:
        body.update(extra)
    return body


def problem_response(
    status: int,
    slug: str | None,
    detail: str,
    *,
    title: str | None = None,
    instance: str | None = None,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> JSONResponse:
    title = title or HTTPStatus(status).phrase
    return JSONResponse(
        problem_body(status, slug, title, detail, instance, extra),
        status_code=status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=headers,
    )


def api_error_response(exc: ApiError, instance: str | None = None) -> JSONResponse:
    return problem_response(
        exc.status, exc.slug, exc.detail, title=exc.title, instance=instance, headers=exc.headers, extra=exc.extra
    )


# --------------------------------------------------------------------------- translating core errors

#: The command line the server's operator installs weights with (a remedy's commands name it).
SERVER_PROGRAM = "xception-demo"


def _on_the_server(command: Command) -> str:
    """How the API words a command of a weights error's remedy (``xception_core.weights.Command``):
    a client cannot run it, the server's operator can; listing models is an API call."""
    if command.args == ("models",):
        return "see GET /v1/models"
    return f"run on the server: {command.line(SERVER_PROGRAM)}"


def _attribution_problem(exc: AttributionError) -> ApiError:
    """An attribution error (the catalogue's rules: ``MethodSpec.validate``) as a 422 problem."""
    if isinstance(exc, UnknownMethodError):
        return ApiError(422, "unknown-method", str(exc), parameter="method", valid_choices=list(exc.choices))
    if isinstance(exc, MissingParamError):
        return ApiError(422, "missing-parameter", str(exc), parameter=exc.param)
    if isinstance(exc, UnknownLayerParamError):
        return ApiError(422, "unknown-layer", str(exc), parameter="layer", valid_choices=list(exc.choices))
    if isinstance(exc, ParamRangeError):
        allowed = list(exc.allowed_range) if exc.allowed_range is not None else None
        return ApiError(422, "parameter-out-of-range", str(exc), parameter=exc.param, allowed_range=allowed)
    if isinstance(exc, ParamError) and exc.param in ("layer", "part"):
        return ApiError(422, "invalid-parameter", str(exc), parameter=exc.param)
    return ApiError(422, "invalid-attribution-parameter", str(exc), parameter=getattr(exc, "param", None))


def translate(exc: BaseException) -> ApiError | None:
    """The :class:`ApiError` for an exception of the core library (None if not one of them)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, AttributionError):
        return _attribution_problem(exc)
    if isinstance(exc, ImageDecodeError):
        status = {
            "unsupported_format": 415,
            "image_too_large": 413,
            "image_too_small": 422,
            "extreme_aspect_ratio": 422,
            "corrupt_image": 422,
        }.get(getattr(exc, "code", ""), 422)
        return ApiError(status, str(getattr(exc, "code", "image-error")).replace("_", "-"), str(exc))
    if isinstance(exc, UnknownLayerError):
        return ApiError(422, "unknown-layer", str(exc), parameter="layer")
    if isinstance(exc, ViewNotApplicableError):
        return ApiError(
            422,
            "view-not-applicable",
            f"{exc}. Only depthwise separable layers decompose exactly (each pointwise channel a weighted sum "
            "of depthwise maps); POST /v1/activations still shows every part of this layer",
            parameter="layer",
        )
    if isinstance(exc, UnknownModelError):
        choices = list(exc.choices) if exc.choices is not None else None
        return ApiError(404, "unknown-model", exc.explain(_on_the_server), parameter="model", valid_choices=choices)
    if isinstance(exc, WeightsMissingError):
        return ApiError(409, "model-weights-missing", exc.explain(_on_the_server))
    if isinstance(exc, WeightsError):
        return ApiError(
            503,
            "model-unavailable",
            f"the model could not be loaded: {exc.explain(_on_the_server)}",
            headers={"Retry-After": "60"},
        )
    if isinstance(exc, RenderError):
        return ApiError(422, "invalid-rendering-parameter", str(exc))
    if isinstance(exc, VisualisationError):
        return ApiError(422, "invalid-visualisation-parameter", str(exc), parameter=exc.param)
    if isinstance(exc, AtlasError):
        return ApiError(
            409,
            "atlas-unavailable",
            f"{exc} (run on the server: {SERVER_PROGRAM} atlas build --model ID --data DIR, or set XCEPTION_ATLAS_DATA)",
        )
    return None


# --------------------------------------------------------------------------- handlers

_LOC_KIND = {"query": "query parameter", "path": "path parameter", "header": "header", "body": "form field", "cookie": "cookie"}


def _describe_validation_error(err: dict[str, Any]) -> str:
    loc = [str(p) for p in err.get("loc", ()) if p is not None]
    kind = _LOC_KIND.get(loc[0], loc[0]) if loc else "input"
    name = ".".join(loc[1:]) or "(body)"
    msg = err.get("msg", "is invalid")
    ctx = err.get("ctx") or {}
    typ = err.get("type", "")
    if typ == "missing":
        if loc[:2] == ["body", "image"]:
            return "form field 'image' is required: send the image as multipart/form-data field 'image' (curl -F image=@photo.jpg)"
        if loc[:2] == ["body", "images"]:
            return "form field 'images' is required: send one or more multipart/form-data fields named 'images' (curl -F images=@a.jpg -F images=@b.jpg)"
        return f"{kind} '{name}' is required"
    bounds = []
    for key, word in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
        if key in ctx:
            bounds.append(f"{word} {ctx[key]}")
    text = f"{kind} '{name}': {msg}"
    if "input" in err and not isinstance(err["input"], (bytes, dict)) and loc and loc[0] != "body":
        shown = repr(err["input"])
        text += f" (got {shown[:80]})"
    if bounds:
        text += f"; allowed: {' and '.join(bounds)}"
    return text


def _clean_errors(errors: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for err in errors:
        item = {"loc": [p for p in err.get("loc", ()) if p is not None], "msg": str(err.get("msg", "")), "type": str(err.get("type", ""))}
        ctx = err.get("ctx") or {}
        for key in ("ge", "gt", "le", "lt", "expected", "pattern", "max_length", "min_length"):
            if key in ctx:
                value = ctx[key]
                item[key] = value if isinstance(value, (int, float, str, bool)) else str(value)
        out.append(item)
    return out


async def _validation_handler(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = list(exc.errors())
    content_type = request.headers.get("content-type", "")
    missing_upload = any(
        e.get("type") == "missing" and list(e.get("loc", ()))[:2] in (["body", "image"], ["body", "images"])
        for e in errors
    )
    if missing_upload and request.method == "POST" and not content_type.lower().startswith("multipart/form-data"):
        shown = content_type.split(";")[0].strip() or "no content type"
        field = "images" if request.url.path.endswith("/batch") else "image"
        return problem_response(
            415,
            "multipart-required",
            f"the body must be multipart/form-data with the image in field '{field}' (got {shown}); "
            f"e.g. curl -F {field}=@photo.jpg; other parameters go in the query string",
            instance=request.url.path,
        )
    detail = "; ".join(_describe_validation_error(e) for e in errors) or "invalid request"
    return problem_response(
        422,
        "validation-error",
        detail,
        title="Invalid request parameters",
        instance=request.url.path,
        extra={"errors": _clean_errors(errors)},
    )


async def _http_handler(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    status = exc.status_code
    detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(status).phrase
    slug: str | None = getattr(exc, "slug", None)
    if status == 404 and detail == "Not Found":
        detail = f"no route {request.url.path}; the API lives under /v1 (see /docs or /openapi.json)"
    elif status == 400 and ("multipart" in detail.lower() or "parsing the body" in detail.lower()):
        detail = (
            f"the request body could not be parsed ({detail.rstrip('.')}); send the image as a "
            f"multipart/form-data file field (curl -F image=@photo.jpg)"
        )
        slug = slug or "malformed-body"
    elif status == 405 and detail == "Method Not Allowed":
        allowed = (exc.headers or {}).get("Allow") or (exc.headers or {}).get("allow")
        detail = f"method {request.method} is not allowed on {request.url.path}" + (f"; use {allowed}" if allowed else "")
    return problem_response(
        status, slug, detail, instance=request.url.path, headers=dict(exc.headers or {}), extra=getattr(exc, "extra", None)
    )


async def _api_error_handler(request: Request, exc: ApiError) -> JSONResponse:
    return api_error_response(exc, instance=request.url.path)


async def _core_error_handler(request: Request, exc: Exception) -> JSONResponse:
    return api_error_response(translate(exc), instance=request.url.path)  # type: ignore[arg-type]


async def _unexpected_handler(request: Request, exc: Exception) -> JSONResponse:
    translated = translate(exc)
    if translated is not None:
        return api_error_response(translated, instance=request.url.path)
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem_response(
        500,
        "internal-error",
        "the server failed to process this request; it was logged with the request id",
        instance=request.url.path,
    )


#: The core's error families :func:`translate` words; handled like :class:`ApiError` (inside the
#: middleware, so their answers carry the request id), wherever they are raised.
CORE_ERRORS = (
    AttributionError, ImageDecodeError, UnknownLayerError, ViewNotApplicableError, WeightsError, RenderError, VisualisationError, AtlasError,
)


def install(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error_handler)  # type: ignore[arg-type]
    for family in CORE_ERRORS:
        app.add_exception_handler(family, _core_error_handler)
    app.add_exception_handler(RequestValidationError, _validation_handler)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_handler)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unexpected_handler)
