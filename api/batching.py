"""Micro-batching of concurrent predictions.

Requests for the same model that arrive within ``max_wait`` of each other are
stacked into one forward pass of at most ``max_size`` images. The first
request of a batch waits at most ``max_wait`` for company; while a batch runs,
new requests queue up and form the next one, so under load batches fill by
themselves.

With ``wait_only_when_expected`` (what the service uses) the first request waits
only while other requests have announced themselves (:meth:`MicroBatcher.expect`:
they are being decoded and will submit within milliseconds): a lone request never
waits, and a burst still shares one forward pass.

Results equal one-at-a-time predictions: the model is in eval mode (BatchNorm
uses its running statistics, nothing mixes images), so each image's logits
depend on that image alone, up to float rounding of the batched kernels
(``tests/api/test_concurrency.py`` compares them).

A request whose deadline passes while it waits is dropped from its batch.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

log = logging.getLogger("api.batching")

In = TypeVar("In")
Out = TypeVar("Out")


class MicroBatcher(Generic[In, Out]):
    """Collects items and runs ``run_batch(items) -> results`` (same order) through ``execute``.

    ``execute(fn, items)`` is an awaitable that runs ``fn(items)`` off the event
    loop (a :class:`~api.workers.WorkPool`). ``on_batch(n)`` observes batch sizes.
    """

    def __init__(
        self,
        run_batch: Callable[[Sequence[In]], Sequence[Out]],
        execute: Callable[[Callable[[Sequence[In]], Sequence[Out]], Sequence[In]], Any],
        *,
        max_size: int = 16,
        max_wait_s: float = 0.005,
        on_batch: Callable[[int], None] | None = None,
        name: str = "batcher",
        idle_exit_s: float = 60.0,
        wait_only_when_expected: bool = False,
    ) -> None:
        self.run_batch = run_batch
        self.execute = execute
        self.max_size = max(1, int(max_size))
        self.max_wait_s = max(0.0, float(max_wait_s))
        self.on_batch = on_batch
        self.name = name
        self.idle_exit_s = idle_exit_s
        self._queue: asyncio.Queue[tuple[In, asyncio.Future]] | None = None
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.wait_only_when_expected = bool(wait_only_when_expected)
        self.expected = 0  # announced submissions still to come (event-loop thread only)
        self._forming = False  # a batch is waiting for company
        self.batches = 0
        self.items = 0

    def _ensure_worker(self) -> asyncio.Queue:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._queue is None:
            self._loop = loop
            self._queue = asyncio.Queue()
            self._task = None
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._worker(self._queue), name=f"microbatcher-{self.name}")
        return self._queue

    def expect(self) -> None:
        """Announce a submission to come; follow with :meth:`submit` (``expected=True``) or
        :meth:`unexpect`. Call on the event loop."""
        self.expected += 1

    def unexpect(self) -> None:
        """An announced submission will not come (its image failed, or the cache answered)."""
        self.expected = max(0, self.expected - 1)
        if self.expected == 0 and self._forming and self._queue is not None:
            self._forming = False
            self._queue.put_nowait(None)  # wake the batch waiting for it

    def enqueue(self, item: In, expected: bool = False) -> asyncio.Future:
        """Queue ``item`` now (synchronously) and return the future of its result; ``expected``:
        it was announced with :meth:`expect`. Cancelling the future drops the item."""
        queue = self._ensure_worker()
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        queue.put_nowait((item, fut))  # the queue is unbounded
        if expected:
            self.expected = max(0, self.expected - 1)
        return fut

    async def submit(self, item: In) -> Out:
        return await self.enqueue(item)

    async def _collect(self, queue: asyncio.Queue) -> list[tuple[In, asyncio.Future]] | None:
        """The next batch; None when nothing came for ``idle_exit_s`` (the worker then ends,
        releasing what it holds; the next ``submit`` starts a new one). ``None`` entries in the
        queue are wake-ups (:meth:`unexpect`), not items."""
        loop = asyncio.get_running_loop()
        idle_until = loop.time() + self.idle_exit_s
        first = None
        while first is None:
            try:
                first = await asyncio.wait_for(queue.get(), max(0.0, idle_until - loop.time()))
            except (TimeoutError, asyncio.TimeoutError):
                return None if queue.empty() else []
        batch = [first]
        deadline = loop.time() + self.max_wait_s
        try:
            self._forming = True
            await self._fill(queue, batch, deadline)
        finally:
            self._forming = False
        return batch

    async def _fill(self, queue: asyncio.Queue, batch: list, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        while len(batch) < self.max_size:
            try:
                got = queue.get_nowait()
            except asyncio.QueueEmpty:
                got = None
            else:
                if got is not None:
                    batch.append(got)
                continue
            remaining = deadline - loop.time()
            if remaining <= 0 or (self.wait_only_when_expected and self.expected <= 0):
                break
            try:
                got = await asyncio.wait_for(queue.get(), remaining)
            except (TimeoutError, asyncio.TimeoutError):
                break
            if got is not None:
                batch.append(got)

    async def _worker(self, queue: asyncio.Queue) -> None:
        while True:
            batch = await self._collect(queue)
            if batch is None:
                return
            live = [(item, fut) for item, fut in batch if not fut.done()]
            if not live:
                continue
            items = [item for item, _ in live]
            try:
                results = await self.execute(self.run_batch, items)
            except asyncio.CancelledError:
                for _, fut in live:
                    if not fut.done():
                        fut.cancel()
                raise
            except BaseException as exc:  # noqa: BLE001 - every waiter gets the error
                for _, fut in live:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            self.batches += 1
            self.items += len(items)
            if self.on_batch is not None:
                self.on_batch(len(items))
            for (_, fut), result in zip(live, results):
                if not fut.done():
                    fut.set_result(result)

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        self._task = None
