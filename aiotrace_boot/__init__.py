"""The start-up hook that switches aiotrace on for a whole process, without touching its code.

It lives in every Python process of every environment that has aiotrace installed, so it does
as little as it can: two doors lead here, ``aiotrace.pth`` (every Python up to 3.17) and
``aiotrace.start`` (PEP 829, Python 3.15+), and both call :func:`start`. With
``AIOTRACE_ENABLE`` unset or empty it reads that one variable and returns; the ``.pth`` does not
even import this package then. Otherwise it parses the configuration and registers an import
hook that waits for the application to import ``asyncio`` (see ``_hook``); nothing of asyncio,
OpenTelemetry or the ``aiotrace`` package is imported before that.

Acting once matters: ``site`` may read the same ``.pth`` twice in one start (``python -v -c
pass`` in a virtual environment made by uv on this machine's CPython 3.13 says "Processing
global site-packages" twice), and a program may also call :func:`start` itself.

No exception leaves :func:`start`: a start-up hook must never change how an application runs or
fails. Whatever goes wrong is reported as one line on stderr, and aiotrace stays off.
"""

import os
import sys
from _thread import allocate_lock

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, Mapping, Optional

    from ._config import Config

__all__ = ["configuration", "start", "state", "warn"]

_lock = allocate_lock()
_seen: set = set()  # AIOTRACE_ENABLE values already acted on ("1", "0", "ture", …)
_booted: list = []  # non-empty once aiotrace is set up in this process


def start() -> None:
    """Switch aiotrace on for this process if ``AIOTRACE_ENABLE`` says so; act once per process.

    Safe to call any number of times from any door (``.pth``, ``.start``, the ``run`` launcher,
    application code): once aiotrace is set up, or once a value of the variable has been read,
    later calls with the same value do nothing (so a warning about it is given once).
    """
    try:
        value = os.environ.get("AIOTRACE_ENABLE")
        if not value:
            return
        with _lock:
            if _booted or value in _seen:
                return
            _seen.add(value)
        from ._hook import boot

        if boot():
            _booted.append(True)
    except Exception as exc:  # the host application must start regardless
        warn(f"not enabled: {type(exc).__name__}: {exc}")


def state(environ: "Optional[Mapping[str, str]]" = None) -> dict:
    """What the start-up machinery knows about this process (``aiotrace doctor`` and the
    OpenTelemetry instrumentor read it; nothing at start-up calls it):

    - ``variable``: ``AIOTRACE_ENABLE`` in ``environ`` (default ``os.environ``): ``"on"``,
      ``"off"``, ``"unset"`` (or empty) or ``"invalid"`` (not a boolean: the hook stays off);
    - ``hook_ran``: :func:`start` has acted on that value in this process;
    - ``hook_booted``: the start-up hook set aiotrace up (it installs when asyncio loads);
    - ``late_modules``: who applies the patches of a module of ``_hook.LATE_PATCH_MODULES``
      that loads from now on: ``"start-up hook"``, ``"install()"`` or None;
    - ``late_modules_waiting``: those modules not imported yet.
    """
    from . import _config, _hook  # not at start-up: only doctor and the instrumentor ask

    value = (os.environ if environ is None else environ).get("AIOTRACE_ENABLE") or ""
    return {
        "variable": _config.switch(value),
        "hook_ran": bool(value) and value in _seen,
        "hook_booted": bool(_booted),
        "late_modules": _hook.late_modules_follower(),
        "late_modules_waiting": [n for n in _hook.LATE_PATCH_MODULES if n not in sys.modules],
    }


def configuration(
    environ: "Optional[Mapping[str, str]]" = None,
    warn: "Optional[Callable[[str], None]]" = None,
    *,
    as_if_enabled: bool = False,
) -> "Config":
    """The configuration the ``AIOTRACE_*`` variables of ``environ`` (default ``os.environ``)
    describe, one attribute per row of :data:`aiotrace_boot.switches.SWITCHES`;
    ``Config.install_arguments()`` gives ``aiotrace.install()``'s keywords. ``warn`` (default:
    this package's :func:`warn`) receives one line per bad value. ``as_if_enabled``: read
    every variable even when ``AIOTRACE_ENABLE`` is off (doctor, the instrumentor); ``enabled``
    still says what ``AIOTRACE_ENABLE`` says."""
    from . import _config  # not at start-up: the hook imports it itself

    environ = os.environ if environ is None else environ
    warn = globals()["warn"] if warn is None else warn
    if not as_if_enabled:
        return _config.from_environ(environ, warn)
    config = _config.from_environ({**environ, "AIOTRACE_ENABLE": "1"}, warn)
    config.enabled = _config.switch(environ.get("AIOTRACE_ENABLE") or "") == "on"
    return config


def warn(message: str) -> None:
    """One line on stderr, prefixed with ``aiotrace:``; never raises (stderr may be closed).
    (``_warn`` is imported only when there is something to say: importing this package loads
    no other module.)"""
    try:
        from ._warn import warn as say
    except Exception:  # nowhere left to report to
        return
    say(message)
