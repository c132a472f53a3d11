"""Pieces shared by the routers: error responses for OpenAPI, model parameter, binary answers."""


from typing import Annotated, Any

from fastapi import File, Query, UploadFile
from fastapi.responses import Response

from ..encodings import BinaryResult
from ..schemas import Problem

_DESCRIPTIONS = {
    400: "Malformed request (e.g. a Content-Length that is not a number).",
    401: "Missing or wrong X-API-Key (only when the service has an API key).",
    404: "Unknown model (the detail lists the valid ids), or an `image_id` that is not (or no longer) stored (upload the image again).",
    408: "The request body stalled (no bytes for body_timeout_s seconds).",
    409: "The model is known but its weights are not installed (the detail says how to get them).",
    413: "Upload over the size limit, or an image with more pixels than allowed.",
    415: "Not an accepted image format (JPEG, PNG, WEBP, BMP, GIF, TIFF), or a body that is not multipart/form-data.",
    422: "A parameter is invalid or out of range, or the image is damaged or of unusable geometry; the detail says which and what is allowed.",
    503: "Busy (queue full), out of memory, or the model cannot be loaded; retry after Retry-After.",
    504: "The request ran past its deadline.",
}


def problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": Problem, "description": _DESCRIPTIONS.get(code, "Error.")} for code in codes}


ANALYSIS_ERRORS = problems(400, 401, 404, 408, 409, 413, 415, 422, 503, 504)

ModelQuery = Annotated[
    str | None,
    Query(
        max_length=200,
        description="Model id (see GET /v1/models); default: the service's default model.",
        examples=["xception-mini-synthetic"],
    ),
]

IMAGE_DESCRIPTION = (
    "The image file (JPEG, PNG, WEBP, BMP, GIF or TIFF; at most the configured upload size and pixel count). "
    "The content type the client claims is ignored: the bytes decide."
)


#: The ``image`` part of an analysis request: optional in the schema, since ``image_id`` may name a
#: stored image instead (:func:`api.deps.read_image` enforces exactly one of the two).
ImageField = Annotated[
    UploadFile | None,
    File(description=IMAGE_DESCRIPTION + " Leave it out when the query names a stored image with `image_id`."),
]


def header_name(fact: str) -> str:
    """The header that carries a result's fact: ``max_abs_error`` -> ``X-Max-Abs-Error``."""
    return "X-" + "-".join(word.capitalize() for word in fact.split("_"))


def binary(result: BinaryResult) -> Response:
    """A binary answer with its headers: the download name, what it was computed from, its facts."""
    headers = {}
    if result.filename:
        headers["Content-Disposition"] = f'attachment; filename="{result.filename}"'
    if result.image_id:
        headers["X-Image-Id"] = result.image_id
    headers["X-Model"] = result.model
    headers.update({header_name(k): v for k, v in result.facts.items()})
    return Response(content=result.body, media_type=result.media_type, headers=headers)


def binary_content(json_model: type | None = None, *media_types: str) -> dict[str, Any]:
    content: dict[str, Any] = {}
    if json_model is not None:
        content["application/json"] = {"schema": {"$ref": f"#/components/schemas/{json_model.__name__}"}}
    for media in media_types:
        content[media] = {"schema": {"type": "string", "format": "binary"}}
    return content
