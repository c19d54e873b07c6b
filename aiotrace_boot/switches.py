"""The one table of aiotrace's switches: each ``install()`` keyword and ``AIOTRACE_*`` variable.

Everything that lists the switches is derived from :data:`SWITCHES`: ``aiotrace.install()``'s
keyword handling (``aiotrace.registry.selected``), the start-up hook's parser and
``Config.install_arguments`` (``_config``), ``python -m aiotrace --help``, ``aiotrace doctor``,
the OpenTelemetry instrumentor's accepted options and the variables table of
docs/switching-on.md (``scripts/switch_table.py`` prints it; tests/test_switches.py checks it).
Adding a switch means adding one row here.

It lives in ``aiotrace_boot`` because the start-up hook reads it at every enabled start: it
imports nothing (not even ``typing`` at run time).
"""

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Collection, Dict, Iterable, List, Optional, Tuple

__all__ = [
    "BOOLEAN_SPELLINGS",
    "DEFAULT_WATCH_MODULES",
    "FALSE",
    "INSTALL_KEYWORDS",
    "SERVER_CONTEXTS",
    "SWITCHES",
    "TRUE",
    "Config",
    "Switch",
    "by_keyword",
    "by_variable",
    "markdown_table",
    "unknown_patch_names",
]

TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off")
BOOLEAN_SPELLINGS = ", ".join(TRUE + FALSE) + " (any case)"
SERVER_CONTEXTS = ("clean", "inherit")

# Libraries that touch asyncio's own namespace or hold its classes and functions from import
# time; after one of them is imported, names in it that still hold asyncio's originals are
# rebound, and a class it put in place of aiotrace's in ``asyncio`` is reported (under debug).
DEFAULT_WATCH_MODULES = ("nest_asyncio", "uvloop", "anyio")


class Switch:
    """One switch.

    - ``attribute``: its name in ``aiotrace_boot._config.Config``;
    - ``keyword``: the ``aiotrace.install()`` keyword, or None (start-up hook only);
    - ``variable``: the environment variable;
    - ``kind``: ``"boolean"``, ``"choice"`` (one of ``choices``), ``"patch names"`` or
      ``"module names"`` (comma lists);
    - ``default``: the value when unset; ``shown_default`` how ``--help`` and the docs show it;
    - ``meaning``: one line;
    - ``groups``: the patch groups it switches off when its value is ``off`` (for
      ``"patch names"``: the groups it names).
    """

    __slots__ = (
        "attribute",
        "choices",
        "default",
        "groups",
        "keyword",
        "kind",
        "meaning",
        "off",
        "shown_default",
        "variable",
    )

    def __init__(
        self,
        attribute: str,
        keyword: "Optional[str]",
        variable: str,
        *,
        kind: str,
        default: "Any",
        meaning: str,
        groups: "Tuple[str, ...]" = (),
        off: "Any" = False,
        choices: "Tuple[str, ...]" = (),
        shown_default: "Optional[str]" = None,
    ) -> None:
        self.attribute = attribute
        self.keyword = keyword
        self.variable = variable
        self.kind = kind
        self.default = default
        self.meaning = meaning
        self.groups = groups
        self.off = off
        self.choices = choices
        if shown_default is None:
            shown_default = str(default).lower() if kind == "boolean" else str(default)
        self.shown_default = shown_default

    @property
    def accepted(self) -> str:
        """What the variable accepts, for ``--help`` and the docs."""
        if self.kind == "choice":
            return ", ".join(self.choices)
        if self.kind in ("patch names", "module names"):
            return f"comma list of {self.kind}"
        return self.kind

    def __repr__(self) -> str:
        return f"Switch({self.variable})"


SWITCHES = (
    Switch(
        "enabled",
        None,
        "AIOTRACE_ENABLE",
        kind="boolean",
        default=False,
        meaning="switch aiotrace on at interpreter start",
        shown_default="unset (off)",
    ),
    Switch(
        "patch_queue",
        "patch_queue",
        "AIOTRACE_PATCH_QUEUE",
        kind="boolean",
        default=True,
        meaning="replace asyncio's queue classes",
        groups=("queue",),
    ),
    Switch(
        "patch_locks",
        "patch_locks",
        "AIOTRACE_PATCH_LOCKS",
        kind="boolean",
        default=True,
        meaning="replace Lock, Event, Semaphore, BoundedSemaphore and Condition",
        groups=("lock", "event", "semaphore", "condition"),
    ),
    Switch(
        "patch_threads",
        "patch_threads",
        "AIOTRACE_PATCH_THREADS",
        kind="boolean",
        default=False,
        meaning="propagate into threading.Thread too",
        groups=("thread",),
    ),
    Switch(
        "server_context",
        "server_context",
        "AIOTRACE_SERVER_CONTEXT",
        kind="choice",
        default="clean",
        meaning="context of server connection handlers",
        groups=("server",),
        off="inherit",
        choices=SERVER_CONTEXTS,
    ),
    Switch(
        "close_asyncgens",
        "close_asyncgens",
        "AIOTRACE_CLOSE_ASYNCGENS",
        kind="boolean",
        default=True,
        meaning="close abandoned async generators in the consumer's context",
        groups=("asyncgen",),
    ),
    Switch(
        "disabled_patches",
        "exclude",
        "AIOTRACE_DISABLED_PATCHES",
        kind="patch names",
        default=(),
        meaning="groups to leave alone (cf. OTEL_PYTHON_DISABLED_INSTRUMENTATIONS)",
        shown_default="empty",
    ),
    Switch(
        "watch_modules",
        None,
        "AIOTRACE_WATCH_MODULES",
        kind="module names",
        default=DEFAULT_WATCH_MODULES,
        meaning="libraries checked after they load: names in them still holding asyncio's originals"
        " are rebound; a class they put in asyncio in place of aiotrace's is reported (debug)"
        " and left alone",
        shown_default=",".join(DEFAULT_WATCH_MODULES),
    ),
    Switch(
        "debug",
        None,
        "AIOTRACE_DEBUG",
        kind="boolean",
        default=False,
        meaning="one line on stderr per patch applied, per name rebound, per conflict",
    ),
)


class Config:
    """What the environment asks for (``aiotrace_boot.configuration()``): one attribute per
    switch (``Switch.attribute``), with the defaults of ``aiotrace.install()``."""

    def __init__(self, enabled: bool, **values: "Any") -> None:
        unknown = set(values).difference(s.attribute for s in SWITCHES)
        if unknown:
            raise TypeError(f"Config() got unexpected argument(s) {', '.join(sorted(unknown))}")
        self.enabled = enabled
        for s in SWITCHES:
            if s.attribute != "enabled":
                setattr(self, s.attribute, values.get(s.attribute, s.default))

    def __repr__(self) -> str:
        return f"Config({vars(self)})"

    def install_arguments(self, known: "Collection[str]") -> "Tuple[Dict[str, Any], List[str]]":
        """The keyword arguments of ``aiotrace.install()`` for this configuration, and the names
        in ``AIOTRACE_DISABLED_PATCHES`` that are not among ``known`` (left out of ``exclude``;
        the caller reports them)."""
        arguments: Dict[str, Any] = {}
        unknown: List[str] = []
        for s in SWITCHES:
            if s.keyword is None:
                continue
            value = getattr(self, s.attribute)
            if s.kind == "patch names":
                unknown += [name for name in value if name not in known]
                value = [name for name in value if name in known]
            arguments[s.keyword] = value
        return arguments, unknown


# The keywords of ``aiotrace.install()``, in its order.
INSTALL_KEYWORDS = tuple(s.keyword for s in SWITCHES if s.keyword is not None)


def by_keyword(keyword: str) -> Switch:
    """The switch of an ``install()`` keyword."""
    for switch in SWITCHES:
        if switch.keyword == keyword:
            return switch
    raise KeyError(keyword)


def by_variable(variable: str) -> Switch:
    """The switch of an environment variable."""
    for switch in SWITCHES:
        if switch.variable == variable:
            return switch
    raise KeyError(variable)


def unknown_patch_names(names: "Iterable[str]", accepted: "Iterable[str]") -> str:
    """The one wording of "these patch names are unknown", for ``install()``, the start-up
    hook, the instrumentor and doctor."""
    return f"unknown patch name(s) {', '.join(map(repr, names))}; accepted: {', '.join(accepted)}"


def markdown_table() -> str:
    """The variables table of docs/switching-on.md (``scripts/switch_table.py`` prints it)."""
    rows = ["| variable | default | accepted | what it does |", "|---|---|---|---|"]
    for s in SWITCHES:
        default = (
            s.shown_default
            if s.shown_default in ("unset (off)", "empty")
            else (f"`{s.shown_default}`")
        )
        accepted = {
            "choice": ", ".join(f"`{c}`" for c in s.choices),
            "patch names": "comma list of patch group names (`aiotrace.PATCH_NAMES`)",
            "module names": "comma list of module names (empty: none)",
        }.get(s.kind, s.kind)
        meaning = f"`install({s.keyword}=)`: {s.meaning}" if s.keyword else s.meaning
        rows.append(f"| `{s.variable}` | {default} | {accepted} | {meaning} |")
    return "\n".join(rows) + "\n"
