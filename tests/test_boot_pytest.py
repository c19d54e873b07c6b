"""Installing aiotrace never changes another project's pytest run (issue 13): a small suite
with ``filterwarnings = error`` passes in a fresh environment with the wheel installed, with
aiotrace switched off and on, and with the pytest helper turned on by ``-p aiotrace.testing``
or ``pytest_plugins``.

Before, the wheel declared a ``pytest11`` entry point: pytest then marks every top-level module
of the distribution for assertion rewriting, and ``aiotrace_boot``, already imported by the
start-up hook, made it stop with ``PytestAssertRewriteWarning: Module already imported so
cannot be rewritten; aiotrace_boot`` before collecting a test (seen on CPython 3.11 with
AIOTRACE_ENABLE=1, and on 3.15 with aiotrace off too, where ``aiotrace.start`` imports
``aiotrace_boot`` at every start).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from bootenv import Environments, Venv, write

pytestmark = pytest.mark.boot

PROJECT = {
    "pytest.ini": "[pytest]\nfilterwarnings = error\n",
    "test_plain.py": """\
import asyncio
import os


def test_runs_with_aiotrace_as_configured():
    import aiotrace

    async def main():
        queue = asyncio.Queue()
        await queue.put(1)
        return await queue.get()

    assert asyncio.run(main()) == 1
    assert ("queue" in aiotrace.installed()) == bool(os.environ.get("AIOTRACE_ENABLE"))
""",
}

HELPER = {
    "test_helper.py": """\
from opentelemetry import trace


def test_the_helper_records_spans(otel_spans):
    with trace.get_tracer("suite").start_as_current_span("request"):
        with trace.get_tracer("suite").start_as_current_span("db"):
            pass
    assert otel_spans.shape() == {"request": {"db": {}}}
""",
}


@pytest.fixture(scope="session")
def venv(envs: Environments) -> Venv:
    return envs.with_pytest


@pytest.mark.parametrize("enable", ["", "1"], ids=["off", "on"])
def test_a_suite_with_filterwarnings_error_runs_unchanged(
    venv: Venv, tmp_path: Path, enable: str
) -> None:
    write(tmp_path, PROJECT)
    done = venv.run(
        "-m", "pytest", "-p", "no:cacheprovider", env={"AIOTRACE_ENABLE": enable}, cwd=tmp_path
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout


@pytest.mark.parametrize("enable", ["", "1"], ids=["off", "on"])
@pytest.mark.parametrize("how", ["-p", "pytest_plugins"])
def test_the_helper_turned_on_by_the_suite(
    venv: Venv, tmp_path: Path, enable: str, how: str
) -> None:
    write(tmp_path, {**PROJECT, **HELPER})
    if how == "pytest_plugins":
        write(tmp_path, {"conftest.py": 'pytest_plugins = ["aiotrace.testing"]\n'})
        args = ["-m", "pytest", "-p", "no:cacheprovider"]
    else:
        # asyncio first, so that with aiotrace on the hook has imported aiotrace_boot and
        # aiotrace before pytest marks ``aiotrace.testing`` for rewriting.
        args = [
            "-c",
            "import asyncio, os, sys, pytest\n"
            "assert ('aiotrace' in sys.modules) == bool(os.environ['AIOTRACE_ENABLE'])\n"
            "sys.exit(pytest.main(['-p', 'no:cacheprovider', '-p', 'aiotrace.testing']))",
        ]
    done = venv.run(*args, env={"AIOTRACE_ENABLE": enable}, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout


def test_the_helper_is_off_unless_the_suite_asks(venv: Venv, tmp_path: Path) -> None:
    write(tmp_path, {**PROJECT, **HELPER})
    done = venv.run(
        "-m", "pytest", "-p", "no:cacheprovider", env={"AIOTRACE_ENABLE": "1"}, cwd=tmp_path
    )
    assert "fixture 'otel_spans' not found" in done.stdout, done.stdout + done.stderr
