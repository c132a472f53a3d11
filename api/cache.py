"""A least-recently-used cache bounded in bytes, safe across threads.

Keys are tuples whose first element is the *kind* of entry (``"input"``,
``"logits"``, ``"layer"``, ``"channel_importance"``); hits and misses are
counted per kind. The service keys everything by ``(kind, model key, sha256 of
the upload, ...)``, where the model key changes when a model's weights change,
so an entry can never outlive the weights it was computed with.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import numpy as np
import torch


def nbytes_of(value: Any) -> int:
    """Approximate memory held by a value (tensors, arrays, containers of them)."""
    if isinstance(value, torch.Tensor):
        return value.element_size() * value.nelement()
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, (bytes, bytearray)):
        return len(value)
    if isinstance(value, dict):
        return sum(nbytes_of(v) for v in value.values()) + 64 * len(value)
    if isinstance(value, (list, tuple)):
        return sum(nbytes_of(v) for v in value) + 8 * len(value)
    return 64


class ByteLRU:
    def __init__(
        self,
        max_bytes: int,
        *,
        on_hit: Callable[[str], None] | None = None,
        on_miss: Callable[[str], None] | None = None,
        on_evict: Callable[[int], None] | None = None,
        on_size: Callable[[int, int], None] | None = None,
    ) -> None:
        self.max_bytes = int(max_bytes)
        #: key -> (value, its own bytes, the ids of its shared parts)
        self._data: OrderedDict[Hashable, tuple[Any, int, tuple[int, ...]]] = OrderedDict()
        #: id of a part several entries may hold -> [its bytes, how many entries hold it, the part]
        self._shared: dict[int, list[Any]] = {}
        self._bytes = 0
        self._lock = threading.Lock()
        self._on_hit, self._on_miss, self._on_evict, self._on_size = on_hit, on_miss, on_evict, on_size
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    @staticmethod
    def _kind(key: Hashable) -> str:
        return str(key[0]) if isinstance(key, tuple) and key else "other"

    def get(self, key: Hashable) -> Any | None:
        with self._lock:
            item = self._data.get(key)
            if item is not None:
                self._data.move_to_end(key)
                self.hits += 1
            else:
                self.misses += 1
        callback = self._on_hit if item is not None else self._on_miss
        if callback is not None:
            callback(self._kind(key))
        return item[0] if item is not None else None

    def peek(self, key: Hashable) -> Any | None:
        """Like :meth:`get` without counting or refreshing."""
        with self._lock:
            item = self._data.get(key)
        return item[0] if item is not None else None

    def put(self, key: Hashable, value: Any, nbytes: int | None = None, *, shared: tuple[Any, ...] = ()) -> bool:
        """Store ``value``; returns False when it alone is larger than the cache. ``shared``: parts
        of ``value`` (arrays) that other entries may hold too, counted once however many entries
        hold them and given back with the last of those; ``nbytes`` (default: measured) counts the
        rest of ``value``."""
        own = nbytes_of(value) if nbytes is None else int(nbytes)
        evicted = 0
        with self._lock:
            if own + sum(nbytes_of(part) for part in shared) > self.max_bytes:
                return False
            old = self._data.pop(key, None)
            for part in shared:  # held before the old entry lets go: a part both hold stays counted
                self._hold(part)
            if old is not None:
                self._release(old)
            self._data[key] = (value, own, tuple(id(part) for part in shared))
            self._bytes += own
            while self._bytes > self.max_bytes and self._data:
                _, item = self._data.popitem(last=False)
                self._release(item)
                evicted += 1
            self.evictions += evicted
            total, count = self._bytes, len(self._data)
        if evicted and self._on_evict is not None:
            self._on_evict(evicted)
        if self._on_size is not None:
            self._on_size(total, count)
        return True

    def _hold(self, part: Any) -> None:
        held = self._shared.get(id(part))
        if held is None:
            held = self._shared[id(part)] = [nbytes_of(part), 0, part]
            self._bytes += held[0]
        held[1] += 1

    def _release(self, item: tuple[Any, int, tuple[int, ...]]) -> None:
        self._bytes -= item[1]
        for ident in item[2]:
            held = self._shared[ident]
            held[1] -= 1
            if held[1] == 0:
                self._bytes -= held[0]
                del self._shared[ident]

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._shared.clear()
            self._bytes = 0
        if self._on_size is not None:
            self._on_size(0, 0)

    @property
    def bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._data

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "entries": len(self._data),
                "bytes": self._bytes,
                "max_bytes": self.max_bytes,
                "hits": self.hits,
                "misses": self.misses,
                "evictions": self.evictions,
            }
