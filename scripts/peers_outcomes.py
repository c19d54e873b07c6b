"""A pytest plugin for the ``peers`` nox session: one outcome per test id, written as JSON.

Loaded with ``-p peers_outcomes`` into another project's own test run (its configuration used
as is), so that the session can compare the same suite without and with aiotrace by test id.
It adds no option, fixture or warning filter; under pytest-xdist only the controller writes.
The file named by ``PEERS_OUTCOMES`` gets ``{"exitstatus": N, "outcomes": {nodeid: outcome},
"aiotrace": [patch groups installed in this process]}`` (so the session can check that the run
with ``AIOTRACE_ENABLE=1`` really had aiotrace on, and the other did not), with outcome one of
passed, failed, error (setup or teardown), skipped, xfailed, xpassed; a module that fails to
import is recorded as ``<collect>PATH`` with outcome error.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Dict

# Worst first: a test that passed its call but failed its teardown is an error.
_RANK = {"error": 0, "failed": 1, "xpassed": 2, "xfailed": 3, "skipped": 4, "passed": 5}
_outcomes: Dict[str, str] = {}


def _record(nodeid: str, outcome: str) -> None:
    old = _outcomes.get(nodeid)
    if old is None or _RANK[outcome] < _RANK[old]:
        _outcomes[nodeid] = outcome


def pytest_runtest_logreport(report: Any) -> None:
    xfail = hasattr(report, "wasxfail")
    if report.failed:
        _record(report.nodeid, "failed" if report.when == "call" else "error")
    elif report.skipped:
        _record(report.nodeid, "xfailed" if xfail else "skipped")
    elif report.when == "call":
        _record(report.nodeid, "xpassed" if xfail else "passed")


def pytest_collectreport(report: Any) -> None:
    if report.failed:
        _record(f"<collect>{report.nodeid}", "error")


def pytest_sessionfinish(session: Any, exitstatus: int) -> None:
    path = os.environ.get("PEERS_OUTCOMES")
    if not path or hasattr(session.config, "workerinput"):
        return
    registry = sys.modules.get("aiotrace.registry")
    groups = sorted(registry.installed()) if registry is not None else []
    with open(path, "w", encoding="utf-8") as out:
        report = {"exitstatus": int(exitstatus), "outcomes": _outcomes, "aiotrace": groups}
        json.dump(report, out, indent=0)
