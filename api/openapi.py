"""The OpenAPI schema as clients and generators need it: FastAPI's schema, completed where it
says less than the server enforces.

* Operation ids are short and stable: the route's name in camelCase (``predict_batch`` ->
  ``predictBatch``), the way FastAPI's full-stack template names them with
  ``generate_unique_id_function``. A generated client's methods carry these names.
* File fields say ``format: binary`` next to OpenAPI 3.1's ``contentMediaType`` (generators that
  read only one of the two styles otherwise send the image as a text part), an ``image`` part
  has 1 to ``max_upload_bytes`` bytes, the batch 1 to ``max_batch_images`` parts, and a multipart
  body has no field but its images (``additionalProperties: false``): what :mod:`api.deps` enforces.
* Errors are ``application/problem+json``; every operation has its curl example
  (``x-codeSamples``) and documents ``X-Request-ID``. The 401 answer is documented only when the
  service has an API key (then the routes also declare the ``X-API-Key`` security scheme).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute

from .examples import code_samples
from .middleware import REQUEST_ID_HEADER
from .settings import Settings

PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
REQUEST_ID_DOC = {
    "description": "The request id (the client's X-Request-ID when sane, else a new one).",
    "schema": {"type": "string"},
}


def operation_id(route: APIRoute) -> str:
    """The route's name in camelCase: ``list_models`` -> ``listModels``."""
    first, *rest = route.name.split("_")
    return first + "".join(word.capitalize() for word in rest)


def build_schema(app: FastAPI, settings: Settings) -> dict[str, Any]:
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    keyed = settings.api_key is not None
    curl = code_samples()
    for path, path_item in schema.get("paths", {}).items():
        for method, operation in path_item.items():
            if isinstance(operation, dict):
                _complete_operation(operation, curl.get((method, path)), keyed)
    for body in _multipart_bodies(schema):
        _complete_body(body, settings)
    return schema


def _complete_operation(operation: dict[str, Any], samples: list[dict[str, str]] | None, keyed: bool) -> None:
    if samples:
        operation["x-codeSamples"] = samples
    responses = operation.get("responses", {})
    if not keyed:
        responses.pop("401", None)
    for code, response in responses.items():
        if code[:1] in ("4", "5"):
            response["content"] = {"application/problem+json": {"schema": PROBLEM_REF}}
        if code == "200" or code[:1] in ("4", "5"):
            response.setdefault("headers", {})[REQUEST_ID_HEADER] = REQUEST_ID_DOC


def _multipart_bodies(schema: dict[str, Any]) -> list[dict[str, Any]]:
    """The object schemas of every multipart/form-data request body (FastAPI's ``Body_*``)."""
    components = schema.get("components", {}).get("schemas", {})
    out = []
    for path_item in schema.get("paths", {}).values():
        for operation in path_item.values():
            content = operation.get("requestBody", {}).get("content", {}) if isinstance(operation, dict) else {}
            body = content.get("multipart/form-data", {}).get("schema")
            if body and "$ref" in body:
                body = components.get(body["$ref"].rsplit("/", 1)[-1])
            if body:
                out.append(body)
    return out


def _complete_body(body: dict[str, Any], settings: Settings) -> None:
    body["additionalProperties"] = False
    properties = body.get("properties", {})
    for name, field in list(properties.items()):
        options = field.get("anyOf", [])
        files = [o for o in options if _is_file(o)]
        if files and len(options) == 2 and {"type": "null"} in options:
            # an optional file part (``image_id`` may stand in for it) is one that may be left
            # out, not one that may be "null": the part's schema alone, not required
            field.pop("anyOf")
            properties[name] = field = {**files[0], **field}
        for option in field.get("anyOf", [field]):
            if _is_file(option):
                _mark_binary(option)
                option["minLength"] = 1
                option["maxLength"] = settings.max_upload_bytes
            elif option.get("type") == "array" and _is_file(option.get("items", {})):
                # a batch part that is empty, too large or no image gets its own problem in the
                # 200 answer (the others are still classified): no length bounds on the items
                _mark_binary(option["items"])
                option["minItems"] = 1
                option["maxItems"] = settings.max_batch_images


def _is_file(schema: dict[str, Any]) -> bool:
    return schema.get("type") == "string" and ("contentMediaType" in schema or schema.get("format") == "binary")


def _mark_binary(schema: dict[str, Any]) -> None:
    """Both styles: OpenAPI 3.0's ``format: binary`` and 3.1's ``contentMediaType``."""
    schema["format"] = "binary"
    schema.setdefault("contentMediaType", "application/octet-stream")
