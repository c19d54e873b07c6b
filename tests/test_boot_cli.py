"""The ``aiotrace`` command, the configuration parser and ``registry.rebind`` in this process:
argument handling, the command ``run`` replaces itself with, the in-process fallback, every
spelling of a variable, and rebinding captured names.
(``test_boot_start`` and ``test_boot_faults`` run the same things as users do, in fresh
environments; these keep them covered where coverage is measured.)"""

from __future__ import annotations

import asyncio
import os
import sys
import types
from pathlib import Path
from typing import Any, List

import pytest
from conftest import Flags

import aiotrace
import aiotrace_boot
from aiotrace import cli, registry

pytestmark = pytest.mark.boot


def test_help_lists_every_variable(capsys: pytest.CaptureFixture) -> None:
    from aiotrace_boot._config import VARIABLES

    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in VARIABLES)
    assert cli.main([]) == 2
    assert cli.main(["run", "--help"]) == 0


def test_version(capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out == f"aiotrace {aiotrace.__version__}\n"


def test_python_dash_m_aiotrace_is_the_same_command() -> None:
    # Run as ``python -m aiotrace`` by test_boot_start; not with runpy here, which warns when
    # ``aiotrace.__main__`` is already imported, as it may be in this session.
    import aiotrace.__main__ as dunder_main

    assert dunder_main.main is cli.main


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["frobnicate"], "unknown command 'frobnicate'; accepted: run, demo, doctor"),
        (["run"], "give a file, -m module or -c code"),
        (["run", "-m"], "argument expected for -m"),
        (["run", "--fast", "app.py"], "unknown option '--fast'"),
    ],
)
def test_usage_errors(capsys: pytest.CaptureFixture, argv: List[str], message: str) -> None:
    with pytest.raises(SystemExit) as exit_:
        code = cli.main(argv)
        raise SystemExit(code)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_subcommand_module_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delitem(sys.modules, "aiotrace.demo", raising=False)
    monkeypatch.setattr(aiotrace, "__path__", [str(tmp_path)])  # a package without demo.py
    assert cli.main(["demo", "--x"]) == 2
    assert capsys.readouterr().err == (
        "aiotrace: the 'demo' command is not available in this installation "
        "(aiotrace.demo is missing)\n"
    )
    # An import error inside the module is the module's own: not hidden.
    (tmp_path / "demo.py").write_text("import aiotrace_no_such_module\n")
    with pytest.raises(ModuleNotFoundError, match="aiotrace_no_such_module"):
        cli.main(["demo"])
    monkeypatch.delitem(sys.modules, "aiotrace.demo", raising=False)


def test_subcommands_are_dispatched(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: List[Any] = []
    module = types.ModuleType("aiotrace.doctor")
    module.main = lambda argv: seen.append(argv) or 3  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "aiotrace.doctor", module)
    assert cli.main(["doctor", "--json"]) == 3
    assert seen == [["--json"]]


def test_run_replaces_the_process_with_the_target(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: List[Any] = []

    def execv(path: str, argv: List[str]) -> None:
        calls.append((path, argv, os.environ["AIOTRACE_ENABLE"]))
        raise SystemExit(0)

    monkeypatch.setattr(os, "execv", execv)
    monkeypatch.setattr(cli, "_hook_runs_in_child", lambda: True)
    monkeypatch.delenv("AIOTRACE_ENABLE", raising=False)
    for argv, target in (
        (["app.py", "a"], ["app.py", "a"]),
        (["-m", "pkg.mod", "-x"], ["-m", "pkg.mod", "-x"]),
        (["--", "-c", "pass"], ["-c", "pass"]),
    ):
        with pytest.raises(SystemExit):
            cli.main(["run", *argv])
        options = cli._interpreter_options()
        assert calls.pop() == (sys.executable, [sys.executable, *options, *target], "1")


def test_hook_runs_in_child_looks_for_the_pth_in_site_directories() -> None:
    import site

    installed = any(
        (Path(d) / "aiotrace.pth").is_file()
        for d in [*site.getsitepackages(), site.getusersitepackages()]
    )
    assert cli._hook_runs_in_child() is (installed and not sys.flags.no_site)


def test_hook_runs_in_child_for_a_user_install_unless_site_is_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``pip install --user aiotrace``: the child reads the user site's aiotrace.pth, unless it
    runs with ``-s`` (no user site) or ``-S`` (no site at all), which ``run`` passes on to it."""
    import site

    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "aiotrace.pth").write_text("import aiotrace_boot\n")
    monkeypatch.setattr(site, "getsitepackages", lambda: [str(tmp_path)])
    monkeypatch.setattr(site, "getusersitepackages", lambda: str(tmp_path / "user"))
    monkeypatch.setattr(site, "ENABLE_USER_SITE", True)
    monkeypatch.setattr(sys, "flags", Flags(sys.flags, no_site=0, no_user_site=0))
    assert cli._hook_runs_in_child() is True
    monkeypatch.setattr(sys, "flags", Flags(sys.flags, no_site=0, no_user_site=1))
    assert cli._hook_runs_in_child() is False
    (tmp_path / "aiotrace.pth").write_text("import aiotrace_boot\n")
    assert cli._hook_runs_in_child() is True
    monkeypatch.setattr(sys, "flags", Flags(sys.flags, no_site=1, no_user_site=0))
    assert cli._hook_runs_in_child() is False


def test_run_where_exec_is_not_real_passes_on_the_childs_exit_code(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Windows has no exec that keeps the process: ``run`` runs the target as a child with
    AIOTRACE_ENABLE=1 and returns its exit code (shown here on this platform's subprocess)."""
    monkeypatch.setattr(cli, "_hook_runs_in_child", lambda: True)
    monkeypatch.setattr(os, "name", "nt")
    monkeypatch.delenv("AIOTRACE_ENABLE", raising=False)
    code = "import os, sys; sys.exit(40 + int(os.environ['AIOTRACE_ENABLE']))"
    assert cli.main(["run", "-c", code]) == 41


@pytest.mark.parametrize("form", ["file", "-m", "-c"])
def test_run_in_process_fallback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, form: str
) -> None:
    started: List[bool] = []
    monkeypatch.setattr(aiotrace_boot, "start", lambda: started.append(True))
    monkeypatch.setattr(cli, "_hook_runs_in_child", lambda: False)
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setenv("AIOTRACE_ENABLE", "0")
    monkeypatch.chdir(tmp_path)
    code = "import sys\nprint(__name__, sys.argv[1:])\n"
    (tmp_path / "target_app.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    argv = {"file": ["target_app.py"], "-m": ["-m", "target_app"], "-c": ["-c", code]}[form]
    assert cli.main(["run", *argv, "x"]) == 0
    assert capsys.readouterr().out == "__main__ ['x']\n"
    assert started == [True]
    assert os.environ["AIOTRACE_ENABLE"] == "1"


@pytest.mark.parametrize(
    ("value", "enabled"),
    [
        ("1", True),
        ("true", True),
        ("YES", True),
        (" on ", True),
        ("0", False),
        ("false", False),
        ("No", False),
        ("off", False),
        ("", False),
    ],
)
def test_boolean_spellings(value: str, enabled: bool) -> None:
    from aiotrace_boot._config import from_environ

    warnings: List[str] = []
    config = from_environ(
        {"AIOTRACE_ENABLE": value, "AIOTRACE_PATCH_QUEUE": value}, warnings.append
    )
    assert warnings == []
    assert config.enabled is enabled
    if enabled:
        assert config.patch_queue is True


def test_configuration_maps_to_install_arguments() -> None:
    from aiotrace_boot._config import DEFAULT_WATCH_MODULES, from_environ

    warnings: List[str] = []
    config = from_environ(
        {
            "AIOTRACE_ENABLE": "1",
            "AIOTRACE_PATCH_QUEUE": "0",
            "AIOTRACE_PATCH_LOCKS": "off",
            "AIOTRACE_PATCH_THREADS": "yes",
            "AIOTRACE_SERVER_CONTEXT": "Inherit",
            "AIOTRACE_CLOSE_ASYNCGENS": "false",
            "AIOTRACE_DISABLED_PATCHES": " queue, executor,,queue ",
            "AIOTRACE_DEBUG": "1",
        },
        warnings.append,
    )
    assert warnings == []
    assert (config.patch_queue, config.patch_locks, config.patch_threads) == (False, False, True)
    assert (config.server_context, config.close_asyncgens) == ("inherit", False)
    assert config.disabled_patches == ("queue", "executor")
    assert config.watch_modules == DEFAULT_WATCH_MODULES and config.debug is True
    assert "enabled=True" not in repr(config) and "'enabled': True" in repr(config)
    empty = from_environ({"AIOTRACE_ENABLE": "1", "AIOTRACE_WATCH_MODULES": ""}, warnings.append)
    assert empty.watch_modules == () and warnings == []


def test_rebind_points_captured_names_at_replacements_and_uninstall_restores() -> None:
    original_queue, original_lock = asyncio.Queue, asyncio.Lock
    captured = types.ModuleType("captured")
    captured.Queue = asyncio.Queue  # type: ignore[attr-defined]
    captured.L = asyncio.Lock  # type: ignore[attr-defined]
    captured.other = object()  # type: ignore[attr-defined]
    assert registry.rebind(captured) == []  # nothing installed: nothing to rebind

    aiotrace.install()
    assert sorted(registry.rebind(captured)) == ["L", "Queue"]
    assert captured.Queue is asyncio.Queue and captured.L is asyncio.Lock
    assert registry.rebind(captured) == []  # idempotent

    replacement_by_someone_else = type("Theirs", (), {})
    captured.L = replacement_by_someone_else  # type: ignore[attr-defined]
    aiotrace.uninstall()
    assert captured.Queue is original_queue
    assert captured.L is replacement_by_someone_else  # not ours any more: left alone
    assert asyncio.Lock is original_lock
