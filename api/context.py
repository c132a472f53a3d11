"""Per-request context shared by logs, errors and worker threads (a ContextVar)."""

from __future__ import annotations

import contextvars

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("xception_request_id", default=None)
