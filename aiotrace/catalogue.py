"""Every patch group aiotrace can apply, one entry each: the file to touch to add a group.

An entry (:class:`Group`) names the group, its targets (the attributes it replaces, each with
the factory that makes the replacement from the original, and whether its module is "late":
patched only once someone else imported it), whether it is opt-in, and an optional hook the
engine calls after every change. Factories are the primitives' own functions, so that
find-references leads from here to them; they receive the original they replace and never ask
the engine for it. Behaviour specific to one group lives in that group's module
(``asyncgens.on_change``, ``threads.leaving_otel_threading``).

This module only describes: :mod:`aiotrace.registry` composes it with the engine
(:mod:`aiotrace.patching`). See docs/architecture.md.
"""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass
from typing import Any, Callable, FrozenSet, Optional, Tuple

from . import (
    aliases,
    anyio_streams,
    asyncgens,
    executors,
    loops,
    servers,
    tasks,
    threads,
    transports,
)
from .patching import Foreign, Patch

__all__ = [
    "GROUPS",
    "OPT_IN",
    "PATCHES",
    "PATCH_NAMES",
    "STOCK_TRANSPORTS_KEEP_CONTEXT",
    "WAITER_GROUPS",
    "Group",
]

Factory = Callable[[Any], Any]


@dataclass(frozen=True)
class Target:
    """``owner.attribute`` (``owner``: ``"module"`` or ``"module:Class"``), replaced by
    ``make(original)``; ``late``: only once its module is imported by someone else."""

    owner: str
    attribute: str
    make: Factory
    late: bool = False


@dataclass(frozen=True)
class Group:
    """One patch group: switched on and off as a unit (``install(exclude=[name])``)."""

    name: str
    targets: Tuple[Target, ...]
    opt_in: bool = False  # off unless asked for: it changes behaviour some code relies on
    on_change: Optional[Callable[[bool], None]] = None  # called with "is the group applied"
    # Applied only together with at least one of these groups (none: on its own merits).
    only_with: Tuple[str, ...] = ()

    def patches(self) -> Tuple[Patch, ...]:
        return tuple(Patch(self.name, t.owner, t.attribute, t.make, t.late) for t in self.targets)


def _alias(name: str) -> Factory:
    """The factory of a class patch: the alias of :mod:`aiotrace.aliases` for ``name``, if the
    attribute still holds the stdlib class that alias stands in for."""

    def make(original: Any) -> Any:
        aliases.keep_picklable()
        alias = aliases.ALIASES[name]
        if original is not alias.__aiotrace_original__:
            raise Foreign(original)
        return alias

    make.__qualname__ = f"_alias({name!r})"
    return make


def _classes(module: str, *names: str) -> Tuple[Target, ...]:
    # asyncio re-exports every class of its submodules; code reaches them by both names.
    makes = {name: _alias(name) for name in names}
    return tuple(
        Target(owner, name, makes[name]) for name in names for owner in ("asyncio", module)
    )


def _process_submit(original: Any) -> Any:
    return threads.mark(executors.patched_process_submit(original))


_thread_start = threads.leaving_otel_threading(threads.patched_start)


def _asyncgen_hooks(owner: str, late: bool = False) -> Tuple[Target, ...]:
    return (
        Target(owner, "_asyncgen_firstiter_hook", asyncgens.patched_firstiter, late),
        Target(owner, "_asyncgen_finalizer_hook", asyncgens.patched_finalizer, late),
        Target(owner, "shutdown_asyncgens", asyncgens.patched_shutdown, late),
    )


# From CPython 3.15 every selector transport registers its reader with the context it was made
# in (``_SelectorTransport._add_reader(..., context=self._context)``, read in 3.15.2's
# selector_events.py): a resumed transport keeps its connection's context, shown on the stock
# loop by tests/test_transports.py, so pause/resume are not patched there. SSL's own resume
# still schedules its delivery in the resumer's context on 3.15.2 (same tests).
STOCK_TRANSPORTS_KEEP_CONTEXT = sys.version_info >= (3, 15)
_SELECTOR_TRANSPORT = "asyncio.selector_events:_SelectorSocketTransport"

# The groups whose installed classes wait with asyncio's own methods: their waiter guarantee
# comes from ``loop_context``.
WAITER_GROUPS = ("queue", "lock", "event", "semaphore", "condition")

GROUPS: Tuple[Group, ...] = (
    Group(
        "create_task",
        (
            Target("asyncio", "create_task", tasks.patched_create_task),
            Target("asyncio.tasks", "create_task", tasks.patched_create_task),
        ),
    ),
    Group("queue", _classes("asyncio.queues", "Queue", "PriorityQueue", "LifoQueue")),
    Group("lock", _classes("asyncio.locks", "Lock")),
    Group("event", _classes("asyncio.locks", "Event")),
    Group("semaphore", _classes("asyncio.locks", "Semaphore", "BoundedSemaphore")),
    Group("condition", _classes("asyncio.locks", "Condition")),
    # Loops that drop call_soon(context=) are repaired when made or started (aiotrace/loops.py):
    # what lets the classes above inherit asyncio's own waiting methods; so it goes with them.
    Group(
        "loop_context",
        (
            Target("asyncio.base_events:BaseEventLoop", "__init__", loops.patched_init),
            Target("asyncio.base_events:BaseEventLoop", "run_forever", loops.patched_run_forever),
        ),
        on_change=loops.set_repairing,
        only_with=WAITER_GROUPS,
    ),
    Group(
        "executor",
        (
            Target(
                "concurrent.futures.thread:ThreadPoolExecutor",
                "submit",
                threads.leaving_otel_threading(executors.patched_submit),
            ),
        ),
    ),
    # late: importing it means importing multiprocessing (10-20 ms measured here), a cost every
    # asyncio application would pay at install() for a pool it may not use.
    Group(
        "process_pool",
        (
            Target(
                "concurrent.futures.process:ProcessPoolExecutor",
                "submit",
                _process_submit,
                late=True,
            ),
        ),
    ),
    Group(
        "thread",
        (
            # Timer first: it inherits Thread.start and so shares its replacement, unless an
            # earlier opentelemetry-instrumentation-threading uninstrument() left a copy in
            # Timer's own dict.
            Target("threading:Timer", "start", _thread_start),
            Target("threading:Thread", "start", _thread_start),
            *(
                ()
                if sys.version_info >= (3, 14)
                else (
                    Target(
                        "threading:Thread",
                        "_bootstrap_inner",
                        threads.leaving_otel_threading(
                            threads.patched_bootstrap_inner, lambda: threading.Thread.start
                        ),
                    ),
                )
            ),
        ),
        opt_in=True,
    ),
    Group(
        "asyncgen",
        (
            *_asyncgen_hooks("asyncio.base_events:BaseEventLoop"),
            *_asyncgen_hooks("uvloop:Loop", late=True),
        ),
        on_change=asyncgens.on_change,
    ),
    # The loops' methods cover asyncio.start_server/start_unix_server and every framework that
    # calls them; uvloop's are set on its Python ``Loop`` class (see aiotrace/servers.py).
    Group(
        "server",
        (
            Target(
                "asyncio.base_events:BaseEventLoop", "create_server", servers.patched_create_server
            ),
            # 3.15's Server keeps the context its connections copy (see aiotrace/servers.py).
            *(
                (Target("asyncio.base_events:Server", "__init__", servers.patched_server_init),)
                if sys.version_info >= (3, 15)
                else ()
            ),
            *(
                (
                    Target(
                        "asyncio.unix_events:_UnixSelectorEventLoop",
                        "create_unix_server",
                        servers.patched_create_server,
                    ),
                )
                if sys.platform != "win32"
                else ()
            ),
            Target("uvloop:Loop", "create_server", servers.patched_create_server, late=True),
            Target("uvloop:Loop", "create_unix_server", servers.patched_create_server, late=True),
        ),
    ),
    Group(
        "transport",
        (
            *(
                ()
                if STOCK_TRANSPORTS_KEEP_CONTEXT
                else (
                    Target(_SELECTOR_TRANSPORT, "pause_reading", transports.patched_pause_reading),
                    Target(
                        _SELECTOR_TRANSPORT, "resume_reading", transports.patched_resume_reading
                    ),
                )
            ),
            *(
                (
                    Target(
                        "asyncio.sslproto:SSLProtocol",
                        "_resume_reading",
                        transports.patched_ssl_resume_reading,
                    ),
                )
                if sys.version_info >= (3, 11)
                else ()
            ),
        ),
    ),
    # late: aiotrace never imports anyio; see aiotrace/anyio_streams.py.
    Group(
        "anyio_stream",
        (
            Target(
                "anyio.streams.memory:MemoryObjectSendStream",
                "send_nowait",
                anyio_streams.patched_send_nowait,
                late=True,
            ),
            Target(
                "anyio.streams.memory:MemoryObjectReceiveStream",
                "receive_nowait",
                anyio_streams.patched_receive_nowait,
                late=True,
            ),
        ),
    ),
    *(
        (Group("task_group", _classes("asyncio.taskgroups", "TaskGroup")),)
        if sys.version_info >= (3, 11)
        else ()
    ),
)

PATCHES: Tuple[Patch, ...] = tuple(p for group in GROUPS for p in group.patches())
PATCH_NAMES: Tuple[str, ...] = tuple(group.name for group in GROUPS if group.targets)
OPT_IN: FrozenSet[str] = frozenset(group.name for group in GROUPS if group.opt_in)
ON_CHANGE = {group.name: group.on_change for group in GROUPS if group.on_change is not None}
ONLY_WITH = {group.name: frozenset(group.only_with) for group in GROUPS if group.only_with}
