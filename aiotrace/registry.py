"""The one place that knows every patch aiotrace applies, and how to undo it.

A patch replaces one attribute of one object (a module or a class) and belongs to a named group
that can be switched off as a unit. :func:`install` applies the groups asked for, recording for
each attribute the exact object it found; :func:`uninstall` puts those objects back (``is``
identity) unless someone else has replaced the attribute since, in which case their object is
left alone and a warning says so. Both are idempotent and serialised by one lock, so several
threads may call them at once.

:func:`install` is all or nothing: if a patch cannot be applied (its factory raises, the
attribute cannot be set, its owner cannot be imported), every patch that same call applied is
undone before :class:`InstallError` leaves, so the process is exactly as before the call;
patches applied by earlier calls stay. :func:`rebind` is all or nothing in the same way.
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
    "InstallError",
    "Patch",
    "UnknownPatchError",
    "install",
    "installed",
    "rebind",
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
    # Only patched once its module is imported by someone else (uvloop): install() never
    # imports it, and a later install() call picks it up.
    if_imported: bool = False

    @property
    def where(self) -> str:
        """The patched attribute as a dotted name, for messages: ``asyncio.Queue``."""
        return f"{self.owner.replace(':', '.')}.{self.attribute}"


def _alias(name: str) -> Callable[[Any], Any]:
    def make(original: Any) -> Any:
        from .aliases import ALIASES, keep_picklable

        keep_picklable()
        alias = ALIASES[name]
        if original is not alias.__aiotrace_original__:
            raise _Foreign(original)
        return alias

    return make


def _create_task(original: Any) -> Any:
    from .tasks import patched_create_task

    return patched_create_task(original)


def _leaving_otel_threading(module: str, name: str, watched: Any = None) -> Callable[[Any], Any]:
    """make() for a thread or thread-pool patch, unless opentelemetry-instrumentation-threading
    already wraps the attribute (or ``watched()``): it then carries the context and aiotrace
    stays out."""

    def make(original: Any) -> Any:
        threads = importlib.import_module(".threads", __package__)
        theirs = threads.otel_threading_wrapper(watched() if watched else original)
        if theirs is not None:
            logger.debug(
                "aiotrace: %s already carries the context across %s; aiotrace stays out",
                threads.OTEL_THREADING,
                getattr(original, "__qualname__", original),
            )
            raise _Foreign(theirs)
        return getattr(importlib.import_module(module, __package__), name)(original)

    return make


_submit = _leaving_otel_threading(".executors", "patched_submit")
_thread_start = _leaving_otel_threading(".threads", "patched_start")
_thread_bootstrap = _leaving_otel_threading(
    ".threads", "patched_bootstrap_inner", lambda: threading.Thread.start
)


def _process_submit(original: Any) -> Any:
    from .executors import patched_process_submit

    return patched_process_submit(original)


def _thread_patches() -> List[Patch]:
    # Timer first: it inherits Thread.start and so shares its replacement, unless an earlier
    # opentelemetry-instrumentation-threading uninstrument() left a copy in Timer's own dict.
    patches = [
        Patch("thread", owner, "start", _thread_start)
        for owner in ("threading:Timer", "threading:Thread")
    ]
    if sys.version_info < (3, 14):
        patches.append(Patch("thread", "threading:Thread", "_bootstrap_inner", _thread_bootstrap))
    return patches


def _asyncgen(name: str) -> Callable[[Any], Any]:
    def make(original: Any) -> Any:
        from . import asyncgens

        return getattr(asyncgens, name)(original)

    return make


def _asyncgen_patches(owner: str, if_imported: bool = False) -> List[Patch]:
    return [
        Patch(
            "asyncgen",
            owner,
            "_asyncgen_firstiter_hook",
            _asyncgen("patched_firstiter"),
            if_imported,
        ),
        Patch(
            "asyncgen",
            owner,
            "_asyncgen_finalizer_hook",
            _asyncgen("patched_finalizer"),
            if_imported,
        ),
        Patch("asyncgen", owner, "shutdown_asyncgens", _asyncgen("patched_shutdown"), if_imported),
    ]


def _transport(name: str) -> Callable[[Any], Any]:
    def make(original: Any) -> Any:
        from . import transports

        return getattr(transports, name)(original)

    return make


# From CPython 3.15 every selector transport registers its reader with the context it was made
# in (``_SelectorTransport._add_reader(..., context=self._context)``, read in 3.15.2's
# selector_events.py): a resumed transport keeps its connection's context, shown on the stock
# loop by tests/test_transports.py, so pause/resume are not patched there. SSL's own resume
# still schedules its delivery in the resumer's context on 3.15.2 (same tests).
STOCK_TRANSPORTS_KEEP_CONTEXT = sys.version_info >= (3, 15)


def _transport_patches() -> List[Patch]:
    owner = "asyncio.selector_events:_SelectorSocketTransport"
    patches = []
    if not STOCK_TRANSPORTS_KEEP_CONTEXT:
        patches += [
            Patch("transport", owner, "pause_reading", _transport("patched_pause_reading")),
            Patch("transport", owner, "resume_reading", _transport("patched_resume_reading")),
        ]
    if sys.version_info >= (3, 11):
        patches.append(
            Patch(
                "transport",
                "asyncio.sslproto:SSLProtocol",
                "_resume_reading",
                _transport("patched_ssl_resume_reading"),
            )
        )
    return patches


def _create_server(original: Any) -> Any:
    from .servers import patched_create_server

    return patched_create_server(original)


def _server_init(original: Any) -> Any:
    from .servers import patched_server_init

    return patched_server_init(original)


def _server_patches() -> List[Patch]:
    # The loops' methods cover asyncio.start_server/start_unix_server and every framework that
    # calls them; uvloop's are set on its Python ``Loop`` class (see aiotrace/servers.py).
    patches = [
        Patch("server", "asyncio.base_events:BaseEventLoop", "create_server", _create_server)
    ]
    if sys.version_info >= (3, 15):
        # 3.15's Server keeps the context its connections copy (see aiotrace/servers.py).
        patches.append(Patch("server", "asyncio.base_events:Server", "__init__", _server_init))
    if sys.platform != "win32":
        patches.append(
            Patch(
                "server",
                "asyncio.unix_events:_UnixSelectorEventLoop",
                "create_unix_server",
                _create_server,
            )
        )
    patches += [
        Patch("server", "uvloop:Loop", name, _create_server, if_imported=True)
        for name in ("create_server", "create_unix_server")
    ]
    return patches


def _anyio_stream(name: str) -> Callable[[Any], Any]:
    def make(original: Any) -> Any:
        from . import anyio_streams

        return getattr(anyio_streams, name)(original)

    return make


def _loop_context(name: str) -> Callable[[Any], Any]:
    def make(original: Any) -> Any:
        from . import loops

        return getattr(loops, name)(original)

    return make


def _anyio_stream_patches() -> List[Patch]:
    # if_imported: aiotrace never imports anyio; see aiotrace/anyio_streams.py.
    return [
        Patch(
            "anyio_stream",
            f"anyio.streams.memory:MemoryObject{side}Stream",
            attribute,
            _anyio_stream(f"patched_{attribute}"),
            if_imported=True,
        )
        for side, attribute in (("Send", "send_nowait"), ("Receive", "receive_nowait"))
    ]


_loop_init = _loop_context("patched_init")
_loop_running = _loop_context("patched_run_forever")


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
        # Loops that drop call_soon(context=) are repaired when made or started (aiotrace/loops.py):
        # what lets the classes above inherit asyncio's own waiting methods.
        Patch("loop_context", "asyncio.base_events:BaseEventLoop", "__init__", _loop_init),
        Patch("loop_context", "asyncio.base_events:BaseEventLoop", "run_forever", _loop_running),
        Patch("executor", "concurrent.futures.thread:ThreadPoolExecutor", "submit", _submit),
        # if_imported: importing it means importing multiprocessing (10-20 ms measured here),
        # a cost every asyncio application would pay at install() for a pool it may not use.
        Patch(
            "process_pool",
            "concurrent.futures.process:ProcessPoolExecutor",
            "submit",
            _process_submit,
            if_imported=True,
        ),
        *_thread_patches(),
        *_asyncgen_patches("asyncio.base_events:BaseEventLoop"),
        *_asyncgen_patches("uvloop:Loop", if_imported=True),
        *_server_patches(),
        *_transport_patches(),
        *_anyio_stream_patches(),
    ]
    if sys.version_info >= (3, 11):
        patches += _class_patches("task_group", "asyncio.taskgroups", ("TaskGroup",))
    return patches


PATCHES: Tuple[Patch, ...] = tuple(_all_patches())
PATCH_NAMES: Tuple[str, ...] = tuple(dict.fromkeys(p.group for p in PATCHES))
LOCK_PATCHES: FrozenSet[str] = frozenset({"lock", "event", "semaphore", "condition"})
# The groups whose installed classes rely on ``loop_context`` for their waiter guarantee; it is
# applied with any of them and never alone.
WAITER_PATCHES: FrozenSet[str] = LOCK_PATCHES | {"queue"}


class UnknownPatchError(ValueError):
    """A patch name that aiotrace does not know."""


class InstallError(RuntimeError):
    """:func:`install` or :func:`rebind` could not apply one patch; every patch that call had
    applied is undone (``__cause__`` is the original error)."""

    def __init__(self, where: str, cause: BaseException, undone: int) -> None:
        super().__init__(
            f"aiotrace could not patch {where}: {type(cause).__name__}: {cause}; nothing was "
            f"changed ({undone} patch(es) this call had applied are undone)"
        )
        self.where = where


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
# The groups install() was asked for since the last uninstall(): applied again, for their
# ``if_imported`` patches, when uvloop or the process pool loads later (see _install_wanted).
_wanted: set = set()
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
    if excluded >= WAITER_PATCHES:
        excluded.add("loop_context")
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
    removes a patch: call :func:`uninstall` first to narrow the set. The patches of modules
    imported later (uvloop's ``Loop``, ``ProcessPoolExecutor``) are applied when they load: an
    import hook (``sys.meta_path``) calls install() again then, until :func:`uninstall`.
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
        done: List[Tuple[str, str]] = []  # what this call applied, in order
        conflicts_before = dict(conflicts)
        where = "?"
        syncing = False
        try:
            for patch in PATCHES:
                where = patch.where
                if _apply(patch, groups):
                    done.append((patch.owner, patch.attribute))
            where = "the running loop's async generator hooks"
            syncing = True
            _sync_asyncgen_hooks()
            where = "the repair of event loops that drop call_soon(context=)"
            _sync_loop_repairs()
            where = "the finder that patches uvloop and process pools when they load"
            _follow_late_modules()
        except BaseException as exc:
            _roll_back(done, syncing)
            conflicts.clear()
            conflicts.update(conflicts_before)
            if not isinstance(exc, Exception):  # KeyboardInterrupt, SystemExit: as they were
                raise
            raise InstallError(where, exc, len(done)) from exc
        _wanted.update(groups)
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
    # For a class, the object it holds itself, so that uninstall() puts back that very
    # object (getattr would return a bound or derived object for some descriptors).
    owned = not isinstance(owner, type) or patch.attribute in vars(owner)
    original = (
        vars(owner)[patch.attribute]
        if owned and isinstance(owner, type)
        else getattr(owner, patch.attribute)
    )
    try:
        replacement = _replacement(patch, original)
    except _Foreign as foreign:
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


def _roll_back(done: List[Tuple[str, str]], synced: bool) -> None:
    """Undo the patches ``done`` (applied by one install() call that failed), newest first;
    resync the async generator hooks if they were (``synced``) or may have been changed."""
    resync = synced
    for key in reversed(done):
        applied = _applied.pop(key, None)
        if applied is not None:
            _restore(applied)
            resync = resync or applied.patch.group == "asyncgen"
    try:
        _sync_loop_repairs()  # loops repaired by this call are given back their own methods
        if resync:
            _sync_asyncgen_hooks()
    except Exception as exc:  # the error being reported is the one that made install() fail
        logger.warning("aiotrace: could not resync the loops' hooks: %r", exc)


def _follow_late_modules() -> None:
    # uvloop and the process pool are patched only once imported, and they are often imported
    # after install(): ``uvicorn --loop uvloop`` under opentelemetry-instrument or the
    # OpenTelemetry Operator's sitecustomize (whose instrumentor calls install() first), or an
    # application that installs at start. The start-up hook's finder then installs again (the
    # one mechanism, aiotrace_boot._hook); it is registered here unless it already is.
    from aiotrace_boot import _hook

    _hook.follow_late_modules(_install_wanted)


def _install_wanted() -> FrozenSet[str]:
    """:func:`install` again with the groups asked for so far (nothing after uninstall())."""
    with _lock:
        if not _wanted:
            return _active()
        return install(exclude=set(PATCH_NAMES).difference(_wanted), patch_threads=True)


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
        _wanted.clear()
        _unbind()
        for key in reversed(list(_applied)):
            _restore(_applied.pop(key))
        _sync_asyncgen_hooks()
        _sync_loop_repairs()


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


def _sync_asyncgen_hooks() -> None:
    # Only where the hooks were ever made: then ``aiotrace.asyncgens`` is imported.
    asyncgens = sys.modules.get(f"{__package__}.asyncgens")
    if asyncgens is None:
        return
    # Before the running loop's hooks change: a generator handed back by uninstall() must be
    # in its loop's set before that loop can start shutting down.
    asyncgens.set_recording("asyncgen" in _active())
    # A loop running now installed its async generator hooks when it started.
    asyncgens.sync_running_loop_hooks()


def _sync_loop_repairs() -> None:
    # Only once the patch was made: then ``aiotrace.loops`` is imported.
    loops = sys.modules.get(f"{__package__}.loops")
    if loops is not None:
        loops.set_repairing("loop_context" in _active())


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


# Names that :func:`rebind` pointed at a replacement: (module, name) -> (original, replacement).
_rebound: Dict[Tuple[Any, str], Tuple[Any, Any]] = {}


def rebind(module: Any) -> List[str]:
    """Point every name in ``module`` that still holds an object :func:`install` replaced in a
    module (``from asyncio import Queue`` run before ``install()``) at its replacement; return
    the names rebound. :func:`uninstall` puts the originals back. If one name cannot be set,
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
        except Exception as exc:  # all or nothing, as install()
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
