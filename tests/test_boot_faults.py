"""Start-up that survives every fault (issue 9): each "What happens when…" row of
docs/switching-on.md, run in fresh virtual environments as subprocesses; plus the PEP 829
``.start`` door and ``aiotrace run`` behaving like a direct run (exit codes, messages,
tracebacks, signals, ``__main__`` under multiprocessing)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import zipapp
from pathlib import Path
from typing import List

import pytest
from bootenv import TIMEOUT, Environments, Venv, clean_env, write

pytestmark = pytest.mark.boot

ENABLED = {"AIOTRACE_ENABLE": "1"}
QUEUE = "import asyncio; print(type(asyncio.Queue).__module__)"
# The alias classes carry asyncio's own __module__ (tests/test_introspection.py); their
# metaclass is aiotrace's.
ON, OFF = "aiotrace.aliases", "builtins"

ASYNCIO_ONLY_APP = """\
import asyncio

async def main():
    queue = asyncio.Queue()
    await queue.put("normal output")
    print(await queue.get())

asyncio.run(main())
"""


@pytest.fixture(scope="session")
def venv(envs: Environments) -> Venv:
    return envs.full


def run_both(venv: Venv, *args: str, cwd: Path, env: dict = {}) -> tuple:  # noqa: B006
    """(unset, enabled) results of the same command."""
    return venv.run(*args, cwd=cwd, env=env), venv.run(*args, cwd=cwd, env={**env, **ENABLED})


def outcome(done: subprocess.CompletedProcess) -> tuple:
    return done.returncode, done.stdout, done.stderr


# -- OpenTelemetry missing or broken --------------------------------------------------------


def test_opentelemetry_missing_app_runs_with_one_line(envs: Environments, tmp_path: Path) -> None:
    write(tmp_path, {"app.py": ASYNCIO_ONLY_APP})
    done = envs.no_otel.run("app.py", cwd=tmp_path, env=ENABLED)
    assert (done.returncode, done.stdout) == (0, "normal output\n")
    (line,) = done.stderr.splitlines()
    assert line.startswith("aiotrace: not enabled: ") and "opentelemetry" in line, line


BROKEN_OTEL = "raise RuntimeError('this opentelemetry is broken')\n"


def test_opentelemetry_broken_app_runs_with_one_line(venv: Venv, tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "app.py": ASYNCIO_ONLY_APP,
            "broken/opentelemetry/__init__.py": BROKEN_OTEL,
        },
    )
    env = {**ENABLED, "PYTHONPATH": str(tmp_path / "broken")}
    done = venv.run("app.py", cwd=tmp_path, env=env)
    assert (done.returncode, done.stdout) == (0, "normal output\n")
    assert done.stderr.splitlines() == [
        "aiotrace: not enabled: RuntimeError: this opentelemetry is broken"
    ]


# -- an application's own failures are untouched --------------------------------------------

BROKEN_LIB = (
    "import asyncio\n\ndef setup():\n    raise ValueError('brokenlib cannot start')\n\nsetup()\n"
)


def test_failing_library_import_fails_exactly_as_without_aiotrace(
    venv: Venv, tmp_path: Path
) -> None:
    write(tmp_path, {"brokenlib.py": BROKEN_LIB, "app.py": "print('before')\nimport brokenlib\n"})
    unset, enabled = run_both(venv, "app.py", cwd=tmp_path)
    assert unset.returncode == 1 and "ValueError: brokenlib cannot start" in unset.stderr
    assert outcome(enabled) == outcome(unset)
    assert outcome(venv.run("-m", "aiotrace", "run", "app.py", cwd=tmp_path)) == outcome(unset)


def test_failing_watched_library_fails_exactly_as_without_aiotrace(
    venv: Venv, tmp_path: Path
) -> None:
    # A watched library's import runs through aiotrace's wrapper of its loader, which CPython
    # hides from the traceback like its own import machinery.
    write(tmp_path, {"brokenlib.py": BROKEN_LIB, "app.py": "import brokenlib\n"})
    env = {"AIOTRACE_WATCH_MODULES": "brokenlib"}
    unset, enabled = run_both(venv, "app.py", cwd=tmp_path, env=env)
    assert unset.returncode == 1 and "ValueError: brokenlib cannot start" in unset.stderr
    assert outcome(enabled) == outcome(unset)


FOREIGN_LIB = """\
import asyncio

class TheirQueue(asyncio.Queue):
    pass

asyncio.Queue = TheirQueue
"""


def test_watched_library_replacing_queue_is_reported_once_and_left_alone(
    venv: Venv, tmp_path: Path
) -> None:
    write(
        tmp_path,
        {
            "foreignlib.py": FOREIGN_LIB,
            "app.py": "import foreignlib, asyncio\nprint(asyncio.Queue.__qualname__)\n",
        },
    )
    env = {**ENABLED, "AIOTRACE_WATCH_MODULES": "foreignlib"}
    quiet = venv.run("app.py", cwd=tmp_path, env=env)
    assert outcome(quiet) == (0, "TheirQueue\n", "")
    debug = venv.run("app.py", cwd=tmp_path, env={**env, "AIOTRACE_DEBUG": "1"})
    assert debug.stdout == "TheirQueue\n"
    lines = [line for line in debug.stderr.splitlines() if "patched" not in line]
    assert lines == [
        "aiotrace: foreignlib replaced asyncio.Queue with foreignlib.TheirQueue: left alone"
    ]


def test_queue_replaced_before_install_is_reported_and_left_alone(venv: Venv) -> None:
    # aiotrace's classes are imported first: they are built on whatever ``asyncio.Queue`` is
    # when they are imported (``aiotrace.aliases`` and ``aiotrace.queues``).
    code = (
        "import aiotrace.aliases, asyncio, os\n"
        "class Mine(asyncio.Queue): pass\n"
        "asyncio.Queue = Mine\n"
        "os.environ.update(AIOTRACE_ENABLE='1', AIOTRACE_DEBUG='1')\n"
        "import aiotrace_boot; aiotrace_boot.start()\n"
        "print(asyncio.Queue.__qualname__, type(asyncio.Lock).__module__)\n"
    )
    done = venv.run("-c", code)
    assert done.stdout == "Mine aiotrace.aliases\n"
    lines = [line for line in done.stderr.splitlines() if "patched" not in line]
    assert lines == ["aiotrace: asyncio.Queue is __main__.Mine, not asyncio's own: left alone"]


# -- every way of starting Python --------------------------------------------------------------


def _package(directory: Path) -> List[str]:
    write(directory, {"pkg/__init__.py": "", "pkg/__main__.py": QUEUE})
    return ["-m", "pkg"]


def _zipapp(directory: Path) -> Path:
    source = write(directory / "zipsrc", {"__main__.py": QUEUE})
    target = directory / "app.pyz"
    zipapp.create_archive(source, target)
    return target


STARTS = {
    "-c": lambda d: ["-c", QUEUE],
    "file": lambda d: [str(write(d, {"app.py": QUEUE}) / "app.py")],
    "-m pkg": _package,
    "-I": lambda d: ["-I", "-c", QUEUE],
    "-E": lambda d: ["-E", "-c", QUEUE],
    "-s": lambda d: ["-s", "-c", QUEUE],
    "PYTHONSAFEPATH": lambda d: ["-c", QUEUE],
    "zipapp": lambda d: [str(_zipapp(d))],
}


@pytest.mark.parametrize("start", sorted(STARTS))
def test_every_way_of_starting_python(venv: Venv, tmp_path: Path, start: str) -> None:
    args = STARTS[start](tmp_path)
    env = {"PYTHONSAFEPATH": "1"} if start == "PYTHONSAFEPATH" else {}
    unset, enabled = run_both(venv, *args, cwd=tmp_path, env=env)
    assert outcome(unset) == (0, f"{OFF}\n", "")
    assert outcome(enabled) == (0, f"{ON}\n", "")


def _read_only_runner(site_packages: Path, home: Path) -> List[str]:
    """A command prefix that runs its command with ``site_packages`` and ``home`` read-only."""
    if os.geteuid() != 0:
        return []  # permissions are enough (see the caller)
    unshare = shutil.which("unshare")
    probe = subprocess.run(
        [unshare or "unshare", "-r", "-m", "true"], capture_output=True, check=False
    )
    if not unshare or probe.returncode:
        pytest.skip("running as root without user namespaces: cannot make a directory read-only")
    script = 'mount --bind -o ro "$1" "$1" && mount --bind -o ro "$2" "$2" && shift 2 && exec "$@"'
    return [unshare, "-r", "-m", "sh", "-c", script, "sh", str(site_packages), str(home)]


def test_read_only_site_packages_and_unwritable_home(envs: Environments, tmp_path: Path) -> None:
    venv = envs.full
    home = tmp_path / "home"
    home.mkdir()
    write(tmp_path, {"app.py": QUEUE})
    prefix = _read_only_runner(venv.site_packages, home)
    if not prefix:
        for path in (venv.site_packages, home):
            path.chmod(0o555)
    try:
        for directory in (venv.site_packages, home):
            check = ["-c", f"open({str(directory / 'probe')!r}, 'w')"]
            cannot = subprocess.run(
                [*prefix, venv.python, *check], check=False, env=clean_env(), capture_output=True
            )
            assert cannot.returncode != 0, f"{directory} should be read-only here"
        for env, expected in (({}, OFF), (ENABLED, ON)):
            done = subprocess.run(
                [*prefix, venv.python, "app.py"],
                check=False,
                cwd=str(tmp_path),
                env=clean_env({**env, "HOME": str(home)}),
                capture_output=True,
                text=True,
                timeout=TIMEOUT,
            )
            assert outcome(done) == (0, f"{expected}\n", "")
    finally:
        for path in (venv.site_packages, home):
            path.chmod(0o755)


# -- children ----------------------------------------------------------------------------------

MP_APP = """\
import asyncio
import multiprocessing
import sys


class Payload:  # defined in the script: spawn pickles it by reference to __main__
    def __init__(self, n):
        self.n = n


def child(payload, results):
    import asyncio
    results.put((payload.n, type(asyncio.Queue).__module__))


if __name__ == "__main__":
    context = multiprocessing.get_context(sys.argv[1])
    results = context.Queue()
    process = context.Process(target=child, args=(Payload(5), results))
    process.start()
    n, module = results.get()
    process.join()
    print(type(asyncio.Queue).__module__, n, module, process.exitcode)
"""


@pytest.mark.parametrize(
    ("method", "launch"),
    [("spawn", "direct"), ("fork", "direct"), ("forkserver", "direct"), ("spawn", "run")],
)
def test_multiprocessing_children_are_enabled(
    venv: Venv, tmp_path: Path, method: str, launch: str
) -> None:
    # With ``run``, spawn must pickle Payload by reference to the script's __main__.
    write(tmp_path, {"mp_app.py": MP_APP})
    if launch == "run":
        done = venv.run("-m", "aiotrace", "run", "mp_app.py", method, cwd=tmp_path)
    else:
        done = venv.run("mp_app.py", method, cwd=tmp_path, env=ENABLED)
    assert outcome(done) == (0, f"{ON} 5 {ON} 0\n", "")


def test_subprocess_children_inherit_and_can_opt_out(venv: Venv, tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "parent.py": (
                "import os, subprocess, sys\n"
                f"code = {QUEUE!r}\n"
                "subprocess.run([sys.executable, '-c', code], check=True)\n"
                "off = dict(os.environ, AIOTRACE_ENABLE='0')\n"
                "subprocess.run([sys.executable, '-c', code], check=True, env=off)\n"
            )
        },
    )
    done = venv.run("parent.py", cwd=tmp_path, env=ENABLED)
    assert outcome(done) == (0, f"{ON}\n{OFF}\n", "")


# -- once, lazily, through either door ---------------------------------------------------------

COUNT_HOOKS = "sum(type(f).__module__ == 'aiotrace_boot._hook' for f in sys.meta_path)"


def test_pth_reached_more_than_once_acts_once(venv: Venv) -> None:
    pth = venv.site_packages / "aiotrace.pth"
    # Some environments process site-packages twice at start (this machine's do; see
    # ``python -v -c pass``); run the .pth's line twice more the way ``site`` does, to be sure.
    code = (
        "import sys\n"
        f"line = open({str(pth)!r}).read().splitlines()[-1]\n"
        "exec(line); exec(line)\n"
        f"print({COUNT_HOOKS})\n"
        f"{QUEUE}\n"
    )
    env = {**ENABLED, "AIOTRACE_DEBUG": "loud"}  # a bad value: its warning must appear once
    done = venv.run("-c", code, env=env)
    assert done.stdout.split() == ["1", ON]
    assert len(done.stderr.splitlines()) == 1, done.stderr
    verbose = venv.run("-v", "-c", "pass", env=env)
    assert verbose.stderr.count("AIOTRACE_DEBUG='loud'") == 1


def test_importtime_shows_no_aiotrace_when_unset(venv: Venv) -> None:
    # 3.15+: site imports aiotrace_boot for aiotrace.start even when unset (PEP 829), through
    # importlib.import_module, which -X importtime does not list on 3.15.2 (checked here); the
    # modules that aiotrace_boot imports itself are listed.
    unset = venv.run("-X", "importtime", "-c", "pass")
    assert unset.returncode == 0
    assert "aiotrace" not in unset.stderr
    enabled = venv.run("-X", "importtime", "-c", "pass", env=ENABLED)
    imported = [line.rsplit("|", 1)[-1].strip() for line in enabled.stderr.splitlines()]
    assert ("aiotrace_boot._hook" if sys.version_info >= (3, 15) else "aiotrace_boot") in imported
    for heavy in ("asyncio", "opentelemetry", "aiotrace", "typing"):
        assert heavy not in imported, enabled.stderr


def test_start_door_as_python_3_15_site_uses_it(venv: Venv) -> None:
    # Python 3.15's site reads NAME.start beside NAME.pth, imports the named callable and
    # calls it with no arguments (PEP 829). Do the same by hand, with site switched off (-S).
    start = venv.site_packages / "aiotrace.start"
    code = (
        "import importlib, sys\n"
        f"sys.path.append({str(venv.site_packages)!r})\n"
        f"entry = open({str(start)!r}).read().split()[0]\n"
        "module, _, name = entry.partition(':')\n"
        "hook = getattr(importlib.import_module(module), name)\n"
        "hook(); hook()\n"
        "print([m for m in sys.modules if m.split('.')[0] in "
        "('asyncio', 'opentelemetry', 'aiotrace')])\n"
        f"print({COUNT_HOOKS})\n"
        f"{QUEUE}\n"
    )
    assert venv.run("-S", "-c", code).stdout.split() == ["[]", "0", OFF]
    enabled = venv.run("-S", "-c", code, env=ENABLED)
    assert enabled.stdout.split() == ["[]", "1", ON], enabled.stderr


@pytest.mark.skipif(sys.version_info < (3, 15), reason="PEP 829 .start files are read from 3.15")
def test_on_3_15_site_starts_the_hook_from_the_start_file_only(venv: Venv) -> None:
    """3.15.2's site skips the import line of aiotrace.pth because aiotrace.start sits beside
    it, and calls the entry point instead (its own trace lines under -v, 3.15.2's wording)."""
    done = venv.run("-v", "-c", QUEUE, env=ENABLED)
    assert done.stdout.split() == [ON]
    pth, start = venv.site_packages / "aiotrace.pth", venv.site_packages / "aiotrace.start"
    assert f"import lines in {pth} are suppressed due to matching {start} file." in done.stderr
    assert done.stderr.count("Executing entry point: aiotrace_boot:start") == 1


BROKEN_STARTS = {
    "unknown callable": "aiotrace_boot:no_such_function\n",
    "bad syntax": "aiotrace_boot.start()\n",
    "module missing": "aiotrace_boot_removed:start\n",
    "not text": "\udcff\udcfe",
}


@pytest.mark.skipif(sys.version_info < (3, 15), reason="PEP 829 .start files are read from 3.15")
@pytest.mark.parametrize("broken", sorted(BROKEN_STARTS))
def test_a_broken_start_file_never_stops_start_up(
    envs: Environments, tmp_path: Path, broken: str
) -> None:
    """A damaged aiotrace.start (edited by hand, or left by a half-done uninstall) costs a
    message from site (3.15.2: an error and its traceback on stderr), never the application:
    it runs, with aiotrace off. A file site cannot decode counts as absent, so the .pth's
    line runs instead (this environment lacks OpenTelemetry: aiotrace says so, stays off)."""
    venv = envs.broken_start
    start = venv.site_packages / "aiotrace.start"
    # A new file, never a write into the installed one: uv hard-links installed files to its
    # cache, so writing through the link would damage every environment made from that wheel.
    start.unlink()
    start.write_bytes(BROKEN_STARTS[broken].encode("utf-8", "surrogateescape"))
    write(tmp_path, {"app.py": ASYNCIO_ONLY_APP})
    for env in ({}, ENABLED):
        done = venv.run("app.py", cwd=tmp_path, env=env)
        assert (done.returncode, done.stdout) == (0, "normal output\n"), done.stderr
        assert venv.run("-c", QUEUE, env=env).stdout.split() == [OFF]
        pth_ran = "aiotrace: not enabled: " in done.stderr
        assert pth_ran == (broken == "not text" and env == ENABLED), done.stderr


# -- `aiotrace run` is a direct run -------------------------------------------------------------

FAILURES = {
    "exit-message": "import sys\nsys.exit('fatal: bad configuration')\n",
    "exit-code": "raise SystemExit(42)\n",
    "exception": "def handler():\n    raise RuntimeError('boom')\n\nprint('partial')\nhandler()\n",
}


@pytest.mark.parametrize("failure", sorted(FAILURES))
def test_run_fails_exactly_like_a_direct_run(venv: Venv, tmp_path: Path, failure: str) -> None:
    app = FAILURES[failure]
    write(tmp_path, {"app.py": app, "pkg/__init__.py": "", "pkg/app.py": app})
    direct = venv.run("app.py", cwd=tmp_path, env=ENABLED)
    assert direct.returncode != 0
    assert outcome(venv.run("app.py", cwd=tmp_path)) == outcome(direct)
    assert outcome(venv.run("-m", "aiotrace", "run", "app.py", cwd=tmp_path)) == outcome(direct)
    module_direct = venv.run("-m", "pkg.app", cwd=tmp_path, env=ENABLED)
    module_run = venv.run("-m", "aiotrace", "run", "-m", "pkg.app", cwd=tmp_path)
    assert outcome(module_run) == outcome(module_direct)
    if failure == "exception":
        assert "runpy" not in direct.stderr and "aiotrace" not in direct.stderr


SIGNAL_APP = """\
import os, signal, sys

def on_term(signum, frame):
    os.write(1, b"SIGTERM reached the app\\n")
    sys.exit(143)

signal.signal(signal.SIGTERM, on_term)
print("ready", flush=True)
print("echo:" + sys.stdin.readline().strip(), flush=True)
sys.stdin.read()
"""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_run_passes_streams_and_signals_straight_through(
    venv: Venv, tmp_path: Path, signum: int
) -> None:
    write(tmp_path, {"sig_app.py": SIGNAL_APP})
    outcomes = []
    for command, env in (
        ([venv.python, "sig_app.py"], ENABLED),
        ([venv.python, "-m", "aiotrace", "run", "sig_app.py"], {}),
    ):
        process = subprocess.Popen(
            command,
            cwd=str(tmp_path),
            env=clean_env(env),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert process.stdout.readline() == "ready\n"
            process.stdin.write("hello\n")
            process.stdin.flush()
            assert process.stdout.readline() == "echo:hello\n"
            process.send_signal(signum)  # the launcher's pid is the app's: it exec'd
            stdout, stderr = process.communicate(timeout=TIMEOUT)
        finally:
            process.kill()
            process.wait()
        outcomes.append((process.returncode, stdout, stderr.splitlines()[-1:]))
    assert outcomes[0] == outcomes[1]
    if signum == signal.SIGTERM:
        assert outcomes[0] == (143, "SIGTERM reached the app\n", [])
    else:
        assert outcomes[0][0] == -signal.SIGINT  # CPython re-raises SIGINT to exit (3.8+)
        assert outcomes[0][2] == ["KeyboardInterrupt"]
