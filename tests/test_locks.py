"""Lock, Event, Semaphore, BoundedSemaphore and Condition: what is particular to them (the
waiter suite shared with the queues is tests/test_waiters.py)."""

from __future__ import annotations

import asyncio
import sys

import pytest
from conftest import tracer

import aiotrace


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


def test_condition_refuses_loop_as_the_stdlib_does(run):
    """``loop=``: refused by asyncio.Condition from Python 3.10 on, with its own message (run
    here on 3.8-3.15); 3.8 and 3.9 still accept it, with a DeprecationWarning. On 3.10 that
    message names the class of the instance ("... from PropagatingCondition() ..."), on 3.11+
    it does not (checked on 3.10.13 and 3.11.7): compared with a plain asyncio subclass of the
    same name."""
    import warnings

    async def main() -> None:
        loop = asyncio.get_running_loop()
        if sys.version_info >= (3, 10):
            plain = type("PropagatingCondition", (asyncio.Condition,), {})
            with pytest.raises(TypeError) as stock:
                plain(loop=loop)
            with pytest.raises(TypeError) as ours:
                aiotrace.PropagatingCondition(loop=loop)
            assert str(ours.value) == str(stock.value)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                cond = aiotrace.PropagatingCondition(loop=loop)
            assert isinstance(cond._lock, aiotrace.PropagatingLock)
            async with cond:
                assert cond.locked()

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
