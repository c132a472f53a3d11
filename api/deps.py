"""FastAPI dependencies: the features and the runtime, deadlines, uploads, the API key."""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata
from collections.abc import Callable
from typing import Annotated

from fastapi import Query, Request, Security
from fastapi.security import APIKeyHeader
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from .auth import API_KEY_HEADER, api_key_valid, unauthorized
from .errors import ApiError
from .features import Features
from .features.predict import BatchPart
from .images import IMAGE_ID_PATTERN
from .runtime import Runtime, Upload
from .settings import Settings
from .workers import Deadline

_api_key_scheme = APIKeyHeader(
    name=API_KEY_HEADER,
    auto_error=False,
    description="Required on every /v1 request when the service is configured with XCEPTION_API_KEY.",
)


def get_features(request: Request) -> Features:
    return request.app.state.features


def get_runtime(request: Request) -> Runtime:
    return request.app.state.features.runtime


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def require_api_key(request: Request, key: str | None = Security(_api_key_scheme)) -> None:
    """Checked again here (the middleware already refused bad keys) so OpenAPI documents it."""
    settings = get_settings(request)
    if not api_key_valid(settings, key):
        raise unauthorized(key)


def deadline(kind: str) -> Callable[[Request], Deadline]:
    attribute = {
        "predict": "predict_timeout_s",
        "activations": "activations_timeout_s",
        "decomposition": "decomposition_timeout_s",
        "attribution": "attribution_timeout_s",
        "visualisation": "visualisation_timeout_s",
        "atlas": "atlas_timeout_s",
    }[kind]

    def dependency(request: Request) -> Deadline:
        return Deadline(getattr(get_settings(request), attribute), kind)

    return dependency


ImageIdQuery = Annotated[
    str | None,
    Query(
        pattern=IMAGE_ID_PATTERN,
        description="Instead of the 'image' field: the image_id (sha256) of an image uploaded before (POST /v1/images, "
        "or any analysis request). Unknown or expired: 404, upload again.",
    ),
]

_UNSAFE = re.compile(r"[^A-Za-z0-9._ ()+-]")


def safe_filename(name: str | None) -> str | None:
    """A client-supplied file name reduced to a harmless base name (for echoing only; never a path)."""
    if not name:
        return None
    name = unicodedata.normalize("NFKC", str(name)).replace("\\", "/")
    base = os.path.basename(name).strip()
    base = _UNSAFE.sub("_", base).lstrip(".")[:128]
    return base or None


async def _read(upload: UploadFile, limit: int) -> bytes:
    data = await upload.read(limit + 1)
    return data


async def _hash(data: bytes) -> str:
    if len(data) < 256 * 1024:
        return hashlib.sha256(data).hexdigest()
    return await run_in_threadpool(lambda: hashlib.sha256(data).hexdigest())


def _check_form(form, allowed: str) -> None:
    extra = sorted({k for k in form.keys() if k != allowed})
    if extra:
        raise ApiError(
            422,
            "unexpected-form-field",
            f"unexpected form field(s) {', '.join(repr(e) for e in extra)}: the body carries only the image "
            f"(field '{allowed}'); every other parameter goes in the query string",
            parameter=extra[0],
        )


def _require_multipart(request: Request, field: str) -> None:
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        shown = content_type.split(";")[0].strip() or "no content type"
        raise ApiError(
            415,
            "multipart-required",
            f"the body must be multipart/form-data with the image in field '{field}' (got {shown}); "
            f"e.g. curl -F {field}=@photo.jpg; every other parameter goes in the query string",
        )


async def read_upload(request: Request) -> Upload:
    """The single ``image`` part of the multipart body, hashed (the route declares it for OpenAPI)."""
    _require_multipart(request, "image")
    form = await request.form()
    _check_form(form, "image")
    parts = form.getlist("image")
    if len(parts) != 1:
        raise ApiError(422, "one-image-expected", f"send exactly one 'image' field (got {len(parts)}); use /v1/predict/batch for several")
    return await _upload(parts[0], get_settings(request).max_upload_bytes)


async def _upload(part: object, limit: int) -> Upload:
    if not isinstance(part, UploadFile):
        raise ApiError(422, "image-not-a-file", "form field 'image' must be a file upload (curl -F image=@photo.jpg), not a text value")
    data = await _read(part, limit)
    if len(data) > limit:
        raise ApiError(413, "upload-too-large", f"the image is over the limit of {limit} bytes; send a smaller image")
    if not data:
        raise ApiError(422, "empty-upload", "the uploaded image is empty (0 bytes); send an image file")
    return Upload(data, await _hash(data))


def _has_body(request: Request) -> bool:
    return request.headers.get("content-length") not in (None, "0") or "transfer-encoding" in request.headers


async def read_image(request: Request, image_id: ImageIdQuery = None) -> Upload:
    """The image of an analysis request: the multipart ``image`` part, or the stored image that
    ``image_id`` names (exactly one of the two)."""
    if image_id is None:
        if not _has_body(request) and not request.headers.get("content-type"):
            raise ApiError(
                422,
                "image-required",
                "send the image as the multipart/form-data field 'image' (curl -F image=@photo.jpg), or name an image "
                "uploaded before with the query parameter image_id (POST /v1/images returns it)",
                parameter="image",
            )
        return await read_upload(request)
    if request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        form = await request.form()
        _check_form(form, "image")
        if form.getlist("image"):
            raise ApiError(
                422,
                "image-and-image-id",
                "send either the 'image' field or the image_id query parameter, not both",
                parameter="image_id",
            )
    elif _has_body(request):
        raise ApiError(422, "image-and-image-id", "with image_id the request has no body: send either the image or image_id, not both", parameter="image_id")
    stored = get_runtime(request).images.require(image_id)
    return Upload(stored.data, stored.sha, stored=True)


async def read_images(request: Request) -> list[BatchPart]:
    """Every ``images`` part, hashed; a part that cannot be used carries the reason instead."""
    settings = get_settings(request)
    _require_multipart(request, "images")
    form = await request.form()
    _check_form(form, "images")
    parts = form.getlist("images")
    if not 1 <= len(parts) <= settings.max_batch_images:
        raise ApiError(
            422,
            "batch-size-out-of-range",
            f"send between 1 and {settings.max_batch_images} 'images' fields (got {len(parts)})",
            parameter="images",
            allowed_range=[1, settings.max_batch_images],
        )
    out: list[BatchPart] = []
    for part in parts:
        if not isinstance(part, UploadFile):
            out.append(BatchPart(ApiError(422, "image-not-a-file", "this 'images' field is a text value, not a file upload"), None))
            continue
        name = safe_filename(part.filename)
        data = await _read(part, settings.max_upload_bytes)
        if len(data) > settings.max_upload_bytes:
            out.append(BatchPart(ApiError(413, "upload-too-large", f"this image is over the limit of {settings.max_upload_bytes} bytes"), name))
        elif not data:
            out.append(BatchPart(ApiError(422, "empty-upload", "this image is empty (0 bytes)"), name))
        else:
            out.append(BatchPart(Upload(data, await _hash(data)), name))
    return out

