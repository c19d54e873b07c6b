"""Queues whose blocked producers and consumers resume in their own OpenTelemetry context.

``Queue.get()`` on an empty queue and ``Queue.put()`` on a full one park the task until another
task wakes it; ``join()`` parks it until every item is done. Like the primitives in
:mod:`aiotrace.locks`, these subclasses remember the waiter's OpenTelemetry context before it
blocks and put it back when it resumes, so a loop that drops ``call_soon(..., context=)`` cannot
hand the waiter its waker's span. Everything else is the stdlib's behaviour.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ._otel import get_current, restore

__all__ = ["PropagatingLifoQueue", "PropagatingPriorityQueue", "PropagatingQueue"]


class PropagatingQueue(asyncio.Queue):  # type: ignore[type-arg]
    """``asyncio.Queue`` whose waiters resume in the OpenTelemetry context they blocked in."""

    async def get(self) -> Any:
        if not self.empty():  # the stdlib's own first test: nothing to wait for
            return self.get_nowait()
        saved = get_current()
        try:
            return await super().get()
        finally:
            restore(saved)

    async def put(self, item: Any) -> None:
        if not self.full():  # the stdlib's own first test: nothing to wait for
            return self.put_nowait(item)
        saved = get_current()
        try:
            return await super().put(item)
        finally:
            restore(saved)

    async def join(self) -> None:
        saved = get_current()
        try:
            return await super().join()
        finally:
            restore(saved)


class PropagatingPriorityQueue(PropagatingQueue, asyncio.PriorityQueue):  # type: ignore[type-arg]
    """``asyncio.PriorityQueue`` with the guarantee of :class:`PropagatingQueue`."""


class PropagatingLifoQueue(PropagatingQueue, asyncio.LifoQueue):  # type: ignore[type-arg]
    """``asyncio.LifoQueue`` with the guarantee of :class:`PropagatingQueue`."""
