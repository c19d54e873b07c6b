"""The bootstrapper as users meet it (issue 3): ``AIOTRACE_ENABLE=1 python app.py`` and
``python -m aiotrace run`` in fresh virtual environments with a wheel built from the checkout,
apps run in subprocesses, nothing of ``site`` or the import system mocked."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from bootenv import EXECUTOR_NESTING, Environments, Venv, write

pytestmark = pytest.mark.boot

# Prints, as JSON, what the bootstrapper changed: which modules were imported before the app's
# first line, the module of the metaclass of the class ``from asyncio import Queue`` gets
# (``aiotrace.aliases`` for aiotrace's, which carries asyncio's own ``__module__``), whether a
# span opened in a run_in_executor job nests under its caller, and the app's argv and __name__.
APP = (
    """\
import sys
watched = ("asyncio", "opentelemetry", "aiotrace", "aiotrace_boot")
early = sorted(m for m in sys.modules if m.split(".")[0] in watched)
from asyncio import Queue
import asyncio, json
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

trace.set_tracer_provider(TracerProvider())
"""
    + EXECUTOR_NESTING
    + """\
print(json.dumps({"early": early, "queue": type(Queue).__module__, "nested": nested,
                  "argv": sys.argv, "name": __name__}))
sys.exit(int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else 0)
"""
)

ENABLED = {"AIOTRACE_ENABLE": "1"}


@pytest.fixture(scope="session")
def venv(envs: Environments) -> Venv:
    return envs.full


@pytest.fixture
def app(tmp_path: Path) -> Path:
    write(tmp_path, {"app.py": APP})
    return tmp_path


def result(done) -> dict:
    assert done.stdout, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_wheel_ships_both_doors_at_the_root_of_site_packages(venv: Venv) -> None:
    pth = (venv.site_packages / "aiotrace.pth").read_text()
    assert [line for line in pth.splitlines() if not line.startswith("#")] == [
        'import os; os.environ.get("AIOTRACE_ENABLE") and __import__("aiotrace_boot").start()'
    ]
    assert (venv.site_packages / "aiotrace.start").read_text().split() == ["aiotrace_boot:start"]


@pytest.mark.parametrize("install", ["editable", "pip_source"])
def test_editable_and_source_installs_work_too(envs: Environments, app: Path, install: str) -> None:
    venv = getattr(envs, install)
    assert (venv.site_packages / "aiotrace.pth").is_file()
    assert (venv.site_packages / "aiotrace.start").is_file()
    code = "import asyncio; print(type(asyncio.Queue).__module__)"
    assert venv.run("-c", code, env=ENABLED).stdout.split() == ["aiotrace.aliases"]
    assert venv.run("-c", code).stdout.split() == ["builtins"]


# Python 3.15's site calls aiotrace.start's entry point at every start (PEP 829), so
# aiotrace_boot is imported with the variable unset too; before 3.15 the .pth line reads the
# variable without importing anything.
UNSET_EARLY = ["aiotrace_boot"] if sys.version_info >= (3, 15) else []


def test_unset_changes_nothing_and_imports_nothing(venv: Venv, app: Path) -> None:
    """Unset: the app runs as without aiotrace; before its first line nothing of asyncio,
    OpenTelemetry or aiotrace is imported (3.15+: only aiotrace_boot, by the .start door)."""
    done = venv.run("app.py", cwd=app)
    assert done.stderr == ""
    assert result(done) == {
        "early": UNSET_EARLY,
        "queue": "builtins",
        "nested": False,  # stock asyncio loses the span in run_in_executor
        "argv": ["app.py"],
        "name": "__main__",
    }


def test_the_start_entry_point_imports_nothing_else(venv: Venv) -> None:
    """What aiotrace.start's entry point costs with the variable unset, in modules: the
    ``aiotrace_boot`` package itself (measured in time by scripts/bench_startup.py)."""
    code = (
        "import os, sys\n"  # loaded by every normal start; -S leaves them out
        f"sys.path.append({str(venv.site_packages)!r})\n"
        "before = set(sys.modules)\n"
        "import aiotrace_boot; aiotrace_boot.start()\n"
        "print(sorted(set(sys.modules) - before))\n"
    )
    done = venv.run("-S", "-c", code)
    assert done.stdout.strip() == "['aiotrace_boot']", done.stderr


def test_pytest_sees_no_already_imported_module(envs: Environments, tmp_path: Path) -> None:
    """pytest marks every module of a plugin's distribution for assertion rewriting and warns
    about those already imported. From 3.15 site imports aiotrace_boot at every start (the
    .start door), so while aiotrace's distribution declared a pytest11 entry point, every pytest
    run in an environment with aiotrace said "Module already imported so cannot be rewritten;
    aiotrace_boot". It declares none now (docs/testing-helper.md)."""
    venv = envs.with_pytest
    write(tmp_path, {"test_app.py": "def test_app():\n    assert True\n"})
    done = venv.run(
        "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error", "test_app.py", cwd=tmp_path
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "cannot be rewritten" not in done.stdout + done.stderr


LAZY = {
    "-X lazy_imports=all": (["-X", "lazy_imports=all"], {}),
    "PYTHON_LAZY_IMPORTS=all": ([], {"PYTHON_LAZY_IMPORTS": "all"}),
}


@pytest.mark.skipif(sys.version_info < (3, 15), reason="PEP 810 lazy imports are 3.15+")
@pytest.mark.parametrize("lazy", sorted(LAZY))
def test_lazy_imports_still_install_before_the_app_uses_asyncio(
    venv: Venv, app: Path, lazy: str
) -> None:
    """PEP 810 (3.15.2 accepts ``all`` and ``normal``): with every import lazy, asyncio loads
    when the app first uses a name from it, and the hook installs right then, so
    ``from asyncio import Queue`` still gets aiotrace's class."""
    options, env = LAZY[lazy]
    assert venv.run(*options, "-c", "import sys; print(sys.get_lazy_imports())", env=env).stdout
    done = venv.run(*options, "app.py", env={**ENABLED, **env}, cwd=app)
    assert done.stderr == ""
    out = result(done)
    assert [m for m in out["early"] if not m.startswith("aiotrace_boot")] == []
    assert out["queue"] == "aiotrace.aliases"
    assert out["nested"] is True


def test_enabled_is_lazy_and_propagates(venv: Venv, app: Path) -> None:
    done = venv.run("app.py", env=ENABLED, cwd=app)
    assert done.stderr == ""
    out = result(done)
    # Only the bootstrapper is there before the app's first line: asyncio, OpenTelemetry and
    # aiotrace are imported when the app imports asyncio.
    assert [m for m in out["early"] if not m.startswith("aiotrace_boot")] == []
    assert out["queue"] == "aiotrace.aliases"
    assert out["nested"] is True


def test_false_value_switches_it_off(venv: Venv, app: Path) -> None:
    # Every spelling is checked in-process (test_boot_cli); this is the one a child would get.
    done = venv.run("app.py", env={"AIOTRACE_ENABLE": "0"}, cwd=app)
    assert done.stderr == ""
    assert result(done)["queue"] == "builtins"


def test_bad_values_warn_once_each_and_the_app_runs(venv: Venv, app: Path) -> None:
    env = {
        "AIOTRACE_ENABLE": "1",
        "AIOTRACE_PATCH_QUEUE": "perhaps",
        "AIOTRACE_DEBUG": "loud",
        "AIOTRACE_SERVER_CONTEXT": "dirty",
        "AIOTRACE_DISABLED_PATCHES": "lock,nonsense",
        "AIOTRACE_WATCH_MODULES": "ok.module,not a module",
    }
    done = venv.run("app.py", env=env, cwd=app)
    assert done.returncode == 0
    assert result(done)["queue"] == "aiotrace.aliases"  # the bad value fell back to the default
    lines = done.stderr.splitlines()
    assert len(lines) == 5, done.stderr
    expected = [
        ("AIOTRACE_PATCH_QUEUE='perhaps'", "accepted: 1, true, yes, on, 0, false, no, off"),
        ("AIOTRACE_DEBUG='loud'", "accepted: 1, true"),
        ("AIOTRACE_SERVER_CONTEXT='dirty'", "accepted: clean, inherit"),
        ("AIOTRACE_DISABLED_PATCHES='lock,nonsense'", "'nonsense'; accepted: create_task, queue"),
        ("AIOTRACE_WATCH_MODULES=", "'not a module'"),
    ]
    for variable, accepted in expected:
        (line,) = [line for line in lines if variable in line]
        assert line.startswith("aiotrace: ") and accepted in line, line


def test_bad_enable_value_warns_and_stays_off(venv: Venv, app: Path) -> None:
    done = venv.run("app.py", env={"AIOTRACE_ENABLE": "ture"}, cwd=app)
    assert result(done)["queue"] == "builtins"
    assert done.stderr.splitlines() == [
        "aiotrace: AIOTRACE_ENABLE='ture' is not a boolean; accepted: 1, true, yes, on, 0, "
        "false, no, off (any case); using false"
    ]


def test_debug_says_one_line_per_patch_and_honours_the_switches(venv: Venv, app: Path) -> None:
    env = {
        **ENABLED,
        "AIOTRACE_DEBUG": "1",
        "AIOTRACE_PATCH_LOCKS": "0",
        "AIOTRACE_DISABLED_PATCHES": "queue",
    }
    done = venv.run("app.py", env=env, cwd=app)
    out = result(done)
    assert out["queue"] == "builtins" and out["nested"] is True
    lines = done.stderr.splitlines()
    assert "aiotrace: patched concurrent.futures.thread.ThreadPoolExecutor.submit" in lines
    assert "aiotrace: patched asyncio.create_task" in lines
    assert all(line.startswith("aiotrace: patched ") for line in lines), lines
    assert "aiotrace: patched asyncio.Queue" not in lines
    assert "aiotrace: patched asyncio.Lock" not in lines
    assert len(lines) == len(set(lines))


def test_run_keeps_argv_name_and_exit_code(venv: Venv, app: Path) -> None:
    done = venv.run("-m", "aiotrace", "run", "app.py", "7", "--flag", cwd=app)
    assert done.returncode == 7
    assert done.stderr == ""
    out = result(done)
    assert out["argv"] == ["app.py", "7", "--flag"]
    assert out["name"] == "__main__"
    assert out["queue"] == "aiotrace.aliases" and out["nested"] is True


def test_console_script_and_module_and_code_forms(venv: Venv, app: Path) -> None:
    write(app, {"pkg/__init__.py": "", "pkg/tool.py": APP})
    script = str(venv.bin / "aiotrace")
    by_script = venv.run("run", "app.py", "x", cwd=app, executable=script)
    assert result(by_script)["argv"] == ["app.py", "x"]
    assert result(by_script)["queue"] == "aiotrace.aliases"

    as_module = venv.run("-m", "aiotrace", "run", "-m", "pkg.tool", "a", "b", cwd=app)
    direct = venv.run("-m", "pkg.tool", "a", "b", cwd=app, env=ENABLED)
    assert result(as_module) == result(direct)
    assert result(as_module)["argv"] == [str(app / "pkg" / "tool.py"), "a", "b"]

    as_code = venv.run("-m", "aiotrace", "run", "-c", APP, "c", cwd=app)
    assert result(as_code)["argv"] == ["-c", "c"]
    assert result(as_code)["queue"] == "aiotrace.aliases"


def test_run_without_a_site_packages_install_runs_the_target_in_process(
    envs: Environments, app: Path
) -> None:
    # aiotrace only on PYTHONPATH: a new interpreter would not read its .pth, so ``run`` runs
    # the target itself (documented fallback: same argv, exit code, enabled).
    env = {"PYTHONPATH": str(envs.target)}
    done = envs.bare.run("-m", "aiotrace", "run", "app.py", "3", cwd=app, env=env)
    assert done.returncode == 3, done.stderr
    out = result(done)
    assert out["argv"] == ["app.py", "3"] and out["name"] == "__main__"
    assert out["queue"] == "aiotrace.aliases" and out["nested"] is True
    plain = envs.bare.run("app.py", cwd=app, env={**env, **ENABLED})
    assert result(plain)["queue"] == "builtins"  # the .pth is not read from PYTHONPATH


def test_subprocess_inherits_from_run(venv: Venv, tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "parent.py": (
                "import subprocess, sys\n"
                "code = 'import asyncio; print(type(asyncio.Queue).__module__)'\n"
                "subprocess.run([sys.executable, '-c', code], check=True)\n"
            )
        },
    )
    done = venv.run("-m", "aiotrace", "run", "parent.py", cwd=tmp_path)
    assert done.stdout.split() == ["aiotrace.aliases"], done.stderr


def test_help_explains_the_variables(venv: Venv) -> None:
    done = venv.run("-m", "aiotrace", "--help")
    assert done.returncode == 0
    for name in ("AIOTRACE_ENABLE", "AIOTRACE_DISABLED_PATCHES", "AIOTRACE_WATCH_MODULES", "run"):
        assert name in done.stdout
    unknown = venv.run("-m", "aiotrace", "frobnicate")
    assert unknown.returncode == 2
    assert "unknown command 'frobnicate'; accepted: run, demo, doctor" in unknown.stderr


@pytest.mark.parametrize("command", ["demo", "doctor"])
def test_demo_and_doctor_are_dispatched_or_said_missing(venv: Venv, command: str) -> None:
    shipped = (venv.site_packages / "aiotrace" / f"{command}.py").is_file()
    done = venv.run("-m", "aiotrace", command, "--help")
    if shipped:
        assert "Traceback" not in done.stderr
    else:
        assert done.returncode == 2
        assert done.stderr.strip() == (
            f"aiotrace: the {command!r} command is not available in this installation "
            f"(aiotrace.{command} is missing)"
        )


def test_a_late_start_call_installs_at_once_and_rebinds_captured_names(venv: Venv) -> None:
    # asyncio imported before the bootstrapper (as by an earlier .pth): install at once, and
    # names that modules captured from asyncio are rebound (and put back by uninstall()).
    code = (
        "import asyncio, os, sys, types\n"
        "m = types.ModuleType('captured'); m.Queue = asyncio.Queue; sys.modules['captured'] = m\n"
        "os.environ['AIOTRACE_ENABLE'] = '1'\n"
        "import aiotrace_boot; aiotrace_boot.start()\n"
        "print(type(asyncio.Queue).__module__, type(m.Queue).__module__)\n"
        "import aiotrace; aiotrace.uninstall()\n"
        "print(type(asyncio.Queue).__module__, type(m.Queue).__module__)\n"
    )
    done = venv.run("-c", code)
    assert done.stdout.splitlines() == [
        "aiotrace.aliases aiotrace.aliases",
        "builtins builtins",
    ], done.stderr


def test_importing_aiotrace_first_still_installs(venv: Venv) -> None:
    # aiotrace itself imports asyncio; install waits until the package has finished loading.
    code = (
        "import aiotrace, asyncio\n"
        "print(type(asyncio.Queue).__module__, sorted(aiotrace.installed()))"
    )
    done = venv.run("-c", code, env=ENABLED)
    assert done.stderr == ""
    assert done.stdout.startswith("aiotrace.aliases "), done.stdout


def test_runs_on_the_python_that_runs_pytest(venv: Venv) -> None:
    done = venv.run("-c", "import sys; print(sys.version_info[:2])")
    assert done.stdout.strip() == str(sys.version_info[:2])


def test_late_patch_modules_are_the_registrys_if_imported_owners() -> None:
    from aiotrace import registry
    from aiotrace_boot._hook import LATE_PATCH_MODULES

    owners = {p.owner.partition(":")[0] for p in registry.PATCHES if p.if_imported}
    assert set(LATE_PATCH_MODULES) == owners


@pytest.mark.parametrize("order", ["uvloop, asyncio", "asyncio, uvloop"])
def test_uvloop_imported_before_or_after_asyncio_gets_its_patches(venv: Venv, order: str) -> None:
    # uvloop imports asyncio while it is half imported itself: its patches wait until it is
    # complete, and neither order may switch aiotrace off.
    code = (
        f"import {order}\n"
        "from concurrent.futures import ProcessPoolExecutor\n"
        "from aiotrace import registry\n"
        "print(registry.original('uvloop:Loop', 'create_server') is not None,"
        " registry.original('concurrent.futures.process:ProcessPoolExecutor', 'submit')"
        " is not None)\n"
    )
    done = venv.run("-c", code, env=ENABLED)
    assert done.stderr == ""
    assert done.stdout.split() == ["True", "True"]
