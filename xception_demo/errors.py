"""How a failure reaches the person at the terminal: one line on stderr, never a traceback."""

from __future__ import annotations


class CommandError(Exception):
    """A failure to report as one line on stderr."""


def describe(exc: Exception) -> str | None:
    """The one-line message for an expected failure; ``None`` for a bug (it keeps its traceback)."""
    if isinstance(exc, CommandError):
        return str(exc)
    if isinstance(exc, ModuleNotFoundError):  # e.g. `predict` in the UI image, which has no PyTorch
        return f"this command needs the Python package {exc.name!r}, which is not installed here"
    if isinstance(exc, KeyError):  # str() of a KeyError is the repr of its argument
        return str(exc.args[0]) if exc.args else "missing key"
    if isinstance(exc, (ValueError, FileNotFoundError, OSError)):
        return str(exc)
    from xception_core.weights import WeightsError  # not at the top: the UI image has no core

    if isinstance(exc, WeightsError):
        return str(exc)
    return None
