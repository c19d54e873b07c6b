"""The import hook: install aiotrace the moment the application has imported asyncio.

A ``sys.meta_path`` finder that answers for nothing itself. When a watched module (``asyncio``
first, then the libraries of ``AIOTRACE_WATCH_MODULES``) is about to be loaded, it asks the
other finders for the module's spec and wraps that spec's ``exec_module`` so that, once the
module has executed completely, aiotrace acts:

- after ``asyncio``: ``aiotrace.install(...)``, so every later ``from asyncio import Queue``
  already gets the propagating class;
- after a watched library: names in it that still hold asyncio's originals are rebound
  (``aiotrace.registry.rebind``), and a class it put in ``asyncio`` in place of aiotrace's is
  reported once (under ``AIOTRACE_DEBUG``) and left alone.

If asyncio is already imported when the hook is set up, aiotrace installs at once and rebinds
every loaded module that captured an original. Every step is guarded: an error says one line on
stderr; the module being imported always loads as it would without aiotrace, and an exception
it raises itself passes through untouched. ``aiotrace.install()`` is all or nothing, so the line
says what stays patched: "not enabled" only when nothing is.

When asyncio is first imported by the ``aiotrace`` package itself (``import aiotrace`` before
asyncio), installing then would read aiotrace's own half-initialised modules. That import is
recognised whoever loads the package: another finder may stand before this one and load it
(pytest's assertion rewriter loads plugin packages, and aiotrace is one), or a lazy loader may run
its code long after ``import`` (``importlib.util.LazyLoader``, PEP 810 lazy imports). Install
then waits, and the package's last line calls :func:`package_loaded`.
"""

import os
import sys

from . import _config
from ._late import (
    LATE_PATCH_MODULES,
    _LateFinder,
    _WatchingFinder,
    follow_late_modules,
    late_modules_follower,
)
from ._warn import warn
from .switches import by_keyword, unknown_patch_names

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType
    from typing import Any, Callable, Dict, List, Optional, Set

__all__ = [
    "LATE_PATCH_MODULES",
    "boot",
    "follow_late_modules",
    "late_modules_follower",
    "package_loaded",
]


def boot() -> bool:
    """Read the configuration and set aiotrace up if it is enabled; True if it is."""
    config = _config.from_environ(os.environ, warn)
    if not config.enabled:
        return False
    finder = _Finder(config)
    _finders.append(finder)
    # asyncio imported before us (by an earlier ``.pth``, or by code that calls ``start()``
    # late): modules may already hold asyncio's own classes; rebind those that do.
    if "asyncio" in sys.modules and finder.asyncio_loaded():
        for name, module in list(sys.modules.items()):
            if module is None or name.partition(".")[0] in ("asyncio", "aiotrace"):
                continue
            try:
                finder.rebind(module)
            except Exception as exc:  # e.g. an object in sys.modules that is not a module
                if config.debug:
                    warn(f"could not rebind in {name}: {type(exc).__name__}: {exc}")
    # This finder installs after the late modules itself: a follower that an earlier
    # ``install()`` (or the one just above) registered would only install a second time.
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _LateFinder)]
    sys.meta_path.insert(0, finder)
    return True


_finders: "List[_Finder]" = []  # the one boot() set up


def package_loaded() -> None:
    """Called by the last line of the ``aiotrace`` package: the install that waited for it to
    finish loading happens now. Never raises."""
    for finder in _finders:
        finder.resume(finished="aiotrace")


def _loading(package: str, finished: "Optional[str]" = None) -> "Optional[str]":
    """The outermost module of ``package`` that is part-way through its import, or None;
    ``finished`` names one whose code has reached its last line.

    Two signs: its module code runs on this thread's stack (whoever loads it: a finder standing
    before ours, a loader wrapped in ``importlib.util.LazyLoader`` whose module executes on first
    attribute access, where ``__spec__._initializing`` is False; read in 3.8's and 3.15's
    importlib), or the import system marks the package initialising (``_load_unlocked`` sets
    ``spec._initializing`` around ``exec_module`` on 3.8-3.15): another thread is importing it.
    """
    prefix = package + "."
    outermost = None
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "<module>":
            name = frame.f_globals.get("__name__")
            if name == package or (isinstance(name, str) and name.startswith(prefix)):
                outermost = name if name != finished else outermost
        frame = frame.f_back
    if outermost is None and finished != package and _initializing(package) is not None:
        outermost = package
    return outermost


def _initializing(name: str) -> "Any":
    """The spec of module ``name`` if the import system marks it initialising, else None."""
    module = sys.modules.get(name)
    try:
        # Not getattr(): on a module made lazy by LazyLoader, that would load it.
        spec = object.__getattribute__(module, "__spec__")
    except AttributeError:
        return None
    return spec if getattr(spec, "_initializing", False) is True else None


def _when_initialised(name: str, callback: "Callable[[], None]") -> bool:
    """Call ``callback`` when the import system marks module ``name`` initialised (the last
    step of ``_load_unlocked``, after the module's code ran, whether it failed or not); False if
    it is not being imported that way.

    For a module of aiotrace that a lazy import (PEP 810) executes after the package itself
    finished loading: nothing else gets control when it is done. The spec's class becomes, for
    that moment, a subclass whose ``__setattr__`` sees ``_initializing`` set to False.
    """
    spec = _initializing(name)
    if spec is None:
        return False
    cls = type(spec)

    def __setattr__(self: "Any", attribute: str, value: "Any") -> None:
        cls.__setattr__(self, attribute, value)
        if attribute == "_initializing" and not value:
            object.__setattr__(self, "__class__", cls)
            callback()

    watched = type(cls.__name__, (cls,), {"__setattr__": __setattr__, "__slots__": ()})
    watched.__qualname__ = cls.__qualname__
    watched.__module__ = cls.__module__
    spec.__class__ = watched
    return True


class _Finder(_WatchingFinder):
    def __init__(self, config: "_config.Config") -> None:
        self.config = config
        self.watched: Set[str] = {"asyncio", *LATE_PATCH_MODULES, *config.watch_modules}
        self.looking: Set[str] = set()  # names being looked up, so that we never find ourselves
        self.pending = False  # asyncio loaded while aiotrace was loading: install waits
        self.asyncio_seen = False  # asyncio_loaded() was called
        self.enabled = True  # off after a failed first install (then nothing is patched)
        self._applied: Dict[str, Any] = {}
        self._announced: Set[str] = set()  # patches already reported under AIOTRACE_DEBUG

    # -- what happens after a watched module loaded -------------------------------------------
    def loaded(self, name: str, module: "ModuleType") -> None:
        try:
            if name == "asyncio":
                self.asyncio_loaded()
                return
            if self.pending or not self.asyncio_seen:
                self.resume()
            if self.enabled and "asyncio" in sys.modules and not self.pending:
                if name in LATE_PATCH_MODULES:
                    self.install(name)  # the patches that wait for this module (uvloop's...)
                self.rebind(module)
                self._report_replacements(name)
        except Exception as exc:  # never disturb the application's import
            warn(f"after importing {name}: {type(exc).__name__}: {exc}; {_patched()}")

    def asyncio_loaded(self, finished: "Optional[str]" = None) -> bool:
        """Install now, or once aiotrace has finished loading if asyncio was imported from
        inside one of its modules; False if installing failed or waits."""
        self.asyncio_seen = True
        outermost = _loading("aiotrace", finished)
        if outermost is None:
            return self.install()
        self.pending = True
        # The package tells us itself (its last line); a module of it loaded later, by a lazy
        # import, is watched until the import system marks it done.
        if outermost != "aiotrace":
            _when_initialised(outermost, self.resume)
        return False

    def resume(self, finished: "Optional[str]" = None) -> None:
        """aiotrace has finished loading (``finished``: the module that says so from its last
        line): the install that waited happens. Never raises.

        Also when asyncio was loaded by a finder standing before ours that never asked the
        others (so this finder did not see it): found here, at the next import of aiotrace or
        of a watched module.
        """
        if not self.pending and (
            self.asyncio_seen or "asyncio" not in sys.modules or _loading("asyncio")
        ):
            return
        try:
            self.pending = False
            self.asyncio_loaded(finished)
        except Exception as exc:  # called by aiotrace's import: it must not fail
            warn(f"could not install: {type(exc).__name__}: {exc}; {_patched()}")

    def install(self, after: str = "asyncio") -> bool:
        """``aiotrace.install()`` as configured, after the module ``after`` was imported; False
        (and one line on stderr) on failure."""
        config = self.config
        try:
            from aiotrace import registry

            arguments, unknown = config.install_arguments(registry.PATCH_NAMES)
            if unknown:
                variable = by_keyword("exclude").variable
                warn(
                    f"{variable}={os.environ[variable]!r} has "
                    f"{unknown_patch_names(unknown, registry.PATCH_NAMES)}; ignoring those"
                )
            registry.install(**arguments)
        except Exception as exc:  # e.g. OpenTelemetry missing or broken
            state = _patched()
            if state == _NOTHING:
                self.enabled = False
                warn(f"not enabled: {type(exc).__name__}: {exc}")
            else:  # a late install (after uvloop...) undid only its own patches
                warn(f"not patched for {after}: {type(exc).__name__}: {exc}; {state}")
            return False
        self._applied = self._asyncio_patches(registry)
        if config.debug:
            for patch in registry.PATCHES:
                where = patch.where
                if registry.original(patch.owner, patch.attribute) is not None and (
                    where not in self._announced
                ):
                    self._announced.add(where)
                    warn(f"patched {where}")
            for where, found in sorted(registry.conflicts.items()):
                if where not in self._announced:
                    self._announced.add(where)
                    warn(f"{where} is {found}, not asyncio's own: left alone")
        return True

    def rebind(self, module: "Any") -> None:
        from aiotrace import registry

        names = registry.rebind(module)
        if names and self.config.debug:
            warn(f"rebound {', '.join(sorted(names))} in {getattr(module, '__name__', module)}")

    @staticmethod
    def _asyncio_patches(registry: "Any") -> "Dict[str, Any]":
        """What aiotrace put in ``asyncio``'s own namespace, by name."""
        asyncio = sys.modules["asyncio"]
        return {
            patch.attribute: getattr(asyncio, patch.attribute)
            for patch in registry.PATCHES
            if patch.owner == "asyncio"
            and registry.original(patch.owner, patch.attribute) is not None
        }

    def _report_replacements(self, name: str) -> None:
        asyncio = sys.modules["asyncio"]
        for attribute, ours in self._applied.items():
            current = getattr(asyncio, attribute, None)
            if current is ours:
                continue
            self._applied[attribute] = current  # say it once
            if self.config.debug:
                module = getattr(current, "__module__", "?")
                found = f"{module}.{getattr(current, '__qualname__', type(current).__name__)}"
                warn(f"{name} replaced asyncio.{attribute} with {found}: left alone")


_NOTHING = "nothing is patched"


def _patched() -> str:
    """What aiotrace has patched in this process, for messages."""
    registry = sys.modules.get("aiotrace.registry")
    groups = sorted(registry.installed()) if registry is not None else []
    return f"still patched: {', '.join(groups)}" if groups else _NOTHING
