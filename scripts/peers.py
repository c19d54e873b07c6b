"""Other projects' own test suites, run without and with aiotrace: pins, selection, comparison.

The ``peers`` nox session (noxfile.py) reads everything it needs from here: the pinned release
of each project (whose sdist carries its tests), the test dependencies installed beside it, the
test files CI runs and the ones ``--all`` runs, and the list of known differences. This module
also compares the two runs' per-test outcomes (written by scripts/peers_outcomes.py). It is
plain data and functions so that the noxfile and docs/drop-in.md stay in step with one list.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple

PYTHONS = ["3.11", "3.13"]


@dataclasses.dataclass(frozen=True)
class Peer:
    """One project: its release, what its tests need, which of them to run."""

    version: str
    # Test dependencies, installed with the release's wheel (from the registry, same version) and
    # aiotrace from the checkout. Pinned where a new release could change the outcome.
    deps: Tuple[str, ...]
    # Test files (and selecting options) run by ``nox -s peers`` (CI); ``--all`` runs
    # ``everything`` instead.
    ci: Tuple[str, ...]
    # ``()``: the project's own testpaths.
    everything: Tuple[str, ...] = ()
    # The source package inside the sdist: removed after unpacking, so that the tests import the
    # installed release, not a copy that shadows it from the working directory.
    source: str = ""
    # Build backends that ``pip download --no-build-isolation`` needs to read the sdist's metadata
    # (with build isolation each download builds a fresh environment: minutes instead of seconds).
    build: Tuple[str, ...] = ("setuptools>=77", "wheel")
    # Pytest options that only select or speed up (never a warning filter).
    args: Tuple[str, ...] = ()


PEERS: Dict[str, Peer] = {
    # Web server and client on loop.create_server / transports, its own pytest plugin, tasks.
    "aiohttp": Peer(
        version="3.14.5",
        deps=(
            "pytest==9.2.0",
            "pytest-xdist==3.8.0",
            "pytest-cov",
            "pytest-mock",
            "pytest-timeout",
            "pytest-codspeed",
            "freezegun",
            "re-assert",
            "trustme",
            "proxy.py",
            "blockbuster",
            "setuptools-git",
            "pkgconfig",
            "isal; python_version < '3.14'",
            "zlib_ng",
            "brotli",
            "aiodns",
            "uvloop",
        ),
        ci=(
            "tests/test_run_app.py",
            "tests/test_web_functional.py",
            "tests/test_client_functional.py",
        ),
        source="aiohttp",
        build=("setuptools>=77", "wheel", "pkgconfig"),
        # Coverage of aiohttp itself is not what is compared; it only slows the runs down.
        args=("--no-cov",),
    ),
    # Memory object streams, task groups, synchronization primitives, its pytest plugin.
    "anyio": Peer(
        version="4.16.0",
        deps=(
            "pytest==9.2.0",
            "trio==0.35.0",
            "blockbuster",
            "hypothesis",
            "psutil",
            "pytest-mock",
            "pytest-timeout",
            "trustme",
            "truststore",
            "uvloop",
            "exceptiongroup",
        ),
        ci=(
            "tests/streams/test_memory.py",
            "tests/test_taskgroups.py",
            "tests/test_synchronization.py",
            "tests/test_pytest_plugin.py",
            # aiotrace changes nothing under trio; CI spends its minutes on asyncio and uvloop.
            "-k",
            "not trio",
        ),
        source="src",
        build=("setuptools>=77", "setuptools_scm>=6.4"),
    ),
    # An ASGI server: asyncio servers, protocols, lifespan tasks, signal handling.
    "uvicorn": Peer(
        version="0.55.0",
        deps=(
            "pytest==9.2.0",
            "pytest-xdist[psutil]==3.8.0",
            "pytest-mock==3.17.0",
            "httptools",
            "python-dotenv",
            "PyYAML",
            "uvloop",
            "watchfiles",
            "websockets",
            "trustme==1.2.1",
            "cryptography",
            "httpx2",
            "a2wsgi==1.10.10",
            "wsproto==1.3.2",
            "zttp",
            "pytest-codspeed",  # tests/benchmarks (``--all``)
        ),
        ci=("tests/test_main.py", "tests/test_lifespan.py", "tests/protocols/test_http.py"),
        source="uvicorn",
        build=("hatchling", "uv-dynamic-versioning"),
        # The project's own ``-n 8`` on a 2-core machine.
        args=("-n", "2"),
    ),
    # ASGI framework on anyio: task groups, memory streams, background tasks, test client threads.
    "starlette": Peer(
        version="1.10.0",
        deps=(
            "pytest==9.2.0",
            "trio==0.35.0",
            "itsdangerous",
            "jinja2",
            "python-multipart",
            "pyyaml",
            "httpx==0.28.1",
            # With zstd, as in the project's dev group: tests/test_testclient.py expects it.
            "httpx2[zstd]",
            "blockbuster",
            "importlib-metadata",
            "opentelemetry-sdk",
        ),
        ci=(
            "tests/test_concurrency.py",
            "tests/middleware/test_base.py",
            "tests/test_responses.py",
            "tests/test_websockets.py",
            "-k",
            "not trio",
        ),
        source="starlette",
        build=("hatchling",),
    ),
    # A queue with a sync and an async side: threads, loop.call_soon_threadsafe, asyncio.Condition.
    "janus": Peer(
        version="2.0.0",
        deps=("pytest==9.2.0", "pytest-asyncio==1.5.0", "pytest-cov", "pytest-codspeed"),
        ci=("tests",),
        source="janus",
    ),
    # Timeouts by cancellation: Task.cancel/uncancel, loop.call_at.
    "async-timeout": Peer(
        version="5.0.1",
        # The release's own requirements.txt pins.
        deps=("pytest==8.3.3", "pytest-asyncio==0.24.0", "pytest-cov==6.0.0"),
        ci=("tests",),
        source="async_timeout",
    ),
    # Async generator operators: aclose, athrow, nested generators and task-backed streams.
    "aiostream": Peer(
        version="0.8.1",
        deps=("pytest==9.2.0", "pytest-asyncio==1.5.0", "pytest-cov"),
        ci=("tests",),
        source="aiostream",
        build=("setuptools>=69.5",),
    ),
}

# Tests that fail with aiotrace on for a reason aiotrace cannot change: (peer, test id) -> why.
# docs/drop-in.md lists the same ones.
KNOWN_DIFFERENCES: Dict[Tuple[str, str], str] = {
    ("janus", "tests/test_async.py::TestQueueGetTests::test_get_cancelled"): (
        "timing: a 41 ms margin (put 10 ms after a get bounded by wait_for(..., 0.051)); failed "
        "with aiotrace on at load average 13 on 2 cores (2026-12-03), passed 10 of 10 runs "
        "alone and 3 of 3 whole-suite runs on each side once the load was lower"
    ),
}

FAILING = {"failed", "error"}


@dataclasses.dataclass
class Comparison:
    """The outcome of one peer's two runs."""

    only_on: List[str]  # fail (or vanish) only with aiotrace on
    only_off: List[str]  # fail only with aiotrace off (reported, not an error)
    known: Dict[str, str]  # of only_on, the known differences with their reason
    unused_known: List[str]  # known differences that did not show up this time

    @property
    def unexplained(self) -> List[str]:
        return [test for test in self.only_on if test not in self.known]


def counts(outcomes: Mapping[str, str]) -> Dict[str, int]:
    """passed/failed/skipped, with errors counted as failed and xfail/xpass as skipped/passed."""
    total = {"passed": 0, "failed": 0, "skipped": 0}
    for outcome in outcomes.values():
        if outcome in FAILING:
            total["failed"] += 1
        elif outcome in ("skipped", "xfailed"):
            total["skipped"] += 1
        else:
            total["passed"] += 1
    return total


def summary(outcomes: Mapping[str, str]) -> str:
    got = counts(outcomes)
    return f"{got['passed']} passed, {got['failed']} failed, {got['skipped']} skipped"


def compare(peer: str, off: Mapping[str, str], on: Mapping[str, str]) -> Comparison:
    """Tests that fail with aiotrace on but not off, and the reverse.

    A test that ran without aiotrace and is missing with it (its module failed to import, or
    pytest stopped early) counts as failing with aiotrace on.
    """
    only_on = sorted(
        test
        for test, outcome in off.items()
        if outcome not in FAILING and on.get(test, "error") in FAILING
    )
    only_on += sorted(
        test for test, outcome in on.items() if outcome in FAILING and test not in off
    )
    only_off = sorted(
        test for test, outcome in off.items() if outcome in FAILING and on.get(test) not in FAILING
    )
    mine = {test: why for (name, test), why in KNOWN_DIFFERENCES.items() if name == peer}
    return Comparison(
        only_on=only_on,
        only_off=only_off,
        known={test: mine[test] for test in only_on if test in mine},
        unused_known=sorted(test for test in mine if test not in only_on),
    )


def rerunnable(tests: List[str]) -> Optional[List[str]]:
    """Test ids pytest can be given again, or None if one of them is not a test (a module)."""
    if any(test.startswith("<collect>") for test in tests):
        return None
    return tests


def table(results: Path) -> str:
    """The Markdown table of docs/drop-in.md from the session's ``.nox/_peers_results``."""
    import json

    def cell(got: Mapping[str, int]) -> str:
        return f"{got['passed']} / {got['failed']} / {got['skipped']}"

    rows = ["| project | Python | selection | off | on | only on | flaky |", "|" + " --- |" * 7]
    for path in sorted(results.glob("*.json")):
        got = json.loads(path.read_text(encoding="utf-8"))
        rows.append(
            f"| {got['peer']} {got['version']} | {got['python']} | {got['selection']} "
            f"| {cell(got['off'])} | {cell(got['on'])} | {len(got['only_on'])} "
            f"| {len(got['flaky'])} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    import sys

    print(table(Path(sys.argv[1] if len(sys.argv) > 1 else ".nox/_peers_results")))
