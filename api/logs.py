"""Structured logs: one JSON object per line, carrying the request id.

Fields: ``ts`` (UTC, ISO 8601), ``level``, ``logger``, ``message``,
``request_id`` (when inside a request, worker threads included) and whatever a
caller passes as ``extra={...}`` (the access log adds ``method``, ``path``,
``route``, ``status``, ``duration_ms``, ``client``).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone

from .context import request_id_var

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName", "color_message"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", None) or request_id_var.get()
        if rid:
            entry["request_id"] = rid
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in entry and not key.startswith("_"):
                entry[key] = value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        rid = getattr(record, "request_id", None) or request_id_var.get()
        base = super().format(record)
        return f"{base} [{rid}]" if rid else base


_HANDLER_NAME = "xception-api"


def configure(level: str = "INFO", json_logs: bool = True) -> None:
    """Install one stderr handler on the ``api`` and ``uvicorn`` loggers (idempotent)."""
    formatter: logging.Formatter = (
        JsonFormatter() if json_logs else TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    for name in ("api", "uvicorn", "uvicorn.error", "xception_core"):
        logger = logging.getLogger(name)
        logger.setLevel(level)
        for handler in list(logger.handlers):
            if handler.get_name() == _HANDLER_NAME:
                logger.removeHandler(handler)
        if name in ("api", "uvicorn", "xception_core"):
            handler = logging.StreamHandler(sys.stderr)
            handler.set_name(_HANDLER_NAME)
            handler.setFormatter(formatter)
            logger.addHandler(handler)
            logger.propagate = False
    # uvicorn's own access log would duplicate ours (which has the request id).
    logging.getLogger("uvicorn.access").disabled = True
