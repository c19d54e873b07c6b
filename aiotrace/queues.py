"""Queues that keep each item's trace, and whose waiters resume in their own context.

Two things are lost when work travels through a stock ``asyncio.Queue``:

- *The item's trace.* The consumer only ever runs in its own context (often the span that was
  current when the worker task was created), so the work done for a request is cut off from it.
  These queues remember, for every item, the OpenTelemetry context of the ``put``/``put_nowait``
  that enqueued it. Plain ``get()`` is unchanged; :meth:`PropagatingQueue.consume` processes an
  item in (``mode="parent"``) or linked to (``mode="link"``) its producer's trace, and
  :meth:`PropagatingQueue.get_with_context` returns ``(item, context)``.
- *The waiter's context.* ``get()`` on an empty queue, ``put()`` on a full one and ``join()``
  park the task until another task wakes it. Like :mod:`aiotrace.locks`, these remember the
  waiter's context before it blocks and put it back when it resumes, so a loop that drops
  ``call_soon(..., context=)`` cannot hand the waiter its waker's span.

The producer contexts are kept beside the items, never with them: the items in ``_queue`` are
the caller's own objects (``repr``, subclasses and the heap order see exactly what the stdlib
would), contexts are never compared (a ``PriorityQueue`` of equal items heap-compares only the
items), and items need not be hashable or weak-referenceable. The hooks are the stdlib's own
storage methods ``_put``/``_get``, whose bodies are the same on CPython 3.8-3.13 (read in their
``asyncio/queues.py``) and through which every way in and out passes, 3.13's
``shutdown(immediate=True)`` included; every other method (``task_done``/``join``,
``maxsize``, ``qsize``, ``shutdown``) is inherited.
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import weakref
from typing import Any, AsyncContextManager, Awaitable, Callable, Dict, Optional, Tuple, Type

from ._otel import Context, attach, get_current, restore

__all__ = [
    "CONSUME_MODES",
    "PropagatingLifoQueue",
    "PropagatingPriorityQueue",
    "PropagatingQueue",
]

CONSUME_MODES: Tuple[str, ...] = ("parent", "link")


class PropagatingQueue(asyncio.queues.Queue):  # type: ignore[type-arg]
    """``asyncio.Queue`` that remembers each item's producer context, and whose waiters resume
    in the OpenTelemetry context they blocked in."""

    def __init__(self, maxsize: int = 0, **kwargs: Any) -> None:  # kwargs: ``loop`` (3.8, 3.9)
        # Here rather than in ``_init``: a subclass that replaces ``_init`` with its own storage
        # and keeps our ``_put``/``_get`` must still find the context store. A subclass with
        # its own ``_get`` may take items without calling ours, and then nothing takes their
        # contexts out again: its store empties itself whenever it holds as many contexts as
        # the queue holds items (a check our own classes, whose ``_get`` always takes one
        # out, do not pay on every item).
        # The producer context of the item the last ``_get`` returned (None: unknown). An
        # instance attribute from the start, not a class-level default: on CPython 3.12+ a
        # class attribute of the same name stops the interpreter from specialising the store
        # in ``_get`` (measured: 0.4 µs more per item on 3.13).
        self._aiotrace_last: Optional[Context] = None
        self._aiotrace_producers = self._aiotrace_new_store()
        super().__init__(maxsize, **kwargs)

    def _aiotrace_new_store(self) -> Any:
        if type(self)._get in _CONTEXT_KEEPING_GETS:
            return self._aiotrace_store()
        return self._aiotrace_bounded_store(weakref.ref(self))

    # -- pickling and copying: the stdlib queue's own state --------------------------------------

    def __getstate__(self) -> Dict[str, Any]:
        """The stdlib queue's state, without the producers' contexts: they stay in this process
        (an SDK span holds a lock; a context means nothing in another process), and a copy
        shares none with its original. The copy knows no item's producer, as for items put
        before ``install()``."""
        state = self.__dict__.copy()
        state.pop("_aiotrace_producers", None)
        state.pop("_aiotrace_last", None)
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        """Also for a stock queue's state (pickled without aiotrace, loaded with it)."""
        self.__dict__.update(state)
        self._aiotrace_last = None
        self._aiotrace_producers = self._aiotrace_new_store()

    @staticmethod
    def _aiotrace_store() -> Any:
        return collections.deque()

    @staticmethod
    def _aiotrace_bounded_store(owner: Any) -> Any:
        return _BoundedDeque(owner)

    # -- storage: the stdlib's bodies, plus the producer context beside each item --------------

    # Kept to the fewest operations (every item passes here twice): whether the contexts still
    # line up with the items is checked where a context is handed out (``get_with_context``),
    # not on every ``get()``, whose callers never see one.

    def _put(self, item: Any) -> None:
        queue, producers = self._queue, self._aiotrace_producers  # type: ignore[attr-defined]
        if not queue and producers:
            producers.clear()  # left by items taken behind our back (``q._queue.clear()``)
        queue.append(item)
        producers.append(get_current())

    def _get(self) -> Any:
        item = self._queue.popleft()  # type: ignore[attr-defined]
        producers = self._aiotrace_producers
        self._aiotrace_last = producers.popleft() if producers else None
        return item

    def _aiotrace_take_last(self) -> Optional[Context]:
        """The producer context of the item the last ``_get`` returned, if it is known to be
        that item's: when ``_queue`` was changed behind our back (``q._queue.clear()``, an
        item appended to it directly), no context is known to belong to any item still in
        it, and a wrong one is worse than none."""
        otel_ctx, self._aiotrace_last = self._aiotrace_last, None
        producers = self._aiotrace_producers
        if len(producers) != len(self._queue):  # type: ignore[attr-defined]
            producers.clear()
            return None
        return otel_ctx

    # -- waiting: resume in the waiter's own context ---------------------------------------------

    async def get(self) -> Any:
        if not self.empty():  # the stdlib's own first test: nothing to wait for
            return self.get_nowait()
        saved = get_current()
        try:
            return await super().get()
        finally:
            if get_current() is not saved:  # ``restore(saved)``, inlined: once per wait
                attach(saved)

    async def put(self, item: Any) -> None:
        if not self.full():  # the stdlib's own first test: nothing to wait for
            return self.put_nowait(item)
        saved = get_current()
        try:
            await super().put(item)
            # ``_put`` ran just now, in whatever context the loop resumed us in (on a loop that
            # drops ``context=``, the waker's): the item's producer is the context we blocked in.
            self._aiotrace_set_last_producer(item, saved)
        finally:
            restore(saved)

    def _aiotrace_set_last_producer(self, item: Any, otel_ctx: Context) -> None:
        producers = self._aiotrace_producers
        if producers and len(producers) == len(self._queue):  # type: ignore[attr-defined]
            producers[-1] = otel_ctx

    async def join(self) -> None:
        saved = get_current()
        try:
            return await super().join()
        finally:
            restore(saved)

    # -- hand-off --------------------------------------------------------------------------------

    async def get_with_context(self) -> Tuple[Any, Optional[Context]]:
        """Remove and return ``(item, producer_context)``, waiting like ``get()`` (this class's:
        a subclass's override of ``get`` is not called).

        ``producer_context`` is the OpenTelemetry context that was current where the item was
        put (``put``/``put_nowait``), or None if it is not known (the item reached ``_queue``
        some other way). The caller's own context is not changed.
        """
        # Our own ``get``, not a subclass's (which might await after taking the item): it
        # returns straight from ``_get``, so no other consumer has replaced the value since.
        item = await PropagatingQueue.get(self)
        return item, self._aiotrace_take_last()

    def get_nowait_with_context(self) -> Tuple[Any, Optional[Context]]:
        """``get_nowait()`` that also returns the producer context, like
        :meth:`get_with_context`. Raises ``asyncio.QueueEmpty`` as ``get_nowait()`` does."""
        item = self.get_nowait()
        return item, self._aiotrace_take_last()

    def consume(
        self, mode: str = "parent", *, span_name: str = "process"
    ) -> AsyncContextManager[Any]:
        """``async with queue.consume() as item:`` gets the next item (waiting like ``get()``)
        and runs the block in its producer's trace; the consumer's own context is back after it.

        ``mode="parent"`` (the default) makes the producer's context current for the block:
        spans started there are children of the span that was current at ``put``, in the same
        trace, and its baggage comes along. ``mode="link"`` starts a new trace instead: the
        block runs in a root span ``span_name`` of kind ``CONSUMER`` that carries a link to the
        producer's span (and the producer's baggage); it ends with the block and records an
        exception that leaves it. If the producer context is unknown, ``parent`` leaves the
        consumer's context as it is and ``link`` starts its span without a link.

        ``task_done()`` is not called for you, as with ``get()``.
        """
        check_consume_mode(mode)
        return _Consumption(self, mode == "link", span_name)


def check_consume_mode(mode: str) -> None:
    """Raise ``ValueError`` naming the accepted modes unless ``mode`` is one of them."""
    if mode not in CONSUME_MODES:
        raise ValueError(f"unknown consume mode {mode!r}; accepted: {', '.join(CONSUME_MODES)}")


class PropagatingPriorityQueue(PropagatingQueue, asyncio.queues.PriorityQueue):  # type: ignore[type-arg]
    """``asyncio.PriorityQueue`` with the hand-off and guarantees of :class:`PropagatingQueue`.

    The heap holds the items alone; producer contexts are kept by item identity, so the heap
    compares exactly what the stdlib's would and never a context. The same object enqueued
    several times hands its contexts out in the order they were put.
    """

    @staticmethod
    def _aiotrace_store() -> Any:
        return {}

    @staticmethod
    def _aiotrace_bounded_store(owner: Any) -> Any:
        return _BoundedDict(owner)

    def _put(self, item: Any, heappush: Any = heapq.heappush) -> None:
        queue, producers = self._queue, self._aiotrace_producers  # type: ignore[attr-defined]
        if not queue and producers:
            producers.clear()  # see PropagatingQueue._put
        heappush(queue, item)
        otel_ctx = get_current()
        key = id(item)  # unique while the queue holds the item
        held = producers.get(key)
        if held is None:
            producers[key] = otel_ctx
        elif type(held) is _Several:
            held.append(otel_ctx)
        else:
            producers[key] = _Several((held, otel_ctx))

    def _get(self, heappop: Any = heapq.heappop) -> Any:
        queue, producers = self._queue, self._aiotrace_producers  # type: ignore[attr-defined]
        item = heappop(queue)
        otel_ctx = producers.pop(id(item), None)
        if type(otel_ctx) is _Several:
            several, otel_ctx = otel_ctx, otel_ctx.popleft()
            if several:
                producers[id(item)] = several
        if not queue and producers:
            # Left by items that went out of ``_queue`` behind our back (``q._queue.remove()``);
            # a new item reusing such an identity would pick one up. Empty is the moment every
            # held context is known to be stale.
            producers.clear()
        self._aiotrace_last = otel_ctx
        return item

    def _aiotrace_take_last(self) -> Optional[Context]:
        # Contexts are kept by identity, not position: nothing to line up.
        otel_ctx, self._aiotrace_last = self._aiotrace_last, None
        return otel_ctx

    def _aiotrace_set_last_producer(self, item: Any, otel_ctx: Context) -> None:
        producers = self._aiotrace_producers
        held = producers.get(id(item))
        if type(held) is _Several:
            held[-1] = otel_ctx
        elif held is not None:
            producers[id(item)] = otel_ctx


class PropagatingLifoQueue(PropagatingQueue, asyncio.queues.LifoQueue):  # type: ignore[type-arg]
    """``asyncio.LifoQueue`` with the hand-off and guarantees of :class:`PropagatingQueue`."""

    @staticmethod
    def _aiotrace_store() -> Any:
        return []

    # ``_put`` is PropagatingQueue's: both append to the end of ``_queue``. The bounded store
    # is PropagatingQueue's too: a deque has the list methods ``_put`` and ``_get`` call.

    def _get(self) -> Any:
        item = self._queue.pop()  # type: ignore[attr-defined]
        producers = self._aiotrace_producers
        self._aiotrace_last = producers.pop() if producers else None
        return item


_CONTEXT_KEEPING_GETS = frozenset(
    {PropagatingQueue._get, PropagatingPriorityQueue._get, PropagatingLifoQueue._get}
)


def _holds_too_many(store: Any) -> bool:
    """Whether a bounded store holds as many contexts as its queue holds items (its queue
    having just received one more): then some went out without our ``_get``."""
    owner = store.owner()
    return owner is not None and len(store) >= len(owner._queue)


class _BoundedDeque(collections.deque):  # type: ignore[type-arg]
    """The context store of a ``PropagatingQueue``/``PropagatingLifoQueue`` subclass with its
    own ``_get`` (see ``PropagatingQueue.__init__``)."""

    def __init__(self, owner: weakref.ref[Any]) -> None:
        super().__init__()
        self.owner = owner

    def append(self, otel_ctx: Any) -> None:
        if _holds_too_many(self):
            self.clear()
        super().append(otel_ctx)


class _BoundedDict(dict):  # type: ignore[type-arg]
    """The context store of a ``PropagatingPriorityQueue`` subclass with its own ``_get``."""

    def __init__(self, owner: weakref.ref[Any]) -> None:
        super().__init__()
        self.owner = owner

    def __setitem__(self, key: Any, value: Any) -> None:
        if _holds_too_many(self):
            self.clear()
        super().__setitem__(key, value)


class _Several(collections.deque):  # type: ignore[type-arg]
    """The producer contexts of one object enqueued several times (oldest first)."""


class _Consumption:
    """The async context manager returned by :meth:`PropagatingQueue.consume` and
    :func:`aiotrace.consume`. ``receive``: how to take ``(item, producer_context)`` from a
    source that is not a queue (an anyio stream, see :mod:`aiotrace.handoff`)."""

    __slots__ = ("_link", "_previous", "_queue", "_receive", "_span", "_span_name")

    def __init__(
        self,
        queue: Any,
        link: bool,
        span_name: str,
        receive: Optional[Callable[[Any], Awaitable[Tuple[Any, Optional[Context]]]]] = None,
    ) -> None:
        self._queue = queue
        self._link = link
        self._span_name = span_name
        self._receive = receive
        self._span: Any = None
        self._previous: Optional[Context] = None

    async def __aenter__(self) -> Any:
        queue = self._queue
        if self._receive is not None:
            item, producer = await self._receive(queue)
        elif queue.empty():
            item, producer = await queue.get_with_context()
        else:
            item, producer = queue.get_nowait_with_context()
        self._previous = get_current()
        if self._link:
            from opentelemetry import trace

            # Unknown producer: no link (get_current_span(None) would read the consumer's span).
            producer_span = trace.get_current_span(
                Context() if producer is None else producer
            ).get_span_context()
            self._span = span = trace.get_tracer("aiotrace").start_span(
                self._span_name,
                context=Context(),
                kind=trace.SpanKind.CONSUMER,
                links=[trace.Link(producer_span)] if producer_span.is_valid else None,
            )
            base = self._previous if producer is None else producer
            attach(trace.set_span_in_context(span, base))
        elif producer is not None:
            attach(producer)
        return item

    async def __aexit__(self, exc_type: Optional[Type[BaseException]], exc: Any, tb: Any) -> None:
        span, self._span = self._span, None
        try:
            if span is not None:
                if exc is not None and span.is_recording():
                    from opentelemetry.trace import Status, StatusCode

                    span.record_exception(exc)
                    span.set_status(Status(StatusCode.ERROR, f"{exc_type.__name__}: {exc}"))  # type: ignore[union-attr]
                span.end()
        finally:
            # Set back rather than ``detach(token)``: on a loop that drops ``context=`` the block
            # may resume in another ``contextvars.Context``, where resetting the token fails
            # (OpenTelemetry logs "Failed to detach context"). On other loops both are the same.
            restore(self._previous)  # type: ignore[arg-type]
            self._previous = None
