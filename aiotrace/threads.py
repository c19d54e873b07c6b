"""New threads that start in their starter's context, and who carries the context into threads.

A ``threading.Thread`` (and so a ``threading.Timer``) starts with an empty
``contextvars.Context`` on CPython 3.8-3.13, and on 3.14 unless ``-X thread_inherit_context``
(the free-threaded build's default) says otherwise: spans opened in it are new roots. The
``thread`` patch group, off unless asked for (``install(patch_threads=True)``), gives each new
thread a copy of the context that was current at ``start()``, as 3.14's ``Thread(context=...)``
does; on 3.14 it uses that very attribute and never overrides a ``context=`` the caller gave.

``opentelemetry-instrumentation-threading`` does the same job with its own ``wrapt`` wrappers on
``Thread.start``/``run``, ``Timer.start``/``run`` and ``ThreadPoolExecutor.submit``. aiotrace
never stacks on top of it: where its wrapper is in place aiotrace steps aside, whichever of the
two was installed first. :func:`thread_propagation` says which one is carrying the context.
"""

from __future__ import annotations

import functools
import inspect
import logging
import sys
import threading
from contextvars import copy_context
from typing import Any, Callable, Dict, Optional

from .patching import Foreign

__all__ = [
    "OTEL_THREADING",
    "leaving_otel_threading",
    "mark",
    "otel_threading_wrapper",
    "patched_bootstrap_inner",
    "patched_start",
    "thread_propagation",
]

logger = logging.getLogger("aiotrace")

OTEL_THREADING = "opentelemetry-instrumentation-threading"
_OTEL_THREADING_MODULE = "opentelemetry.instrumentation.threading"

# Python 3.14 added ``Thread(context=...)``: ``start()`` fills ``_context`` when it is None (a
# copy of the starter's context under ``sys.flags.thread_inherit_context``, else an empty one)
# and ``_bootstrap_inner`` runs ``run()`` inside it (read in 3.14.10's and 3.15.2's
# threading.py; tests/test_threads.py runs it on both).
_HAS_THREAD_CONTEXT = sys.version_info >= (3, 14)


def _otel_threading_active() -> bool:
    module = sys.modules.get(_OTEL_THREADING_MODULE)
    # BaseInstrumentor keeps its one instance in ``_instance``.
    instance = getattr(getattr(module, "ThreadingInstrumentor", None), "_instance", None)
    return bool(getattr(instance, "is_instrumented_by_opentelemetry", False))


def otel_threading_wrapper(obj: Any) -> Optional[Callable[..., Any]]:
    """opentelemetry-instrumentation-threading's wrapper function if it is instrumenting and
    ``obj`` is, or wraps, one of its patches; else None.

    Its patches are ``wrapt`` function wrappers: the wrapper function is ``_self_wrapper``, the
    wrapped object ``__wrapped__`` (checked with its releases 0.48b0 to 0.66b1). Its
    ``uninstrument()`` leaves a stray start wrapper in ``Timer.start`` that no longer carries
    anything (its ``run`` wrappers are gone): hence the check that it is instrumenting.
    """
    if not _otel_threading_active():
        return None
    depth = 0  # a chain of wrappers, bounded in case one points back at itself
    while obj is not None and depth < 16:
        wrapper = getattr(obj, "_self_wrapper", None)
        if getattr(wrapper, "__module__", None) == _OTEL_THREADING_MODULE:
            return wrapper
        obj = getattr(obj, "__wrapped__", None)
        depth += 1
    return None


def _otel_threading_starts(thread: threading.Thread) -> bool:
    return otel_threading_wrapper(inspect.getattr_static(type(thread), "start", None)) is not None


def _inherits(thread: threading.Thread, pool_worker: Callable[..., Any]) -> bool:
    """Whether ``thread`` should start in its starter's context.

    Not a ``ThreadPoolExecutor`` worker: it serves every later submitter, so the context of the
    one whose ``submit`` happened to start it would leak into their jobs. Not when
    opentelemetry-instrumentation-threading wraps this class's ``start``: it carries the context.
    """
    return getattr(thread, "_target", None) is not pool_worker and not _otel_threading_starts(
        thread
    )


def patched_start(original: Callable[..., Any]) -> Callable[..., Any]:
    """``Thread.start`` that gives the new thread a copy of the starter's context."""
    from concurrent.futures.thread import _worker as pool_worker

    if _HAS_THREAD_CONTEXT:
        # Under ``-X thread_inherit_context=1`` the stdlib copies the starter's context itself:
        # ``_context`` is then left to it, and a ``context=`` the caller gave is never replaced.
        inherit = sys.flags.thread_inherit_context  # type: ignore[attr-defined]

        @functools.wraps(original)
        def start(self: threading.Thread) -> None:
            if (
                not inherit
                and self._context is None  # type: ignore[attr-defined]
                and _inherits(self, pool_worker)
            ):
                self._context = copy_context()  # type: ignore[attr-defined]
            original(self)

        return start

    @functools.wraps(original)
    def start_before_3_14(self: threading.Thread) -> None:
        # Not replaced by a second ``start()`` (which raises): the thread may not have taken it yet.
        if "_aiotrace_context" not in self.__dict__ and _inherits(self, pool_worker):
            self.__dict__["_aiotrace_context"] = copy_context()
        original(self)

    return start_before_3_14


def patched_bootstrap_inner(original: Callable[..., Any]) -> Callable[..., Any]:
    """``Thread._bootstrap_inner`` (before 3.14) that runs the thread, ``run()`` and all, inside
    the context ``start()`` recorded. CPython 3.8-3.13 call it once, first thing in the new
    thread, from ``Thread._bootstrap``; it calls ``run()``."""

    @functools.wraps(original)
    def _bootstrap_inner(self: threading.Thread) -> None:  # pragma: no cover
        # (Runs, as the tests show, but before the original sets coverage's thread tracer.)
        ctx = self.__dict__.pop("_aiotrace_context", None)
        if ctx is None:
            original(self)
        else:
            ctx.run(original, self)

    return _bootstrap_inner


def _carrier(cls: Any, attribute: str) -> Optional[str]:
    current = inspect.getattr_static(cls, attribute, None)
    if otel_threading_wrapper(current) is not None:
        return OTEL_THREADING
    if getattr(current, "__aiotrace_patch__", False):
        return "aiotrace"
    return None


def mark(replacement: Callable[..., Any]) -> Callable[..., Any]:
    """Mark ``replacement`` as aiotrace's, for :func:`thread_propagation` (which so never asks
    the patch engine: the arrows point from the registry to this module, not back)."""
    replacement.__aiotrace_patch__ = True  # type: ignore[attr-defined]
    return replacement


def leaving_otel_threading(
    make: Callable[[Any], Any], watched: Optional[Callable[[], Any]] = None
) -> Callable[[Any], Any]:
    """A factory for a thread or thread-pool patch that stays out where
    opentelemetry-instrumentation-threading already wraps the attribute (or ``watched()``):
    it then carries the context; the engine records the attribute as another library's."""

    @functools.wraps(make)
    def make_unless_otel(original: Any) -> Any:
        theirs = otel_threading_wrapper(watched() if watched else original)
        if theirs is not None:
            logger.debug(
                "aiotrace: %s already carries the context across %s; aiotrace stays out",
                OTEL_THREADING,
                getattr(original, "__qualname__", original),
            )
            raise Foreign(theirs)
        return mark(make(original))

    return make_unless_otel


def thread_propagation() -> Dict[str, Optional[str]]:
    """Who carries the caller's context across each thread and process boundary right now.

    Keys: ``"ThreadPoolExecutor.submit"``, ``"threading.Thread"``, ``"ProcessPoolExecutor.submit"``;
    values: ``"aiotrace"``, ``"opentelemetry-instrumentation-threading"`` or None (nobody:
    spans there start new traces). For the ``doctor`` command and for debugging. Imports
    nothing: a process pool module nobody imported is reported as None.
    """
    found: Dict[str, Optional[str]] = {}
    for key, module, owner, attribute in (
        ("ThreadPoolExecutor.submit", "concurrent.futures.thread", "ThreadPoolExecutor", "submit"),
        ("threading.Thread", "threading", "Thread", "start"),
        (
            "ProcessPoolExecutor.submit",
            "concurrent.futures.process",
            "ProcessPoolExecutor",
            "submit",
        ),
    ):
        cls = getattr(sys.modules.get(module), owner, None)
        found[key] = None if cls is None else _carrier(cls, attribute)
    return found
