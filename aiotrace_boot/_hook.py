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
stderr and switches aiotrace off; the module being imported always loads as it would without
aiotrace, and an exception it raises itself passes through untouched.
"""

import os
import sys

from . import _config, warn

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType
    from typing import Any, Dict, Optional, Sequence, Set

__all__ = ["LATE_PATCH_MODULES", "boot"]

# Modules whose patches ``aiotrace.install()`` applies only once they are imported (the
# registry's ``if_imported`` patches: importing them just to patch them would cost every
# application, e.g. 10-20 ms for multiprocessing). Loading one after asyncio installs again.
# tests/test_boot_start.py checks that this matches the registry.
LATE_PATCH_MODULES = ("uvloop", "concurrent.futures.process", "anyio.streams.memory")


def boot() -> bool:
    """Read the configuration and set aiotrace up if it is enabled; True if it is."""
    config = _config.from_environ(os.environ, warn)
    if not config.enabled:
        return False
    finder = _Finder(config)
    # asyncio imported before us (by an earlier ``.pth``, or by code that calls ``start()``
    # late): modules may already hold asyncio's own classes; rebind those that do.
    if "asyncio" in sys.modules and finder.install():
        for name, module in list(sys.modules.items()):
            if module is None or name.partition(".")[0] in ("asyncio", "aiotrace"):
                continue
            try:
                finder.rebind(module)
            except Exception as exc:  # e.g. an object in sys.modules that is not a module
                if config.debug:
                    warn(f"could not rebind in {name}: {type(exc).__name__}: {exc}")
    sys.meta_path.insert(0, finder)
    return True


class _Finder:
    def __init__(self, config: "_config.Config") -> None:
        self.config = config
        # aiotrace itself imports asyncio: if that is where asyncio is first imported, install
        # waits until the aiotrace package has finished loading.
        self.watched: Set[str] = {"asyncio", "aiotrace", *LATE_PATCH_MODULES, *config.watch_modules}
        self.looking: Set[str] = set()  # names being looked up, so that we never find ourselves
        self.executing: Set[str] = set()  # watched modules whose code is running
        self.pending = False  # asyncio loaded while aiotrace was loading
        self.enabled = True  # off after a failed install
        self._applied: Dict[str, Any] = {}
        self._announced: Set[str] = set()  # patches already reported under AIOTRACE_DEBUG

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

    # -- what happens after a watched module loaded -------------------------------------------
    def loaded(self, name: str, module: "ModuleType") -> None:
        try:
            if name == "asyncio":
                if "aiotrace" in self.executing:
                    self.pending = True
                else:
                    self.install()
            elif name == "aiotrace":
                if self.pending:
                    self.pending = False
                    self.install()
            elif self.enabled and "asyncio" in sys.modules and not self.pending:
                if name in LATE_PATCH_MODULES:
                    self.install()  # the patches that wait for this module (uvloop's...)
                self.rebind(module)
                self._report_replacements(name)
        except Exception as exc:  # never disturb the application's import
            self.enabled = False
            warn(f"disabled after importing {name}: {type(exc).__name__}: {exc}")

    def install(self) -> bool:
        """``aiotrace.install()`` as configured; False (and one line on stderr) on failure."""
        config = self.config
        try:
            from aiotrace import registry

            arguments, unknown = config.install_arguments(registry.PATCH_NAMES)
            if unknown:
                warn(
                    f"AIOTRACE_DISABLED_PATCHES={os.environ['AIOTRACE_DISABLED_PATCHES']!r} has "
                    f"unknown patch name(s) {', '.join(map(repr, unknown))}; accepted: "
                    f"{', '.join(registry.PATCH_NAMES)}; ignoring those"
                )
            registry.install(**arguments)
        except Exception as exc:  # e.g. OpenTelemetry missing or broken
            self.enabled = False
            warn(f"not enabled: {type(exc).__name__}: {exc}")
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


def _after_exec(loader: "Any", name: str, finder: _Finder) -> None:
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
        finder.executing.add(name)
        try:
            real(module)
        finally:
            finder.executing.discard(name)
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
