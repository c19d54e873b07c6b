"""aiotrace keeps OpenTelemetry's current span correct across asyncio boundaries.

Importing this package changes nothing: it neither patches asyncio nor reads the environment.
Use the explicit classes and functions below, or call :func:`install` to put them in place of
asyncio's own (and :func:`uninstall` to put asyncio's back).
"""

from __future__ import annotations

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
from .registry import PATCH_NAMES, UnknownPatchError, install, installed, uninstall
from .tasks import PropagatingTaskGroup, create_task_with_context, linked_root

__version__ = "0.2.0"

__all__ = [
    "PATCH_NAMES",
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
