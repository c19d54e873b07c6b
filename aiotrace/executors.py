"""Thread-pool hand-offs that keep the caller's OpenTelemetry context.

``loop.run_in_executor`` and ``ThreadPoolExecutor.submit`` run the callable in a worker thread
with that thread's own context, so spans opened there are new roots (``asyncio.to_thread`` is the
exception: it copies the context itself). Running the callable inside
``contextvars.copy_context().run`` fixes that; because every job gets its own copy, a reused
worker thread never carries one job's context into the next.

Both the stock loop and uvloop implement ``run_in_executor`` as
``executor.submit(func, *args)`` (read in CPython's ``asyncio/base_events.py`` and uvloop's
``loop.pyx``), so :func:`aiotrace.install` patches ``ThreadPoolExecutor.submit`` once and
covers every loop and direct submissions alike.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
from typing import Any, Callable, Optional, TypeVar

__all__ = ["patched_submit", "run_in_executor_with_context"]

_T = TypeVar("_T")


def _runs_in_a_context(fn: Callable[..., Any]) -> bool:
    """True for ``ctx.run`` and ``functools.partial(ctx.run, ...)`` (what ``asyncio.to_thread``
    submits): such a callable already carries its context, wrapping it again would only cost."""
    if isinstance(fn, functools.partial):
        fn = fn.func
    return isinstance(getattr(fn, "__self__", None), contextvars.Context)


def run_in_executor_with_context(
    executor: Optional[concurrent.futures.Executor], func: Callable[..., _T], *args: Any
) -> asyncio.Future[_T]:
    """Like ``loop.run_in_executor(executor, func, *args)`` on the running loop, but ``func``
    runs with the caller's context (OpenTelemetry's included).

    ``executor=None`` means the loop's default executor. Works on any loop, with or without
    :func:`aiotrace.install`. The executor must run callables in this process (a thread pool):
    a ``contextvars.Context`` cannot be sent to another process.
    """
    if isinstance(executor, concurrent.futures.ProcessPoolExecutor):
        raise TypeError(
            "run_in_executor_with_context() needs an executor that runs callables in this "
            "process, such as ThreadPoolExecutor; got a ProcessPoolExecutor"
        )
    loop = asyncio.get_running_loop()
    return loop.run_in_executor(executor, contextvars.copy_context().run, func, *args)


def patched_submit(original: Callable[..., Any]) -> Callable[..., Any]:
    """``ThreadPoolExecutor.submit`` that runs each job in a copy of the submitter's context;
    what :func:`aiotrace.install` puts in place of ``original``."""

    @functools.wraps(original)
    def submit(
        self: concurrent.futures.Executor, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[Any]:
        if _runs_in_a_context(fn):
            return original(self, fn, *args, **kwargs)
        return original(self, contextvars.copy_context().run, fn, *args, **kwargs)

    return submit
