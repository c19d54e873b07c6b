"""The classes :func:`aiotrace.install` puts in place of asyncio's own.

``asyncio.Queue`` is replaced by ``aiotrace.aliases.Queue``, a subclass of
:class:`~aiotrace.queues.PropagatingQueue`; likewise for the other queues, the locks and
``TaskGroup``. The only thing an alias adds to its ``Propagating*`` class is compatibility with
code that already holds stdlib objects: ``isinstance(x, asyncio.Queue)`` and
``issubclass(C, asyncio.Queue)`` answer as they would for the stdlib class, so a queue created
before ``install()`` (or a stdlib ``PriorityQueue``, which subclasses the original ``Queue``)
still passes the checks libraries make. The ``Propagating*`` classes themselves make no such
claim: ``isinstance(asyncio_queue, PropagatingQueue)`` stays false.

An alias also carries the stdlib class's ``__module__``, ``__qualname__`` and ``__doc__``, and
its metaclass gives it the stdlib class's ``__signature__`` and ``__wrapped__``:
``repr(asyncio.Queue)``, instance reprs and pickles name ``asyncio.queues.Queue`` as without
aiotrace (the reasons are in tests/test_introspection.py). ``type(asyncio.Queue)`` is this
module's ``StdlibAlias``.

The methods that wait (``get``/``put``/``join``, ``acquire``, ``wait``) are asyncio's own, set
again in each class body over the ``Propagating*`` wrappers: installed, the waiter guarantee
comes from the ``loop_context`` group, which repairs a loop that drops ``call_soon(context=)``
(:mod:`aiotrace.loops`), so asyncio's coroutines are right on every loop and an await chain holds
no aiotrace frame. What an alias keeps from its ``Propagating*`` class is the queue hand-off
(``_put``/``_get``, ``consume()``, ``get_with_context()``) and ``otel_ctx=``.
"""

from __future__ import annotations

import asyncio
import copyreg
import sys
from typing import Any, Dict, Optional, Tuple

from . import locks, queues, tasks

__all__ = ["ALIASES", "keep_picklable"]


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
        if original is not None:
            # What introspection, reprs and pickle see: the stdlib class's own names (see the
            # module docstring).
            namespace["__module__"] = original.__module__
            namespace["__qualname__"] = original.__qualname__
        return super().__new__(mcs, name, bases, namespace)

    def __init__(
        cls,
        name: str,
        bases: Tuple[type, ...],
        namespace: Dict[str, Any],
        original: Optional[type] = None,
    ) -> None:
        super().__init__(name, bases, namespace)

    @property
    def __wrapped__(cls) -> type:
        """The stdlib class an alias stands in for (``inspect.signature`` reports its
        signature). A property of the metaclass, so that a user's subclass of an alias, which
        has its own signature, does not inherit it."""
        original = vars(cls)["__aiotrace_original__"]
        if original is None:
            raise AttributeError("__wrapped__")
        return original

    @property
    def __signature__(cls) -> Any:
        """The stdlib class's signature, for ``inspect.signature``, which stopped following a
        class's ``__wrapped__`` (CPython 3.15 ``inspect.unwrap`` skips classes; 3.11 follows)."""
        import inspect

        return inspect.signature(cls.__wrapped__)

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


# The class bodies below look alike on purpose: each names, one line a method, which waiting
# methods are asyncio's own (the module docstring says why), so a reader sees them where the
# class is; generating them would hide exactly that.
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


def _by_alias_name(name: str) -> type:
    """Loads an alias that was pickled while it was not installed (see :func:`_reduce`)."""
    return ALIASES[name]


def _reduce(cls: StdlibAlias) -> Any:
    """How pickle stores an alias class (and so each instance's class): by reference under the
    stdlib name while that name leads to it (installed), as without aiotrace; under its own
    name in this module otherwise (after ``uninstall()``, for an object made before). A user's
    subclass of an alias is stored as any class is."""
    name = cls.__qualname__
    if vars(cls)["__aiotrace_original__"] is None or (
        getattr(sys.modules.get(cls.__module__), name, None) is cls
    ):
        return name
    return (_by_alias_name, (cls.__name__,))


def keep_picklable() -> None:
    """Register :func:`_reduce` with ``copyreg`` for the alias classes; called by
    ``install()`` (importing this module changes nothing outside it)."""
    if copyreg.dispatch_table.get(StdlibAlias) is not _reduce:
        copyreg.pickle(StdlibAlias, _reduce)


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
