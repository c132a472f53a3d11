"""Shareable views: the state of the page in its URL (``st.query_params``).

Every run *publishes* what the widgets show (page, model, image, layer, method, display
options...) into the query string, so the address bar always holds a link to the current
view. A value in the URL that this session did not publish itself came from outside (a link
opened in a new tab, or pasted) and is *restored* once into the widget's state before the
widget is drawn -- after checking it: a value that is not valid here (an unknown layer,
method, a number out of range...) is ignored with a notice, never an error.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection, Iterable
from typing import Any

import streamlit as st

PUBLISHED_KEY = "_url_published"
NOTICES_KEY = "_url_notices"
SHA256 = re.compile(r"[0-9a-f]{64}")
MAX_VALUE_CHARS = 200  # no URL value longer than this is looked at


def _published() -> dict[str, str]:
    return st.session_state.setdefault(PUBLISHED_KEY, {})


def incoming(param: str) -> str | None:
    """The URL's value of ``param`` when it came from outside this session (else ``None``); once."""
    raw = st.query_params.get(param)
    if raw is None or raw == _published().get(param):
        return None
    _published()[param] = raw  # consumed: restored (or refused) only once
    return raw


def notice(text: str) -> None:
    """Say that a value of the link was ignored (the page goes on with its default)."""
    st.warning(f"From the link: {text}", icon=":material/link_off:")


def ignored(param: str, raw: str, why: str) -> None:
    notice(f"`{param}={raw[:MAX_VALUE_CHARS]}` is ignored — {why}.")


def publish(param: str, value: Any) -> None:
    """Write ``param`` into the URL (``None``: remove it)."""
    text = None if value is None else _encode(value)
    if text is None:
        if param in st.query_params:
            del st.query_params[param]
        _published().pop(param, None)
        return
    _published()[param] = text
    if st.query_params.get(param) != text:
        st.query_params[param] = text


def publish_all(values: dict[str, Any]) -> None:
    for param, value in values.items():
        publish(param, value)


def _encode(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ",".join(_encode(v) for v in value)
    return str(value)


def parse_int(raw: str) -> int:
    if not re.fullmatch(r"-?\d{1,9}", raw.strip()):
        raise ValueError("not a whole number")
    return int(raw)


def parse_float(raw: str) -> float:
    value = float(raw)
    if not math.isfinite(value):
        raise ValueError("not a finite number")
    return value


def restore(
    param: str,
    key: str,
    options: Collection[Any] | Callable[[Any], bool] | None = None,
    *,
    parse: Callable[[str], Any] = str,
    what: str = "",
) -> Any:
    """Put the link's ``param`` into the widget state ``key`` when it is valid (``options``: the
    allowed values, or a predicate); returns the value restored, or ``None``."""
    raw = incoming(param)
    if raw is None:
        return None
    if len(raw) > MAX_VALUE_CHARS:
        ignored(param, raw, "too long")
        return None
    try:
        value = parse(raw)
    except (ValueError, TypeError):
        ignored(param, raw, f"not {what or 'a valid value'}")
        return None
    allowed = options(value) if callable(options) else options is None or value in options
    if not allowed:
        ignored(param, raw, f"not {what or 'one of the choices'} here")
        return None
    st.session_state[key] = value
    return value


def restore_list(param: str, key: str, options: Iterable[Any], *, what: str, limit: int) -> list[Any] | None:
    """A comma-separated list (e.g. methods): the valid items restored, the others named in a notice."""
    raw = incoming(param)
    if raw is None:
        return None
    allowed = list(options)
    items = [item.strip() for item in raw[:MAX_VALUE_CHARS].split(",") if item.strip()]
    valid = [item for item in dict.fromkeys(items) if item in allowed][:limit]
    rejected = [item for item in items if item not in allowed]
    if rejected:
        notice(f"{', '.join(f'`{r}`' for r in rejected[:5])} in `{param}=` ignored — not {what} here.")
    if not valid:
        return None
    st.session_state[key] = valid
    return valid
