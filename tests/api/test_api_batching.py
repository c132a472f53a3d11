"""The micro-batcher on its own: grouping, order, errors, dropped waiters, idle exit."""

from __future__ import annotations

import asyncio

import pytest

from api.batching import MicroBatcher


def make(max_size=4, wait=0.05, idle=60.0, fail=False):
    calls: list[list[int]] = []

    def run(items):
        calls.append(list(items))
        if fail:
            raise ValueError("boom")
        return [i * 10 for i in items]

    async def execute(fn, items):
        await asyncio.sleep(0.01)  # stands in for the worker pool
        return fn(items)

    return MicroBatcher(run, execute, max_size=max_size, max_wait_s=wait, idle_exit_s=idle), calls


def test_concurrent_items_are_grouped_and_answered_in_order():
    async def main():
        b, calls = make(max_size=4)
        results = await asyncio.gather(*(b.submit(i) for i in range(10)))
        await b.close()
        return results, calls

    results, calls = asyncio.run(main())
    assert results == [i * 10 for i in range(10)]
    assert sorted(i for c in calls for i in c) == list(range(10))
    assert max(len(c) for c in calls) == 4 and len(calls) < 10


def test_an_error_reaches_every_waiter_of_the_batch_and_the_batcher_goes_on():
    async def main():
        b, _ = make(fail=True)
        out = await asyncio.gather(*(b.submit(i) for i in range(3)), return_exceptions=True)
        b.run_batch = lambda items: [0 for _ in items]
        after = await b.submit(5)
        await b.close()
        return out, after

    out, after = asyncio.run(main())
    assert all(isinstance(e, ValueError) for e in out) and after == 0


def test_a_waiter_that_gave_up_is_dropped_from_its_batch():
    async def main():
        b, calls = make(wait=0.2)
        task = asyncio.ensure_future(b.submit(1))
        await asyncio.sleep(0.02)
        task.cancel()
        result = await b.submit(2)
        await b.close()
        return result, calls

    result, calls = asyncio.run(main())
    assert result == 20 and calls == [[2]]


def test_idle_worker_ends_and_restarts():
    async def main():
        b, _ = make(wait=0.0, idle=0.05)
        assert await b.submit(1) == 10
        await asyncio.sleep(0.2)
        ended = b._task.done()
        again = await b.submit(2)
        await b.close()
        return ended, again

    ended, again = asyncio.run(main())
    assert ended and again == 20


@pytest.mark.parametrize("n", [1, 16])
def test_single_and_full_batches(n):
    async def main():
        b, calls = make(max_size=16, wait=0.01)
        out = await asyncio.gather(*(b.submit(i) for i in range(n)))
        await b.close()
        return out, calls

    out, calls = asyncio.run(main())
    assert out == [i * 10 for i in range(n)] and len(calls) == 1


def _expecting(wait: float) -> tuple[MicroBatcher, list[list[int]]]:
    b, calls = make(max_size=8, wait=wait)
    b.wait_only_when_expected = True
    return b, calls


def test_a_lone_request_does_not_wait_for_company():
    async def main():
        b, calls = _expecting(wait=5.0)  # the old rule would hold it for 5 s
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        out = await b.submit(3)
        elapsed = loop.time() - t0
        await b.close()
        return out, elapsed, calls

    out, elapsed, calls = asyncio.run(main())
    assert out == 30 and calls == [[3]] and elapsed < 1.0


def test_announced_requests_join_the_batch_being_formed():
    async def main():
        b, calls = _expecting(wait=5.0)
        for _ in range(4):
            b.expect()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        first = b.enqueue(0, expected=True)

        async def late(i: int, delay: float):
            await asyncio.sleep(delay)  # "decoding"
            return await b.enqueue(i, expected=True)

        async def fails(delay: float):
            await asyncio.sleep(delay)
            b.unexpect()  # its image did not decode

        results = await asyncio.gather(first, late(1, 0.05), late(2, 0.1), fails(0.15))
        elapsed = loop.time() - t0
        assert b.expected == 0
        await b.close()
        return results[:3], calls, elapsed

    results, calls, elapsed = asyncio.run(main())
    assert results == [0, 10, 20]
    # the batch waited for the two that came, and stopped waiting when the last one failed
    assert calls == [[0, 1, 2]] and elapsed < 2.0


def test_a_failed_announcement_ends_the_wait_at_max_wait():
    async def main():
        b, calls = _expecting(wait=0.2)
        b.expect()  # announced, never comes
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        out = await b.submit(7)
        elapsed = loop.time() - t0
        b.unexpect()
        await b.close()
        return out, elapsed, calls

    out, elapsed, calls = asyncio.run(main())
    assert out == 70 and calls == [[7]] and 0.15 < elapsed < 2.0
