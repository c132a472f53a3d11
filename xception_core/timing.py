"""Timing that decides between ways of computing the same thing (bf16 or fp32, one engine or another).

Both the deletion / insertion curve engine (:mod:`xception_core.attributions.fast`) and feature
visualisation's ``auto`` precision (:mod:`xception_core.featurevis`) pick the faster of a few
callables once, at run time, with :func:`best_times`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import torch

__all__ = ["best_times", "sync"]


def sync(device: torch.device | None) -> None:
    """Wait for queued CUDA work, so a wall-clock timing covers it."""
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def best_times(
    calls: Sequence[Callable[[], object]], rounds: int = 2, device: torch.device | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> list[float]:
    """Each call's best time over ``rounds`` interleaved rounds, after one untimed call each:
    interleaved, a machine's changing load reaches all of them alike. ``device``: its queued
    CUDA work is waited for before and after each timed call."""
    for call in calls:
        call()
    best = [math.inf] * len(calls)
    for _ in range(rounds):
        for i, call in enumerate(calls):
            sync(device)
            t0 = clock()
            call()
            sync(device)
            best[i] = min(best[i], clock() - t0)
    return best
