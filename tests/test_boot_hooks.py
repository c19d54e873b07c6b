"""The start-up hook behind other import hooks (issue 18): whoever imports asyncio first, and
whatever finders stand before or after aiotrace's, ``AIOTRACE_ENABLE=1`` gives every patch
group or, if installing fails, none, with a message that says which.

Each app imports ``aiotrace`` before ``asyncio`` (the hard order: aiotrace's own modules then
import asyncio while they are half initialised) and checks by behaviour that the patches are
active: a span carried into a thread pool by ``run_in_executor``, a queue item's producer
context from ``get_with_context``, and ``aiotrace.installed()``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Dict, List

import pytest
from bootenv import Environments, Venv, write

from aiotrace import registry

pytestmark = pytest.mark.boot

ENABLED = {"AIOTRACE_ENABLE": "1"}

# Every default group: ``concurrent.futures.process`` is imported by the app, so its late group
# (process_pool) joins too.
# Every selected group that the probe below can activate: a group whose patches all wait for a
# module the probe never imports (anyio's streams) stays pending, as it should.
_PROBE_IMPORTS = ("concurrent.futures.process",)
EXPECTED = sorted(
    {
        p.group
        for p in registry.PATCHES
        if not p.if_imported or p.owner.partition(":")[0] in _PROBE_IMPORTS
    }
    & registry.selected()
)

PROBE = """\
import json
import aiotrace
# A lazily imported aiotrace (LazyLoader, PEP 810) loads here, before asyncio; under PEP 810 this
# module of it, whose classes subclass asyncio's, even loads after the package.
aiotrace.PropagatingQueue
import asyncio
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

trace.set_tracer_provider(TracerProvider())
tracer = trace.get_tracer("probe")


def job():
    return trace.get_current_span().get_span_context().span_id


async def main():
    queue = asyncio.Queue()
    with tracer.start_as_current_span("caller") as caller:
        pool = await asyncio.get_running_loop().run_in_executor(None, job)
        queue.put_nowait("item")
    caller_id = caller.get_span_context().span_id
    producer = None
    get_with_context = getattr(queue, "get_with_context", None)  # aiotrace's queue only
    if get_with_context is not None:
        _, context = await get_with_context()
        producer = trace.get_current_span(context).get_span_context().span_id
    return {"pool": pool == caller_id, "producer": producer == caller_id}


result = asyncio.run(main())
# A late-patch module (its group joins when it loads), after the checks above: they must not
# depend on an import that gives the hook control again.
import concurrent.futures.process
concurrent.futures.process.ProcessPoolExecutor  # used: PEP 810 lazy imports load it here
result["installed"] = sorted(aiotrace.installed())
print(json.dumps(result))
"""

# A finder that loads ``aiotrace`` itself, never asking the finders behind it (issue 18).
AHEAD = """\
import importlib.machinery, sys

class Ahead:
    def find_spec(self, name, path=None, target=None):
        if name == "aiotrace":
            return importlib.machinery.PathFinder.find_spec(name, path)

sys.meta_path.insert(0, Ahead())
"""

# In the style of ddtrace's ModuleWatchdog: first in sys.meta_path, it finds every module
# through the other finders (importlib.util.find_spec) and wraps each spec's loader in its own,
# which calls the real exec_module and then its callbacks.
WATCHDOG = """\
import importlib.util, sys

class ChainedLoader:
    def __init__(self, loader):
        self.loader = loader
        self.loaded = []

    def __getattr__(self, name):
        return getattr(self.loader, name)

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        self.loaded.append(module.__name__)

class Watchdog:
    finding = set()

    def find_spec(self, name, path=None, target=None):
        if name in self.finding:
            return None
        self.finding.add(name)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            self.finding.discard(name)
        if spec is not None and spec.loader is not None:
            spec.loader = ChainedLoader(spec.loader)
        return spec

sys.meta_path.insert(0, Watchdog())
"""

# typeguard's own import hook, asked to instrument aiotrace. Importing typeguard imports asyncio
# (seen on 3.11), so asyncio comes first here and the package loads at install().
TYPEGUARD = """\
from typeguard import install_import_hook
install_import_hook(["aiotrace"])
"""

# A finder in the style of typeguard's and beartype's hooks, without importing asyncio: it finds
# aiotrace's modules on the path itself and loads them with a loader that compiles a transformed
# syntax tree (where those hooks insert their checks).
INSTRUMENTING = """\
import ast, importlib.machinery, sys

class InstrumentingLoader(importlib.machinery.SourceFileLoader):
    def source_to_code(self, data, path, *args, **kwargs):
        return super().source_to_code(ast.parse(data), path, *args, **kwargs)

class InstrumentingFinder:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] != "aiotrace":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and isinstance(spec.loader, importlib.machinery.SourceFileLoader):
            spec.loader = InstrumentingLoader(spec.loader.name, spec.loader.path)
        return spec

sys.meta_path.insert(0, InstrumentingFinder())
"""

# Every module of aiotrace loaded lazily (importlib.util.LazyLoader): the package's code runs at
# its first attribute access, after its import finished, with ``__spec__._initializing`` False.
LAZY_LOADER = """\
import importlib.machinery, importlib.util, sys

class Lazy:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] != "aiotrace":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None:
            spec.loader = importlib.util.LazyLoader(spec.loader)
        return spec

sys.meta_path.insert(0, Lazy())
"""

# A finder that loads ``asyncio`` itself: aiotrace's finder never sees it; it installs when
# the aiotrace package (or a watched module) has loaded.
AHEAD_OF_ASYNCIO = AHEAD.replace('name == "aiotrace"', 'name == "asyncio"')

APPS: Dict[str, str] = {
    "finder-loads-asyncio": AHEAD_OF_ASYNCIO,
    "plain": "",
    "finder-loads-aiotrace": AHEAD,
    "loader-wrapping-watchdog": WATCHDOG,
    "typeguard-import-hook": TYPEGUARD,
    "instrumenting-finder": INSTRUMENTING,
    "lazy-loader": LAZY_LOADER,
}


@pytest.fixture(scope="session")
def venv(envs: Environments) -> Venv:
    return envs.hooks


def _complete(stdout: str, stderr: str) -> None:
    """The probe's line says every group is active, and stderr is empty."""
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    assert lines, stdout + stderr
    result = json.loads(lines[-1])
    assert result == {"pool": True, "producer": True, "installed": EXPECTED}, stderr
    assert "not enabled" not in stderr
    assert stderr == ""


@pytest.mark.parametrize("app", sorted(APPS))
def test_every_group_is_active_behind_other_import_hooks(
    venv: Venv, tmp_path: Path, app: str
) -> None:
    write(tmp_path, {"app.py": APPS[app] + PROBE})
    done = venv.run("app.py", cwd=tmp_path, env=ENABLED)
    assert done.returncode == 0, done.stderr
    _complete(done.stdout, done.stderr)


PYTEST_FILE = "def test_probe():\n" + "".join(f"    {line}\n" for line in PROBE.splitlines())

# pytest's assertion rewriter stands first in sys.meta_path and loads plugin modules itself
# (``-p aiotrace.testing``, ``pytest_plugins``); "autoload" is a plain run with every installed
# plugin loaded, which once included aiotrace's own (a pytest11 entry point, removed since).
PYTEST_RUNS: Dict[str, List[str]] = {
    "autoload": [],
    "-p": ["-p", "aiotrace.testing"],
    "conftest-plugin": [],
    "conftest-import": [],
}
CONFTESTS = {
    "conftest-plugin": 'pytest_plugins = ["aiotrace.testing"]\n',
    "conftest-import": "import aiotrace\n",
}


@pytest.mark.parametrize("how", sorted(PYTEST_RUNS))
def test_every_group_is_active_under_pytest(venv: Venv, tmp_path: Path, how: str) -> None:
    files = {"test_probe.py": PYTEST_FILE.replace("print(", "print('\\n' + ")}
    env = dict(ENABLED)
    if how in CONFTESTS:
        files["conftest.py"] = CONFTESTS[how]
    if how != "autoload":
        env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    write(tmp_path, files)
    args = ["-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", *PYTEST_RUNS[how]]
    done = venv.run(*args, "test_probe.py", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    _complete(done.stdout, done.stderr)
    # pytest marks the modules of plugins it loads for rewriting; the start-up hook imported
    # aiotrace and aiotrace_boot before pytest started, so neither may be marked.
    assert "PytestAssertRewriteWarning" not in done.stdout


@pytest.mark.skipif(sys.version_info < (3, 15), reason="PEP 810 lazy imports are new in 3.15")
@pytest.mark.parametrize("how", ["-X", "environment"])
def test_every_group_is_active_with_pep_810_lazy_imports(
    venv: Venv, tmp_path: Path, how: str
) -> None:
    # Both spellings accepted by CPython 3.15.2 here; every module-level import is lazy.
    write(tmp_path, {"app.py": PROBE})
    if how == "-X":
        done = venv.run("-X", "lazy_imports=all", "app.py", cwd=tmp_path, env=ENABLED)
    else:
        env = {**ENABLED, "PYTHON_LAZY_IMPORTS": "all"}
        done = venv.run("app.py", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    _complete(done.stdout, done.stderr)


# -- a failing install: all or nothing, and the message says which -------------------------

# What the app prints about the state it runs in: asyncio's classes, and aiotrace's groups.
STATE = """\
import json, sys
import aiotrace, asyncio, concurrent.futures
# (aiotrace's replacements carry the originals' names and modules: look at what they add.)
print(json.dumps({
    "queue": type(asyncio.Queue).__module__,
    "create_task": hasattr(asyncio.create_task, "__wrapped__"),
    "submit": hasattr(concurrent.futures.ThreadPoolExecutor.submit, "__wrapped__"),
    "installed": sorted(aiotrace.installed()),
}))
"""
STOCK = {
    "queue": "builtins",
    "create_task": False,
    "submit": False,
    "installed": [],
}

# aiotrace modules whose factories the catalogue names: with each factory broken (it raises),
# the patch that needs it fails part-way, after other groups were applied.
BROKEN = {
    "servers": "asyncio.base_events.BaseEventLoop.create_server",
    # From 3.15 the socket transports are right without aiotrace: only SSL's is patched.
    "transports": "asyncio.sslproto.SSLProtocol._resume_reading"
    if sys.version_info >= (3, 15)
    else "asyncio.selector_events._SelectorSocketTransport.pause_reading",
    "asyncgens": "asyncio.base_events.BaseEventLoop._asyncgen_firstiter_hook",
}


@pytest.mark.parametrize("module", sorted(BROKEN))
def test_a_failing_first_install_leaves_nothing_patched(
    venv: Venv, tmp_path: Path, module: str
) -> None:
    # A finder that loads one aiotrace module with every factory (``patched_*``) broken.
    broken = (
        "import importlib.machinery, sys\n"
        "class Broken:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name != 'aiotrace.{module}':\n"
        "            return None\n"
        "        spec = importlib.machinery.PathFinder.find_spec(name, path)\n"
        "        run = spec.loader.exec_module\n"
        "        def exec_module(module):\n"
        "            run(module)\n"
        "            for attribute in list(vars(module)):\n"
        "                if attribute.startswith('patched_'):\n"
        "                    setattr(module, attribute, fail)\n"
        "        spec.loader.exec_module = exec_module\n"
        "        return spec\n"
        "def fail(original):\n"
        f"    raise RuntimeError({repr('aiotrace.' + module)!r} + ' is broken')\n"
        "sys.meta_path.insert(0, Broken())\n"
    )
    write(tmp_path, {"app.py": broken + STATE})
    done = venv.run("app.py", cwd=tmp_path, env=ENABLED)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == STOCK
    assert len(done.stderr.splitlines()) == 1, done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith(
        f"aiotrace: not enabled: InstallError: aiotrace could not patch {BROKEN[module]}: "
    ), line
    assert f"'aiotrace.{module}' is broken" in line  # the cause
    assert "; nothing was changed (" in line


# A uvloop whose Loop refuses new server methods: the patches that wait for uvloop fail after
# the others were applied at asyncio's import.
FAKE_UVLOOP = """\
import asyncio

class _Guarded(type):
    def __setattr__(cls, name, value):
        if name == "create_server":
            raise TypeError("read-only attribute")
        super().__setattr__(name, value)

class Loop(asyncio.SelectorEventLoop, metaclass=_Guarded):
    pass
"""


def test_a_failing_late_install_undoes_only_its_own_patches(venv: Venv, tmp_path: Path) -> None:
    write(tmp_path, {"fake/uvloop/__init__.py": FAKE_UVLOOP})
    app = STATE.replace("import aiotrace,", "import uvloop, aiotrace,") + (
        "own = [n for n in vars(uvloop.Loop) if 'asyncgen' in n or 'server' in n]\n"
        "print(json.dumps(own))\n"
    )
    write(tmp_path, {"app.py": app})
    env = {**ENABLED, "PYTHONPATH": str(tmp_path / "fake")}
    done = venv.run("app.py", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    state, own = map(json.loads, done.stdout.splitlines())
    assert state["installed"] == sorted(set(EXPECTED) - {"process_pool"})
    assert state["queue"] == "aiotrace.aliases"
    assert own == []  # the uvloop patches applied before the failure were undone
    (line,) = done.stderr.splitlines()
    assert line.startswith(
        "aiotrace: not patched for uvloop: InstallError: aiotrace could not patch "
        "uvloop.Loop.create_server: TypeError: read-only attribute; nothing was changed ("
    ), line
    assert line.endswith(f"; still patched: {', '.join(state['installed'])}"), line
    assert "not enabled" not in line
