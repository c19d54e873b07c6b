"""Every primitive that parks a task (locks, events, semaphores, conditions, queues): the
waiter resumes in its own context, on every loop, explicit or installed; switched off, the
stdlib failure is left as it was. One suite, parametrized over the primitives."""

from __future__ import annotations

import asyncio
from typing import Any, Dict

import pytest
from conftest import tracer
from waiting import Scenario

import aiotrace


async def _cond_wait(cond: Any) -> None:
    async with cond:
        await cond.wait()


async def _cond_wait_for(cond: Any) -> None:
    async with cond:
        await cond.wait_for(lambda: cond.ready)


async def _cond_notify(cond: Any) -> None:
    async with cond:
        cond.ready = True
        cond.notify_all()


def _with_flag(cond: Any) -> Any:
    cond.ready = False
    return cond


def _full(q: Any) -> None:
    q.put_nowait(0)


def _done_one(q: Any) -> None:
    q.get_nowait()
    q.task_done()


LOCK_SCENARIOS = {
    "Lock.acquire": Scenario(
        make=lambda ns: ns.Lock(),
        prepare=lambda lock: lock.acquire(),
        wait=lambda lock: lock.acquire(),
        wake=lambda lock: lock.release(),
    ),
    "Event.wait": Scenario(
        make=lambda ns: ns.Event(), wait=lambda ev: ev.wait(), wake=lambda ev: ev.set()
    ),
    "Semaphore.acquire": Scenario(
        make=lambda ns: ns.Semaphore(0), wait=lambda s: s.acquire(), wake=lambda s: s.release()
    ),
    "BoundedSemaphore.acquire": Scenario(
        make=lambda ns: ns.BoundedSemaphore(1),
        prepare=lambda s: s.acquire(),
        wait=lambda s: s.acquire(),
        wake=lambda s: s.release(),
    ),
    "Condition.wait": Scenario(make=lambda ns: ns.Condition(), wait=_cond_wait, wake=_cond_notify),
    "Condition.wait_for": Scenario(
        make=lambda ns: _with_flag(ns.Condition()), wait=_cond_wait_for, wake=_cond_notify
    ),
    "Condition.acquire": Scenario(
        make=lambda ns: ns.Condition(),
        prepare=lambda c: c.acquire(),
        wait=lambda c: c.acquire(),
        wake=lambda c: c.release(),
    ),
}
QUEUE_SCENARIOS = {
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
SCENARIOS = {**LOCK_SCENARIOS, **QUEUE_SCENARIOS}

# install() arguments that leave each family's stdlib classes in place while another waiter
# group is on, so that ``loop_context`` repairs the dropping loop (aiotrace/loops.py).
ONE_FAMILY_OFF: Dict[str, Dict[str, Any]] = {
    **{name: {"patch_locks": False} for name in LOCK_SCENARIOS},
    **{name: {"patch_queue": False} for name in QUEUE_SCENARIOS},
}

PROPAGATING = {
    name: getattr(aiotrace, f"Propagating{name}")
    for name in (
        "Lock",
        "Event",
        "Semaphore",
        "BoundedSemaphore",
        "Condition",
        "Queue",
        "PriorityQueue",
        "LifoQueue",
    )
}


class _Namespace:
    def __init__(self, classes: Dict[str, Any]) -> None:
        self.__dict__.update(classes)


EXPLICIT = _Namespace(PROPAGATING)
# asyncio's own classes, held before any test installs anything.
ORIGINAL = _Namespace({name: getattr(asyncio, name) for name in PROPAGATING})


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_stdlib_waiter_resumes_in_wakers_context_on_a_dropping_loop(drop_run, spans, scenario):
    """The failure aiotrace exists for: without it the waiter's next span gets the waker's
    parent. (On the stock loop and uvloop the stdlib is right; see the next test.)"""
    drop_run(SCENARIOS[scenario].run(ORIGINAL, tracer))
    assert spans.parent("after") == "waker"


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_stdlib_waiter_resumes_in_own_context_on_honest_loops(honest_run, spans, scenario):
    honest_run(SCENARIOS[scenario].run(ORIGINAL, tracer))
    assert spans.parent("after") == "waiter"


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_propagating_waiter_resumes_in_own_context(run, spans, scenario):
    run(SCENARIOS[scenario].run(EXPLICIT, tracer))
    assert spans.parent("after") == "waiter"


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_installed_asyncio_classes_resume_waiter_in_own_context(run, spans, scenario):
    aiotrace.install()
    run(SCENARIOS[scenario].run(asyncio, tracer))
    assert spans.parent("after") == "waiter"


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_switched_off_leaves_the_stdlib_failure(drop_run, spans, scenario):
    # With the queues and the locks off, the dropping loop is not repaired (``loop_context``
    # goes with the waiter groups, see test_loops.py).
    aiotrace.install(patch_locks=False, patch_queue=False)
    assert asyncio.Lock is ORIGINAL.Lock
    assert asyncio.Queue is ORIGINAL.Queue
    assert "loop_context" not in aiotrace.installed()
    drop_run(SCENARIOS[scenario].run(asyncio, tracer))
    assert spans.parent("after") == "waker"


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_one_family_off_leaves_asyncio_classes_on_a_repaired_loop(drop_run, spans, scenario):
    """With the other waiter group on, the dropping loop is repaired: asyncio's own classes,
    left in place by ``patch_locks=False`` (or ``patch_queue=False``), resume their waiters in
    their own context too."""
    aiotrace.install(**ONE_FAMILY_OFF[scenario])
    assert "loop_context" in aiotrace.installed()
    drop_run(SCENARIOS[scenario].run(asyncio, tracer))
    assert spans.parent("after") == "waiter"


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_installed_classes_rely_on_the_repair(drop_run, spans, scenario):
    """Installed, asyncio's classes are aiotrace's aliases, which wait with asyncio's own
    methods: with the repair excluded, the dropping loop's failure shows through them."""
    aiotrace.install(exclude=["loop_context"])
    assert asyncio.Lock is not ORIGINAL.Lock
    drop_run(SCENARIOS[scenario].run(asyncio, tracer))
    assert spans.parent("after") == "waker"
