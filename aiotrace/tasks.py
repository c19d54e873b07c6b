"""Task creation with a caller-chosen OpenTelemetry context.

asyncio already gives every new task a copy of its creator's context, so spans nest correctly
through ``create_task``, ``ensure_future``, ``gather`` and ``TaskGroup`` on every loop (the tests
prove it and keep it so). What asyncio lacks is a way to start a task under *another*
OpenTelemetry context: detached from the caller's span (``otel_ctx=Context()``), in a new trace
linked to it (``otel_ctx=linked_root()``, for work that outlives a request), or under a span
that was handed over from elsewhere. This module adds that without a wrapper coroutine, so
``task.get_coro()``, ``name=``, ``context=`` and eager task factories behave as before.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import sys
from typing import Any, Callable, Coroutine, Mapping, Optional, Tuple, TypeVar

from ._lookalike import like
from ._otel import Context, context_with, get_current

__all__ = ["PropagatingTaskGroup", "create_task_with_context", "linked_root", "spawn_in"]

_T = TypeVar("_T")

# ``create_task(..., context=)`` exists from Python 3.11 on. Before that, creating the task
# while ``context.run`` is active gives the task a copy of that context, which is equivalent.
_HAS_CONTEXT_KW = sys.version_info >= (3, 11)


def spawn_in(
    create: Callable[..., asyncio.Task[_T]],
    coro: Coroutine[Any, Any, _T],
    otel_ctx: Optional[Context],
    kwargs: dict,
) -> asyncio.Task[_T]:
    """Call ``create(coro, **kwargs)`` so that the task starts with ``otel_ctx`` current.

    ``create`` is any ``create_task``-like callable. With ``otel_ctx=None`` this is exactly
    ``create(coro, **kwargs)``. A caller's ``context=`` is copied, never changed.
    """
    if otel_ctx is None:
        return create(coro, **kwargs)
    span = None
    if type(otel_ctx) is LinkedRoot:
        span, otel_ctx = otel_ctx.start(coro)
    ctx = context_with(otel_ctx, kwargs.pop("context", None))
    try:
        if _HAS_CONTEXT_KW:
            task = create(coro, context=ctx, **kwargs)
        else:
            task = ctx.run(create, coro, **kwargs)
    except BaseException:
        if span is not None:
            span.end()
        raise
    if span is not None:
        task.add_done_callback(functools.partial(_end_linked_root, span))
    return task


class LinkedRoot(Context):
    """The ``otel_ctx=`` value made by :func:`linked_root`. As a plain context it is empty."""

    def __init__(self, span_name: Optional[str], attributes: Optional[Mapping[str, Any]]) -> None:
        super().__init__()
        self.span_name = span_name
        self.attributes = attributes

    def start(self, coro: Any) -> Tuple[Any, Context]:
        """Start the task's root span, linked to the current span; return it and the
        OpenTelemetry context the task starts with."""
        from opentelemetry import trace

        current = get_current()
        caller = trace.get_current_span(current).get_span_context()
        span = trace.get_tracer("aiotrace").start_span(
            self.span_name or getattr(coro, "__qualname__", None) or "background",
            context=Context(),
            links=[trace.Link(caller)] if caller.is_valid else None,
            attributes=self.attributes,
        )
        return span, trace.set_span_in_context(span, current)


def linked_root(
    span_name: Optional[str] = None, *, attributes: Optional[Mapping[str, Any]] = None
) -> Context:
    """An ``otel_ctx=`` for background work that outlives the caller's request.

    ``create_task_with_context(coro, otel_ctx=linked_root())`` (likewise
    ``PropagatingTaskGroup.create_task`` and, after :func:`aiotrace.install`,
    ``asyncio.create_task``) starts the task in a new trace: its root span, named ``span_name``
    (default: the coroutine's qualified name), starts now, carries a link to the span current
    here and ends when the task is done, recording the exception it failed with (never
    marking that exception as retrieved: asyncio still reports it if nobody awaits the task).
    Everything else in the caller's OpenTelemetry context, baggage included, comes along.
    ``otel_ctx=opentelemetry.context.Context()`` is the unlinked form: no span, no baggage.
    """
    return LinkedRoot(span_name, attributes)


def _end_linked_root(span: Any, task: asyncio.Future[Any]) -> None:
    # ``_exception`` is readable on the C and Python tasks of CPython 3.8-3.13 and uvloop's
    # (checked by running), and unlike ``exception()`` it leaves "never retrieved" reporting on.
    exc = None if task.cancelled() else getattr(task, "_exception", None)
    if exc is not None and span.is_recording():
        from opentelemetry.trace import Status, StatusCode

        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
    span.end()


def create_task_with_context(
    coro: Coroutine[Any, Any, _T],
    *,
    name: Optional[str] = None,
    otel_ctx: Optional[Context] = None,
    **kwargs: Any,
) -> asyncio.Task[_T]:
    """Schedule ``coro`` on the running loop as a task whose OpenTelemetry context is ``otel_ctx``.

    With ``otel_ctx=None`` (the default) the task starts with the caller's current context, as
    ``asyncio.create_task`` does. ``otel_ctx=opentelemetry.context.Context()`` starts it detached
    from the caller's span: its first span is a new root; ``otel_ctx=linked_root()`` also
    detaches it, in a new trace whose root span links back to the caller's span (background
    work that outlives the request, see :func:`linked_root`). Other keyword arguments (``context=``
    on Python 3.11+, ``eager_start=`` on 3.14+) go to ``loop.create_task`` unchanged; with both
    ``context=`` and ``otel_ctx=``, the task runs in a copy of ``context`` with ``otel_ctx`` set.
    """
    loop = asyncio.get_running_loop()
    if name is not None:
        kwargs["name"] = name
    return spawn_in(loop.create_task, coro, otel_ctx, kwargs)


def patched_create_task(original: Callable[..., asyncio.Task[Any]]) -> Callable[..., Any]:
    """``asyncio.create_task`` that also accepts ``otel_ctx=``; what :func:`aiotrace.install`
    puts in place of ``original``.

    The wrapper spells out ``original``'s own keyword arguments instead of forwarding
    ``**kwargs``: building and unpacking a dict on every call cost about 0.2 µs (measured with
    scripts/bench_overhead.py on CPython 3.11), which task creation should not pay.
    """
    accepted = inspect.signature(original).parameters
    create_task: Callable[..., Any]
    if any(p.kind is p.VAR_KEYWORD for p in accepted.values()) or not {"name"} <= set(accepted):

        def create_task(
            coro: Coroutine[Any, Any, _T], *, otel_ctx: Optional[Context] = None, **kwargs: Any
        ) -> asyncio.Task[_T]:
            return spawn_in(original, coro, otel_ctx, kwargs)

    elif "context" in accepted:  # Python 3.11-3.13

        def create_task(
            coro: Coroutine[Any, Any, _T],
            *,
            name: Optional[str] = None,
            context: Optional[contextvars.Context] = None,
            otel_ctx: Optional[Context] = None,
        ) -> asyncio.Task[_T]:
            if otel_ctx is None:
                return original(coro, name=name, context=context)
            return spawn_in(original, coro, otel_ctx, {"name": name, "context": context})

    else:  # Python 3.8-3.10

        def create_task(
            coro: Coroutine[Any, Any, _T],
            *,
            name: Optional[str] = None,
            otel_ctx: Optional[Context] = None,
        ) -> asyncio.Task[_T]:
            if otel_ctx is None:
                return original(coro, name=name)
            return spawn_in(original, coro, otel_ctx, {"name": name})

    return like(original)(create_task)


if sys.version_info >= (3, 11):

    class PropagatingTaskGroup(asyncio.taskgroups.TaskGroup):
        """``asyncio.TaskGroup`` whose ``create_task`` also accepts ``otel_ctx=``.

        Children start with the context current at ``create_task`` (as in the stdlib), or with
        ``otel_ctx`` when it is given (``otel_ctx=linked_root()``: a new trace linked to the
        caller's span).
        """

        def create_task(  # type: ignore[override]
            self,
            coro: Coroutine[Any, Any, _T],
            *,
            otel_ctx: Optional[Context] = None,
            **kwargs: Any,
        ) -> asyncio.Task[_T]:
            return spawn_in(super().create_task, coro, otel_ctx, kwargs)

else:

    class PropagatingTaskGroup:
        """Placeholder: ``asyncio.TaskGroup`` exists from Python 3.11 on."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            raise RuntimeError(
                "PropagatingTaskGroup needs asyncio.TaskGroup, which exists from Python 3.11 on; "
                f"this is Python {sys.version_info[0]}.{sys.version_info[1]}"
            )
