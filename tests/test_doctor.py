"""``aiotrace doctor`` (aiotrace/doctor.py): a healthy and a broken setup, in this process and
as users run it (``python -m aiotrace doctor`` in fresh environments built from the wheel)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest
from bootenv import Environments, cleanup, environments
from conftest import Flags

import aiotrace
from aiotrace import doctor

PTH = 'import os; os.environ.get("AIOTRACE_ENABLE") and __import__("aiotrace_boot").start()\n'


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A site-packages directory with both doors of the start-up hook."""
    (tmp_path / "aiotrace.pth").write_text(PTH)
    (tmp_path / "aiotrace.start").write_text("aiotrace_boot:start\n")
    return tmp_path


def errors(data) -> list:
    return [p["message"] for p in data["problems"] if p["level"] == "error"]


def row(text: str, key: str) -> str:
    """The value of the first row ``key`` of a rendered report."""
    for line in text.splitlines():
        if line.startswith(f"  {key}  "):
            return line[len(key) + 2 :].strip()
    raise AssertionError(f"no row {key!r} in:\n{text}")


def test_healthy_setup(site: Path) -> None:
    data = doctor.collect({"AIOTRACE_ENABLE": "1"}, [str(site)])
    assert data["ok"], data["problems"]
    assert errors(data) == []
    assert data["startup_hook"]["would_fire"] is True
    assert data["startup_hook"]["files"]["aiotrace.pth"] == [str(site / "aiotrace.pth")]
    assert data["configuration"]["effective"]["enabled"] is True
    assert "queue" in data["configuration"]["patches_selected"]
    assert "thread" not in data["configuration"]["patches_selected"]
    assert data["opentelemetry"]["opentelemetry-api"]
    text = doctor.render(data)
    assert "would fire      yes" in text
    assert text.endswith("result: OK")


def test_bad_values_are_named_and_fail(site: Path) -> None:
    environ = {
        "AIOTRACE_ENABLE": "ture",
        "AIOTRACE_SERVER_CONTEXT": "dirty",
        "AIOTRACE_DISABLED_PATCHES": "queue,qeueu",
    }
    data = doctor.collect(environ, [str(site)])
    assert not data["ok"]
    found = errors(data)
    assert any(m.startswith("AIOTRACE_ENABLE='ture' is not a boolean; accepted: 1,") for m in found)
    assert any(m.startswith("AIOTRACE_SERVER_CONTEXT='dirty'") for m in found)
    assert any("unknown patch name(s) 'qeueu'; accepted: create_task," in m for m in found)
    # The values it could read still count: queue is left out, and "server" kept (clean).
    assert "queue" not in data["configuration"]["patches_selected"]
    assert data["configuration"]["environment"] == environ
    assert doctor.render(data).endswith("result: the setup cannot work as configured")


def test_enabled_without_the_hook_in_site_packages_fails(tmp_path: Path) -> None:
    data = doctor.collect({"AIOTRACE_ENABLE": "yes"}, [str(tmp_path)])
    assert not data["ok"]
    (message,) = errors(data)
    # 3.15 (PEP 829) starts the hook from aiotrace.start, or from aiotrace.pth without one.
    door = "aiotrace.pth" if sys.version_info < (3, 15) else "aiotrace.start or aiotrace.pth"
    assert message.startswith(
        f"AIOTRACE_ENABLE is on but the start-up hook cannot run: {door} is not in any "
        "site-packages directory"
    )


@pytest.mark.skipif(sys.version_info < (3, 15), reason="PEP 829 .start files exist from 3.15")
def test_either_door_is_enough_on_3_15(tmp_path: Path) -> None:
    """3.15.2's site runs the .pth's import line when no .start sits beside it."""
    (tmp_path / "aiotrace.pth").write_text(PTH)
    data = doctor.collect({"AIOTRACE_ENABLE": "1"}, [str(tmp_path)])
    assert not any("is not in any site-packages" in m for m in errors(data))


def test_doctor_says_where_stock_asyncio_needs_no_transport_patch(tmp_path: Path) -> None:
    notes = [p["message"] for p in doctor.collect({}, [str(tmp_path)])["problems"]]
    said = [m for m in notes if m.startswith("transport: ")]
    if sys.version_info >= (3, 15):
        assert said == [
            "transport: pause_reading/resume_reading not needed on this Python (fixed in "
            "CPython 3.15: a resumed transport reads in its own context); only SSL's resume "
            "is patched"
        ]
    else:
        assert said == []


def test_hook_missing_but_not_enabled_is_a_warning(tmp_path: Path) -> None:
    data = doctor.collect({}, [str(tmp_path)])
    assert data["ok"]
    assert data["startup_hook"]["would_fire"] is False
    warnings = [p["message"] for p in data["problems"] if p["level"] == "warning"]
    assert any("AIOTRACE_ENABLE=1 would do nothing" in m for m in warnings)


def test_a_pth_that_does_not_start_aiotrace_is_reported(site: Path) -> None:
    (site / "aiotrace.pth").write_text("import os\n")
    data = doctor.collect({"AIOTRACE_ENABLE": "1"}, [str(site)])
    assert not data["ok"]
    assert "does not start aiotrace_boot" in errors(data)[0]


def test_active_patches_and_thread_propagation_of_this_process(site: Path) -> None:
    groups = aiotrace.install()
    data = doctor.collect({}, [str(site)])
    assert data["this_process"]["active_patches"] == sorted(groups)
    assert data["this_process"]["thread_propagation"]["ThreadPoolExecutor.submit"] == "aiotrace"
    assert "active patches" in doctor.render(data)


def test_a_queue_replaced_by_another_library_is_a_conflict(monkeypatch, site: Path) -> None:
    class OtherQueue(asyncio.Queue):
        pass

    monkeypatch.setattr(asyncio, "Queue", OtherQueue)
    data = doctor.collect({}, [str(site)])
    assert data["ok"]
    (conflict,) = data["conflicts"]
    assert conflict.startswith("asyncio.Queue is test_doctor.")
    assert "OtherQueue (replaced by another library)" in conflict


def test_main_text_json_and_exit_codes(monkeypatch, capsys, site: Path) -> None:
    monkeypatch.setattr(doctor, "_site_dirs", lambda: [str(site)])
    for name in list(__import__("os").environ):
        if name.startswith("AIOTRACE_"):
            monkeypatch.delenv(name)
    assert doctor.main([]) == 0
    assert capsys.readouterr().out.startswith("aiotrace doctor\n")
    assert doctor.main(["--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is True
    assert {"python", "event_loop", "opentelemetry", "startup_hook", "configuration"} <= set(data)
    monkeypatch.setenv("AIOTRACE_PATCH_QUEUE", "maybe")
    assert doctor.main([]) == 1
    assert "error: AIOTRACE_PATCH_QUEUE='maybe' is not a boolean" in capsys.readouterr().out


# -- as users run it ------------------------------------------------------------------------


@pytest.fixture(scope="session")
def envs() -> Environments:
    yield environments()
    cleanup()


@pytest.mark.venv
def test_installed_wheel_healthy_and_enabled(envs: Environments) -> None:
    venv = envs.full
    done = venv.run("-m", "aiotrace", "doctor")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "would fire      no: AIOTRACE_ENABLE is not set to a true value" in done.stdout

    done = venv.run("-m", "aiotrace", "doctor", "--json", env={"AIOTRACE_ENABLE": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    data = json.loads(done.stdout)
    assert data["startup_hook"]["would_fire"] is True
    assert data["startup_hook"]["fired_in_this_process"] is True
    assert "queue" in data["this_process"]["active_patches"]
    assert data["this_process"]["thread_propagation"]["ThreadPoolExecutor.submit"] == "aiotrace"


@pytest.mark.venv
def test_installed_with_target_and_enabled_fails(envs: Environments) -> None:
    done = envs.bare.run(
        "-m",
        "aiotrace",
        "doctor",
        env={"PYTHONPATH": str(envs.target), "AIOTRACE_ENABLE": "1"},
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "error: AIOTRACE_ENABLE is on but the start-up hook cannot run" in done.stdout


class _EntryPoint:
    name = "aiotrace"


@pytest.mark.parametrize(
    ("entry_points", "versions", "state"),
    [
        # aiotrace run from a checkout on PYTHONPATH: no installed metadata, no entry point.
        ([], {}, "not registered (this aiotrace has no opentelemetry_instrumentor entry point)"),
        ([_EntryPoint()], {"opentelemetry-instrumentation": None}, "not available: pip install"),
        ([_EntryPoint()], {}, "disabled by OTEL_PYTHON_DISABLED_INSTRUMENTATIONS"),
    ],
)
def test_instrumentor_states(monkeypatch, site: Path, entry_points, versions, state) -> None:
    real = doctor._version
    monkeypatch.setattr(doctor, "_version", lambda name: versions.get(name, real(name) or "9"))
    monkeypatch.setattr(doctor, "_entry_points", lambda group: entry_points)
    monkeypatch.setattr(doctor, "_importable", lambda module, report: True)
    environ = {"OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "flask, aiotrace"}
    assert doctor.collect(environ, [str(site)])["instrumentor"].startswith(state)


def test_an_instrumentation_that_cannot_be_imported_is_a_warning(monkeypatch, site: Path) -> None:
    monkeypatch.setattr(doctor, "_version", lambda name: "0.48b0")
    monkeypatch.setattr(doctor, "_entry_points", lambda group: [_EntryPoint()])
    monkeypatch.setitem(
        __import__("sys").modules, "opentelemetry.instrumentation.instrumentor", None
    )
    data = doctor.collect({}, [str(site)])
    assert data["instrumentor"].startswith("broken")
    assert any(
        "pip install -U opentelemetry-instrumentation" in p["message"]
        for p in data["problems"]
        if p["level"] == "warning"
    )


@pytest.mark.parametrize(
    ("api", "message"),
    [
        (None, "opentelemetry-api is not installed"),
        ("1.19.0", "opentelemetry-api 1.19.0 is too old"),
    ],
)
def test_missing_or_old_opentelemetry_api_fails(monkeypatch, site: Path, api, message) -> None:
    real = doctor._version
    monkeypatch.setattr(
        doctor, "_version", lambda name: api if name == "opentelemetry-api" else real(name)
    )
    data = doctor.collect({}, [str(site)])
    assert not data["ok"]
    assert any(m.startswith(message) for m in errors(data))


def test_release_numbers() -> None:
    assert doctor._release("1.20.0rc1") == (1, 20, 0)
    assert doctor._release("0.41b0") == (0, 41)
    assert doctor._release("1.27.dev0") == (1, 27)  # a development build is not "too old"


def test_without_the_sdk_spans_are_not_recorded_which_is_a_note(monkeypatch, site: Path) -> None:
    real = doctor._version
    monkeypatch.setattr(
        doctor, "_version", lambda name: None if name == "opentelemetry-sdk" else real(name)
    )
    data = doctor.collect({}, [str(site)])
    assert data["ok"]
    assert data["opentelemetry"]["opentelemetry-sdk"] is None
    (note,) = [p for p in data["problems"] if p["message"].startswith("opentelemetry-sdk ")]
    assert note["level"] == "note"
    assert "spans are not recorded, whatever aiotrace does" in note["message"]
    assert row(doctor.render(data), "opentelemetry-sdk") == "not installed"


def test_an_event_loop_that_cannot_be_made_is_a_warning(monkeypatch, site: Path) -> None:
    class Policy:  # e.g. a platform's loop that cannot start here
        def new_event_loop(self):
            raise OSError("no selector here")

    monkeypatch.setattr(asyncio, "get_event_loop_policy", Policy)
    data = doctor.collect({}, [str(site)])
    assert data["ok"]
    assert data["event_loop"]["loop"] is None
    assert data["event_loop"]["uvloop_in_use"] is False
    warnings = [p["message"] for p in data["problems"] if p["level"] == "warning"]
    assert "could not create an event loop: OSError: no selector here" in warnings
    assert row(doctor.render(data), "event loop") == "None (policy None)"


def test_the_hook_in_the_user_site_packages_is_found(monkeypatch, tmp_path: Path) -> None:
    """``pip install --user aiotrace``: the hook's files are in the user site-packages, which
    Python reads unless it is disabled (in a virtual environment, or by ``python -s``)."""
    import site as site_module

    system, user = tmp_path / "system", tmp_path / "user"
    system.mkdir()
    user.mkdir()
    (user / "aiotrace.pth").write_text(PTH)
    (user / "aiotrace.start").write_text("aiotrace_boot:start\n")
    monkeypatch.setattr(site_module, "getsitepackages", lambda: [str(system)])
    monkeypatch.setattr(site_module, "getusersitepackages", lambda: str(user))
    monkeypatch.setattr(site_module, "ENABLE_USER_SITE", True)
    monkeypatch.setattr(sys, "flags", Flags(sys.flags, no_user_site=0))
    data = doctor.collect({"AIOTRACE_ENABLE": "1"})
    assert data["ok"], data["problems"]
    assert data["startup_hook"]["would_fire"] is True
    assert data["startup_hook"]["files"]["aiotrace.pth"] == [str(user / "aiotrace.pth")]

    monkeypatch.setattr(sys, "flags", Flags(sys.flags, no_user_site=1))  # python -s
    data = doctor.collect({"AIOTRACE_ENABLE": "1"})
    assert data["startup_hook"]["files"]["aiotrace.pth"] == []
    assert not data["ok"]


def test_python_dash_capital_s_disables_the_hook(monkeypatch, site: Path) -> None:
    monkeypatch.setattr(sys, "flags", Flags(sys.flags, no_site=1))
    data = doctor.collect({"AIOTRACE_ENABLE": "1"}, [str(site)])
    assert data["startup_hook"]["why_not"] == ["Python runs with -S (site disabled)"]
    assert errors(data) == [
        "AIOTRACE_ENABLE is on but the start-up hook cannot run: Python runs with -S (site "
        "disabled) (installed with --target or on PYTHONPATH? install aiotrace into the "
        "environment, run under opentelemetry-instrument, or call aiotrace.install() in code)"
    ]


def test_a_process_the_hook_switched_on_says_so(monkeypatch, site: Path) -> None:
    import aiotrace_boot

    monkeypatch.setattr(aiotrace_boot, "_booted", [True])  # what start() leaves when it acted
    aiotrace.install()
    data = doctor.collect({"AIOTRACE_ENABLE": "1"}, [str(site)])
    assert data["ok"], data["problems"]
    assert data["startup_hook"]["fired_in_this_process"] is True
    assert data["this_process"]["switched_on_by"] == ["start-up hook"]
    text = doctor.render(data)
    assert row(text, "fired here") == "yes"
    assert row(text, "switched on by") == "start-up hook"


def test_a_process_the_instrumentor_switched_on_says_so(monkeypatch, site: Path) -> None:
    pytest.importorskip("opentelemetry.instrumentation.instrumentor")
    from aiotrace.instrumentation import AiotraceInstrumentor

    for name in list(__import__("os").environ):
        if name.startswith("AIOTRACE_"):
            monkeypatch.delenv(name)
    instrumentor = AiotraceInstrumentor()
    instrumentor.instrument()
    try:
        data = doctor.collect({}, [str(site)])
    finally:
        instrumentor.uninstrument()
    assert data["instrumentor"] == "switched aiotrace on in this process"
    assert data["this_process"]["switched_on_by"] == ["instrumentor"]
    assert "queue" in data["this_process"]["active_patches"]
    assert doctor.collect({}, [str(site)])["this_process"]["switched_on_by"] == []


def test_late_modules_not_imported_yet_are_listed(monkeypatch, site: Path) -> None:
    """A module whose patches wait for its import (the process pool here): the report says
    whether anything will patch it when it loads."""
    late = "concurrent.futures.process"
    monkeypatch.delitem(sys.modules, late, raising=False)  # as in a process that never used it
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))  # install()'s finder goes after

    data = doctor.collect({}, [str(site)])
    assert late in data["this_process"]["late_modules"]["not_imported_yet"]
    assert data["this_process"]["late_modules"]["patched_on_import_by"] is None
    waiting = row(doctor.render(data), "not imported yet")
    assert late in waiting.split(": ")[0].split(", ")
    assert waiting.endswith(": nothing patches them")

    aiotrace.install()
    data = doctor.collect({}, [str(site)])
    by = data["this_process"]["late_modules"]["patched_on_import_by"]
    assert by in ("install()", "start-up hook")  # the hook's finder, if pytest runs under it
    waiting = row(doctor.render(data), "not imported yet")
    assert late in waiting.split(": ")[0].split(", ")
    assert waiting.endswith(f": patched when imported ({by} import hook)")


def test_hook_that_ran_without_installing_fails(monkeypatch, site: Path) -> None:
    import aiotrace_boot

    monkeypatch.setattr(aiotrace_boot, "_seen", {"1"})
    data = doctor.collect({"AIOTRACE_ENABLE": "1"}, [str(site)])
    assert not data["ok"]
    assert errors(data) == [
        "the start-up hook ran in this process but aiotrace did not install "
        "(its reason is the 'aiotrace:' line on stderr)"
    ]


def test_a_queue_replaced_before_install_is_one_conflict(monkeypatch, site: Path) -> None:
    """install() records the foreign class it left alone; doctor's own look at asyncio's names
    finds the same one: the report names it once."""
    from aiotrace import registry

    class TheirQueue(asyncio.Queue):
        pass

    monkeypatch.setattr(asyncio, "Queue", TheirQueue)
    try:
        aiotrace.install()
        data = doctor.collect({}, [str(site)])
    finally:
        registry.conflicts.clear()
    assert [c for c in data["conflicts"] if c.startswith("asyncio.Queue ")] == [
        "asyncio.Queue is test_doctor.test_a_queue_replaced_before_install_is_one_conflict."
        "<locals>.TheirQueue, not asyncio's: aiotrace left it alone"
    ]


def test_conflicts_found_by_install_are_shown(monkeypatch, site: Path) -> None:
    from aiotrace import registry

    monkeypatch.setitem(registry.conflicts, "asyncio.locks.Lock", "other.Lock")
    data = doctor.collect({}, [str(site)])
    assert data["conflicts"] == [
        "asyncio.locks.Lock is other.Lock, not asyncio's: aiotrace left it alone"
    ]


def test_uvloop_left_unpatched_is_reported(monkeypatch, site: Path) -> None:
    pytest.importorskip("uvloop")  # imported by conftest, before any install()
    from aiotrace import registry

    aiotrace.install()
    data = doctor.collect({}, [str(site)])
    assert not any("uvloop was imported after" in p["message"] for p in data["problems"])

    real = registry.original
    monkeypatch.setattr(
        registry,
        "original",
        lambda owner, attr: None if owner == "uvloop:Loop" else real(owner, attr),
    )
    data = doctor.collect({}, [str(site)])
    (warning,) = [p for p in data["problems"] if "uvloop was imported after" in p["message"]]
    assert warning["level"] == "warning"
    assert "uvloop.Loop is without the server and asyncgen patches" in warning["message"]
