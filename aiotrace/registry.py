"""``aiotrace.install()`` and ``uninstall()``: the catalogue of patches composed with the engine.

The patch groups are described in :mod:`aiotrace.catalogue` (one entry each); applying, recording
and undoing them, all or nothing, is :mod:`aiotrace.patching`'s job; which groups a call selects
follows the switch table, :data:`aiotrace_boot.switches.SWITCHES`. This module joins the three
and keeps what ``install()`` was asked for, so that modules imported later (uvloop, the process
pool, anyio) are patched when they load.

Its public names (``install``, ``uninstall``, ``installed``, ``original``, ``rebind``,
``conflicts``, ``selected``, ``PATCHES``, ``PATCH_NAMES``, ``LOCK_PATCHES``, ``Patch``,
``UnknownPatchError``, ``InstallError``) stay here for code that imports them from this module.
"""

from __future__ import annotations

from typing import Any, Dict, FrozenSet, Iterable, Set, Tuple

from aiotrace_boot import _late
from aiotrace_boot.switches import SWITCHES, by_keyword, unknown_patch_names

from . import catalogue, patching
from .catalogue import (
    OPT_IN,
    PATCH_NAMES,
    PATCHES,
    STOCK_TRANSPORTS_KEEP_CONTEXT,
)
from .patching import (
    InstallError,
    Patch,
    conflicts,
    installed,
    original,
    rebind,
)

# Some of these live in the catalogue or the engine: kept here for code that imports them so.
__all__ = [
    "LOCK_PATCHES",
    "OPT_IN",
    "PATCHES",
    "PATCH_NAMES",
    "SERVER_CONTEXTS",
    "STOCK_TRANSPORTS_KEEP_CONTEXT",
    "WAITER_PATCHES",
    "InstallError",
    "Patch",
    "UnknownPatchError",
    "conflicts",
    "install",
    "installed",
    "original",
    "rebind",
    "selected",
    "uninstall",
]

LOCK_PATCHES: FrozenSet[str] = frozenset(by_keyword("patch_locks").groups)
# The groups whose installed classes rely on ``loop_context`` for their waiter guarantee; it is
# applied with any of them and never alone (``Group.only_with`` in the catalogue).
WAITER_PATCHES: FrozenSet[str] = frozenset(catalogue.WAITER_GROUPS)
SERVER_CONTEXTS: Tuple[str, ...] = by_keyword("server_context").choices

# The groups install() was asked for since the last uninstall(): applied again, for their late
# patches, when uvloop or the process pool loads later (see _install_wanted).
_wanted: Set[str] = set()


class UnknownPatchError(ValueError):
    """A patch name (or another ``install()`` value) that aiotrace does not know."""


def _select(arguments: Dict[str, Any]) -> FrozenSet[str]:
    """The groups ``install(**arguments)`` applies, read from the switch table."""
    keyed = [s for s in SWITCHES if s.keyword is not None]
    excluded: Set[str] = set()
    for s in keyed:
        if s.kind == "patch names":
            names = set(arguments[s.keyword])
            unknown = sorted(names.difference(catalogue.PATCH_NAMES))
            if unknown:
                raise UnknownPatchError(unknown_patch_names(unknown, catalogue.PATCH_NAMES))
            excluded |= names
    for s in keyed:
        value = arguments[s.keyword]
        if s.kind == "choice":
            if value not in s.choices:
                raise UnknownPatchError(
                    f"unknown {s.keyword} {value!r}; accepted: {', '.join(s.choices)}"
                )
            if value == s.off:
                excluded.update(s.groups)
        elif s.kind == "boolean" and not value:
            excluded.update(s.groups)
    groups = frozenset(catalogue.PATCH_NAMES).difference(excluded)
    return groups.difference(g for g, others in catalogue.ONLY_WITH.items() if not others & groups)


# selected() and install() spell their keywords out, alike, for readers, help() and type
# checkers; tests/test_switches.py checks both against the switch table, which gives them their
# meaning (``_select``).
def selected(
    patch_queue: bool = True,
    patch_locks: bool = True,
    *,
    patch_threads: bool = False,
    server_context: str = "clean",
    close_asyncgens: bool = True,
    exclude: Iterable[str] = (),
) -> FrozenSet[str]:
    """The group names that :func:`install` applies for these arguments (their meaning: the
    switch table, ``aiotrace_boot.switches``).

    Raises :class:`UnknownPatchError` (a ``ValueError``) naming what is accepted if ``exclude``
    holds an unknown name or ``server_context`` an unknown value.
    """
    return _select(dict(locals()))


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
    ``exclude`` names further groups to leave alone (see ``PATCH_NAMES``); every keyword is a
    row of the switch table (``aiotrace_boot.switches``). Calling it again never removes a
    patch: call :func:`uninstall` first to narrow the set. The patches of modules imported later
    (uvloop's ``Loop``, ``ProcessPoolExecutor``) are applied when they load: an import hook
    (``sys.meta_path``) calls install() again then, until :func:`uninstall`.
    """
    groups = _select(dict(locals()))
    with patching._lock:
        active = patching.apply(
            catalogue.PATCHES, groups, catalogue.ON_CHANGE, _follow_late_modules
        )
        _wanted.update(groups)
        return active


def _follow_late_modules() -> None:
    # uvloop and the process pool are patched only once imported, and they are often imported
    # after install(): ``uvicorn --loop uvloop`` under opentelemetry-instrument or the
    # OpenTelemetry Operator's sitecustomize (whose instrumentor calls install() first), or an
    # application that installs at start. The start-up hook's finder then installs again (the
    # one mechanism, aiotrace_boot._late); it is registered here unless it already is.
    _late.follow_late_modules(_install_wanted)


def _install_wanted() -> FrozenSet[str]:
    """:func:`install` again with the groups asked for so far (nothing after uninstall())."""
    with patching._lock:
        if not _wanted:
            return patching.installed()
        return install(exclude=set(catalogue.PATCH_NAMES).difference(_wanted), patch_threads=True)


def uninstall() -> None:
    """Put back every object :func:`install` replaced. Safe to call at any time, repeatedly."""
    with patching._lock:
        _wanted.clear()
        patching.undo_all(catalogue.ON_CHANGE)
