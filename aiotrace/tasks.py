"""Task creation with a caller-chosen OpenTelemetry context.

asyncio already gives every new task a copy of its creator's context, so spans nest correctly
through ``create_task``, ``ensure_future``, ``gather`` and ``TaskGroup`` on every loop (the tests
prove it and keep it so). What asyncio lacks is a way to start a task under *another*
OpenTelemetry context: detached from the caller's span (``otel_ctx=Context()``), or under a
span that was handed over from elsewhere. This module adds that without a wrapper coroutine, so
``task.get_coro()``, ``name=``, ``context=`` and eager task factories behave as before.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import sys
from typing import Any, Callable, Coroutine, Optional, TypeVar

from ._otel import Context, context_with

__all__ = ["PropagatingTaskGroup", "create_task_with_context", "spawn_in"]

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
    ctx = context_with(otel_ctx, kwargs.pop("context", None))
    if _HAS_CONTEXT_KW:
        return create(coro, context=ctx, **kwargs)
    return ctx.run(create, coro, **kwargs)


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
    from the caller's span: its first span is a new root. Other keyword arguments (``context=``
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

    create_task.__doc__ = original.__doc__
    create_task.__wrapped__ = original  # type: ignore[attr-defined]
    return create_task


if sys.version_info >= (3, 11):

    class PropagatingTaskGroup(asyncio.TaskGroup):
        """``asyncio.TaskGroup`` whose ``create_task`` also accepts ``otel_ctx=``.

        Children start with the context current at ``create_task`` (as in the stdlib), or with
        ``otel_ctx`` when it is given.
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
