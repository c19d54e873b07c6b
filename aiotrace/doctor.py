"""``aiotrace doctor``: what aiotrace will do in this environment, and why it may not.

aiotrace switches itself on from a start-up hook, an environment variable and, optionally, an
OpenTelemetry instrumentor; when a trace still comes out wrong, the cause is usually one of
those not being where the user thinks (a ``.pth`` missing from a ``--target`` install, a typo
in ``AIOTRACE_ENABLE``, another library that replaced ``asyncio.Queue``). This command gathers
every such fact in one report: Python and the event loop, OpenTelemetry versions, the hook
files and whether they would fire, the configuration the environment asks for (and its bad
values), the patches active in this very process and the conflicts found. It prints text, or
JSON with ``--json``, and exits with 1 when the setup cannot work as configured.

Run as ``python -m aiotrace doctor``, it is itself a process of this environment: with
``AIOTRACE_ENABLE=1`` set, the hook fires for it as for any application, and the report says
whether aiotrace really installed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import warnings
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

if TYPE_CHECKING:
    from aiotrace_boot.switches import Config

__all__ = ["collect", "main", "render"]

MIN_OTEL_API = (1, 20)
DISTRIBUTIONS = (
    "opentelemetry-api",
    "opentelemetry-sdk",
    "opentelemetry-instrumentation",
    "opentelemetry-distro",
    "opentelemetry-instrumentation-threading",
    "uvloop",
    "anyio",
)


class _Report:
    def __init__(self) -> None:
        self.data: Dict[str, Any] = {}
        self.problems: List[Dict[str, str]] = []

    def problem(self, level: str, message: str) -> None:
        self.problems.append({"level": level, "message": message})


def _version(distribution: str) -> Optional[str]:
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _release(version: str) -> Tuple[int, ...]:
    """The leading numbers of a version: ``"1.20.0rc1"`` -> ``(1, 20, 0)``."""
    parts: List[int] = []
    for part in version.split("."):
        digits = part[: len(part) - len(part.lstrip("0123456789"))]
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def _qualname(obj: Any) -> str:
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def _entry_points(group: str) -> List[Any]:
    from importlib import metadata

    found = metadata.entry_points()
    if hasattr(found, "select"):
        return list(found.select(group=group))
    return list(found.get(group, ()))  # type: ignore[attr-defined]  # Python 3.8-3.9


def _importable(module: str, report: _Report) -> bool:
    try:
        __import__(module)
    except Exception as exc:
        report.problem(
            "warning",
            f"{module} cannot be imported ({type(exc).__name__}: {exc}): opentelemetry-instrument "
            "will not work; pip install -U opentelemetry-instrumentation",
        )
        return False
    return True


def _site_dirs() -> List[str]:
    import site

    directories = list(site.getsitepackages()) if hasattr(site, "getsitepackages") else []
    if site.ENABLE_USER_SITE and not sys.flags.no_user_site:
        directories.append(site.getusersitepackages())
    return directories


# -- the sections ---------------------------------------------------------------------------


def _interpreter(report: _Report) -> None:
    report.data["python"] = {
        "version": platform.python_version(),
        "implementation": platform.python_implementation(),
        "executable": sys.executable,
    }
    import asyncio

    loop_info: Dict[str, Any] = {"uvloop": _version("uvloop")}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            policy = asyncio.get_event_loop_policy()
            loop = policy.new_event_loop()
        loop_info["policy"] = _qualname(policy)
        loop_info["loop"] = _qualname(loop)
        loop.close()
    except Exception as exc:
        loop_info["loop"] = None
        report.problem("warning", f"could not create an event loop: {type(exc).__name__}: {exc}")
    loop_info["uvloop_in_use"] = "uvloop" in str(loop_info.get("loop"))
    report.data["event_loop"] = loop_info


def _opentelemetry(report: _Report, environ: Mapping[str, str]) -> None:
    versions = {name: _version(name) for name in DISTRIBUTIONS if name != "uvloop"}
    report.data["opentelemetry"] = versions
    api = versions["opentelemetry-api"]
    if api is None:
        report.problem(
            "error",
            "opentelemetry-api is not installed; aiotrace needs it: "
            "pip install 'opentelemetry-api>=1.20'",
        )
    elif _release(api)[:2] < MIN_OTEL_API:
        report.problem(
            "error",
            f"opentelemetry-api {api} is too old; aiotrace needs >= 1.20: "
            "pip install -U opentelemetry-api",
        )
    if versions["opentelemetry-sdk"] is None:
        report.problem(
            "note",
            "opentelemetry-sdk is not installed: without an SDK (or a distro that brings one) "
            "spans are not recorded, whatever aiotrace does",
        )

    disabled = {
        name.strip()
        for name in environ.get("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", "").split(",")
        if name.strip()
    }
    registered = any(ep.name == "aiotrace" for ep in _entry_points("opentelemetry_instrumentor"))
    if not registered:
        state = "not registered (this aiotrace has no opentelemetry_instrumentor entry point)"
    elif versions["opentelemetry-instrumentation"] is None:
        state = "not available: pip install 'aiotrace[instrumentation]'"
    elif not _importable("opentelemetry.instrumentation.instrumentor", report):
        state = "broken: opentelemetry-instrumentation cannot be imported (see problems)"
    elif "aiotrace" in disabled or "*" in disabled:
        state = "disabled by OTEL_PYTHON_DISABLED_INSTRUMENTATIONS"
    elif _instrumented():
        state = "switched aiotrace on in this process"
    else:
        state = "available: opentelemetry-instrument switches aiotrace on"
    report.data["instrumentor"] = state


def _configuration(report: _Report, environ: Mapping[str, str]) -> Config:
    import aiotrace_boot
    from aiotrace_boot.switches import SWITCHES, by_keyword, unknown_patch_names

    bad: List[str] = []
    aiotrace_boot.configuration(environ, bad.append)  # AIOTRACE_ENABLE's own bad value
    # Read the other variables as if enabled, so that their bad values show up now too.
    full = aiotrace_boot.configuration(environ, bad.append, as_if_enabled=True)
    settings = {s.variable: environ[s.variable] for s in SWITCHES if s.variable in environ}
    effective = {k: list(v) if isinstance(v, tuple) else v for k, v in vars(full).items()}
    report.data["configuration"] = {"environment": settings, "effective": effective}
    for message in dict.fromkeys(bad):
        report.problem("error", message)

    from . import registry

    arguments, unknown = full.install_arguments(registry.PATCH_NAMES)
    if unknown:
        report.problem(
            "error",
            f"{by_keyword('exclude').variable} has "
            f"{unknown_patch_names(unknown, registry.PATCH_NAMES)}",
        )
    report.data["configuration"]["patches_selected"] = sorted(registry.selected(**arguments))
    return full


def _doors() -> List[str]:
    """The files that can start the hook on this Python (3.15.2's site.py read): up to 3.14 the
    .pth's import line; 3.15-3.17 the .start, or the .pth's import line when no .start sits
    beside it; from 3.18 site ignores import lines in .pth files, so only the .start."""
    if sys.version_info < (3, 15):
        return ["aiotrace.pth"]
    if sys.version_info < (3, 18):
        return ["aiotrace.start", "aiotrace.pth"]
    return ["aiotrace.start"]


def _startup_hook(report: _Report, config: Config, site_dirs: Iterable[str]) -> None:
    files: Dict[str, List[str]] = {"aiotrace.pth": [], "aiotrace.start": []}
    broken: List[str] = []
    for directory in site_dirs:
        for name, paths in files.items():
            path = os.path.join(directory, name)
            if os.path.isfile(path):
                paths.append(path)
                with open(path, encoding="utf-8", errors="replace") as handle:
                    if "aiotrace_boot" not in handle.read():
                        broken.append(path)
    doors = _doors()
    reasons: List[str] = []
    if not any(files[door] for door in doors):
        reasons.append(f"{' or '.join(doors)} is not in any site-packages directory")
    if broken:
        reasons.append(f"{', '.join(broken)} does not start aiotrace_boot")
    if sys.flags.no_site:
        reasons.append("Python runs with -S (site disabled)")
    installed_ok = not reasons
    enabled = bool(config.enabled)
    why_not = [*reasons, *([] if enabled else ["AIOTRACE_ENABLE is not set to a true value"])]

    import aiotrace_boot

    report.data["startup_hook"] = {
        "files": files,
        "would_fire": installed_ok and enabled,
        "why_not": why_not,
        "fired_in_this_process": aiotrace_boot.state()["hook_booted"],
    }
    others = [route for route in _routes() if route != "start-up hook"]
    if not installed_ok and others:
        # The OpenTelemetry Operator's layout: --target install on PYTHONPATH, no .pth read,
        # OpenTelemetry's sitecustomize runs the instrumentor. aiotrace works without the hook.
        report.problem(
            "note",
            f"the start-up hook cannot run here ({'; '.join(reasons)}), and is not needed: "
            f"aiotrace was switched on in this process by the {' and '.join(others)}",
        )
    elif enabled and not installed_ok:
        report.problem(
            "error",
            f"AIOTRACE_ENABLE is on but the start-up hook cannot run: {'; '.join(reasons)} "
            "(installed with --target or on PYTHONPATH? install aiotrace into the environment, "
            "run under opentelemetry-instrument, or call aiotrace.install() in code)",
        )
    elif not installed_ok:
        report.problem(
            "warning",
            f"the start-up hook is not usable here ({'; '.join(reasons)}): AIOTRACE_ENABLE=1 "
            "would do nothing; `python -m aiotrace run` falls back to running in-process",
        )


def _instrumented() -> bool:
    instrumentation = sys.modules.get(f"{__package__}.instrumentation")
    return instrumentation is not None and instrumentation.instrumented()


def _routes() -> List[str]:
    """What switched aiotrace on in this process: the start-up hook, the OpenTelemetry
    instrumentor, or (patches active and neither of those) install() from code."""
    import aiotrace_boot

    from . import registry

    routes = []
    if aiotrace_boot.state()["hook_booted"]:
        routes.append("start-up hook")
    if _instrumented():
        routes.append("instrumentor")
    if registry.installed() and not routes:
        routes.append("install() from code")
    return routes


def _this_process(report: _Report, environ: Mapping[str, str], config: Config) -> None:
    from . import registry, threads

    active = sorted(registry.installed())
    report.data["this_process"] = {
        "active_patches": active,
        "thread_propagation": threads.thread_propagation(),
    }
    import aiotrace_boot

    state = aiotrace_boot.state(environ)
    report.data["this_process"]["switched_on_by"] = _routes()
    report.data["this_process"]["late_modules"] = {
        "patched_on_import_by": state["late_modules"] if active else None,
        "not_imported_yet": state["late_modules_waiting"],
    }
    if config.enabled and state["hook_ran"] and not active:
        report.problem(
            "error",
            "the start-up hook ran in this process but aiotrace did not install "
            "(its reason is the 'aiotrace:' line on stderr)",
        )


def _not_needed(report: _Report) -> None:
    from . import registry

    if registry.STOCK_TRANSPORTS_KEEP_CONTEXT:
        report.problem(
            "note",
            "transport: pause_reading/resume_reading not needed on this Python (fixed in "
            "CPython 3.15: a resumed transport reads in its own context); only SSL's resume "
            "is patched",
        )


def _conflicts(report: _Report) -> None:
    import asyncio

    from . import registry
    from .aliases import ALIASES

    found: List[str] = []
    for where, what in sorted(registry.conflicts.items()):
        found.append(f"{where} is {what}, not asyncio's: aiotrace left it alone")
    for name, alias in sorted(ALIASES.items()):
        current = getattr(asyncio, name, None)
        if current is None or current is alias or current is alias.__aiotrace_original__:
            continue
        where = f"asyncio.{name}"
        if not any(line.startswith(where + " ") for line in found):
            found.append(
                f"{where} is {_qualname(current)} (replaced by another library): "
                "aiotrace will leave it alone"
            )
    for message in found:
        report.problem("warning", message)

    threading_version = _version("opentelemetry-instrumentation-threading")
    if threading_version is not None:
        report.problem(
            "note",
            f"opentelemetry-instrumentation-threading {threading_version} is installed: while "
            "it instruments, it carries the context into threads and thread pools and aiotrace "
            "steps aside there (see this_process.thread_propagation)",
        )
    active = registry.installed()
    uvloop_missed = [
        group
        for group, attribute in (("server", "create_server"), ("asyncgen", "shutdown_asyncgens"))
        if group in active and registry.original("uvloop:Loop", attribute) is None
    ]
    if "uvloop" in sys.modules and uvloop_missed:
        report.problem(
            "warning",
            f"uvloop was imported after aiotrace.install() without its import hook: "
            f"uvloop.Loop is without the {' and '.join(uvloop_missed)} patches; call "
            "aiotrace.install() again after importing uvloop",
        )
    _anyio_streams(report, registry, active)
    report.data["conflicts"] = found


def _anyio_streams(report: _Report, registry: Any, active: Iterable[str]) -> None:
    # The anyio_stream group waits for anyio.streams.memory, which anyio 4.x imports lazily (on
    # the first create_memory_object_stream): aiotrace/anyio_streams.py.
    patched = registry.original("anyio.streams.memory:MemoryObjectSendStream", "send_nowait")
    if "anyio.streams.memory" in sys.modules and active and not patched:
        report.problem(
            "warning",
            "anyio's memory object streams were imported after aiotrace.install() (or the "
            "anyio_stream patch is excluded): their items do not carry the sender's trace; call "
            "aiotrace.install() again after the first anyio.create_memory_object_stream()",
        )
    elif not patched and _version("anyio") is not None:
        report.problem(
            "note",
            "anyio is installed: aiotrace patches its memory object streams (anyio_stream) once "
            "anyio.streams.memory is imported before install() or install() runs again after "
            "it; AIOTRACE_ENABLE=1 catches that import by itself",
        )


def collect(
    environ: Optional[Mapping[str, str]] = None, site_dirs: Optional[Iterable[str]] = None
) -> Dict[str, Any]:
    """The doctor's report as a JSON-ready dict; ``ok`` is False when the setup cannot work.

    ``environ`` defaults to ``os.environ``, ``site_dirs`` to this interpreter's site-packages
    directories (user site included when enabled).
    """
    environ = os.environ if environ is None else environ
    report = _Report()
    from . import __version__ as version

    report.data["aiotrace"] = {"version": version, "location": os.path.dirname(__file__)}
    _interpreter(report)
    _opentelemetry(report, environ)
    config = _configuration(report, environ)
    _startup_hook(report, config, _site_dirs() if site_dirs is None else site_dirs)
    _this_process(report, environ, config)
    _not_needed(report)
    _conflicts(report)
    report.data["problems"] = report.problems
    report.data["ok"] = not any(p["level"] == "error" for p in report.problems)
    return report.data


# -- text -----------------------------------------------------------------------------------


def _rows(rows: Sequence[Tuple[str, Any]]) -> List[str]:
    width = max(len(key) for key, _ in rows)
    return [f"  {key:<{width}}  {value}" for key, value in rows]


def _listing(values: Sequence[str]) -> str:
    return ", ".join(values) if values else "none"


def render(data: Mapping[str, Any]) -> str:
    """The report of :func:`collect` as text."""
    python, loop, otel = data["python"], data["event_loop"], data["opentelemetry"]
    lines = ["aiotrace doctor"]
    rows: List[Tuple[str, Any]] = [
        ("aiotrace", f"{data['aiotrace']['version']} ({data['aiotrace']['location']})"),
        ("python", f"{python['version']} {python['implementation']} ({python['executable']})"),
        ("event loop", f"{loop.get('loop')} (policy {loop.get('policy')})"),
        ("uvloop", loop["uvloop"] or "not installed"),
    ]
    rows += [(name, version or "not installed") for name, version in otel.items()]
    rows.append(("instrumentor", data["instrumentor"]))
    lines += _rows(rows)

    hook = data["startup_hook"]
    lines.append("start-up hook")
    rows = [
        (name, _listing(paths) if paths else "not found") for name, paths in hook["files"].items()
    ]
    fire = "yes" if hook["would_fire"] else f"no: {'; '.join(hook['why_not'])}"
    rows += [("would fire", fire), ("fired here", "yes" if hook["fired_in_this_process"] else "no")]
    lines += _rows(rows)

    config = data["configuration"]
    lines.append("configuration")
    rows = [(name, repr(value)) for name, value in config["environment"].items()] or [
        ("environment", "no AIOTRACE_* variable set")
    ]
    rows.append(("patches selected", _listing(config["patches_selected"])))
    lines += _rows(rows)

    here = data["this_process"]
    lines.append("this process")
    late = here["late_modules"]
    rows = [
        ("switched on by", _listing(here["switched_on_by"]) if here["switched_on_by"] else "-"),
        ("active patches", _listing(here["active_patches"])),
    ]
    if late["not_imported_yet"]:
        by = late["patched_on_import_by"]
        waiting = _listing(late["not_imported_yet"])
        what = f"patched when imported ({by} import hook)" if by else "nothing patches them"
        rows.append(("not imported yet", f"{waiting}: {what}"))
    rows += [
        (boundary, who or "nobody (new traces)")
        for boundary, who in here["thread_propagation"].items()
    ]
    lines += _rows(rows)

    lines.append("conflicts")
    lines += [f"  {c}" for c in data["conflicts"]] or ["  none found"]
    lines.append("problems")
    lines += [f"  {p['level']}: {p['message']}" for p in data["problems"]] or ["  none"]
    lines.append("result: " + ("OK" if data["ok"] else "the setup cannot work as configured"))
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``python -m aiotrace doctor``: 0 if the setup can work, else 1."""
    parser = argparse.ArgumentParser(
        prog="aiotrace doctor", description="Check what aiotrace will do in this environment."
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    data = collect()
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=False))
    else:
        print(render(data))
    return 0 if data["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
