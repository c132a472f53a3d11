"""Bounded thread pools for model work, and per-request deadlines.

The event loop never runs torch (nor Pillow): every decode, forward pass,
capture and attribution is submitted to a :class:`WorkPool`. Each pool has a
fixed number of threads and a bound on queued jobs; past the bound a request
is refused with 503 and ``Retry-After`` instead of queueing without limit.

A :class:`Deadline` covers a whole request (queueing included). When it passes
the request answers 504 at once; a job that had not started is dropped, a job
that is running finishes in the background (attributions check the deadline
during their forward passes and stop early, see :mod:`api.features.attributions`). Running out
of (GPU) memory answers 503 after ``torch.cuda.empty_cache()``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import torch

from .errors import ApiError, translate
from .metrics import Metrics

log = logging.getLogger("api.workers")
T = TypeVar("T")


class DeadlineExceeded(Exception):
    """Raised inside a job that noticed its request's deadline passed."""


class Deadline:
    """A request's time budget, from when it was set (the request's ``timing_ms`` counts from then)."""

    def __init__(self, seconds: float, kind: str) -> None:
        self.seconds = float(seconds)
        self.kind = kind
        self.started = time.monotonic()
        self.at = self.started + self.seconds

    def remaining(self) -> float:
        return self.at - time.monotonic()

    def elapsed_ms(self) -> float:
        return (time.monotonic() - self.started) * 1000

    def expired(self) -> bool:
        return time.monotonic() >= self.at

    def check(self) -> None:
        if self.expired():
            raise DeadlineExceeded(self.kind)

    def error(self) -> ApiError:
        return ApiError(
            504,
            "deadline-exceeded",
            f"the {self.kind} request ran past its deadline of {self.seconds:g} s; retry later, or ask for "
            f"less work (fewer steps or samples, a smaller internal_batch_size, fewer channels)",
            title="Gateway Timeout",
        )


def is_oom(exc: BaseException) -> bool:
    oom_type = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def release_gpu_memory() -> None:
    if torch.cuda.is_available():
        try:
            torch.cuda.empty_cache()
        except Exception:  # noqa: BLE001 - best effort
            log.warning("torch.cuda.empty_cache failed", exc_info=True)


class WorkPool:
    def __init__(self, name: str, workers: int, max_pending: int, metrics: Metrics | None = None) -> None:
        self.name = name
        self.workers = int(workers)
        self.max_pending = int(max_pending)
        self.metrics = metrics
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._pending = 0
        self._lock = threading.Lock()

    @property
    def pending(self) -> int:
        return self._pending

    def _set_gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.labels(self.name).set(self._pending)

    def _done(self, _fut: concurrent.futures.Future) -> None:
        with self._lock:
            self._pending -= 1
            self._set_gauge()

    def _call(self, fn: Callable[..., T], args: tuple, kwargs: dict, device: str) -> T:
        try:
            return fn(*args, **kwargs)
        except BaseException as exc:
            if is_oom(exc):
                release_gpu_memory()
                if self.metrics is not None:
                    self.metrics.oom.labels(device).inc()
                log.warning("out of memory in %s pool; cache released", self.name)
                raise ApiError(
                    503,
                    "out-of-memory",
                    "the device ran out of memory for this request; retry, or ask for less work "
                    "(smaller internal_batch_size, fewer steps or samples)",
                    headers={"Retry-After": "5"},
                ) from None
            if isinstance(exc, Exception) and not isinstance(exc, (ApiError, DeadlineExceeded)):
                translated = translate(exc)
                if translated is not None:
                    raise translated from exc
            raise

    async def run(self, fn: Callable[..., T], *args: Any, deadline: Deadline | None = None, device: str = "cpu", **kwargs: Any) -> T:
        if deadline is not None and deadline.expired():
            raise deadline.error()
        with self._lock:
            if self._pending >= self.max_pending:
                if self.metrics is not None:
                    self.metrics.rejected.labels(self.name).inc()
                raise ApiError(
                    503,
                    "server-busy",
                    f"the {self.name} queue is full ({self.max_pending} jobs); retry in a moment",
                    headers={"Retry-After": "1"},
                )
            self._pending += 1
            self._set_gauge()
        ctx = contextvars.copy_context()
        try:
            cfut = self._get_executor().submit(ctx.run, self._call, fn, args, kwargs, device)
        except RuntimeError:  # executor shut down
            self._done(None)  # type: ignore[arg-type]
            raise ApiError(503, "shutting-down", "the service is shutting down; retry shortly", headers={"Retry-After": "5"}) from None
        cfut.add_done_callback(self._done)
        afut = asyncio.wrap_future(cfut)
        afut.add_done_callback(_consume)
        try:
            if deadline is None:
                return await asyncio.shield(afut)
            return await asyncio.wait_for(asyncio.shield(afut), timeout=max(deadline.remaining(), 0.0))
        except (TimeoutError, asyncio.TimeoutError):
            cfut.cancel()
            if self.metrics is not None and deadline is not None:
                self.metrics.timeouts.labels(deadline.kind).inc()
            raise deadline.error() from None  # type: ignore[union-attr]
        except DeadlineExceeded:
            if self.metrics is not None and deadline is not None:
                self.metrics.timeouts.labels(deadline.kind).inc()
            raise (deadline.error() if deadline is not None else ApiError(504, "deadline-exceeded", "deadline exceeded")) from None
        except asyncio.CancelledError:
            cfut.cancel()
            raise

    def _get_executor(self) -> concurrent.futures.ThreadPoolExecutor:
        # Created on first use (and again after a shutdown: an app's lifespan can run more than once).
        with self._lock:
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix=f"xception-{self.name}")
            return self._executor

    def shutdown(self) -> None:
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)


def _consume(fut: asyncio.Future) -> None:
    """Retrieve the exception of a job nobody awaits any more (no 'never retrieved' noise)."""
    if not fut.cancelled():
        fut.exception()
