"""The API key: whether a request's ``X-API-Key`` is the configured one, and the 401 answer.

Shared by :class:`~api.middleware.ApiKeyMiddleware` (refuses before the body is read) and the
routes' dependency :func:`~api.deps.require_api_key` (documents the key in OpenAPI).
"""

from __future__ import annotations

import hmac

from .errors import ApiError
from .settings import Settings

API_KEY_HEADER = "X-API-Key"


def api_key_valid(settings: Settings, presented: str | None) -> bool:
    if settings.api_key is None:
        return True
    if not presented:
        return False
    return hmac.compare_digest(presented.encode("utf-8", "replace"), settings.api_key.get_secret_value().encode("utf-8"))


def unauthorized(presented: str | None) -> ApiError:
    what = "is missing" if not presented else "is not valid"
    return ApiError(
        401,
        "unauthorized",
        f"the {API_KEY_HEADER} header {what}; send the service's API key in {API_KEY_HEADER}",
        headers={"WWW-Authenticate": f'APIKey header="{API_KEY_HEADER}"'},
    )
