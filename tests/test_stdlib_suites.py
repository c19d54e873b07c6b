"""Drop-in means drop-in: CPython's own asyncio test suites pass with aiotrace installed.

The interpreter's ``test.test_asyncio`` modules for every primitive aiotrace replaces (queues,
locks, task groups, tasks, the selector transports, SSL, servers, streams and, from 3.14, the
call graph) and ``test.test_asyncgen`` run in a subprocess after ``aiotrace.install()``. They
were written for stock asyncio, so a difference in results, exceptions, messages or ordering
shows up as a failure. One difference is documented and expected (docs/async-generators.md): a
generator left with ``break`` is closed right there, so an error in its cleanup reaches the
loop's exception handler as a failed task's ("Task exception was never retrieved") instead of
during ``asyncio.run()``'s shutdown.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.stdlib

MODULES = [
    "test.test_asyncio.test_queues",
    "test.test_asyncio.test_locks",
    "test.test_asyncio.test_pep492",
    "test.test_asyncio.test_taskgroups",  # 3.11+
    "test.test_asyncio.test_tasks",
    "test.test_asyncio.test_selector_events",
    "test.test_asyncio.test_sslproto",
    "test.test_asyncio.test_server",
    "test.test_asyncio.test_streams",
    # 3.14+: asyncio.capture_call_graph() must not show aiotrace's frames (tests/test_call_graph.py)
    "test.test_asyncgen",
    "test.test_asyncio.test_graph",  # 3.14+: asyncio.capture_call_graph() and friends
]
EXPECTED_DIFFERENCES = {"test_async_gen_asyncio_shutdown_exception_02"}
RUNNER = textwrap.dedent(
    """
    import importlib, json, sys, unittest
    import asyncio, aiotrace
    aiotrace.install()
    # The alias carries asyncio's own __module__ (tests/test_introspection.py), not its metaclass.
    assert type(asyncio.Queue).__module__ == "aiotrace.aliases", asyncio.Queue
    present = []
    for name in sys.argv[1:]:
        try:
            importlib.import_module(name)
        except ImportError:  # a module this Python does not have (test_taskgroups before 3.11)
            continue
        present.append(name)
    result = unittest.main(module=None, argv=["stdlib", *present], exit=False, verbosity=0).result
    failed = sorted(str(test).split()[0] for test, _ in result.failures + result.errors)
    print(json.dumps({"ran": result.testsRun, "failed": failed, "present": present}))
    """
)


def _has_tests() -> bool:
    try:
        return importlib.util.find_spec("test.test_asyncio") is not None
    except ImportError:
        return False


@pytest.mark.skipif(not _has_tests(), reason="this Python was built without its test package")
def test_cpythons_asyncio_suites_pass_with_aiotrace_installed():
    import json

    env = {k: v for k, v in os.environ.items() if not k.startswith("AIOTRACE_")}
    done = subprocess.run(
        [sys.executable, "-c", RUNNER, *MODULES],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert "test.test_asyncio.test_locks" in report["present"]
    assert report["ran"] > 1000
    unexpected = set(report["failed"]) - EXPECTED_DIFFERENCES
    assert not unexpected, done.stderr[-6000:]
