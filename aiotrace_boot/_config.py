"""aiotrace's configuration, read from ``AIOTRACE_*`` environment variables.

Named after OpenTelemetry's ``OTEL_*`` variables (``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS`` is
the model for ``AIOTRACE_DISABLED_PATCHES``). The variables, their kinds and defaults are the
rows of :data:`aiotrace_boot.switches.SWITCHES`; this module only parses them. A value that
cannot be understood never stops the application: it gives one line on stderr naming the
variable, the value and what is accepted, and the default is used instead. Patch names are
checked later, against the registry, when asyncio is really imported (see ``_hook``): knowing
them here would mean importing aiotrace.
"""

# ``typing``, ``re`` and even ``__future__`` cost time at every enabled start-up, and nothing
# here needs them at run time: annotations that name typing's types are strings.
from .switches import BOOLEAN_SPELLINGS, DEFAULT_WATCH_MODULES, FALSE, SWITCHES, TRUE, Config

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Dict, Mapping, Optional, Tuple

    from .switches import Switch

__all__ = ["DEFAULT_WATCH_MODULES", "VARIABLES", "Config", "from_environ", "switch"]

# name -> (default, accepted values, meaning): the switch table as ``--help`` printed it before
# ``switches`` existed; kept for code that read it.
VARIABLES: "Dict[str, Tuple[str, str, str]]" = {
    s.variable: (s.shown_default, s.accepted, s.meaning) for s in SWITCHES
}


def _is_module_name(name: str) -> bool:
    return all(part.isidentifier() for part in name.split("."))


def switch(raw: str) -> str:
    """How a value of ``AIOTRACE_ENABLE`` reads: ``"on"``, ``"off"``, ``"unset"`` (empty) or
    ``"invalid"`` (not a boolean: the hook warns and stays off)."""
    value = raw.strip().lower()
    if not value:
        return "unset"
    if value in TRUE:
        return "on"
    return "off" if value in FALSE else "invalid"


def _names(raw: str) -> "Tuple[str, ...]":
    return tuple(dict.fromkeys(part.strip() for part in raw.split(",") if part.strip()))


def _boolean(s: "Switch", raw: "Optional[str]", warn: "Callable[[str], None]") -> bool:
    value = switch(raw or "")
    if value == "invalid":
        warn(
            f"{s.variable}={raw!r} is not a boolean; accepted: {BOOLEAN_SPELLINGS}; "
            f"using {'true' if s.default else 'false'}"
        )
    return s.default if value in ("unset", "invalid") else value == "on"


def _choice(s: "Switch", raw: "Optional[str]", warn: "Callable[[str], None]") -> str:
    value = (raw or "").strip().lower() or s.default
    if value in s.choices:
        return value
    warn(
        f"{s.variable}={raw!r} is not accepted; accepted: {', '.join(s.choices)}; using {s.default}"
    )
    return s.default


def _module_names(
    s: "Switch", raw: "Optional[str]", warn: "Callable[[str], None]"
) -> "Tuple[str, ...]":
    if raw is None:
        return s.default
    names = _names(raw)
    bad = [name for name in names if not _is_module_name(name)]
    if bad:
        warn(
            f"{s.variable}={raw!r} has {', '.join(map(repr, bad))}, not module name(s); "
            "accepted: a comma list of dotted module names; ignoring those"
        )
    return tuple(name for name in names if name not in bad)


def _patch_names(
    s: "Switch", raw: "Optional[str]", warn: "Callable[[str], None]"
) -> "Tuple[str, ...]":
    return _names(raw or "")  # checked against the registry later, when asyncio is imported


# One parser per ``Switch.kind``: the value of the switch, or its default (and one warning).
_PARSERS: "Dict[str, Callable[[Switch, Optional[str], Callable[[str], None]], Any]]" = {
    "boolean": _boolean,
    "choice": _choice,
    "module names": _module_names,
    "patch names": _patch_names,
}


def from_environ(environ: "Mapping[str, str]", warn: "Callable[[str], None]") -> Config:
    """The configuration ``environ`` describes; ``warn`` receives one line per bad value."""
    enabled, *others = SWITCHES
    if not _boolean(enabled, environ.get(enabled.variable), warn):
        return Config(enabled=False)
    return Config(
        enabled=True,
        **{s.attribute: _PARSERS[s.kind](s, environ.get(s.variable), warn) for s in others},
    )
