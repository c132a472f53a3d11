"""The browser tests reuse the UI tests' helpers (tests/ui/uihelpers.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ui"))
