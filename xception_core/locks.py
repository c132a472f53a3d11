"""Per-model readers-writer locks, and :func:`file_lock` between processes.

Captum's layer methods, DeepLift and GuidedBackprop register hooks on modules
of the shared model; while they run, their hooks see every forward pass on
that model from any thread. Such methods hold ``model_lock(model).exclusive()``;
everything that only runs the model (prediction, activation capture, gradient
methods) holds ``.shared()`` and runs concurrently with its peers.
"""

from __future__ import annotations

import fcntl
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from torch import nn


class ModelLock:
    """A readers-writer lock, writer-preferring and not reentrant.

    ``shared()`` for anything that only runs the model (many at once),
    ``exclusive()`` for anything that registers hooks on it.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if self._readers == 0:
                    self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            try:
                while self._writer or self._readers:
                    self._cond.wait()
            finally:
                self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


_LOCKS: weakref.WeakKeyDictionary[nn.Module, ModelLock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def model_lock(model: nn.Module) -> ModelLock:
    """The per-model lock (created on first use, dropped with the model)."""
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = ModelLock()
        return lock


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on the file ``path`` (created, with its folder) while the context runs,
    between processes and between threads alike (``flock`` on a file opened per call); released
    when the file closes, also when the process dies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield
