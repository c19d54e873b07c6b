"""Async generators closed in the context that holds their tokens.

A generator that opens a span around its ``yield`` attaches that span in the *consumer's*
context (an async generator has no context of its own), and ``ContextVar.reset`` accepts the
token only in that very ``contextvars.Context`` object: in any other, a copy included, it raises
ValueError, which OpenTelemetry's ``detach`` logs as ``Failed to detach context``
(opentelemetry-python #2606). asyncio's finalizer hook (``BaseEventLoop`` and uvloop's ``Loop``
alike) schedules ``aclose()`` as a new task, in a copy of whatever context is current when the
generator is finalized, and ``shutdown_asyncgens`` closes leftovers in its own task: the detach
fails, and after a ``break`` the generator's span stays current in the consumer until then.

:func:`aiotrace.install` replaces the loops' hooks with the ones here. The firstiter hook
records the task that started the generator and that task's own context (3.12+:
``Task.get_context()``; before: see :func:`_task_context_before_312`). The finalizer closes the
generator at once: in place in that task (as CPython closes a plain generator, so after a
``break`` its span is detached before the consumer's next line), in that task's context
anywhere else on the loop's thread (another task, a callback, the garbage collector; the task
may be done or gone), and from another thread once the loop's thread gets to it. "At once"
matters for the collector: OpenTelemetry's ``start_as_current_span`` generator, suspended inside
the async generator, is garbage in the same pass, and is finalized right after it. A cleanup
that awaits continues as a task whose steps run in the recorded context (:class:`_InContext`).
A generator still suspended when its task finishes (a cancelled stream) is an
orphan: the collector's order among the objects of a cycle is not theirs, and it may run in
another thread, so each collection holds the orphans alive and afterwards closes, in the loop's
thread, those that nothing else holds (:func:`_on_collection`).
An error in the cleanup reaches the loop's exception handler from a failed task, as asyncio
reports it. Where the context cannot be had, asyncio's own hook runs (docs/async-generators.md
lists those cases).

The record replaces the loop's own bookkeeping (a ``WeakSet`` of its generators, whose weak
reference with a callback costs more than the whole record): the patched
``shutdown_asyncgens`` closes the generators recorded here, each in its recorded context, and
``uninstall()`` hands the live ones back to their loops' sets.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import gc
import sys
import weakref
from typing import Any, Callable, Dict, Generator, List, Optional, Set, Tuple

from ._lookalike import coroutine_function_like, like
from ._otel import Context, attach, detach, get_current

__all__ = ["on_change", "released_foreign_tokens", "sync_running_loop_hooks"]

_current_task = asyncio.current_task

Hook = Callable[[Any, Any], None]

# What the firstiter hook learnt about a generator, a plain tuple (the cheapest record to make:
# a NamedTuple's constructor is a Python function), read by unpacking:
#   (weakref to the generator, its loop, weakref to the task that started it or None,
#    that task's own contextvars.Context (not a copy) or None where it cannot be had,
#    the OpenTelemetry context when the generator started)
_Started = Tuple[
    "weakref.ref[Any]",
    Any,
    Optional["weakref.ref[asyncio.Task[Any]]"],
    Optional[contextvars.Context],
    Context,
]


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

_CTask: Any = getattr(asyncio.tasks, "_CTask", None)  # None where _asyncio is not built
# Before 3.12: the last task whose context was looked up, as (weak reference, context). A task
# that starts several generators is looked up once: ``weakref.ref(task)`` returns the same
# object while one without a callback exists (the records hold it), and a new task never gets
# the reference of a dead one.
_last_task: List[Any] = [None, None]
_referents = gc.get_referents

# Ids of the generators started in a task whose context is known, added by the firstiter hook
# since they were last taken: one C call per generator (a set, so that an id reused by the next
# generator, as is common, is there once). Taken when a collection starts, and at a sweep (also
# once it holds _PENDING_MAX ids): each still suspended then is noted in ``_owned``; the others
# (run to the end, or closed) need nothing more. Noting every generator in ``_owned`` at once
# cost about 2 900 instructions per generator (one task for all) and 5 700 (a task each),
# counted on 3.12.1 with scripts/count_asyncgen_instructions.py.
_pending: Set[int] = set()
_PENDING_MAX = 1024
# Suspended generators of a task, by ``id(task)``: (weak reference to the task, ids of the
# generators). Looked at when a collection starts (and at a sweep): a task done or freed
# leaves its suspended generators as orphans. (A done callback per task would cost about
# 17 000 instructions: asyncio schedules it as a Handle.)
_owned: Dict[int, Tuple[Any, List[int], List[int]]] = {}  # the last: [length to prune at]
# Orphans: generators left suspended when the task that started them finished (a cancelled
# stream, for instance), by ``id(agen)``: [their record, full collections survived while still
# referenced elsewhere]. The collector's callback keeps each alive through a collection.
_orphans: Dict[int, List[Any]] = {}
_held: List[Any] = []  # the orphans kept alive during the collection under way
# An orphan still referenced elsewhere after this many full collections (a generator handed to
# another task, or one in a reference cycle through itself) is left to the collector again.
_ORPHAN_FULL_COLLECTIONS = 2


def released_foreign_tokens() -> int:
    """Always 0: aiotrace no longer hides OpenTelemetry's ``Failed to detach context`` for a
    token from another context; it closes generators in the context that holds their tokens
    (see the module's docstring). Kept for callers of the earlier release."""
    return 0


def _task_context_before_312(task: Any) -> Optional[contextvars.Context]:
    """The ``contextvars.Context`` object ``task`` runs its steps in, before Python 3.12 (which
    added ``Task.get_context()``).

    asyncio's C task (uvloop uses it too) keeps its context private, but reports it to the
    garbage collector: its ``tp_traverse`` visits the context first, before any context of its
    done callbacks (``TaskObj_traverse`` in ``Modules/_asynciomodule.c``, 3.8-3.11; a subclass
    visits its ``__dict__`` first, never a context). ``gc.get_referents`` is that traversal.
    tests/test_asyncgens.py checks on each Python that a token made in the task resets in it.
    The pure-Python task keeps it as ``_context``. None for anything else.
    """
    if _CTask is not None and isinstance(task, _CTask):
        for referent in _referents(task):
            if type(referent) is contextvars.Context:
                return referent
        return None
    context = getattr(task, "_context", None)
    return context if type(context) is contextvars.Context else None


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


class _Busy(Exception):
    """The owner's context is entered elsewhere at the moment: it cannot be run in."""


class _InContext:
    """Runs the steps of a generator's ``aclose()`` in ``ctx``, the context of the task that
    iterated it, where the tokens its ``detach`` calls reset were made: ``ContextVar.reset``
    accepts a token only in the very ``Context`` object that made it (a copy raises
    ValueError, which OpenTelemetry's ``detach`` logs as ``Failed to detach context``).

    That task may still be running (a cleanup that awaits, left with ``break``; a generator
    dropped by another task). So that it sees no change, each step runs with the generator's
    own OpenTelemetry context made current in ``ctx`` and the task's put back afterwards; the
    generator's view is carried from one step to the next.
    """

    __slots__ = ("_ctx", "_entered", "_view")

    def __init__(self, ctx: contextvars.Context, view: Optional[Context]) -> None:
        self._ctx, self._view, self._entered = ctx, view, False

    def step(self, method: Callable[[Any], Any], arg: Any) -> Any:
        self._entered = False
        try:
            return self._ctx.run(self._run, method, arg)
        except RuntimeError:
            if self._entered:
                raise
            raise _Busy from None  # "cannot enter context: ... is already entered"

    def _run(self, method: Callable[[Any], Any], arg: Any) -> Any:
        self._entered = True
        view = self._view
        token = attach(get_current() if view is None else view)
        try:
            return method(arg)
        finally:
            self._view = get_current()
            detach(token)


def _step(runner: Optional[_InContext], method: Callable[[Any], Any], arg: Any) -> Any:
    if runner is None:
        return method(arg)
    try:
        return runner.step(method, arg)
    except _Busy:
        return method(arg)


class _Rest:
    """Awaitable that finishes an ``aclose()`` whose first step has already run."""

    __slots__ = ("_athrow", "_runner", "_yielded")

    def __init__(self, athrow: Any, yielded: Any, runner: Optional[_InContext]) -> None:
        self._athrow, self._yielded, self._runner = athrow, yielded, runner

    def __await__(self) -> Generator[Any, Any, Any]:
        athrow, yielded, runner = self._athrow, self._yielded, self._runner
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
                yielded = _step(runner, method, arg)
            except StopIteration as stop:
                return stop.value


async def _finish_aclose(athrow: Any, yielded: Any, runner: Optional[_InContext]) -> None:
    await _Rest(athrow, yielded, runner)


async def _raise(exc: BaseException) -> None:
    raise exc


async def _aclose(agen: Any, ctx: Optional[contextvars.Context]) -> None:
    athrow = agen.aclose()
    runner = None if ctx is None else _InContext(ctx, None)
    try:
        yielded = _step(runner, athrow.send, None)
    except StopIteration:
        return
    await _Rest(athrow, yielded, runner)


def _mark_closing(loop: Any) -> None:
    key = id(loop)
    _closing[key] = weakref.ref(loop, lambda _: _closing.pop(key, None))


def set_recording(on: bool) -> None:
    """Called by ``install()`` (True) and ``uninstall()`` (False). Turning recording off hands
    every live generator recorded here to its loop's own bookkeeping, so that the loop's
    ``shutdown_asyncgens`` (asyncio's again) closes it."""
    _recording[0] = on
    if on:
        if _on_collection not in gc.callbacks:
            gc.callbacks.append(_on_collection)
        return
    with contextlib.suppress(ValueError):
        gc.callbacks.remove(_on_collection)
    _pending.clear()
    _owned.clear()
    _orphans.clear()
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
    _take_pending()
    if len(_started) >= _sweep_at[0]:
        for key, record in list(_started.items()):
            if record[0]() is None:
                _started.pop(key, None)
        _sweep_at[0] = max(1024, 2 * len(_started))
    _settle_finished_tasks()  # the collector may be off: nothing else would
    for key, entry in list(_orphans.items()):
        if entry[0][0]() is None:
            _orphans.pop(key, None)


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
        if len(_started) >= _sweep_at[0] or len(_pending) >= _PENDING_MAX:
            _sweep()
        task = _current_task(self)
        if task is None:
            _started[id(agen)] = (ref(agen), self, None, None, get_current())
            return
        task_ref = ref(task)
        context = None
        if _TASK_GET_CONTEXT:
            try:  # noqa: SIM105 - contextlib.suppress costs a context manager per generator
                context = task.get_context()
            except AttributeError:  # a task factory's own future type may lack it
                pass
        elif task_ref is _last_task[0]:
            context = _last_task[1]
        else:
            # asyncio's (and uvloop's) own task: its context is its first referent (see
            # _task_context_before_312), without a Python call for the common case.
            context = _referents(task)[0] if type(task) is _CTask else None
            if type(context) is not contextvars.Context:
                context = _task_context_before_312(task)
            _last_task[0], _last_task[1] = task_ref, context
        key = id(agen)
        _started[key] = (ref(agen), self, task_ref, context, get_current())
        if context is not None:
            _pending.add(key)

    return like(original)(_asyncgen_firstiter_hook)


def patched_finalizer(original: Hook) -> Hook:
    """The loop's finalizer hook: closes the generator in the context that holds its tokens.

    In the task that started it (left with ``break``, or dropped while that task unwinds): in
    place. Elsewhere (another task, a callback, the garbage collector between callbacks): in
    that task's own context, whether the task is done or not, leaving the context of whatever
    runs now untouched. From another thread: the same, once the loop's thread gets to it.
    Where that context cannot be had, asyncio's own hook runs."""

    def _asyncgen_finalizer_hook(self: Any, agen: Any) -> None:
        record = _started.pop(id(agen), None)
        if record is None or record[1] is not self or record[2] is None:
            original(self, agen)
        elif asyncio.events._get_running_loop() is not self:
            # Not on the loop's thread (or the loop is not running): as asyncio does, leave it
            # to the loop, which is the only one to run in its tasks' contexts.
            if self.is_closed():
                original(self, agen)
            else:
                self.call_soon_threadsafe(_close, self, agen, record, original)
        else:
            _close(self, agen, record, original)

    return like(original)(_asyncgen_finalizer_hook)


def _close(loop: Any, agen: Any, record: _Started, original: Hook) -> None:
    """Runs the first step of ``agen.aclose()`` now, the rest as a task, both where the
    generator's tokens belong; asyncio's hook where they cannot be reached."""
    _, _, started_by, context, before = record
    owner = started_by() if started_by is not None else None
    in_owner = owner is not None and owner is _current_task(loop)
    if not in_owner and context is None:
        original(loop, agen)
        return
    runner = None if in_owner else _InContext(context, None)  # type: ignore[arg-type]
    athrow = agen.aclose()
    try:
        yielded = _step_or_busy(runner, athrow.send, None)
    except StopIteration:
        return
    except _Busy:
        original(loop, agen)
        return
    except BaseException as exc:  # a hook must not raise: CPython would print and drop it
        loop.create_task(_raise(exc))
        return
    if runner is None:
        # In the owner, whose context the rest must not disturb: the rest runs in it with
        # the generator's view swapped in; the owner gets back, now, what the generator's
        # detach would have restored.
        view = get_current()
        if context is not None:
            runner = _InContext(context, view)
        loop.create_task(_finish_aclose(athrow, yielded, runner))
        if view is not before:
            attach(before)
    else:
        loop.create_task(_finish_aclose(athrow, yielded, runner))


def _settle(keys: List[int], task: Any) -> None:
    """The generators ``keys`` of ``task`` (done, or None: freed) that are still suspended
    become orphans.

    Such a generator cannot be closed in place any more, and it is usually garbage soon (the
    client of a stream left; Starlette's response holds ``body_iterator`` in a reference cycle).
    Left to the cyclic collector, it is finalized in the same pass as OpenTelemetry's
    ``start_as_current_span`` generator suspended inside it, in an order aiotrace does not
    choose (a younger object often comes first), or in another thread: that generator's detach
    then runs outside the task's context. :func:`_on_collection` prevents both."""
    for key in keys:
        record = _started.get(key)
        if record is None or record[2]() is not task:
            continue
        agen = record[0]()
        if agen is not None and agen.ag_frame is not None and not agen.ag_running:
            _orphans[key] = [record, 0]


def _take_pending() -> None:
    """Notes in ``_owned`` the generators of ``_pending`` that are still suspended (a generator
    freed meanwhile left its id to a later one: the record found is that one's). Taken one by
    one with ``pop()``: a collection that starts meanwhile (an allocation here, or another
    thread) takes the rest, and no id is lost."""
    pop = _pending.pop
    while _pending:
        try:
            key = pop()
        except KeyError:  # taken meanwhile by a collection in another thread
            return
        record = _started.get(key)
        if record is None or record[3] is None:
            continue
        agen = record[0]()
        if agen is not None and agen.ag_frame is not None:
            task_ref = record[2]
            task = task_ref()
            if task is None:  # freed already: its generator is an orphan now
                _settle([key], None)
            else:
                _note_owner(task, task_ref, key)


def _note_owner(task: Any, task_ref: Any, key: int) -> None:
    """Adds generator ``key`` to ``task``'s list in ``_owned``."""
    owned = _owned.get(id(task))
    if owned is None:
        _owned[id(task)] = (task_ref, [key], [64])
    elif owned[0]() is task:
        keys = owned[1]
        keys.append(key)
        if len(keys) >= owned[2][0]:  # a long-lived task: keep the suspended ones, once each
            keys[:] = [k for k in dict.fromkeys(keys) if _suspended(k, task_ref)]
            owned[2][0] = max(64, 2 * len(keys))
    else:  # a task freed before a collection looked at it, whose id is reused
        _settle(owned[1], None)
        _owned[id(task)] = (task_ref, [key], [64])


def _suspended(key: int, task_ref: Any) -> bool:
    record = _started.get(key)
    if record is None or record[2] is not task_ref:
        return False
    agen = record[0]()
    return agen is not None and agen.ag_frame is not None


def _settle_finished_tasks() -> None:
    for tid, (task_ref, keys, _) in list(_owned.items()):
        task = task_ref()
        if task is None or task.done():
            _owned.pop(tid, None)
            _settle(keys, task)


class _Marker:
    """A fresh object referenced only by the list of held orphans: its reference count is
    that of an orphan nothing else holds (whatever the interpreter counts for a loop variable
    and an argument)."""

    __slots__ = ()


def _on_collection(phase: str, info: Dict[str, int]) -> None:
    """``gc.callbacks`` entry. Before a collection: every orphan is held (strongly), so that
    neither it nor OpenTelemetry's generators suspended inside it are finalized by the
    collector. After it: an orphan that only this hold keeps alive would have been garbage; it
    is closed on its loop's thread (``call_soon_threadsafe``: the collector may run in any
    thread) in its task's context, where its tokens' detach succeeds. The others are released.
    """
    if phase == "start":
        if _pending:
            _take_pending()
        if _owned:
            _settle_finished_tasks()
        if _orphans:
            _hold_orphans()
    elif _held:
        _close_unreferenced_orphans(info.get("generation") == 2)


def _hold_orphans() -> None:
    for key, entry in list(_orphans.items()):
        record = entry[0]
        agen = record[0]()
        if agen is None or agen.ag_frame is None or _started.get(key) is not record:
            _orphans.pop(key, None)
        else:
            _held.append(agen)


def _close_unreferenced_orphans(full: bool) -> None:
    _held.insert(0, _Marker())
    closing: List[Tuple[Any, _Started]] = []
    alone = -1
    for agen in _held:
        # The same loop variable and call for the marker first: no assumption about what the
        # interpreter counts for them (3.14 borrows some references).
        if alone < 0:
            alone = sys.getrefcount(agen)
            continue
        key = id(agen)
        entry = _orphans.get(key)
        if entry is None:
            continue
        # pop(), not del: the loop's thread may run while a finalizer of this collection does
        # I/O, and sweep the same entries.
        if sys.getrefcount(agen) > alone:
            entry[1] += full
            if entry[1] >= _ORPHAN_FULL_COLLECTIONS:
                _orphans.pop(key, None)
            continue
        _orphans.pop(key, None)
        if _started.pop(key, None) is entry[0]:
            closing.append((agen, entry[0]))
    _held.clear()
    for agen, record in closing:
        loop = record[1]
        if asyncio.events._get_running_loop() is loop:
            _close(loop, agen, record, _create_aclose_task)  # at once, as the finalizer would
        else:
            with contextlib.suppress(RuntimeError):  # closed: its shutdown is over
                loop.call_soon_threadsafe(_close, loop, agen, record, _create_aclose_task)


def _create_aclose_task(loop: Any, agen: Any) -> None:
    """What asyncio's (and uvloop's) finalizer hook does on the loop's thread."""
    loop.create_task(agen.aclose())


def _step_or_busy(runner: Optional[_InContext], method: Callable[[Any], Any], arg: Any) -> Any:
    """The first step of a close: raises :class:`_Busy` (nothing run) where ``_step`` would
    fall back to the current context, so that the finalizer can hand over to asyncio."""
    return method(arg) if runner is None else runner.step(method, arg)


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
                owners.append(record[3])
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
