"""What an attribution run needs from torch around the method: seeded RNGs, precision.

Random methods (smoothgrad, gradient SHAP, and the infidelity and sensitivity figures) draw
from torch's and NumPy's global generators inside Captum. They run seeded inside
:func:`seeded`: ``torch.random.fork_rng`` with NumPy's state saved and restored, under one
process-wide lock, so results are reproducible and the caller's RNG state is left untouched.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import numpy as np
import torch

# Captum draws from the global torch / NumPy generators; seeding them is only
# reproducible if no other seeded section runs at the same time.
_RNG_LOCK = threading.Lock()


@contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Global torch and NumPy generators seeded with ``seed``; restored afterwards."""
    devices = [device] if device.type == "cuda" else []
    with _RNG_LOCK, torch.random.fork_rng(devices=devices, device_type=device.type if devices else "cuda"):
        np_state = np.random.get_state()
        try:
            torch.manual_seed(seed)
            np.random.seed(seed)
            yield
        finally:
            np.random.set_state(np_state)


#: Precisions an attribution can run in: float32, or bfloat16 autocast (where the hardware has it).
ATTRIBUTION_PRECISIONS = ("fp32", "bf16")


def autocast(precision: str, device: torch.device) -> AbstractContextManager:
    """The autocast context of ``precision`` on ``device``: none for fp32, bfloat16 for bf16."""
    if precision == "fp32":
        return nullcontext()
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    raise ValueError(f"unknown attribution precision {precision!r}; expected one of {', '.join(ATTRIBUTION_PRECISIONS)}")
