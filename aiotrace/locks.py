"""Synchronisation primitives whose waiters resume in their own OpenTelemetry context.

A task that blocks in ``Lock.acquire()``, ``Event.wait()``, ``Semaphore.acquire()`` or
``Condition.wait()`` is woken by another task. asyncio resumes it through
``loop.call_soon(..., context=task_context)``; a loop that ignores ``context=`` resumes it inside
a copy of the *waker's* context instead, and the waiter's next span gets the waker's parent.
These subclasses remember the waiter's OpenTelemetry context before it blocks and put it back
when it resumes (see :func:`aiotrace._otel.restore`). On the stock loop and uvloop the context is
already right and the cost is one lookup and one identity test per wait.

Behaviour is otherwise the stdlib's: these are subclasses, every other method is inherited.
Where the stdlib would not wait at all, they take its own fast path first, so an uncontended
acquire costs what it costs in the stdlib. Those fast paths read ``_locked``, ``_waiters`` and
``_value``, which every CPython from 3.8 to 3.13 has (read in their ``asyncio/locks.py``); their
conditions are stricter than the stdlib's, so they never take what the stdlib would wait for.

Each class writes its save-await-restore out in full, alike as they are: a shared helper
coroutine (or a decorator) would add a frame to every await chain that waits here, which
aiotrace's replacements never do (CONTRIBUTING.md, "Code").
"""

from __future__ import annotations

import asyncio
from typing import Any, Optional

from ._otel import get_current, restore

__all__ = [
    "PropagatingBoundedSemaphore",
    "PropagatingCondition",
    "PropagatingEvent",
    "PropagatingLock",
    "PropagatingSemaphore",
]


class PropagatingLock(asyncio.locks.Lock):
    """``asyncio.Lock`` whose waiters resume in the OpenTelemetry context they blocked in."""

    async def acquire(self) -> bool:
        if not self._locked and not self._waiters:  # type: ignore[attr-defined]
            self._locked = True  # type: ignore[attr-defined]
            return True
        saved = get_current()
        try:
            return await super().acquire()
        finally:
            restore(saved)


class PropagatingEvent(asyncio.locks.Event):
    """``asyncio.Event`` whose waiters resume in the OpenTelemetry context they blocked in."""

    async def wait(self) -> bool:
        if self.is_set():
            return True
        saved = get_current()
        try:
            return await super().wait()
        finally:
            restore(saved)


class PropagatingSemaphore(asyncio.locks.Semaphore):
    """``asyncio.Semaphore`` whose waiters resume in the OpenTelemetry context they blocked in."""

    async def acquire(self) -> bool:
        if self._value > 0 and not self._waiters:  # type: ignore[attr-defined]
            self._value -= 1  # type: ignore[attr-defined]
            return True
        saved = get_current()
        try:
            return await super().acquire()
        finally:
            restore(saved)


class PropagatingBoundedSemaphore(PropagatingSemaphore, asyncio.locks.BoundedSemaphore):
    """``asyncio.BoundedSemaphore`` with the guarantee of :class:`PropagatingSemaphore`."""


class PropagatingCondition(asyncio.locks.Condition):
    """``asyncio.Condition`` whose waiters resume in the OpenTelemetry context they blocked in.

    Without an explicit ``lock`` it creates a :class:`PropagatingLock`, so that ``async with
    condition:`` is covered as well as ``wait()``.
    """

    def __init__(self, lock: Optional[asyncio.Lock] = None, **kwargs: Any) -> None:
        # ``kwargs`` carries the ``loop=`` argument that Python 3.8 and 3.9 still accept.
        if lock is None:
            try:
                lock = PropagatingLock(**kwargs)
            except TypeError:
                # An argument the stdlib refuses (``loop=`` from 3.10 on): let Condition say so
                # itself, with its own message, as it does without aiotrace.
                lock = None
        super().__init__(lock, **kwargs)

    async def wait(self) -> bool:
        saved = get_current()
        try:
            return await super().wait()
        finally:
            restore(saved)
