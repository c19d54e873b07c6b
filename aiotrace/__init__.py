"""aiotrace keeps OpenTelemetry's current span correct across asyncio boundaries.

Importing this package changes nothing: it neither patches asyncio nor reads the environment
(its last line only lets the start-up hook of ``AIOTRACE_ENABLE``, when it runs, finish an
install that waited for this package to load).
Use the explicit classes and functions below, or call :func:`install` to put them in place of
asyncio's own (and :func:`uninstall` to put asyncio's back).
"""

from __future__ import annotations

import sys as _sys

from .executors import run_in_executor_with_context
from .handoff import consume, receive_nowait_with_context, receive_with_context
from .locks import (
    PropagatingBoundedSemaphore,
    PropagatingCondition,
    PropagatingEvent,
    PropagatingLock,
    PropagatingSemaphore,
)
from .propagation import attached_context, inject_context
from .queues import PropagatingLifoQueue, PropagatingPriorityQueue, PropagatingQueue
from .registry import (
    PATCH_NAMES,
    InstallError,
    UnknownPatchError,
    install,
    installed,
    uninstall,
)
from .tasks import PropagatingTaskGroup, create_task_with_context, linked_root

__version__ = "0.2.0"

__all__ = [
    "PATCH_NAMES",
    "InstallError",
    "PropagatingBoundedSemaphore",
    "PropagatingCondition",
    "PropagatingEvent",
    "PropagatingLifoQueue",
    "PropagatingLock",
    "PropagatingPriorityQueue",
    "PropagatingQueue",
    "PropagatingSemaphore",
    "PropagatingTaskGroup",
    "UnknownPatchError",
    "__version__",
    "attached_context",
    "consume",
    "create_task_with_context",
    "inject_context",
    "install",
    "installed",
    "linked_root",
    "receive_nowait_with_context",
    "receive_with_context",
    "run_in_executor_with_context",
    "uninstall",
]

# Last: the start-up hook (AIOTRACE_ENABLE) waits for this package to finish loading when
# asyncio was first imported from inside it, whoever loads it (aiotrace_boot/_hook.py). Without
# that hook, nothing happens here.
if "aiotrace_boot._hook" in _sys.modules:
    _sys.modules["aiotrace_boot._hook"].package_loaded()
