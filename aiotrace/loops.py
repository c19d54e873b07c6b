"""Event loops that ignore ``context=``, found and repaired while aiotrace is installed.

asyncio resumes every task through ``loop.call_soon(step, context=task_context)`` (a parked
task is woken by a future's callback, scheduled the same way). A loop that ignores ``context=``
runs the callback in a copy of whatever context scheduled it: a task woken by another resumes in
its *waker's* context, and its next span gets the waker's parent. The stock loop and uvloop
honour ``context=`` (``tests/test_loops.py`` checks both), so there the waiter is already right.

While the ``loop_context`` patch group is installed, each loop is probed once: when it is made
(``BaseEventLoop.__init__``, replaced by this group: before anything is scheduled on it, so even
the task ``run_until_complete`` queues before the loop runs resumes in its own context), when it
starts running (``BaseEventLoop.run_forever``, also replaced: a loop made before ``install()``;
asyncio's C function ``_set_running_loop`` is left alone, as a Python function cannot stand in
for it unnoticed) or, for the loop running in the thread that calls
``install()``, right away. The probe schedules a callback with a fresh ``contextvars.Context``
through ``call_soon`` and looks at the context it runs in; only if that one drops it are
``call_soon_threadsafe``, ``call_later`` and ``call_at`` probed too (an honest loop never gets a
probe's timer). Where the loop hands back asyncio's own ``Handle`` (every loop built on
``BaseEventLoop``), the probe runs that handle at once, as the loop would, and cancels it (the
loop skips it): the loop is repaired before it runs anything else. Other loops run the probe
when its turn comes (uvloop never calls the replaced functions: only a loop running at
``install()`` is probed there, and found honest).

A method that drops ``context=`` is replaced on that loop instance only by one that schedules
``context.run(callback, *args)``: the loop's own handle then enters the context the caller
asked for, inside the copy the loop makes anyway (never the same context twice). An honest loop
is left exactly as it is. :func:`set_repairing` (called by ``install()``/``uninstall()``) takes
every replacement off again.

Repairing the loop is what lets the classes ``install()`` puts in asyncio
(:mod:`aiotrace.aliases`) inherit asyncio's own ``get``/``put``/``join``/``acquire``/``wait``: no
aiotrace coroutine in any await chain (``asyncio.capture_call_graph``), no cost per wait. Callbacks
a loop queued before it was probed keep the context it gave them; the explicit ``Propagating*``
classes keep their own guarantee on any loop, repaired or not.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import threading
import weakref
from typing import Any, Callable, Dict, Set, Tuple

__all__ = [
    "METHODS",
    "patched_init",
    "patched_run_forever",
    "repaired",
    "set_repairing",
]

logger = logging.getLogger("aiotrace")

# The loop methods that take ``context=`` (all four since Python 3.7), and how many positional
# arguments come before the callback.
METHODS: Dict[str, int] = {"call_soon": 0, "call_soon_threadsafe": 0, "call_later": 1, "call_at": 1}
# The method asyncio itself passes ``context=`` to (every task step, every future callback): the
# only one probed on every loop. The others are probed only on a loop whose ``call_soon`` drops
# the context: a probe of ``call_later``/``call_at`` adds a timer, which a loop that is right
# already should never see (CPython's own ``test_utils.TestLoop`` checks every timer it gets).
_FIRST = ("call_soon",)

_PROBE: contextvars.ContextVar[bool] = contextvars.ContextVar("aiotrace_probe", default=False)
_lock = threading.Lock()
_state = {"on": False}
# Loops probed while repairing is on, and the methods replaced on each.
_probed: weakref.WeakKeyDictionary[Any, Set[str]] = weakref.WeakKeyDictionary()
_repairs: weakref.WeakKeyDictionary[Any, Dict[str, Callable[..., Any]]] = (
    weakref.WeakKeyDictionary()
)


def _honouring(method: Callable[..., Any], before: int) -> Callable[..., Any]:
    """``method`` (a loop's bound ``call_*``), running the callback in ``context``."""
    if before:

        @functools.wraps(method)
        def call_at_or_later(when: Any, callback: Any, *args: Any, context: Any = None) -> Any:
            if context is None:
                return method(when, callback, *args)
            return method(when, context.run, callback, *args)

        return call_at_or_later

    @functools.wraps(method)
    def call_soon(callback: Any, *args: Any, context: Any = None) -> Any:
        if context is None:
            return method(callback, *args)
        return method(context.run, callback, *args)

    return call_soon


def _report(loop_ref: Any, name: str, honoured: bool) -> None:
    """The probe of ``loop.<name>`` ran: repair that method if it dropped the context."""
    loop = loop_ref()
    if honoured or loop is None:
        return
    with _lock:
        repairs = _repairs.setdefault(loop, {})
        if not _state["on"] or name in repairs:
            return
        replacement = _honouring(getattr(loop, name), METHODS[name])
        try:
            setattr(loop, name, replacement)
        except AttributeError:
            logger.warning(
                "aiotrace: %s.%s ignores context= and cannot be replaced on the instance; "
                "tasks woken on this loop may resume in their waker's context",
                type(loop).__qualname__,
                name,
            )
            return
        repairs[name] = replacement
    logger.debug("aiotrace: %s.%s ignores context=; repaired", type(loop).__qualname__, name)
    if name == "call_soon":
        _probe(loop)  # a loop of that kind: its other methods too


def _probe(loop: Any) -> None:
    """Probe the methods of ``loop`` not probed yet: ``call_soon``, and the others once
    ``call_soon`` is known to drop ``context=`` (see the module docstring)."""
    with _lock:
        if not _state["on"]:
            return
        try:
            done = _probed.setdefault(loop, set())
            dropping = "call_soon" in _repairs.get(loop, ())
        except TypeError:  # a loop without weak references: never repaired, never kept alive
            return
        names = [name for name in (METHODS if dropping else _FIRST) if name not in done]
        done.update(names)
    if not names:
        return
    loop_ref = weakref.ref(loop)
    ctx = contextvars.Context()
    ctx.run(_PROBE.set, True)
    for name in names:
        try:
            when: Tuple[Any, ...] = ()
            if METHODS[name]:
                when = (0,) if name == "call_later" else (loop.time(),)
            handle = getattr(loop, name)(
                *when, lambda name=name: _report(loop_ref, name, _PROBE.get()), context=ctx
            )
        except Exception as exc:  # not usable yet (a subclass still in __init__), or not ours
            logger.debug("aiotrace: cannot probe %s.%s: %r", type(loop).__qualname__, name, exc)
            with _lock:
                done.discard(name)  # again when the loop starts
            continue
        if isinstance(handle, asyncio.events.Handle):
            # What ``BaseEventLoop._run_once`` does with a handle that is due, done here now;
            # cancelled, so that the loop skips it.
            handle._run()
            handle.cancel()


def patched_init(original: Callable[[Any], None]) -> Callable[[Any], None]:
    """``BaseEventLoop.__init__`` that probes the new loop's ``call_soon`` before anything is
    scheduled on it."""

    @functools.wraps(original)
    def __init__(self: Any) -> None:
        original(self)
        _probe(self)

    return __init__


def patched_run_forever(original: Callable[[Any], None]) -> Callable[[Any], None]:
    """``BaseEventLoop.run_forever`` that probes a loop when it starts running, if that was not
    done yet (a loop made before ``install()``, a subclass not ready in ``__init__``)."""

    @functools.wraps(original)
    def run_forever(self: Any) -> None:
        _probe(self)
        return original(self)

    return run_forever


def repaired(loop: Any) -> Tuple[str, ...]:
    """The names of the methods replaced on ``loop`` (empty for an honest loop)."""
    with _lock:
        return tuple(_repairs.get(loop, ()))


def set_repairing(on: bool) -> None:
    """Called by ``install()`` (True: probe the loop running in this thread, if any) and
    ``uninstall()`` (False: put every repaired loop's own methods back, forget the probes)."""
    with _lock:
        was, _state["on"] = _state["on"], on
        if not on:
            for loop, repairs in list(_repairs.items()):
                for name, replacement in repairs.items():
                    if vars(loop).get(name) is replacement:
                        delattr(loop, name)
            _repairs.clear()
            _probed.clear()
    if on and not was:
        running = asyncio.events._get_running_loop()
        if running is not None:
            _probe(running)
