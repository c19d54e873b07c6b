"""Lock, Event, Semaphore, BoundedSemaphore and Condition waiters resume in their own context."""

from __future__ import annotations

import asyncio
import types
from typing import Any

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


SCENARIOS = {
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


def _with_flag(cond: Any) -> Any:
    cond.ready = False
    return cond


STDLIB = types.SimpleNamespace(
    Lock=asyncio.Lock,
    Event=asyncio.Event,
    Semaphore=asyncio.Semaphore,
    BoundedSemaphore=asyncio.BoundedSemaphore,
    Condition=asyncio.Condition,
)
PROPAGATING = types.SimpleNamespace(
    Lock=aiotrace.PropagatingLock,
    Event=aiotrace.PropagatingEvent,
    Semaphore=aiotrace.PropagatingSemaphore,
    BoundedSemaphore=aiotrace.PropagatingBoundedSemaphore,
    Condition=aiotrace.PropagatingCondition,
)


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_stdlib_waiter_resumes_in_wakers_context_on_a_dropping_loop(drop_run, spans, scenario):
    """The failure aiotrace exists for: without it the waiter's next span gets the waker's
    parent. (On the stock loop and uvloop the stdlib is right; see the next test.)"""
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
def test_installed_asyncio_classes_resume_waiter_in_own_context(run, spans, scenario):
    aiotrace.install()
    run(SCENARIOS[scenario].run(asyncio, tracer))
    assert spans.parent("after") == "waiter"


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_patch_locks_false_leaves_the_stdlib_failure(drop_run, spans, scenario):
    # Without the queue group either, the dropping loop is not repaired (``loop_context`` goes
    # with the waiter groups, see test_loops.py).
    aiotrace.install(patch_locks=False, patch_queue=False)
    assert asyncio.Lock is STDLIB.Lock
    assert "loop_context" not in aiotrace.installed()
    drop_run(SCENARIOS[scenario].run(asyncio, tracer))
    assert spans.parent("after") == "waker"


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_patch_locks_false_leaves_asyncio_classes_on_a_repaired_loop(drop_run, spans, scenario):
    """With the queue group on, the dropping loop is repaired: asyncio's own classes, left in
    place by ``patch_locks=False``, resume their waiters in their own context too."""
    aiotrace.install(patch_locks=False)
    assert asyncio.Lock is STDLIB.Lock
    drop_run(SCENARIOS[scenario].run(asyncio, tracer))
    assert spans.parent("after") == "waiter"


def test_cancelled_waiter_resumes_in_own_context(run, spans):
    """A waiter that is cancelled while parked also gets its context back before its
    ``except``/``finally`` runs."""

    async def main() -> None:
        from waiting import current_span_name, enter_span, until_blocked

        lock = aiotrace.PropagatingLock()
        await lock.acquire()
        seen = []

        async def waiter() -> None:
            enter_span(tracer, "waiter").end()
            try:
                await lock.acquire()
            except asyncio.CancelledError:
                seen.append(current_span_name())
                raise

        task = asyncio.ensure_future(waiter())
        await until_blocked(task)
        enter_span(tracer, "canceller").end()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert seen == ["waiter"]

    run(main())


def test_condition_keeps_an_explicit_lock(run):
    async def main() -> None:
        lock = asyncio.Lock()
        cond = aiotrace.PropagatingCondition(lock)
        async with cond:
            assert lock.locked()
        default = aiotrace.PropagatingCondition()
        assert isinstance(default._lock, aiotrace.PropagatingLock)

    run(main())


def test_stdlib_behaviour_is_kept(run):
    async def main() -> None:
        sem = aiotrace.PropagatingBoundedSemaphore(1)
        await sem.acquire()
        sem.release()
        with pytest.raises(ValueError):
            sem.release()
        lock = aiotrace.PropagatingLock()
        async with lock:
            assert lock.locked()
        assert not lock.locked()
        with pytest.raises(RuntimeError):
            lock.release()
        event = aiotrace.PropagatingEvent()
        assert not event.is_set()
        event.set()
        assert await event.wait() is True
        assert await asyncio.wait_for(event.wait(), 1) is True

    run(main())
