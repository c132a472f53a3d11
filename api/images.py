"""Uploaded images kept for reuse by ``image_id`` (the sha256 of their bytes).

``POST /v1/images`` stores an image; every analysis endpoint stores the image it was sent once
it has decoded it. A later request names it with ``?image_id=...`` instead of sending the body
again. The store is bounded twice: in bytes (``image_store_bytes``, least recently used first
out) and in time (``image_store_ttl_s`` since the image was last stored or used). An id that is
unknown or gone is a 404 problem that says to upload the image again.

The clock is injectable (tests move it by hand, no sleeps).
"""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace

from .errors import ApiError

IMAGE_ID = re.compile(r"[0-9a-f]{64}")
IMAGE_ID_PATTERN = f"^{IMAGE_ID.pattern}$"


@dataclass(frozen=True)
class StoredImage:
    """An image's bytes and what ``POST /v1/images`` reports about it; ``expires_at`` in the
    store's clock (Unix seconds by default)."""

    sha: str
    data: bytes
    width: int | None
    height: int | None
    format: str | None
    expires_at: float


class ImageStore:
    def __init__(self, max_bytes: int, ttl_s: float, clock: Callable[[], float] = time.time) -> None:
        self.max_bytes = int(max_bytes)
        self.ttl_s = float(ttl_s)
        self.clock = clock
        self._items: OrderedDict[str, StoredImage] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.evictions = 0

    def put(self, sha: str, data: bytes, width: int | None = None, height: int | None = None, fmt: str | None = None) -> StoredImage | None:
        """Store (or refresh) an image; None when it alone is over the store's size."""
        size = len(data)
        with self._lock:
            self._expire()
            old = self._items.pop(sha, None)
            if old is not None:
                self._bytes -= len(old.data)
                width, height, fmt = width or old.width, height or old.height, fmt or old.format
            if size > self.max_bytes:
                return None
            item = StoredImage(sha, data, width, height, fmt, self.clock() + self.ttl_s)
            self._items[sha] = item
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, victim = self._items.popitem(last=False)
                self._bytes -= len(victim.data)
                self.evictions += 1
            return item

    def get(self, sha: str) -> StoredImage | None:
        """The image (its lifetime renewed), or None when unknown, evicted or expired."""
        with self._lock:
            self._expire()
            item = self._items.get(sha)
            if item is None:
                return None
            item = replace(item, expires_at=self.clock() + self.ttl_s)
            self._items[sha] = item
            self._items.move_to_end(sha)
            return item

    def require(self, sha: str) -> StoredImage:
        """:meth:`get`, or the 404 problem that says what to do."""
        item = self.get(sha)
        if item is None:
            raise ApiError(
                404,
                "unknown-image-id",
                f"no stored image has image_id {sha}: it was never uploaded here, or it expired or was evicted "
                f"(images are kept {self.ttl_s:g} s after their last use, {self.max_bytes} bytes in all); "
                "upload the image again via POST /v1/images (or send it in the 'image' field) and use the new image_id",
                parameter="image_id",
            )
        return item

    def _expire(self) -> None:
        now = self.clock()
        for sha in [s for s, item in self._items.items() if item.expires_at <= now]:
            self._bytes -= len(self._items.pop(sha).data)
            self.evictions += 1

    def __contains__(self, sha: str) -> bool:
        return self.peek(sha) is not None

    def peek(self, sha: str) -> StoredImage | None:
        """Like :meth:`get`, without renewing (expired items are still not returned)."""
        with self._lock:
            item = self._items.get(sha)
        return item if item is not None and item.expires_at > self.clock() else None

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"entries": len(self._items), "bytes": self._bytes, "max_bytes": self.max_bytes, "evictions": self.evictions}
