"""The OpenTelemetry instrumentor (aiotrace/instrumentation.py): in this process when
opentelemetry-instrumentation is importable, and as users meet it: ``opentelemetry-instrument
python app.py`` in a fresh environment with the wheel, opentelemetry-distro and
opentelemetry-instrumentation installed."""

from __future__ import annotations

import concurrent.futures.process  # noqa: F401 - install() then applies process_pool too
import json
import subprocess
from pathlib import Path

import pytest
from bootenv import (
    EXECUTOR_NESTING,
    TIMEOUT,
    Environments,
    Venv,
    _install,
    _new_venv,
    clean_env,
    cleanup,
    environments,
)

import aiotrace
from aiotrace import registry

# A span opened in a run_in_executor job: does it nest under the caller's span? Also prints
# which patches are active and how many wrappers ThreadPoolExecutor.submit has (1: wrapped once).
APP = (
    """\
import asyncio, json
from opentelemetry import trace
import concurrent.futures.thread as thread
from opentelemetry.sdk.trace import TracerProvider

if not isinstance(trace.get_tracer_provider(), TracerProvider):  # run without the distro
    trace.set_tracer_provider(TracerProvider())
"""
    + EXECUTOR_NESTING
    + """\
import aiotrace
depth, submit = 0, thread.ThreadPoolExecutor.submit
while hasattr(submit, "__wrapped__"):
    depth, submit = depth + 1, submit.__wrapped__
print(json.dumps({"nested": nested, "installed": sorted(aiotrace.installed()),
                  "submit_wrappers": depth,
                  "provider": type(trace.get_tracer_provider()).__module__}))
"""
)

# The distro's defaults export over OTLP; nothing is exported here.
QUIET = {
    "OTEL_TRACES_EXPORTER": "none",
    "OTEL_METRICS_EXPORTER": "none",
    "OTEL_LOGS_EXPORTER": "none",
}


# -- in this process ------------------------------------------------------------------------


@pytest.fixture
def instrumentor():
    pytest.importorskip("opentelemetry.instrumentation.instrumentor")
    from aiotrace.instrumentation import AiotraceInstrumentor

    instance = AiotraceInstrumentor()
    yield instance
    instance.uninstrument()


@pytest.fixture
def no_aiotrace_env(monkeypatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("AIOTRACE_"):
            monkeypatch.delenv(name)


def test_importing_aiotrace_does_not_import_the_instrumentor() -> None:
    done = subprocess.run(
        [
            __import__("sys").executable,
            "-c",
            "import sys, aiotrace; print('aiotrace.instrumentation' in sys.modules, "
            "any(m.startswith('opentelemetry.instrumentation') for m in sys.modules))",
        ],
        capture_output=True,
        text=True,
        check=True,
        env=clean_env(),
    )
    assert done.stdout.split() == ["False", "False"]


def test_instrument_installs_and_uninstrument_removes(instrumentor, no_aiotrace_env) -> None:
    instrumentor.instrument()
    assert aiotrace.installed() == registry.selected()
    instrumentor.uninstrument()
    assert aiotrace.installed() == frozenset()


def test_the_aiotrace_variables_configure_it(instrumentor, monkeypatch, capsys) -> None:
    monkeypatch.setenv("AIOTRACE_PATCH_QUEUE", "0")
    monkeypatch.setenv("AIOTRACE_DISABLED_PATCHES", "server,nope")
    instrumentor.instrument()
    assert aiotrace.installed() == registry.selected(patch_queue=False, exclude=["server"])
    assert "AIOTRACE_DISABLED_PATCHES='server,nope' has unknown patch name(s) 'nope'" in (
        capsys.readouterr().err
    )


def test_aiotrace_enable_0_keeps_it_off(instrumentor, monkeypatch) -> None:
    monkeypatch.setenv("AIOTRACE_ENABLE", "0")
    instrumentor.instrument()
    assert aiotrace.installed() == frozenset()


def test_keyword_arguments_go_to_install(instrumentor, no_aiotrace_env) -> None:
    instrumentor.instrument(patch_locks=False, exclude=["transport"])
    assert aiotrace.installed() == registry.selected(patch_locks=False, exclude=["transport"])


def test_uninstrument_leaves_what_was_installed_before(instrumentor, no_aiotrace_env) -> None:
    before = aiotrace.install()
    instrumentor.instrument()
    instrumentor.uninstrument()
    assert aiotrace.installed() == before


# -- as users run it ------------------------------------------------------------------------


@pytest.fixture(scope="session")
def instrumented() -> Venv:
    """The wheel, opentelemetry-distro and opentelemetry-instrumentation (which bring the SDK)
    in a fresh environment, beside the start-up tests' environments."""
    envs: Environments = environments()
    venv = _new_venv(envs.base / "instrumented")
    _install(venv, str(envs.wheel), "opentelemetry-distro", "opentelemetry-instrumentation")
    yield venv
    cleanup()


def _launch(
    venv: Venv, app: Path, env: dict, instrument: bool = True
) -> subprocess.CompletedProcess:
    command = [str(venv.bin / "opentelemetry-instrument")] if instrument else []
    done = subprocess.run(
        [*command, venv.python, str(app)],
        capture_output=True,
        text=True,
        check=False,
        env=clean_env({**QUIET, **env}),
        timeout=TIMEOUT,
    )
    assert done.returncode == 0, done.stderr
    return done


def _run(venv: Venv, app: Path, env: dict, instrument: bool = True) -> dict:
    done = _launch(venv, app, env, instrument)
    assert "aiotrace" not in done.stderr, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


@pytest.fixture
def app(tmp_path: Path) -> Path:
    path = tmp_path / "app.py"
    path.write_text(APP)
    return path


@pytest.mark.venv
def test_opentelemetry_instrument_switches_aiotrace_on(instrumented: Venv, app: Path) -> None:
    result = _run(instrumented, app, {})
    assert result["provider"].startswith("opentelemetry.sdk")
    assert result["nested"] is True
    assert "executor" in result["installed"]
    assert result["submit_wrappers"] == 1


@pytest.mark.venv
def test_plain_python_and_the_disabling_variable_leave_it_off(
    instrumented: Venv, app: Path
) -> None:
    off = _run(instrumented, app, {"OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "aiotrace"})
    assert (off["nested"], off["installed"], off["submit_wrappers"]) == (False, [], 0)
    assert off["provider"].startswith("opentelemetry.sdk")  # the distro still ran
    # An explicit AIOTRACE_ENABLE=0 keeps the instrumentor off too (docs/switching-on.md).
    zero = _run(instrumented, app, {"AIOTRACE_ENABLE": "0"})
    assert (zero["nested"], zero["installed"], zero["submit_wrappers"]) == (False, [], 0)
    plain = _run(instrumented, app, {}, instrument=False)
    assert (plain["installed"], plain["submit_wrappers"]) == ([], 0)


@pytest.mark.venv
def test_with_aiotrace_enable_too_it_installs_once(instrumented: Venv, app: Path) -> None:
    result = _run(instrumented, app, {"AIOTRACE_ENABLE": "1"})
    assert result["nested"] is True
    assert result["submit_wrappers"] == 1
    alone = _run(instrumented, app, {})
    assert result["installed"] == alone["installed"]


@pytest.mark.venv
def test_aiotrace_variables_apply_under_opentelemetry_instrument(
    instrumented: Venv, app: Path
) -> None:
    result = _run(instrumented, app, {"AIOTRACE_DISABLED_PATCHES": "executor"})
    assert result["nested"] is False
    assert "executor" not in result["installed"]
    assert "queue" in result["installed"]


def _aiotrace_lines(done: subprocess.CompletedProcess) -> list:
    return [line for line in done.stderr.splitlines() if "aiotrace" in line]


BAD_QUEUE = (
    "aiotrace: AIOTRACE_PATCH_QUEUE='maybe' is not a boolean; accepted: 1, true, yes, on, "
    "0, false, no, off (any case); using true"
)


@pytest.mark.venv
def test_a_bad_value_is_reported_by_the_instrumentor(instrumented: Venv, app: Path) -> None:
    done = _launch(instrumented, app, {"AIOTRACE_PATCH_QUEUE": "maybe"})
    assert _aiotrace_lines(done) == [BAD_QUEUE]
    assert "queue" in json.loads(done.stdout.splitlines()[-1])["installed"]


@pytest.mark.venv
def test_with_the_hook_too_the_instrumentor_adds_no_second_report(
    instrumented: Venv, app: Path
) -> None:
    env = {"AIOTRACE_ENABLE": "1", "AIOTRACE_PATCH_QUEUE": "maybe"}
    # The hook reports in every interpreter it starts in, opentelemetry-instrument's own too.
    hook_only = _launch(
        instrumented, app, {**env, "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "aiotrace"}
    )
    both = _launch(instrumented, app, env)
    assert set(_aiotrace_lines(hook_only)) == {BAD_QUEUE}
    assert _aiotrace_lines(both) == _aiotrace_lines(hook_only)
