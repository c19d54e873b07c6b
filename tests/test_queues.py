"""The stdlib queue behaviour is intact, explicit and installed (the waiter suite shared with
the locks is tests/test_waiters.py)."""

from __future__ import annotations

import asyncio
import sys
import types
from typing import Any

import pytest
from waiting import until_blocked

import aiotrace

PROPAGATING = types.SimpleNamespace(
    Queue=aiotrace.PropagatingQueue,
    PriorityQueue=aiotrace.PropagatingPriorityQueue,
    LifoQueue=aiotrace.PropagatingLifoQueue,
)


def _kinds() -> Any:
    """The queue classes under test: explicit ones and the ones install() puts in asyncio."""
    return pytest.mark.parametrize("kind", ["propagating", "installed"])


def _classes(kind: str) -> Any:
    if kind == "installed":
        aiotrace.install()
        return asyncio
    return PROPAGATING


@_kinds()
def test_ordering_of_fifo_priority_and_lifo(honest_run, kind):
    ns = _classes(kind)

    async def main() -> None:
        fifo, prio, lifo = ns.Queue(), ns.PriorityQueue(), ns.LifoQueue()
        for item in (3, 1, 2):
            await fifo.put(item)
            await prio.put(item)
            lifo.put_nowait(item)
        assert [await fifo.get() for _ in range(3)] == [3, 1, 2]
        assert [await prio.get() for _ in range(3)] == [1, 2, 3]
        assert [lifo.get_nowait() for _ in range(3)] == [2, 1, 3]

    honest_run(main())


@_kinds()
def test_maxsize_full_empty_and_nowait(honest_run, kind):
    ns = _classes(kind)

    async def main() -> None:
        q = ns.Queue(maxsize=2)
        assert (q.maxsize, q.qsize(), q.empty(), q.full()) == (2, 0, True, False)
        q.put_nowait("a")
        q.put_nowait("b")
        assert q.full()
        with pytest.raises(asyncio.QueueFull):
            q.put_nowait("c")
        assert [q.get_nowait(), q.get_nowait()] == ["a", "b"]
        with pytest.raises(asyncio.QueueEmpty):
            q.get_nowait()

    honest_run(main())


@_kinds()
def test_task_done_and_join(honest_run, kind):
    ns = _classes(kind)

    async def main() -> None:
        q = ns.Queue()
        for i in range(3):
            q.put_nowait(i)
        processed = []

        async def worker() -> None:
            while True:
                processed.append(await q.get())
                q.task_done()

        task = asyncio.ensure_future(worker())
        await q.join()
        assert processed == [0, 1, 2]
        with pytest.raises(ValueError):
            q.task_done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    honest_run(main())


@_kinds()
def test_cancelled_getter_does_not_lose_items(honest_run, kind):
    ns = _classes(kind)

    async def main() -> None:
        q = ns.Queue()
        getter = asyncio.ensure_future(q.get())
        await until_blocked(getter)
        getter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await getter
        q.put_nowait("x")
        assert await q.get() == "x"
        assert q.empty()

    honest_run(main())


@pytest.mark.skipif(sys.version_info < (3, 9), reason="asyncio.Queue is generic from 3.9 on")
def test_generic_alias_like_the_stdlib():
    assert aiotrace.PropagatingQueue[int].__origin__ is aiotrace.PropagatingQueue
    aiotrace.install()
    assert asyncio.Queue[int].__origin__ is asyncio.Queue
