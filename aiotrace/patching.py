"""The patch engine: apply, record and undo attribute replacements, all or nothing.

It knows nothing of asyncio nor of any concrete patch: :func:`apply` receives the patches (data:
owner, attribute, a factory that makes the replacement from the original) and the hooks to call
when groups change, from :mod:`aiotrace.registry`, which composes the catalogue
(:mod:`aiotrace.catalogue`) with this engine. It imports no other module of aiotrace.

A patch replaces one attribute of one object (a module or a class) and belongs to a named group.
:func:`apply` records for each attribute the exact object it found; :func:`undo_all` puts those
objects back (``is`` identity) unless someone else has replaced the attribute since, in which
case their object is left alone and a warning says so. Both are serialised by one lock, so
several threads may call them at once.

:func:`apply` is all or nothing: if a patch cannot be applied (its factory raises, the attribute
cannot be set, its owner cannot be imported), every patch that same call applied is undone before
:class:`InstallError` leaves, so the process is exactly as before the call; patches applied by
earlier calls stay. :func:`rebind` is all or nothing in the same way.
"""

from __future__ import annotations

import importlib
import logging
import sys
import threading
from dataclasses import dataclass
from typing import Any, Callable, Dict, FrozenSet, List, Mapping, Optional, Sequence, Tuple

__all__ = [
    "Foreign",
    "InstallError",
    "Patch",
    "apply",
    "conflicts",
    "installed",
    "original",
    "rebind",
    "undo_all",
]

logger = logging.getLogger("aiotrace")

# Called with True when the group is applied after a change, False when it is not.
OnChange = Callable[[bool], None]


@dataclass(frozen=True)
class Patch:
    """Replace ``owner.attribute`` by ``make(original)``; ``owner`` is ``"module"`` or
    ``"module:Class"``."""

    group: str
    owner: str
    attribute: str
    make: Callable[[Any], Any]
    # Only patched once its module is imported by someone else (uvloop): apply() never
    # imports it, and a later call picks it up.
    if_imported: bool = False

    @property
    def where(self) -> str:
        """The patched attribute as a dotted name, for messages: ``asyncio.Queue``."""
        return f"{self.owner.replace(':', '.')}.{self.attribute}"


class InstallError(RuntimeError):
    """:func:`aiotrace.install` or :func:`rebind` could not apply one patch; every patch that
    call had applied is undone (``__cause__`` is the original error)."""

    def __init__(self, where: str, cause: BaseException, undone: int) -> None:
        super().__init__(
            f"aiotrace could not patch {where}: {type(cause).__name__}: {cause}; nothing was "
            f"changed ({undone} patch(es) this call had applied are undone)"
        )
        self.where = where


class Foreign(Exception):
    """Raised by a factory: the attribute holds ``found``, something other than the object
    aiotrace replaces (another library's); the patch is skipped and listed in ``conflicts``."""

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
# Names that :func:`rebind` pointed at a replacement: (module, name) -> (original, replacement).
_rebound: Dict[Tuple[Any, str], Tuple[Any, Any]] = {}


def _resolve(owner: str) -> Any:
    module_name, _, qualname = owner.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in filter(None, qualname.split(".")):
        obj = getattr(obj, part)
    return obj


def apply(
    patches: Sequence[Patch],
    groups: FrozenSet[str],
    on_change: Mapping[str, OnChange],
    after: Callable[[], None],
) -> FrozenSet[str]:
    """Apply the ``patches`` of ``groups`` not applied yet, call every ``on_change`` hook, then
    ``after()`` (the late-module follower); return the groups applied. On failure undo what
    this call applied and raise :class:`InstallError`."""
    with _lock:
        done: List[Tuple[str, str]] = []  # what this call applied, in order
        conflicts_before = dict(conflicts)
        where = "?"
        hooks_called = False
        try:
            for patch in patches:
                where = patch.where
                if _apply(patch, groups):
                    done.append((patch.owner, patch.attribute))
            hooks_called = True
            for group, hook in on_change.items():
                where = f"the {group} group's on-change hook"
                hook(group in _active())
            where = "the finder that patches late modules when they load"
            after()
        except BaseException as exc:
            _roll_back(done, hooks_called, on_change)
            conflicts.clear()
            conflicts.update(conflicts_before)
            if not isinstance(exc, Exception):  # KeyboardInterrupt, SystemExit: as they were
                raise
            raise InstallError(where, exc, len(done)) from exc
        return _active()


def _apply(patch: Patch, groups: FrozenSet[str]) -> bool:
    """Apply ``patch`` if it is selected and can be; True if it was applied now."""
    key = (patch.owner, patch.attribute)
    if patch.group not in groups or key in _applied:
        return False
    if patch.if_imported and patch.owner.partition(":")[0] not in sys.modules:
        return False
    try:
        owner = _resolve(patch.owner)
    except AttributeError:
        if patch.if_imported:
            # Still being imported (install() runs while uvloop, which imports asyncio
            # first, is half done): its classes do not exist yet.
            return False
        raise
    # For a class, the object it holds itself, so that undo puts back that very object
    # (getattr would return a bound or derived object for some descriptors).
    owned = not isinstance(owner, type) or patch.attribute in vars(owner)
    original = (
        vars(owner)[patch.attribute]
        if owned and isinstance(owner, type)
        else getattr(owner, patch.attribute)
    )
    try:
        replacement = _replacement(patch, original)
    except Foreign as foreign:
        where = patch.where
        found = (
            getattr(foreign.found, "__module__", "?")
            + "."
            + getattr(foreign.found, "__qualname__", type(foreign.found).__name__)
        )
        if conflicts.get(where) != found:
            conflicts[where] = found
            logger.debug("aiotrace: %s is %s, not asyncio's; left alone", where, found)
        return False
    setattr(owner, patch.attribute, replacement)
    _applied[key] = _Applied(patch, owner, original, replacement, owned)
    logger.debug("aiotrace: patched %s", patch.where)
    return True


def _roll_back(
    done: List[Tuple[str, str]], hooks_called: bool, on_change: Mapping[str, OnChange]
) -> None:
    """Undo the patches ``done`` (applied by one apply() call that failed), newest first; call
    again the hooks that were called (``hooks_called``) or whose group changed."""
    changed = set(on_change) if hooks_called else set()
    for key in reversed(done):
        applied = _applied.pop(key, None)
        if applied is not None:
            _restore(applied)
            changed.add(applied.patch.group)
    for group, hook in on_change.items():
        if group not in changed:
            continue
        try:
            hook(group in _active())
        except Exception as exc:  # the error being reported is the one that made apply() fail
            logger.warning("aiotrace: the %s group's on-change hook failed: %r", group, exc)


def _replacement(patch: Patch, original: Any) -> Any:
    # One original reached under two names (``asyncio.create_task`` and
    # ``asyncio.tasks.create_task``) gets one replacement, so identity checks still agree.
    for applied in _applied.values():
        if applied.patch.make is patch.make and applied.original is original:
            return applied.replacement
    return patch.make(original)


def undo_all(on_change: Mapping[str, OnChange]) -> None:
    """Put back every object :func:`apply` replaced and every name :func:`rebind` changed;
    then call every ``on_change`` hook."""
    with _lock:
        _unbind()
        for key in reversed(list(_applied)):
            _restore(_applied.pop(key))
        for group, hook in on_change.items():
            hook(group in _active())


def _restore(applied: _Applied) -> None:
    """Put back what ``applied`` replaced: the very object it found, or (for an attribute the
    class inherited) no attribute of its own; unless someone replaced the attribute since."""
    current = getattr(applied.owner, applied.patch.attribute, None)
    if current is not applied.replacement:
        logger.warning(
            "aiotrace: %s was replaced again after install(); leaving the new object",
            applied.patch.where,
        )
        return
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


def rebind(module: Any) -> List[str]:
    """Point every name in ``module`` that still holds an object :func:`apply` replaced in a
    module (``from asyncio import Queue`` run before ``install()``) at its replacement; return
    the names rebound. :func:`undo_all` puts the originals back. If one name cannot be set,
    the names this call rebound are put back before :class:`InstallError` leaves."""
    with _lock:
        replacements = {
            id(a.original): a for a in _applied.values() if not isinstance(a.owner, type)
        }
        names: List[str] = []
        name = "__dict__"
        try:
            for name, value in list(vars(module).items()):
                applied = replacements.get(id(value))
                if applied is None or applied.original is not value:
                    continue
                setattr(module, name, applied.replacement)
                _rebound[(module, name)] = (value, applied.replacement)
                names.append(name)
        except Exception as exc:  # all or nothing, as apply()
            for done in reversed(names):
                before, after = _rebound.pop((module, done))
                if getattr(module, done, None) is after:
                    setattr(module, done, before)
            module_name = getattr(module, "__name__", repr(module))
            raise InstallError(f"{module_name}.{name}", exc, len(names)) from exc
        return names


def _unbind() -> None:
    for (module, name), (before, after) in _rebound.items():
        if getattr(module, name, None) is after:
            setattr(module, name, before)
    _rebound.clear()
