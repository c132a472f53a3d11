"""Sub-commands beyond the core ones: each entry adds its parser to the CLI."""

from __future__ import annotations

REGISTER: list = []
