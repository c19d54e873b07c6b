"""Async generators left early are closed where they were left.

A generator that opens a span around its ``yield`` attaches that span in the *consumer's*
context (an async generator has no context of its own). When the consumer leaves its ``async
for`` with ``break``, CPython calls the running loop's finalizer hook right there, through
reference counting, in the consumer's task. asyncio's hook (``BaseEventLoop`` and uvloop's
``Loop`` alike) only schedules ``aclose()`` as a new task, so:

- until that task runs, the generator's span stays current in the consumer, and every span the
  consumer opens after the loop becomes its child;
- the task runs in a *copy* of the consumer's context, where the generator's ``detach`` cannot
  reset a token made in the original, and OpenTelemetry logs ``Failed to detach context``
  (opentelemetry-python #2606); ``shutdown_asyncgens`` closes leftovers the same way.

:func:`aiotrace.install` replaces the loops' hooks with the ones here. The finalizer closes the
generator in place, as CPython closes a plain generator: its cleanup runs at the ``break`` in the
consumer's context, so its span is detached before the consumer's next line. If the cleanup
awaits, the rest continues as a task (token mismatches there are released quietly, and the
consumer gets back the OpenTelemetry context it had when the generator started); an error in
the cleanup reaches the loop's exception handler from a failed task, as asyncio reports it.
On another thread, once ``shutdown_asyncgens`` started, or in a task other than the one that
started iterating the generator, asyncio's own hook runs. To know that task (and the context to
give back), the firstiter hook keeps a small record per generator. That record replaces the
loop's own bookkeeping (a ``WeakSet`` of its generators, whose weak reference with a callback
costs more than the whole record): the patched ``shutdown_asyncgens`` closes the generators
recorded here, and ``uninstall()`` hands the live ones back to their loops' sets.

``shutdown_asyncgens`` closes each generator in the context of the task that ran it where that
task is done and Python can name its context (3.12+, ``Task.get_context()``); elsewhere a token
from another context is released without the error log and counted
(:func:`released_foreign_tokens`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import threading
import weakref
from typing import Any, Callable, Dict, Generator, List, Optional, Tuple

from ._lookalike import coroutine_function_like, like
from ._otel import Context, attach, get_current

__all__ = ["on_change", "released_foreign_tokens", "sync_running_loop_hooks"]

_current_task = asyncio.current_task

Hook = Callable[[Any, Any], None]

_DETACH_FAILURE = "Failed to detach context"
# CPython's ``ContextVar.reset`` message for a token from another context (3.8-3.13, run here).
_FOREIGN_TOKEN = "was created in a different Context"


# What the firstiter hook learnt about a generator, a plain tuple (the cheapest record to make:
# a NamedTuple's constructor is a Python function), read by unpacking:
#   (weakref to the generator, its loop, weakref to the task that started it or None,
#    that task's contextvars.Context where Python exposes it (3.12+) or None,
#    the OpenTelemetry context when the generator started)
_Started = Tuple["weakref.ref[Any]", Any, Optional["weakref.ref[asyncio.Task[Any]]"], Any, Context]


# Keyed by ``id(agen)``. A weak-keyed dict would not do: CPython clears a generator's weak
# references *before* it calls the finalizer hook (checked on 3.8, 3.11 and 3.13). Entries of
# generators that ran to the end (no finalizer call) are swept when the dict has doubled; a
# stale entry is harmless, since a new generator with the same id replaces it at firstiter.
_started: Dict[int, _Started] = {}
_TASK_GET_CONTEXT = sys.version_info >= (3, 12)
_sweep_at = [1024]  # the size of _started that triggers the next sweep
# Loops whose ``shutdown_asyncgens`` has started, by id (a weak reference each, whose callback
# removes the entry when the loop goes): a dict lookup, where a WeakSet's ``in`` is a Python
# call and a new weak reference. Read on every generator's first iteration.
_closing: Dict[int, weakref.ref[Any]] = {}
# False once ``uninstall()`` removed these hooks: a loop running in another thread keeps the
# hooks it read when it started, and must then get asyncio's behaviour from them.
_recording = [True]
_quiet = threading.local()


def released_foreign_tokens() -> int:
    """How many OpenTelemetry tokens from another context aiotrace released without the
    ``Failed to detach context`` error, while finishing a generator's cleanup away from the
    context that attached them (for ``aiotrace doctor``)."""
    return _filter.released


def sync_running_loop_hooks() -> None:
    """Point the interpreter's async generator hooks at the running loop's current methods.

    A loop reads its hooks once, when it starts running (``BaseEventLoop.run_forever`` and
    uvloop's ``Loop.run_forever`` call ``sys.set_asyncgen_hooks``); called by ``install()`` and
    ``uninstall()`` so that switching inside ``asyncio.run()`` takes effect for generators
    started afterwards. Hooks that are not the running loop's own are left alone.
    """
    loop = asyncio.events._get_running_loop()
    if loop is None:
        return
    hooks = sys.get_asyncgen_hooks()
    if all(getattr(hook, "__self__", None) is loop for hook in hooks):
        sys.set_asyncgen_hooks(
            firstiter=loop._asyncgen_firstiter_hook, finalizer=loop._asyncgen_finalizer_hook
        )


class _ForeignDetachFilter(logging.Filter):
    """Drops (and counts) OpenTelemetry's detach error for a token from another context,
    raised on this thread while a generator's cleanup step runs under :func:`_step`."""

    released = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(_quiet, "depth", 0) and record.msg == _DETACH_FAILURE and record.exc_info:
            exc = record.exc_info[1]
            if isinstance(exc, ValueError) and _FOREIGN_TOKEN in str(exc):
                self.released += 1
                return False
        return True


_filter = _ForeignDetachFilter()
_otel_logger = logging.getLogger("opentelemetry.context")


def _step(ctx: Any, method: Callable[[Any], Any], arg: Any) -> Any:
    """``method(arg)`` in ``ctx`` (a ``contextvars.Context``, or None for the current one),
    with foreign-token detach errors released quietly."""
    depth = getattr(_quiet, "depth", 0)
    _quiet.depth = depth + 1
    if not depth:
        _otel_logger.addFilter(_filter)
    try:
        return method(arg) if ctx is None else ctx.run(method, arg)
    finally:
        _quiet.depth = depth
        if not depth:
            _otel_logger.removeFilter(_filter)


class _Rest:
    """Awaitable that finishes an ``aclose()`` whose first step has already run."""

    __slots__ = ("_athrow", "_ctx", "_yielded")

    def __init__(self, athrow: Any, yielded: Any, ctx: Any) -> None:
        self._athrow, self._yielded, self._ctx = athrow, yielded, ctx

    def __await__(self) -> Generator[Any, Any, Any]:
        athrow, yielded = self._athrow, self._yielded
        while True:
            try:
                sent = yield yielded
            except GeneratorExit:
                athrow.close()
                raise
            except BaseException as exc:  # cancellation included: the generator sees it
                method, arg = athrow.throw, exc
            else:
                method, arg = athrow.send, sent
            try:
                yielded = _step(self._ctx, method, arg)
            except StopIteration as stop:
                return stop.value


async def _finish_aclose(athrow: Any, yielded: Any) -> None:
    await _Rest(athrow, yielded, None)


async def _raise(exc: BaseException) -> None:
    raise exc


async def _aclose(agen: Any, ctx: Any) -> None:
    athrow = agen.aclose()
    try:
        yielded = _step(ctx, athrow.send, None)
    except StopIteration:
        return
    await _Rest(athrow, yielded, ctx)


def _mark_closing(loop: Any) -> None:
    key = id(loop)
    _closing[key] = weakref.ref(loop, lambda _: _closing.pop(key, None))


def set_recording(on: bool) -> None:
    """Called by ``install()`` (True) and ``uninstall()`` (False). Turning recording off hands
    every live generator recorded here to its loop's own bookkeeping, so that the loop's
    ``shutdown_asyncgens`` (asyncio's again) closes it."""
    _recording[0] = on
    if on:
        return
    running = asyncio.events._get_running_loop()
    for key, record in list(_started.items()):
        if _started.pop(key, None) is None:
            continue
        agen, loop = record[0](), record[1]
        if agen is None or loop.is_closed() or id(loop) in _closing:
            continue
        if loop.is_running() and running is not loop:
            # The loop's own thread is the one that reads and changes its set.
            with contextlib.suppress(RuntimeError):  # closed meanwhile: nothing to hand back to
                loop.call_soon_threadsafe(loop._asyncgen_firstiter_hook, agen)
        else:
            loop._asyncgen_firstiter_hook(agen)


def _sweep() -> None:
    for key, record in list(_started.items()):
        if record[0]() is None:
            _started.pop(key, None)
    _sweep_at[0] = max(1024, 2 * len(_started))


def patched_firstiter(original: Hook) -> Hook:
    """The loop's firstiter hook: notes which task started the generator and the
    OpenTelemetry context it had then, in place of the loop's own ``WeakSet.add``. Runs once per
    generator: kept to a few C calls. Once the loop's ``shutdown_asyncgens`` has started (the
    loop warns about the generator) or aiotrace is uninstalled, the loop's own hook runs."""
    ref = weakref.ref

    def _asyncgen_firstiter_hook(self: Any, agen: Any) -> None:
        if id(self) in _closing or not _recording[0]:
            original(self, agen)
            return
        if len(_started) >= _sweep_at[0]:
            _sweep()
        task = _current_task(self)
        if task is None:
            _started[id(agen)] = (ref(agen), self, None, None, get_current())
            return
        context = None
        if _TASK_GET_CONTEXT:
            try:  # noqa: SIM105 - contextlib.suppress costs a context manager per generator
                context = task.get_context()
            except AttributeError:  # a task factory's own future type may lack it
                pass
        _started[id(agen)] = (ref(agen), self, ref(task), context, get_current())

    return like(original)(_asyncgen_firstiter_hook)


def patched_finalizer(original: Hook) -> Hook:
    """The loop's finalizer hook, closing the generator in place when it is safe to."""

    def _asyncgen_finalizer_hook(self: Any, agen: Any) -> None:
        record = _started.pop(id(agen), None)
        if record is None:
            original(self, agen)
            return
        _, loop, started_by, _, before = record
        if (
            loop is not self
            or started_by is None
            or asyncio.events._get_running_loop() is not self
            or id(self) in _closing
            or getattr(self, "_asyncgens_shutdown_called", False)
            or (task := _current_task(self)) is None
            or task is not started_by()
        ):
            original(self, agen)
            return
        # The generator is not in the loop's own WeakSet (the firstiter hook kept it here).
        athrow = agen.aclose()
        try:
            yielded = athrow.send(None)
        except StopIteration:
            return
        except BaseException as exc:  # a hook must not raise: CPython would print and drop it
            self.create_task(_raise(exc))
            return
        self.create_task(_finish_aclose(athrow, yielded))
        # The generator will detach what it attached in a copy of this context, where the
        # token is foreign; give the consumer now what that detach would have restored.
        if get_current() is not before:
            attach(before)

    return like(original)(_asyncgen_finalizer_hook)


def _owner_context(record: _Started) -> Any:
    """The context the generator started in, if its task is over (so nothing else runs in it)."""
    _, _, started_by, context, _ = record
    if context is None or started_by is None:
        return None
    task = started_by()
    return context if task is None or task.done() else None


def patched_shutdown(original: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``loop.shutdown_asyncgens`` closing each generator recorded by the firstiter hook
    without a detach failure, then running the loop's own (which sets its flags and closes the
    generators in its own set: those started before ``install()``)."""

    def returning(self: Any) -> Any:
        return shutdown_asyncgens(self)

    async def shutdown_asyncgens(self: Any) -> None:
        _mark_closing(self)
        agens: List[Any] = []
        owners: List[Any] = []
        for key, record in list(_started.items()):
            if record[1] is not self:
                continue
            del _started[key]
            agen = record[0]()
            if agen is not None:
                agens.append(agen)
                owners.append(_owner_context(record))
        if agens:
            results = await asyncio.gather(
                *[_aclose(agen, ctx) for agen, ctx in zip(agens, owners)], return_exceptions=True
            )
            for result, agen in zip(results, agens):
                if isinstance(result, Exception):
                    self.call_exception_handler(
                        {
                            "message": "an error occurred during closing of "
                            f"asynchronous generator {agen!r}",
                            "exception": result,
                            "asyncgen": agen,
                        }
                    )
        await original(self)

    # A coroutine function exactly where the loop's own is one (uvloop's: for asyncio only on
    # Python 3.8); from 3.12 on the marked ``returning``, one frame less on other Pythons.
    return coroutine_function_like(original, returning, shutdown_asyncgens)


def on_change(applied: bool) -> None:
    """The ``asyncgen`` group's hook (aiotrace/catalogue.py), called by the patch engine after
    every install and uninstall with whether the group is applied now."""
    # Before the running loop's hooks change: a generator handed back by uninstall() must be
    # in its loop's set before that loop can start shutting down.
    set_recording(applied)
    # A loop running now installed its async generator hooks when it started.
    sync_running_loop_hooks()
