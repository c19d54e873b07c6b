"""The classes :func:`aiotrace.install` puts in place of asyncio's own.

``asyncio.Queue`` is replaced by ``aiotrace.aliases.Queue``, a subclass of
:class:`~aiotrace.queues.PropagatingQueue`; likewise for the other queues, the locks and
``TaskGroup``. The only thing an alias adds to its ``Propagating*`` class is compatibility with
code that already holds stdlib objects: ``isinstance(x, asyncio.Queue)`` and
``issubclass(C, asyncio.Queue)`` answer as they would for the stdlib class, so a queue created
before ``install()`` (or a stdlib ``PriorityQueue``, which subclasses the original ``Queue``)
still passes the checks libraries make. The ``Propagating*`` classes themselves make no such
claim: ``isinstance(asyncio_queue, PropagatingQueue)`` stays false.

The methods that wait (``get``/``put``/``join``, ``acquire``, ``wait``) are asyncio's own, set
again in each class body over the ``Propagating*`` wrappers: installed, the waiter guarantee
comes from the ``loop_context`` group, which repairs a loop that drops ``call_soon(context=)``
(:mod:`aiotrace.loops`), so asyncio's coroutines are right on every loop and an await chain holds
no aiotrace frame. What an alias keeps from its ``Propagating*`` class is the queue hand-off
(``_put``/``_get``, ``consume()``, ``get_with_context()``) and ``otel_ctx=``.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any, Dict, Optional, Tuple

from . import locks, queues, tasks

__all__ = ["ALIASES"]


class StdlibAlias(type):
    """Metaclass: instance and subclass checks defer to the stdlib class the alias replaces.

    Only the alias itself defers; a user's subclass of it (``class Mine(asyncio.Queue)`` after
    ``install()``) is created without ``original`` and checks like any other class.
    """

    def __new__(
        mcs,
        name: str,
        bases: Tuple[type, ...],
        namespace: Dict[str, Any],
        original: Optional[type] = None,
    ) -> StdlibAlias:
        namespace["__aiotrace_original__"] = original
        return super().__new__(mcs, name, bases, namespace)

    def __init__(
        cls,
        name: str,
        bases: Tuple[type, ...],
        namespace: Dict[str, Any],
        original: Optional[type] = None,
    ) -> None:
        super().__init__(name, bases, namespace)

    def __instancecheck__(cls, obj: object) -> bool:
        original = vars(cls)["__aiotrace_original__"]
        if original is None:
            return type.__instancecheck__(cls, obj)
        return isinstance(obj, original)

    def __subclasscheck__(cls, sub: type) -> bool:
        original = vars(cls)["__aiotrace_original__"]
        if original is None:
            return type.__subclasscheck__(cls, sub)
        return issubclass(sub, original)


class Queue(queues.PropagatingQueue, metaclass=StdlibAlias, original=asyncio.queues.Queue):
    __doc__ = asyncio.queues.Queue.__doc__
    get = asyncio.queues.Queue.get
    put = asyncio.queues.Queue.put
    join = asyncio.queues.Queue.join


class PriorityQueue(
    queues.PropagatingPriorityQueue, metaclass=StdlibAlias, original=asyncio.queues.PriorityQueue
):
    __doc__ = asyncio.queues.PriorityQueue.__doc__
    get = asyncio.queues.PriorityQueue.get
    put = asyncio.queues.PriorityQueue.put
    join = asyncio.queues.PriorityQueue.join


class LifoQueue(
    queues.PropagatingLifoQueue, metaclass=StdlibAlias, original=asyncio.queues.LifoQueue
):
    __doc__ = asyncio.queues.LifoQueue.__doc__
    get = asyncio.queues.LifoQueue.get
    put = asyncio.queues.LifoQueue.put
    join = asyncio.queues.LifoQueue.join


class Lock(locks.PropagatingLock, metaclass=StdlibAlias, original=asyncio.locks.Lock):
    __doc__ = asyncio.locks.Lock.__doc__
    acquire = asyncio.locks.Lock.acquire


class Event(locks.PropagatingEvent, metaclass=StdlibAlias, original=asyncio.locks.Event):
    __doc__ = asyncio.locks.Event.__doc__
    wait = asyncio.locks.Event.wait


class Semaphore(
    locks.PropagatingSemaphore, metaclass=StdlibAlias, original=asyncio.locks.Semaphore
):
    __doc__ = asyncio.locks.Semaphore.__doc__
    acquire = asyncio.locks.Semaphore.acquire


class BoundedSemaphore(
    locks.PropagatingBoundedSemaphore,
    metaclass=StdlibAlias,
    original=asyncio.locks.BoundedSemaphore,
):
    __doc__ = asyncio.locks.BoundedSemaphore.__doc__
    acquire = asyncio.locks.BoundedSemaphore.acquire


class Condition(
    locks.PropagatingCondition, metaclass=StdlibAlias, original=asyncio.locks.Condition
):
    __doc__ = asyncio.locks.Condition.__doc__
    # asyncio's own: its default lock is ``asyncio.locks.Lock``, this module's ``Lock`` while
    # the ``lock`` group is installed.
    __init__ = asyncio.locks.Condition.__init__
    wait = asyncio.locks.Condition.wait


ALIASES: Dict[str, type] = {
    "Queue": Queue,
    "PriorityQueue": PriorityQueue,
    "LifoQueue": LifoQueue,
    "Lock": Lock,
    "Event": Event,
    "Semaphore": Semaphore,
    "BoundedSemaphore": BoundedSemaphore,
    "Condition": Condition,
}

if sys.version_info >= (3, 11):

    class TaskGroup(
        tasks.PropagatingTaskGroup, metaclass=StdlibAlias, original=asyncio.taskgroups.TaskGroup
    ):
        __doc__ = asyncio.taskgroups.TaskGroup.__doc__

    ALIASES["TaskGroup"] = TaskGroup
