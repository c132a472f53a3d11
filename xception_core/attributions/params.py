"""One method parameter (:class:`Param`): its kind, default and range, and how a value is checked."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from .errors import ParamError, ParamRangeError

ParamKind = Literal["int", "float", "bool", "choice"]
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def format_value(v: Any) -> str:
    """A value as people write it: ``1`` not ``1.0``, ``0.15``, ``1e-05``; ``None`` (no bound) as ``unbounded``."""
    if v is None:
        return "unbounded"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


@dataclass(frozen=True)
class Param:
    """One method parameter: kind, default and (for numbers) inclusive range."""

    name: str
    kind: ParamKind
    default: Any
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] | None = None
    description: str = ""

    def coerce(self, value: Any) -> Any:
        """``value`` converted to this parameter's kind and checked, or :class:`ParamError`.

        Strings are accepted for every kind (query-string values: ``"32"``,
        ``"0.1"``, ``"true"``); floats are not accepted for ints.
        """
        if self.kind == "int":
            out = self._int(value)
        elif self.kind == "float":
            out = self._float(value)
        elif self.kind == "bool":
            out = self._bool(value)
        else:
            out = self._choice(value)
        if self.kind in ("int", "float"):
            lo, hi = self.minimum, self.maximum
            if (lo is not None and out < lo) or (hi is not None and out > hi):
                raise ParamRangeError(
                    f"{self.name} must be between {format_value(lo)} and {format_value(hi)}, got {format_value(out)}",
                    self.name,
                    (lo, hi) if lo is not None and hi is not None else None,
                )
        return out

    def _int(self, value: Any) -> int:
        if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise ParamError(f"{self.name} must be an integer, got {value!r}", self.name)

    def _float(self, value: Any) -> float:
        out: float | None = None
        if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_)):
            out = float(value)
        elif isinstance(value, str):
            try:
                out = float(value.strip())
            except ValueError:
                pass
        if out is None:
            raise ParamError(f"{self.name} must be a number, got {value!r}", self.name)
        if not math.isfinite(out):
            raise ParamError(f"{self.name} must be a finite number, got {value!r}", self.name)
        return out

    def _bool(self, value: Any) -> bool:
        if isinstance(value, (bool, np.bool_)):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ParamError(f"{self.name} must be true or false, got {value!r}", self.name)

    def _choice(self, value: Any) -> str:
        if not isinstance(value, str) or value not in (self.choices or ()):
            raise ParamError(f"{self.name} must be one of {', '.join(self.choices or ())}; got {value!r}", self.name)
        return value

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "default": self.default,
            "description": self.description,
        }
        if self.minimum is not None:
            d["minimum"] = self.minimum
        if self.maximum is not None:
            d["maximum"] = self.maximum
        if self.choices is not None:
            d["choices"] = list(self.choices)
        return d
