"""The one place that knows every patch aiotrace applies, and how to undo it.

A patch replaces one attribute of one object (a module or a class) and belongs to a named group
that can be switched off as a unit. :func:`install` applies the groups asked for, recording for
each attribute the exact object it found; :func:`uninstall` puts those objects back (``is``
identity) unless someone else has replaced the attribute since, in which case their object is
left alone and a warning says so. Both are idempotent and serialised by one lock, so several
threads may call them at once.
"""

from __future__ import annotations

import importlib
import logging
import sys
import threading
from dataclasses import dataclass
from typing import Any, Callable, Dict, FrozenSet, Iterable, List, Optional, Tuple

__all__ = [
    "LOCK_PATCHES",
    "PATCH_NAMES",
    "Patch",
    "UnknownPatchError",
    "install",
    "installed",
    "uninstall",
]

logger = logging.getLogger("aiotrace")


@dataclass(frozen=True)
class Patch:
    """Replace ``owner.attribute`` by ``make(original)``; ``owner`` is ``"module"`` or
    ``"module:Class"``."""

    group: str
    owner: str
    attribute: str
    make: Callable[[Any], Any]


def _alias(name: str) -> Callable[[Any], Any]:
    def make(original: Any) -> Any:
        from .aliases import ALIASES

        alias = ALIASES[name]
        if original is not alias.__aiotrace_original__:
            raise _Foreign(original)
        return alias

    return make


def _create_task(original: Any) -> Any:
    from .tasks import patched_create_task

    return patched_create_task(original)


def _submit(original: Any) -> Any:
    from .executors import patched_submit

    return patched_submit(original)


def _class_patches(group: str, module: str, names: Iterable[str]) -> List[Patch]:
    # asyncio re-exports every class of its submodules; code reaches them by both names.
    return [
        Patch(group, owner, name, _alias(name)) for name in names for owner in ("asyncio", module)
    ]


def _all_patches() -> List[Patch]:
    patches = [
        Patch("create_task", "asyncio", "create_task", _create_task),
        Patch("create_task", "asyncio.tasks", "create_task", _create_task),
        *_class_patches("queue", "asyncio.queues", ("Queue", "PriorityQueue", "LifoQueue")),
        *_class_patches("lock", "asyncio.locks", ("Lock",)),
        *_class_patches("event", "asyncio.locks", ("Event",)),
        *_class_patches("semaphore", "asyncio.locks", ("Semaphore", "BoundedSemaphore")),
        *_class_patches("condition", "asyncio.locks", ("Condition",)),
        Patch("executor", "concurrent.futures.thread:ThreadPoolExecutor", "submit", _submit),
    ]
    if sys.version_info >= (3, 11):
        patches += _class_patches("task_group", "asyncio.taskgroups", ("TaskGroup",))
    return patches


PATCHES: Tuple[Patch, ...] = tuple(_all_patches())
PATCH_NAMES: Tuple[str, ...] = tuple(dict.fromkeys(p.group for p in PATCHES))
LOCK_PATCHES: FrozenSet[str] = frozenset({"lock", "event", "semaphore", "condition"})


class UnknownPatchError(ValueError):
    """A patch name that aiotrace does not know."""


class _Foreign(Exception):
    """The attribute holds something other than the stdlib object aiotrace replaces."""

    def __init__(self, found: Any) -> None:
        super().__init__(found)
        self.found = found


@dataclass
class _Applied:
    patch: Patch
    owner: Any
    original: Any
    replacement: Any
    owned: bool  # the attribute lived in ``owner.__dict__`` (else it was inherited)


_lock = threading.RLock()
_applied: Dict[Tuple[str, str], _Applied] = {}
# Patches skipped because another library had already replaced the attribute: (where, found).
conflicts: Dict[str, str] = {}


def _resolve(owner: str) -> Any:
    module_name, _, qualname = owner.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in filter(None, qualname.split(".")):
        obj = getattr(obj, part)
    return obj


# Groups that stay off unless asked for, because they change behaviour some code relies on.
OPT_IN: FrozenSet[str] = frozenset({"thread"})
SERVER_CONTEXTS: Tuple[str, ...] = ("clean", "inherit")


def selected(
    patch_queue: bool = True,
    patch_locks: bool = True,
    *,
    patch_threads: bool = False,
    server_context: str = "clean",
    close_asyncgens: bool = True,
    exclude: Iterable[str] = (),
) -> FrozenSet[str]:
    """The group names that :func:`install` applies for these arguments.

    Raises :class:`UnknownPatchError` (a ``ValueError``) naming what is accepted if ``exclude``
    holds an unknown name or ``server_context`` an unknown value.
    """
    excluded = set(exclude)
    unknown = sorted(excluded.difference(PATCH_NAMES))
    if unknown:
        raise UnknownPatchError(
            f"unknown aiotrace patch name(s) {', '.join(map(repr, unknown))}; "
            f"accepted: {', '.join(PATCH_NAMES)}"
        )
    if server_context not in SERVER_CONTEXTS:
        raise UnknownPatchError(
            f"unknown server_context {server_context!r}; accepted: {', '.join(SERVER_CONTEXTS)}"
        )
    if not patch_queue:
        excluded.add("queue")
    if not patch_locks:
        excluded |= LOCK_PATCHES
    if not patch_threads:
        excluded |= OPT_IN
    if server_context == "inherit":
        excluded.add("server")
    if not close_asyncgens:
        excluded.add("asyncgen")
    return frozenset(PATCH_NAMES).difference(excluded)


def install(
    patch_queue: bool = True,
    patch_locks: bool = True,
    *,
    patch_threads: bool = False,
    server_context: str = "clean",
    close_asyncgens: bool = True,
    exclude: Iterable[str] = (),
) -> FrozenSet[str]:
    """Apply the selected patch groups that are not applied yet; return the active groups.

    ``patch_queue`` and ``patch_locks`` switch the queue classes and the lock-like primitives;
    ``exclude`` names further groups to leave alone (see ``PATCH_NAMES``). Calling it again never
    removes a patch: call :func:`uninstall` first to narrow the set.
    """
    groups = selected(
        patch_queue,
        patch_locks,
        patch_threads=patch_threads,
        server_context=server_context,
        close_asyncgens=close_asyncgens,
        exclude=exclude,
    )
    with _lock:
        for patch in PATCHES:
            key = (patch.owner, patch.attribute)
            if patch.group not in groups or key in _applied:
                continue
            owner = _resolve(patch.owner)
            original = getattr(owner, patch.attribute)
            try:
                replacement = _replacement(patch, original)
            except _Foreign as foreign:
                where = f"{patch.owner.replace(':', '.')}.{patch.attribute}"
                found = (
                    getattr(foreign.found, "__module__", "?")
                    + "."
                    + getattr(foreign.found, "__qualname__", type(foreign.found).__name__)
                )
                if conflicts.get(where) != found:
                    conflicts[where] = found
                    logger.debug("aiotrace: %s is %s, not asyncio's; left alone", where, found)
                continue
            owned = not isinstance(owner, type) or patch.attribute in vars(owner)
            setattr(owner, patch.attribute, replacement)
            _applied[key] = _Applied(patch, owner, original, replacement, owned)
            logger.debug("aiotrace: patched %s.%s", patch.owner.replace(":", "."), patch.attribute)
        return _active()


def _replacement(patch: Patch, original: Any) -> Any:
    # One original reached under two names (``asyncio.create_task`` and
    # ``asyncio.tasks.create_task``) gets one replacement, so identity checks still agree.
    for applied in _applied.values():
        if applied.patch.make is patch.make and applied.original is original:
            return applied.replacement
    return patch.make(original)


def uninstall() -> None:
    """Put back every object :func:`install` replaced. Safe to call at any time, repeatedly."""
    with _lock:
        for key in reversed(list(_applied)):
            applied = _applied.pop(key)
            name = f"{applied.patch.owner.replace(':', '.')}.{applied.patch.attribute}"
            current = getattr(applied.owner, applied.patch.attribute, None)
            if current is not applied.replacement:
                logger.warning(
                    "aiotrace: %s was replaced again after install(); leaving the new object", name
                )
                continue
            if applied.owned:
                setattr(applied.owner, applied.patch.attribute, applied.original)
            else:
                delattr(applied.owner, applied.patch.attribute)


def _active() -> FrozenSet[str]:
    return frozenset(a.patch.group for a in _applied.values())


def installed() -> FrozenSet[str]:
    """The patch groups currently applied."""
    with _lock:
        return _active()


def original(owner: str, attribute: str) -> Optional[Any]:
    """The object aiotrace replaced at ``owner.attribute``, or None if it is not patched."""
    with _lock:
        applied = _applied.get((owner, attribute))
        return applied.original if applied else None
