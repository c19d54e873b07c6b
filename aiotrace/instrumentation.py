"""aiotrace as an OpenTelemetry instrumentor, for ``opentelemetry-instrument python app.py``.

Services that are already started by ``opentelemetry-instrument`` get their instrumentations
from the ``opentelemetry_instrumentor`` entry point group; this module puts aiotrace in that
group under the name ``aiotrace``, so the same command switches it on and
``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=aiotrace`` leaves it off. It needs the optional extra
``aiotrace[instrumentation]`` (``opentelemetry-instrumentation``); ``import aiotrace`` never
imports this module.

The patches applied are the ones the ``AIOTRACE_*`` variables select (the same parser as the
start-up hook), so both routes configure aiotrace identically. With ``AIOTRACE_ENABLE=1`` as
well, the start-up hook installs first and this instrumentor finds everything in place:
:func:`aiotrace.install` only applies what is missing, so nothing is wrapped twice. An explicit
``AIOTRACE_ENABLE=0`` keeps aiotrace off here too.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Collection, Dict, FrozenSet, List, Mapping, Optional

from opentelemetry.instrumentation.instrumentor import BaseInstrumentor

from aiotrace_boot.switches import INSTALL_KEYWORDS

from . import registry

__all__ = ["AiotraceInstrumentor", "instrumented"]

logger = logging.getLogger("aiotrace")


def _install_arguments(environ: Mapping[str, str]) -> Optional[Dict[str, Any]]:
    """``install()`` keyword arguments from the ``AIOTRACE_*`` variables, or None when
    ``AIOTRACE_ENABLE`` says off. Bad values give one line on stderr, as at start-up."""
    import aiotrace_boot
    from aiotrace_boot.switches import by_keyword, unknown_patch_names

    state = aiotrace_boot.state(environ)
    if state["variable"] == "off":
        return None
    # The start-up hook already read these variables and reported their bad values.
    warn = (lambda message: None) if state["hook_booted"] else aiotrace_boot.warn
    # Parsed as if enabled, so that the other variables are read (and checked) the same way.
    config = aiotrace_boot.configuration(environ, warn, as_if_enabled=True)
    arguments, unknown = config.install_arguments(registry.PATCH_NAMES)
    if unknown:
        variable = by_keyword("exclude").variable
        warn(
            f"{variable}={environ[variable]!r} has "
            f"{unknown_patch_names(unknown, registry.PATCH_NAMES)}; ignoring those"
        )
    return arguments


class AiotraceInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Installs aiotrace's patches on ``instrument()`` and removes them on ``uninstrument()``.

    ``instrument(**install_kwargs)`` passes keyword arguments of :func:`aiotrace.install`
    through (``patch_queue``, ``exclude``, …); without any, the ``AIOTRACE_*`` variables decide.
    ``uninstrument()`` removes only what this instrumentor installed: patches the start-up hook
    had applied before stay.
    """

    _installed_here: FrozenSet[str] = frozenset()

    def instrumentation_dependencies(self) -> Collection[str]:
        return ()

    def _instrument(self, **kwargs: Any) -> None:
        options = {k: v for k, v in kwargs.items() if k in _INSTALL_OPTIONS}
        if not options:
            parsed = _install_arguments(os.environ)
            if parsed is None:
                logger.debug("aiotrace: AIOTRACE_ENABLE is off; the instrumentor does nothing")
                return
            options = parsed
        before = registry.installed()
        self._installed_here = registry.install(**options) - before
        _instrumented.append(True)

    def _uninstrument(self, **kwargs: Any) -> None:
        _instrumented.clear()
        if self._installed_here:
            if registry.installed() == self._installed_here:
                registry.uninstall()
            else:
                # uninstall() is all or nothing; patches someone else applied stay, so ours do.
                logger.debug("aiotrace: patches applied elsewhere too; left installed")
            self._installed_here = frozenset()


_instrumented: List[bool] = []  # non-empty while the instrumentor has aiotrace installed


def instrumented() -> bool:
    """True while the instrumentor has called :func:`aiotrace.install` in this process
    (``opentelemetry-instrument``, OpenTelemetry's ``sitecustomize``, or ``instrument()``)."""
    return bool(_instrumented)


_INSTALL_OPTIONS = frozenset(INSTALL_KEYWORDS)
