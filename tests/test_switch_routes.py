"""Every way of switching aiotrace on gives the same active patches (issue 14), uvloop's and the
process pool's included although both load after aiotrace installed: ``AIOTRACE_ENABLE=1``,
``python -m aiotrace run``, ``opentelemetry-instrument``, the OpenTelemetry Operator's layout and
``aiotrace.install()`` from code. Fresh environments built from the wheel; nothing mocked.

The Operator layout, as its Python auto-instrumentation image builds it: opentelemetry-distro,
the instrumentations and aiotrace installed with ``pip install --target DIR``; the application
runs from its own environment with ``PYTHONPATH=DIR/opentelemetry/instrumentation/
auto_instrumentation:DIR``. ``site`` reads no ``.pth`` file from a ``PYTHONPATH`` entry, so the
start-up hook never runs there; OpenTelemetry's own ``sitecustomize`` (in that first directory)
loads the ``opentelemetry_instrumentor`` entry points, aiotrace's among them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict

import pytest
from bootenv import UV, Environments, Venv, _check, _install, _new_venv, cleanup, environments

pytestmark = [pytest.mark.boot, pytest.mark.skipif("sys.platform == 'win32'")]

# The distro's defaults export over OTLP; nothing is exported here.
QUIET = {
    "OTEL_TRACES_EXPORTER": "none",
    "OTEL_METRICS_EXPORTER": "none",
    "OTEL_LOGS_EXPORTER": "none",
}

# Imports asyncio first (the hook installs then), uvloop and the process pool only afterwards,
# as ``uvicorn --loop uvloop`` does; prints every patched attribute.
PROBE = """\
import asyncio, json, sys
{install}
import uvloop
import concurrent.futures.process
from aiotrace import registry
patched = sorted(p.where for p in registry.PATCHES if registry.original(p.owner, p.attribute))
print(json.dumps(patched))
"""


class Layout:
    def __init__(self, base: Path, envs: Environments) -> None:
        # The application's own environment: uvloop, and no aiotrace.
        self.app = _new_venv(base / "app-env")
        _install(self.app, "uvloop")
        # The auto-instrumentation directory.
        self.target = base / "autoinstrumentation"
        requirements = [str(envs.wheel), "opentelemetry-distro", "opentelemetry-instrumentation"]
        if UV:
            command = [UV, "pip", "install", "-q", "-p", self.app.python]
        else:
            command = [self.app.python, "-m", "pip", "install", "-q"]
        _check([*command, "--target", str(self.target), *requirements])
        sitecustomize = self.target / "opentelemetry/instrumentation/auto_instrumentation"
        assert (sitecustomize / "sitecustomize.py").is_file()
        self.env = {"PYTHONPATH": f"{sitecustomize}:{self.target}", **QUIET}


@pytest.fixture(scope="module")
def envs() -> Environments:
    yield environments()
    cleanup()


@pytest.fixture(scope="module")
def venv(envs: Environments) -> Venv:
    """The wheel, opentelemetry-distro, opentelemetry-instrumentation and uvloop."""
    venv = _new_venv(envs.base / "routes")
    _install(
        venv, str(envs.wheel), "opentelemetry-distro", "opentelemetry-instrumentation", "uvloop"
    )
    return venv


@pytest.fixture(scope="module")
def operator(envs: Environments) -> Layout:
    return Layout(envs.base / "operator", envs)


def _patched(venv: Venv, *args: str, env: Dict[str, str], executable: str = "") -> list:
    done = venv.run(*args, env=env, executable=executable or None)
    assert done.returncode == 0, done.stderr
    assert "aiotrace" not in done.stderr, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_every_route_applies_the_same_patches(venv: Venv, operator: Layout, tmp_path: Path):
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE.format(install=""))
    in_code = tmp_path / "in_code.py"
    in_code.write_text(PROBE.format(install="import aiotrace; aiotrace.install()"))
    instrument = str(venv.bin / "opentelemetry-instrument")
    routes = {
        "AIOTRACE_ENABLE=1": _patched(venv, str(probe), env={"AIOTRACE_ENABLE": "1"}),
        "aiotrace run": _patched(venv, "-m", "aiotrace", "run", str(probe), env={}),
        "opentelemetry-instrument": _patched(
            venv, venv.python, str(probe), env=QUIET, executable=instrument
        ),
        "Operator layout": _patched(operator.app, str(probe), env=operator.env),
        "install() from code": _patched(venv, str(in_code), env={}),
    }
    reference = routes["AIOTRACE_ENABLE=1"]
    assert "uvloop.Loop.create_server" in reference
    assert "uvloop.Loop.shutdown_asyncgens" in reference
    assert "concurrent.futures.process.ProcessPoolExecutor.submit" in reference
    assert {route: patched for route, patched in routes.items() if patched != reference} == {}


def test_doctor_in_the_operator_layout(operator: Layout) -> None:
    # The start-up hook cannot run there, and need not: the instrumentor switched aiotrace on.
    for extra in ({}, {"AIOTRACE_ENABLE": "1"}):
        done = operator.app.run("-m", "aiotrace", "doctor", "--json", env={**operator.env, **extra})
        assert done.returncode == 0, done.stdout + done.stderr
        data = json.loads(done.stdout)
        assert data["instrumentor"] == "switched aiotrace on in this process"
        here = data["this_process"]
        assert here["switched_on_by"] == ["instrumentor"]
        assert "queue" in here["active_patches"]
        assert here["late_modules"]["patched_on_import_by"] == "install()"
        assert [p["level"] for p in data["problems"] if p["level"] != "note"] == []
        (note,) = [p["message"] for p in data["problems"] if "start-up hook" in p["message"]]
        assert note.startswith("the start-up hook cannot run here (aiotrace.")
        assert note.endswith(
            "and is not needed: aiotrace was switched on in this process by the instrumentor"
        )

    text = operator.app.run("-m", "aiotrace", "doctor", env=operator.env).stdout
    assert ["switched", "on", "by", "instrumentor"] in [line.split() for line in text.splitlines()]
