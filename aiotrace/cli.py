"""The ``aiotrace`` command (``python -m aiotrace`` and the ``aiotrace`` console script).

``aiotrace run app.py args…`` (or ``run -m module args…``, ``run -c code args…``) runs a
program with aiotrace switched on, and must be indistinguishable from running it directly.
The way to get there is not to run the program here at all: ``run`` sets
``AIOTRACE_ENABLE=1`` and *replaces this process* with ``python [same interpreter options]
app.py args…`` (``os.execv``, as ``opentelemetry-instrument`` does). The new interpreter starts
aiotrace through the ``.pth``/``.start`` hook exactly as a process with the variable set would,
so everything a user can see is the direct run's: the exit code and ``sys.exit("message")``
text, tracebacks (no frame of aiotrace or ``runpy``), ``sys.argv``, ``sys.path[0]``,
``__main__`` (``multiprocessing``'s spawn method can pickle classes defined in the script), the
standard streams, and signals (same process id: Ctrl-C and SIGTERM reach the program itself).
Children inherit the variable from the environment.

When the new interpreter would not run the hook (``python -S``, or aiotrace not installed in a
site-packages directory, e.g. only on ``PYTHONPATH``) or the platform has no real ``exec``
(Windows), ``run`` falls back to running the target in this process with ``runpy``: the same
program and environment, but tracebacks then show the launcher's frames, and on Windows the
target runs as a child process whose exit code is passed on.

``demo`` and ``doctor`` are dispatched to ``aiotrace.demo`` and ``aiotrace.doctor``, imported
only when asked for.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Callable, List, NoReturn, Optional, Sequence

__all__ = ["main"]

PROG = "aiotrace"

USAGE = f"""\
usage: {PROG} run [-m module | -c code | file] [args ...]
       {PROG} demo [args ...]
       {PROG} doctor [args ...]
       {PROG} --help | --version"""


def _help() -> str:
    from aiotrace_boot.switches import SWITCHES

    width = max(len(s.shown_default) for s in SWITCHES)
    rows = "\n".join(
        f"  {s.variable:<26} {s.shown_default:<{width}} {s.accepted}: {s.meaning}" for s in SWITCHES
    )
    return f"""{USAGE}

Keeps OpenTelemetry's current span correct across asyncio boundaries.

commands:
  run       run a Python program with aiotrace switched on, as if run directly:
            `{PROG} run app.py args`, `{PROG} run -m package.module args`,
            `{PROG} run -c "code" args`. Sets AIOTRACE_ENABLE=1 in the environment, so
            subprocesses and multiprocessing children are traced too.
  demo      show what aiotrace fixes (aiotrace.demo)
  doctor    check this installation (aiotrace.doctor)

Without `run`, set AIOTRACE_ENABLE=1 to switch aiotrace on for any Python process of this
environment. Booleans accept 1/true/yes/on and 0/false/no/off; a bad value gives one warning
line on stderr and the default is used.

environment variables:
  {"name":<26} {"default":<{width}} accepted: meaning
{rows}
"""


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``python -m aiotrace`` and the ``aiotrace`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_help())
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command in ("-V", "--version"):
        from aiotrace import __version__

        print(f"{PROG} {__version__}")
        return 0
    if command == "run":
        return run(rest)
    if command in ("demo", "doctor"):
        return _dispatch(command, rest)
    print(
        f"{USAGE}\n{PROG}: unknown command {command!r}; accepted: run, demo, doctor",
        file=sys.stderr,
    )
    return 2


def _dispatch(command: str, argv: List[str]) -> int:
    module_name = f"aiotrace.{command}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        print(
            f"{PROG}: the {command!r} command is not available in this installation "
            f"({module_name} is missing)",
            file=sys.stderr,
        )
        return 2
    entry: Callable[[List[str]], Optional[int]] = module.main
    return entry(argv) or 0


def _usage_error(message: str) -> NoReturn:
    print(f"{USAGE}\n{PROG} run: {message}", file=sys.stderr)
    raise SystemExit(2)


def run(argv: List[str]) -> int:
    """``aiotrace run``: see the module docstring. Returns only on Windows or on a fallback."""
    if not argv or argv[0] in ("-h", "--help"):
        if not argv:
            _usage_error("give a file, -m module or -c code")
        print(_help())
        return 0
    if argv[0] in ("-m", "-c"):
        if len(argv) < 2:
            _usage_error(f"argument expected for {argv[0]}")
        target = argv[:2]
        args = argv[2:]
    elif argv[0] == "--":
        return run(argv[1:])
    elif argv[0].startswith("-"):
        _usage_error(f"unknown option {argv[0]!r}; accepted: -m module, -c code, or a file")
    else:
        target = argv[:1]
        args = argv[1:]

    os.environ["AIOTRACE_ENABLE"] = "1"
    command = [sys.executable, *_interpreter_options(), *target, *args]
    if not _hook_runs_in_child():
        return _run_here(target, args)
    if os.name == "posix":
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, command)
    import subprocess  # Windows has no exec that keeps the process: a child it is

    return subprocess.call(command)


def _interpreter_options() -> List[str]:
    # The options this interpreter was started with, as multiprocessing passes them to its
    # spawned children: ``python -I -X dev -W error`` gives ['-I', '-Werror', '-X', 'dev'] (run
    # on 3.11). Options that only come from PYTHON* variables appear too (-B for
    # PYTHONDONTWRITEBYTECODE), which changes nothing for the child.
    import subprocess

    return list(subprocess._args_from_interpreter_flags())  # type: ignore[attr-defined]


def _hook_runs_in_child() -> bool:
    """True if a new interpreter with the same options will process ``aiotrace.pth``."""
    if sys.flags.no_site:
        return False
    import site

    directories = list(site.getsitepackages())
    if site.ENABLE_USER_SITE and not sys.flags.no_user_site:
        directories.append(site.getusersitepackages())
    return any(os.path.isfile(os.path.join(d, "aiotrace.pth")) for d in directories)


def _run_here(target: List[str], args: List[str]) -> int:
    """Fallback: run the target in this process (see the module docstring)."""
    import runpy

    import aiotrace_boot

    aiotrace_boot.start()
    kind, value = (target[0], target[1]) if len(target) == 2 else ("file", target[0])
    if kind == "-m":
        sys.argv = [value, *args]
        runpy.run_module(value, run_name="__main__", alter_sys=True)
    elif kind == "-c":
        sys.argv = ["-c", *args]
        exec(compile(value, "<string>", "exec"), {"__name__": "__main__"})
    else:
        sys.argv = [value, *args]
        sys.path[0:0] = [os.path.dirname(os.path.abspath(value))]
        runpy.run_path(value, run_name="__main__")
    return 0
