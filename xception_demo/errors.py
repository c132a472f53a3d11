"""How a failure reaches the person at the terminal: one line on stderr, never a traceback."""

from __future__ import annotations

import sys

from . import PROG


class CommandError(Exception):
    """A failure to report as one line on stderr."""


def _run(command) -> str:
    """How this program words a command of a weights error's remedy (``xception_core.weights.Command``)."""
    return f"run: {command.line(PROG)}"


def describe(exc: Exception) -> str | None:
    """The one-line message for an expected failure; ``None`` for a bug (it keeps its traceback)."""
    # Only a loaded core can have raised a weights error (the UI image has no core at all).
    weights = sys.modules.get("xception_core.weights")
    if weights is not None and isinstance(exc, weights.WeightsError):
        return exc.explain(_run)
    if isinstance(exc, CommandError):
        return str(exc)
    if isinstance(exc, ModuleNotFoundError):  # e.g. `predict` in the UI image, which has no PyTorch
        return f"this command needs the Python package {exc.name!r}, which is not installed here"
    if isinstance(exc, KeyError):  # str() of a KeyError is the repr of its argument
        return str(exc.args[0]) if exc.args else "missing key"
    if isinstance(exc, (ValueError, FileNotFoundError, OSError)):
        return str(exc)
    return None
