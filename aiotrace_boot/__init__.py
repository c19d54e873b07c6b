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

PYTEST_DONT_REWRITE: this package holds no assertions for pytest to rewrite. pytest would try,
because aiotrace's distribution ships a pytest plugin, and then warn that ``site`` had already
imported it (3.15's ``.start`` door imports it at every start).
"""

import os
import sys
from _thread import allocate_lock

__all__ = ["start"]

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


def warn(message: str) -> None:
    """One line on stderr, prefixed with ``aiotrace:``; never raises (stderr may be closed)."""
    try:
        stream = sys.stderr
        if stream is not None:
            stream.write(f"aiotrace: {message}\n")
            stream.flush()
    except Exception:  # nowhere left to report to
        pass
