"""The import hook that applies the patches of modules loaded after ``aiotrace.install()``.

``install()`` patches uvloop, the process pool and anyio's streams only once someone else
imported them (importing them would cost every application). A ``sys.meta_path`` finder watches
for them and calls ``install()`` again after one has loaded: the start-up hook's finder
(``_hook``) does it as part of its job; for ``install()`` called another way (from code, the
OpenTelemetry instrumentor) the registry registers :class:`_LateFinder` through
:func:`follow_late_modules`. Its own module, apart from ``_hook``, so that the registry can
register it without importing the start-up hook (which imports the registry): no import cycle.
"""

import sys

from ._warn import warn

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType
    from typing import Any, Callable, Optional, Sequence, Set

__all__ = ["LATE_PATCH_MODULES", "follow_late_modules", "late_modules_follower"]

# Modules whose patches ``aiotrace.install()`` applies only once they are imported (the
# catalogue's late targets: importing them just to patch them would cost every
# application, e.g. 10-20 ms for multiprocessing). Loading one after asyncio installs again.
# tests/test_boot_start.py checks that this matches the catalogue's late targets. aiotrace
# installed another way (``install()`` from code, the OpenTelemetry instrumentor) gets the same
# through ``follow_late_modules``.
LATE_PATCH_MODULES = ("uvloop", "concurrent.futures.process", "anyio.streams.memory")


def follow_late_modules(install: "Callable[[], Any]") -> None:
    """Have ``install`` called each time a module of ``LATE_PATCH_MODULES`` has loaded, as the
    start-up hook's finder does after them; for ``aiotrace.install()`` called another way.

    Nothing to do when the start-up hook's finder (or an earlier call's) is in
    ``sys.meta_path``, or when every late module is imported already.
    """
    if late_modules_follower() is not None:
        return
    if all(name in sys.modules for name in LATE_PATCH_MODULES):
        return
    sys.meta_path.insert(0, _LateFinder(install))


def late_modules_follower() -> "Optional[str]":
    """Who installs aiotrace's patches when a late module loads: ``"start-up hook"``,
    ``"install()"`` (``follow_late_modules``), or None."""
    for finder in sys.meta_path:
        if isinstance(finder, _WatchingFinder) and finder.enabled:
            return "install()" if isinstance(finder, _LateFinder) else "start-up hook"
    return None


class _WatchingFinder:
    """A finder that answers for nothing itself: for a watched module it asks the other
    finders for the spec and has :meth:`loaded` called once the module has executed."""

    watched: "Set[str]"
    looking: "Set[str]"  # names being looked up, so that we never find ourselves
    enabled: bool

    # -- importlib protocol ------------------------------------------------------------------
    def find_spec(
        self, fullname: str, path: "Optional[Sequence[str]]" = None, target: "Any" = None
    ) -> "Any":
        if fullname not in self.watched or fullname in self.looking or not self.enabled:
            return None
        self.looking.add(fullname)
        try:
            spec = self._find_with_others(fullname, path, target)
        except Exception:  # let the import system look (and fail) as usual
            return None
        finally:
            self.looking.discard(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return None
        try:
            _after_exec(spec.loader, fullname, self)
        except Exception:  # a loader we cannot wrap is loaded unwatched
            return None
        return spec

    def _find_with_others(self, fullname: str, path: "Any", target: "Any") -> "Any":
        # What importlib._bootstrap._find_spec does, minus this finder.
        for finder in list(sys.meta_path):
            if finder is self:
                continue
            find_spec = getattr(finder, "find_spec", None)
            if find_spec is None:
                continue
            spec = find_spec(fullname, path, target)
            if spec is not None:
                return spec
        return None

    def loaded(self, name: str, module: "ModuleType") -> None:
        raise NotImplementedError


class _LateFinder(_WatchingFinder):
    """The start-up hook's finder reduced to the late modules: after one has loaded, it calls
    the ``install`` it was given (the registry's, for the patch groups asked for so far)."""

    def __init__(self, install: "Callable[[], Any]") -> None:  # no configuration to read
        self.watched = set(LATE_PATCH_MODULES)
        self.looking = set()
        self.enabled = True
        self._install_again = install

    def loaded(self, name: str, module: "ModuleType") -> None:
        if not self.enabled:
            return
        try:
            self._install_again()
        except Exception as exc:  # never disturb the application's import
            self.enabled = False
            warn(f"{name}'s patches not applied: {type(exc).__name__}: {exc}")


def _after_exec(loader: "Any", name: str, finder: _WatchingFinder) -> None:
    """Make ``loader.exec_module`` tell ``finder`` when the module ``name`` has executed.

    The wrapper is set on the loader instance and removed when it has run, so the module's
    ``__loader__`` and ``__spec__`` are the import system's own objects, unchanged. Loaders
    that are classes (builtin and frozen modules) are shared by many modules: not wrapped.
    """
    if isinstance(loader, type):
        raise TypeError("shared loader")
    real = loader.exec_module

    def exec_module(module: "ModuleType") -> None:
        if getattr(module, "__name__", None) != name:  # a loader shared by modules (zipimport)
            return real(module)
        try:
            real(module)
        finally:
            loader.__dict__.pop("exec_module", None)
        return finder.loaded(name, module)

    # CPython hides its import machinery from tracebacks: it cuts each run of frames from
    # "<frozen importlib._bootstrap>" that reaches a "_call_with_frames_removed" frame
    # (remove_importlib_frames in Python/import.c). Naming this wrapper's frame so makes an
    # exception raised by the watched module itself show exactly the traceback it has without
    # aiotrace (checked on 3.8 and 3.13 by tests/test_boot_faults.py); otherwise the wrapper and
    # three importlib frames would appear in it.
    exec_module.__code__ = exec_module.__code__.replace(
        co_filename="<frozen importlib._bootstrap>", co_name="_call_with_frames_removed"
    )
    loader.exec_module = exec_module
