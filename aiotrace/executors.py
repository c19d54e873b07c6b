"""Executor hand-offs that keep the caller's OpenTelemetry context: thread pools and process pools.

``loop.run_in_executor`` and ``ThreadPoolExecutor.submit`` run the callable in a worker thread
with that thread's own context, so spans opened there are new roots (``asyncio.to_thread`` is the
exception: it copies the context itself). Running the callable inside
``contextvars.copy_context().run`` fixes that; because every job gets its own copy, a reused
worker thread never carries one job's context into the next.

A process pool cannot receive a ``contextvars.Context``. There the context travels as text
through the global OpenTelemetry propagator (:mod:`aiotrace.propagation`): the job becomes
``partial(call_with_carrier, carrier, fn)``, picklable whenever ``fn`` is, and the worker
attaches the carried context around ``fn`` only. Without that, a worker started by ``spawn`` or
``forkserver`` runs every job as a new root, and one started by ``fork`` runs every job under
the span that was current when it was forked (all measured on CPython 3.8-3.13).

Both the stock loop and uvloop implement ``run_in_executor`` as
``executor.submit(func, *args)`` (read in CPython's ``asyncio/base_events.py`` and uvloop's
``loop.pyx``, and exercised by the tests on both loops), so :func:`aiotrace.install` patches
the ``submit`` methods and covers every loop, ``Executor.map`` and direct submissions alike.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import sys
from contextvars import copy_context
from types import BuiltinMethodType, FunctionType
from typing import Any, Callable, Optional, TypeVar

from .propagation import call_with_carrier, inject_context

__all__ = ["patched_process_submit", "patched_submit", "run_in_executor_with_context"]

_T = TypeVar("_T")

# opentelemetry-instrumentation-threading's submit wrapper hands ``submit`` a closure from this
# module that attaches the submitter's context itself.
_OTEL_THREADING = "opentelemetry.instrumentation.threading"


def _carries_its_context(fn: Callable[..., Any]) -> bool:
    """True for ``ctx.run`` and ``functools.partial(ctx.run, ...)`` (what ``asyncio.to_thread``
    submits) and for opentelemetry-instrumentation-threading's wrapper: such a callable already
    runs in its submitter's context, wrapping it again would only cost."""
    if isinstance(fn, functools.partial):
        fn = fn.func
    if type(fn) is BuiltinMethodType:  # ``Context.run`` bound to a context is one
        return isinstance(fn.__self__, contextvars.Context)
    # Not ``getattr(fn, "__self__", None)`` for every callable: on a class (``int``) the lookup
    # fails, and building that AttributeError is measurable per job (scripts/count_instructions.py
    # --only run_in_executor; the benchmark submits ``int``).
    return getattr(fn, "__module__", None) == _OTEL_THREADING


def _is_process_pool(executor: Any) -> bool:
    # Looked up, not imported: importing it imports multiprocessing.
    process = sys.modules.get("concurrent.futures.process")
    return process is not None and isinstance(executor, process.ProcessPoolExecutor)


def _runs_elsewhere(executor: Any) -> bool:
    """Python 3.14's ``InterpreterPoolExecutor``: a ``ThreadPoolExecutor`` subclass that pickles
    each callable (or takes a script string) for another interpreter, where a bound
    ``Context.run`` cannot go (read in CPython 3.14's ``concurrent/futures/interpreter.py``)."""
    interpreter = sys.modules.get("concurrent.futures.interpreter")
    return interpreter is not None and isinstance(executor, interpreter.InterpreterPoolExecutor)


def _is_carried(fn: Callable[..., Any]) -> bool:
    return isinstance(fn, functools.partial) and fn.func is call_with_carrier


def _carried(fn: Callable[..., Any]) -> Callable[..., Any]:
    return functools.partial(call_with_carrier, inject_context(), fn)


def run_in_executor_with_context(
    executor: Optional[concurrent.futures.Executor], func: Callable[..., _T], *args: Any
) -> asyncio.Future[_T]:
    """Like ``loop.run_in_executor(executor, func, *args)`` on the running loop, but ``func``
    runs with the caller's context (OpenTelemetry's included).

    ``executor=None`` means the loop's default executor. Works on any loop, with or without
    :func:`aiotrace.install`. With a ``ProcessPoolExecutor`` only the OpenTelemetry context
    crosses (through the global propagator: the worker's spans join the caller's trace under the
    caller's span); ``func`` and ``args`` must be picklable, as for any process pool.
    """
    loop = asyncio.get_running_loop()
    if _is_process_pool(executor):
        return loop.run_in_executor(executor, _carried(func), *args)
    return loop.run_in_executor(executor, copy_context().run, func, *args)


# ``submit()`` called without a positional callable: Python 3.8 still accepts the deprecated
# ``submit(fn=...)`` (with a DeprecationWarning), later versions raise TypeError. Either way the
# stdlib's own submit decides, exactly as without aiotrace (CPython's test_submit_keyword).
_NO_FN: Any = object()


def patched_submit(original: Callable[..., Any]) -> Callable[..., Any]:
    """``ThreadPoolExecutor.submit`` that runs each job in a copy of the submitter's context;
    what :func:`aiotrace.install` puts in place of ``original``. Interpreter pools (3.14) are
    left as they are."""
    from concurrent.futures import ThreadPoolExecutor

    @functools.wraps(original)
    def submit(
        self: concurrent.futures.Executor, fn: Any = _NO_FN, /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[Any]:
        if fn is _NO_FN:  # see _NO_FN
            return original(self, **kwargs)
        # Fast paths first: a plain function has no ``__self__`` to look for, and a plain
        # ThreadPoolExecutor runs its jobs in this interpreter.
        if (
            (type(fn) is not FunctionType or fn.__module__ == _OTEL_THREADING)
            and _carries_its_context(fn)
        ) or (type(self) is not ThreadPoolExecutor and _runs_elsewhere(self)):
            return original(self, fn, *args, **kwargs)
        return original(self, copy_context().run, fn, *args, **kwargs)

    return submit


def patched_process_submit(original: Callable[..., Any]) -> Callable[..., Any]:
    """``ProcessPoolExecutor.submit`` that sends each job with the submitter's OpenTelemetry
    context; what :func:`aiotrace.install` puts in place of ``original``.

    Every job is wrapped, even with no current span: its empty carrier then clears the context a
    forked worker inherited from its parent."""

    # Written out like patched_submit's, not shared with it: each is the one function put in
    # place of its pool's ``submit`` (same signature, no extra call per job).
    @functools.wraps(original)
    def submit(
        self: concurrent.futures.Executor, fn: Any = _NO_FN, /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[Any]:
        if fn is _NO_FN:  # see _NO_FN
            return original(self, **kwargs)
        if _is_carried(fn):
            return original(self, fn, *args, **kwargs)
        return original(self, _carried(fn), *args, **kwargs)

    return submit
