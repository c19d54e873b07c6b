"""aiotrace's configuration, read from ``AIOTRACE_*`` environment variables.

Named after OpenTelemetry's ``OTEL_*`` variables (``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS`` is
the model for ``AIOTRACE_DISABLED_PATCHES``). A value that cannot be understood never stops the
application: it gives one line on stderr naming the variable, the value and what is accepted,
and the default is used instead. Patch names are checked later, against the registry, when
asyncio is really imported (see ``_hook``): knowing them here would mean importing aiotrace.
"""

# ``typing``, ``re`` and even ``__future__`` cost time at every enabled start-up, and nothing
# here needs them at run time: annotations that name typing's types are strings.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Collection, Dict, List, Mapping, Tuple

__all__ = ["DEFAULT_WATCH_MODULES", "VARIABLES", "Config", "from_environ", "switch"]

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
_BOOLEAN_SPELLINGS = ", ".join(_TRUE + _FALSE) + " (any case)"
SERVER_CONTEXTS = ("clean", "inherit")

# Libraries that touch asyncio's own namespace or hold its classes and functions from import
# time; after one of them is imported, names in it that still hold asyncio's originals are
# rebound, and a class it put in place of aiotrace's in ``asyncio`` is reported (under debug).
DEFAULT_WATCH_MODULES: "Tuple[str, ...]" = ("nest_asyncio", "uvloop", "anyio")

# name -> (default, accepted values, meaning); docs/switching-on.md and ``--help`` come from here.
VARIABLES: "Dict[str, Tuple[str, str, str]]" = {
    "AIOTRACE_ENABLE": ("unset (off)", "boolean", "switch aiotrace on at interpreter start"),
    "AIOTRACE_PATCH_QUEUE": ("true", "boolean", "replace asyncio's queue classes"),
    "AIOTRACE_PATCH_LOCKS": (
        "true",
        "boolean",
        "replace Lock, Event, Semaphore, BoundedSemaphore and Condition",
    ),
    "AIOTRACE_PATCH_THREADS": ("false", "boolean", "propagate into threading.Thread too"),
    "AIOTRACE_SERVER_CONTEXT": (
        "clean",
        "clean, inherit",
        "context of server connection handlers",
    ),
    "AIOTRACE_CLOSE_ASYNCGENS": (
        "true",
        "boolean",
        "close abandoned async generators in the consumer's context",
    ),
    "AIOTRACE_DISABLED_PATCHES": ("empty", "comma list of patch names", "groups to leave alone"),
    "AIOTRACE_WATCH_MODULES": (
        ",".join(DEFAULT_WATCH_MODULES),
        "comma list of module names",
        "libraries whose asyncio names are rebound after they load",
    ),
    "AIOTRACE_DEBUG": ("false", "boolean", "one line on stderr per patch applied"),
}


class Config:
    """What the environment asks for; the defaults are those of ``aiotrace.install()``."""

    def __init__(
        self,
        enabled: bool,
        *,
        patch_queue: bool = True,
        patch_locks: bool = True,
        patch_threads: bool = False,
        server_context: str = "clean",
        close_asyncgens: bool = True,
        disabled_patches: "Tuple[str, ...]" = (),
        watch_modules: "Tuple[str, ...]" = DEFAULT_WATCH_MODULES,
        debug: bool = False,
    ) -> None:
        self.enabled = enabled
        self.patch_queue = patch_queue
        self.patch_locks = patch_locks
        self.patch_threads = patch_threads
        self.server_context = server_context
        self.close_asyncgens = close_asyncgens
        self.disabled_patches = disabled_patches
        self.watch_modules = watch_modules
        self.debug = debug

    def __repr__(self) -> str:
        return f"Config({vars(self)})"

    def install_arguments(self, known: "Collection[str]") -> "Tuple[Dict[str, Any], List[str]]":
        """The keyword arguments of ``aiotrace.install()`` for this configuration, and the names
        in ``AIOTRACE_DISABLED_PATCHES`` that are not among ``known`` (left out of ``exclude``;
        the caller reports them)."""
        unknown = [name for name in self.disabled_patches if name not in known]
        arguments = {
            "patch_queue": self.patch_queue,
            "patch_locks": self.patch_locks,
            "patch_threads": self.patch_threads,
            "server_context": self.server_context,
            "close_asyncgens": self.close_asyncgens,
            "exclude": [name for name in self.disabled_patches if name not in unknown],
        }
        return arguments, unknown


def _is_module_name(name: str) -> bool:
    return all(part.isidentifier() for part in name.split("."))


def _boolean(
    environ: "Mapping[str, str]", name: str, default: bool, warn: "Callable[[str], None]"
) -> bool:
    raw = environ.get(name, "")
    value = raw.strip().lower()
    if not value:
        return default
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    warn(
        f"{name}={raw!r} is not a boolean; accepted: {_BOOLEAN_SPELLINGS}; "
        f"using {'true' if default else 'false'}"
    )
    return default


def switch(raw: str) -> str:
    """How a value of ``AIOTRACE_ENABLE`` reads: ``"on"``, ``"off"``, ``"unset"`` (empty) or
    ``"invalid"`` (not a boolean: the hook warns and stays off)."""
    value = raw.strip().lower()
    if not value:
        return "unset"
    if value in _TRUE:
        return "on"
    return "off" if value in _FALSE else "invalid"


def _names(raw: str) -> "Tuple[str, ...]":
    return tuple(dict.fromkeys(part.strip() for part in raw.split(",") if part.strip()))


def from_environ(environ: "Mapping[str, str]", warn: "Callable[[str], None]") -> Config:
    """The configuration ``environ`` describes; ``warn`` receives one line per bad value."""
    if not _boolean(environ, "AIOTRACE_ENABLE", False, warn):
        return Config(enabled=False)

    server_context = environ.get("AIOTRACE_SERVER_CONTEXT", "").strip().lower() or "clean"
    if server_context not in SERVER_CONTEXTS:
        warn(
            f"AIOTRACE_SERVER_CONTEXT={environ['AIOTRACE_SERVER_CONTEXT']!r} is not accepted; "
            f"accepted: {', '.join(SERVER_CONTEXTS)}; using clean"
        )
        server_context = "clean"

    watch = DEFAULT_WATCH_MODULES
    if "AIOTRACE_WATCH_MODULES" in environ:
        names = _names(environ["AIOTRACE_WATCH_MODULES"])
        bad = [name for name in names if not _is_module_name(name)]
        if bad:
            warn(
                f"AIOTRACE_WATCH_MODULES={environ['AIOTRACE_WATCH_MODULES']!r} has "
                f"{', '.join(map(repr, bad))}, not module name(s); accepted: a comma list of "
                "dotted module names; ignoring those"
            )
        watch = tuple(name for name in names if name not in bad)

    return Config(
        enabled=True,
        patch_queue=_boolean(environ, "AIOTRACE_PATCH_QUEUE", True, warn),
        patch_locks=_boolean(environ, "AIOTRACE_PATCH_LOCKS", True, warn),
        patch_threads=_boolean(environ, "AIOTRACE_PATCH_THREADS", False, warn),
        server_context=server_context,
        close_asyncgens=_boolean(environ, "AIOTRACE_CLOSE_ASYNCGENS", True, warn),
        disabled_patches=_names(environ.get("AIOTRACE_DISABLED_PATCHES", "")),
        watch_modules=watch,
        debug=_boolean(environ, "AIOTRACE_DEBUG", False, warn),
    )
