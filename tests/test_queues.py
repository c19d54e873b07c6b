"""Queue waiters resume in their own context, and the stdlib queue behaviour is intact."""

from __future__ import annotations

import asyncio
import sys
import types
from typing import Any

import pytest
from conftest import tracer
from waiting import Scenario, until_blocked

import aiotrace


def _full(q: Any) -> None:
    q.put_nowait(0)


def _done_one(q: Any) -> None:
    q.get_nowait()
    q.task_done()


SCENARIOS = {
    "Queue.get": Scenario(
        make=lambda ns: ns.Queue(), wait=lambda q: q.get(), wake=lambda q: q.put_nowait(1)
    ),
    "Queue.put": Scenario(
        make=lambda ns: ns.Queue(maxsize=1),
        prepare=_full,
        wait=lambda q: q.put(1),
        wake=lambda q: q.get_nowait(),
    ),
    "Queue.join": Scenario(
        make=lambda ns: ns.Queue(), prepare=_full, wait=lambda q: q.join(), wake=_done_one
    ),
    "PriorityQueue.get": Scenario(
        make=lambda ns: ns.PriorityQueue(), wait=lambda q: q.get(), wake=lambda q: q.put_nowait(1)
    ),
    "LifoQueue.get": Scenario(
        make=lambda ns: ns.LifoQueue(), wait=lambda q: q.get(), wake=lambda q: q.put_nowait(1)
    ),
}

STDLIB = types.SimpleNamespace(
    Queue=asyncio.Queue, PriorityQueue=asyncio.PriorityQueue, LifoQueue=asyncio.LifoQueue
)
PROPAGATING = types.SimpleNamespace(
    Queue=aiotrace.PropagatingQueue,
    PriorityQueue=aiotrace.PropagatingPriorityQueue,
    LifoQueue=aiotrace.PropagatingLifoQueue,
)


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_stdlib_waiter_resumes_in_wakers_context_on_a_dropping_loop(drop_run, spans, scenario):
    drop_run(SCENARIOS[scenario].run(STDLIB, tracer))
    assert spans.parent("after") == "waker"


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_stdlib_waiter_resumes_in_own_context_on_honest_loops(honest_run, spans, scenario):
    honest_run(SCENARIOS[scenario].run(STDLIB, tracer))
    assert spans.parent("after") == "waiter"


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_propagating_waiter_resumes_in_own_context(run, spans, scenario):
    run(SCENARIOS[scenario].run(PROPAGATING, tracer))
    assert spans.parent("after") == "waiter"


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_installed_asyncio_queues_resume_waiter_in_own_context(run, spans, scenario):
    aiotrace.install()
    run(SCENARIOS[scenario].run(asyncio, tracer))
    assert spans.parent("after") == "waiter"


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_patch_queue_false_leaves_the_stdlib_failure(drop_run, spans, scenario):
    # Queue.join() waits on an asyncio.Event: leave the locks unpatched too.
    aiotrace.install(patch_queue=False, patch_locks=False)
    assert asyncio.Queue is STDLIB.Queue
    drop_run(SCENARIOS[scenario].run(asyncio, tracer))
    assert spans.parent("after") == "waker"


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
