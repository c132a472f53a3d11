"""What goes wrong before an attribution runs: unknown methods, bad parameters, bad inputs.

Every class is a ``ValueError`` (through :class:`AttributionError`). The subclasses of
:class:`ParamError` say *how* a parameter is wrong, so a caller (the REST API) can answer
each in its own words without parsing messages.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..introspect import UnknownLayerError


class AttributionError(ValueError):
    """Base class of every attribution error."""


class UnknownMethodError(AttributionError):
    """A method name not in the catalogue; ``choices`` are the valid ones."""

    def __init__(self, message: str, choices: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.choices = tuple(choices)


class ParamError(AttributionError):
    """A parameter that is unknown, of the wrong type or out of range, or a wrong ``layer`` / ``part``.

    ``param`` names the offending parameter (``"target"``, ``"layer"``, ...).
    """

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class MissingParamError(ParamError):
    """A parameter the method needs was not given (``layer`` for a layer method)."""


class ParamRangeError(ParamError):
    """A number outside what the method accepts; ``allowed_range`` is ``(lo, hi)`` when it is one interval."""

    def __init__(self, message: str, param: str, allowed_range: tuple[float, float] | None = None) -> None:
        super().__init__(message, param)
        self.allowed_range = allowed_range


class UnknownLayerParamError(ParamError, UnknownLayerError):
    """``layer`` names no separable layer of the model; ``choices`` are the valid names.

    Also an :class:`~xception_core.introspect.UnknownLayerError`, so code that catches the
    model's unknown-layer error catches this one too.
    """

    def __init__(self, layer: str, choices: Sequence[str]) -> None:
        self.choices = tuple(choices)
        self.message = f"unknown layer {layer!r}; valid choices: {', '.join(self.choices)}"
        ParamError.__init__(self, self.message, "layer")


class InputError(AttributionError):
    """The input tensor is not one finite ``[1, 3, H, W]`` image, or the logits given with it do not fit."""
