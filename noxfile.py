"""The one entry point for the test matrix: ``nox`` runs the suite on every CPython 3.8-3.15
found on this machine (pyenv's versions included), each on the stock loop, uvloop and the
context-dropping test loop, once more against the lowest supported OpenTelemetry API, then
combines coverage; ``lint`` (ruff) runs first. Then ``realstack`` (a FastAPI service on uvicorn,
tests/realstack) and ``peers`` (other projects' own suites, scripts/peers.py)."""

from __future__ import annotations

import glob
import os
import shutil
import sys
import tempfile
from pathlib import Path

import nox

ROOT = Path(__file__).parent.resolve()
PYTHONS = ["3.8", "3.9", "3.10", "3.11", "3.12", "3.13", "3.14", "3.15"]
LOWEST_OTEL = "1.20.0"

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.sessions = ["lint", "tests", "lowest_otel", "coverage"]
# nox's own convention, spelled out: a missing interpreter is skipped on a developer's machine
# and an error in CI (where the ``CI`` variable is set; .ci/run installs 3.14 and 3.15).
nox.options.error_on_missing_interpreters = "CI" in os.environ

# Interpreters installed by pyenv but not on PATH (only the global one is): put each
# version's bin directory on PATH so that nox and uv find ``python3.X``. 3.14 and 3.15 come
# from ../shared/tools/install-sid-python.sh, a Debian build whose real files live in
# versions/3.X/usr/bin; its versions/3.X/bin holds links to them, found by the same glob.
_pyenv_root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
_extra = sorted(glob.glob(os.path.join(_pyenv_root, "versions", "3.*", "bin")))
if _extra:
    os.environ["PATH"] = os.pathsep.join([*_extra, os.environ.get("PATH", "")])


def _install(session: nox.Session, extras: str, *extra: str) -> None:
    # uv would keep an already installed aiotrace 0.2.0 although the checkout changed.
    fresh = ["--reinstall-package", "aiotrace"] if session.venv_backend == "uv" else []
    session.install(*fresh, f"{ROOT}[{extras}]", *extra)


def _pytest(session: nox.Session, *extra: str) -> None:
    # Run from a scratch directory so that ``import aiotrace`` finds the installed package,
    # not the checkout: the suite tests what users install.
    env = {
        "COVERAGE_FILE": str(ROOT / f".coverage.{session.name}"),
        "COVERAGE_RCFILE": str(ROOT / "pyproject.toml"),
        "AIOTRACE_REQUIRE_UVLOOP": "1",
    }
    with session.chdir(session.create_tmp()):
        session.run(
            "coverage",
            "run",
            "-m",
            "pytest",
            "-c",
            str(ROOT / "pyproject.toml"),
            "--rootdir",
            str(ROOT),
            str(ROOT / "tests"),
            *extra,
            *session.posargs,
            env=env,
        )


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    _install(session, "test,test-ecosystem")
    _pytest(session)


@nox.session(python=["3.8", "3.15"])
def lowest_otel(session: nox.Session) -> None:
    """The oldest ``opentelemetry-api`` the package declares support for."""
    _install(
        session, "test", f"opentelemetry-api=={LOWEST_OTEL}", f"opentelemetry-sdk=={LOWEST_OTEL}"
    )
    _pytest(session)


@nox.session(python="3.11")
def coverage(session: nox.Session) -> None:
    session.install("coverage[toml]>=7")
    env = {"COVERAGE_RCFILE": str(ROOT / "pyproject.toml")}
    session.run("coverage", "combine", *glob.glob(str(ROOT / ".coverage.*")), env=env)
    session.run("coverage", "report", "--fail-under=95", env=env)


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    session.install("ruff==0.17.6")  # pinned: a new release may add findings
    session.run("ruff", "check", str(ROOT))
    session.run("ruff", "format", "--check", str(ROOT))


# -- realstack (issue 14) -------------------------------------------------------------------
REALSTACK_REQUIREMENTS = ROOT / "tests" / "realstack" / "requirements.txt"  # the pins
nox.options.sessions.append("realstack")  # CI runs it with the others


@nox.session(python="3.12")
def realstack(session: nox.Session) -> None:
    """The FastAPI/uvicorn service of tests/realstack with the real packages, on asyncio + h11
    and uvloop + httptools, aiotrace off and on in its six ways (a few minutes)."""
    # uv: tests/realstack builds the wheel and the Operator layout's --target directory.
    _install(session, "test", "-r", str(REALSTACK_REQUIREMENTS), "uv")
    with session.chdir(session.create_tmp()):
        session.run(
            "pytest",
            "-c",
            str(ROOT / "pyproject.toml"),
            "--rootdir",
            str(ROOT),
            "-s",
            str(ROOT / "tests" / "realstack"),
            *session.posargs,
        )


# --- peers: other projects' own test suites, without and with aiotrace (docs/drop-in.md) ---


def _load_peers():  # scripts/peers.py holds the pins, the test selection and the comparison
    import importlib.util

    spec = importlib.util.spec_from_file_location("peers", ROOT / "scripts" / "peers.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["peers"] = module  # dataclasses looks the module up while building Peer
    spec.loader.exec_module(module)
    return module


PEERS = _load_peers()
# ``nox`` (and so CI) runs the named selection of scripts/peers.py on 3.13; ``nox -s peers``
# adds 3.11, ``nox -s peers -- --all`` runs each whole suite (docs/drop-in.md).
nox.options.sessions.append("peers-3.13")
# nox points TMPDIR into .nox/, under this checkout's pyproject.toml: a peer's pytester runs
# would take aiotrace's pytest configuration as theirs. Theirs get a directory outside.
_OUTER_TMP = tempfile.gettempdir()


def _peer_run(session, src: Path, tests, out: Path, on: bool) -> dict:
    """One pytest run of a peer's suite in its unpacked sdist; its per-test outcomes."""
    import json

    env = {name: None for name in os.environ if name.startswith("AIOTRACE_")}
    if on:
        env["AIOTRACE_ENABLE"] = "1"
    env["PEERS_OUTCOMES"] = str(out)
    env["PYTHONPATH"] = str(out.parent / "plugin")
    out.unlink(missing_ok=True)
    scratch = tempfile.mkdtemp(prefix="aiotrace-peers-", dir=_OUTER_TMP)
    env["TMPDIR"] = scratch
    try:
        with session.chdir(src):
            session.run(
                "python", "-m", "pytest", "-p", "peers_outcomes", *tests,
                env=env, success_codes=[0, 1, 2, 3, 4, 5],
            )  # fmt: skip
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if not out.exists():
        session.error(f"pytest wrote no outcomes to {out}")
    got = json.loads(out.read_text(encoding="utf-8"))
    if bool(got["aiotrace"]) != on:
        want = "on" if on else "off"
        session.error(f"aiotrace was not {want} in the pytest run meant to have it {want}")
    return got


def _peer_sources(session, peer: str, spec) -> Path:
    """The peer's sdist unpacked afresh in the session's tmp directory, with the plugin beside."""
    import tarfile

    # The sdist, fetched once per machine: pip reads its metadata with the build backends
    # installed here (an isolated build environment per download takes minutes).
    cache = ROOT / ".nox" / "_peers_sdists"
    cache.mkdir(parents=True, exist_ok=True)
    stem = f"{peer.replace('-', '_')}-{spec.version}"
    sdist = cache / f"{stem}.tar.gz"
    if not sdist.exists():
        session.install("pip", *spec.build)  # a uv-made venv has no pip
        session.run(
            "python", "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
            "--no-build-isolation", "--dest", str(cache), f"{peer}=={spec.version}",
        )  # fmt: skip
    tmp = Path(session.create_tmp()).resolve()
    src = tmp / stem
    shutil.rmtree(src, ignore_errors=True)
    with tarfile.open(sdist) as archive:
        # A pinned release's own sdist; the "data" filter where this Python has it (3.12+ warns
        # without one).
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        archive.extractall(tmp, **safe)
    if spec.source:
        shutil.rmtree(src / spec.source)
    plugin = tmp / "plugin"
    plugin.mkdir(exist_ok=True)
    shutil.copy(ROOT / "scripts" / "peers_outcomes.py", plugin)

    return src


@nox.session(python=PEERS.PYTHONS)
@nox.parametrize("peer", list(PEERS.PEERS))
def peers(session: nox.Session, peer: str) -> None:
    """Another project's own tests without and with aiotrace (docs/drop-in.md).

    A pinned release's tests run without and with ``AIOTRACE_ENABLE=1``; the session fails on
    any test that fails only with aiotrace on, unless scripts/peers.py lists it as a known
    difference. ``nox -s peers`` runs the files chosen for CI, ``nox -s peers -- --all`` each
    whole suite; other arguments go to pytest.
    """
    import json

    spec = PEERS.PEERS[peer]
    posargs = list(session.posargs)
    everything = "--all" in posargs
    extra = [arg for arg in posargs if arg != "--all"]
    tests = list(spec.everything if everything else spec.ci) + list(spec.args) + extra

    src = _peer_sources(session, peer, spec)

    # The release's wheel (same version), its test dependencies and aiotrace from the checkout.
    fresh = ["--reinstall-package", "aiotrace"] if session.venv_backend == "uv" else []
    session.install(*fresh, str(ROOT), f"{peer}=={spec.version}", *spec.deps)

    tmp = src.parent
    off = _peer_run(session, src, tests, tmp / "off.json", on=False)
    if off["exitstatus"] not in (0, 1):
        session.error(f"{peer}: pytest exited {off['exitstatus']} without aiotrace")
    on = _peer_run(session, src, tests, tmp / "on.json", on=True)
    result = PEERS.compare(peer, off["outcomes"], on["outcomes"])

    # Tests that fail only with aiotrace on get a second run with it on: one that passes then
    # is reported as flaky, not as a difference.
    flaky = []
    again = PEERS.rerunnable(result.unexplained)
    if again:
        rerun = _peer_run(session, src, again + list(spec.args), tmp / "rerun.json", on=True)
        flaky = [t for t in again if rerun["outcomes"].get(t) not in PEERS.FAILING]
    real = [test for test in result.unexplained if test not in flaky]

    report = {
        "peer": peer,
        "version": spec.version,
        "python": session.python,
        "selection": "all" if everything else "ci",
        "off": PEERS.counts(off["outcomes"]),
        "on": PEERS.counts(on["outcomes"]),
        "only_on": real,
        "flaky": flaky,
        "known": result.known,
        "only_off": result.only_off,
    }
    results = ROOT / ".nox" / "_peers_results"
    results.mkdir(exist_ok=True)
    name = f"{peer}-{session.python}-{report['selection']}.json"
    (results / name).write_text(json.dumps(report, indent=1))
    session.log(f"{peer} {spec.version} without aiotrace: {PEERS.summary(off['outcomes'])}")
    session.log(f"{peer} {spec.version} with aiotrace:    {PEERS.summary(on['outcomes'])}")
    for test, why in result.known.items():
        session.log(f"known difference: {test}: {why}")
    for test in result.unused_known:
        session.log(f"known difference that did not show up: {test}")
    for test in flaky:
        session.warn(f"failed only with aiotrace on, passed when run again (flaky): {test}")
    for test in result.only_off:
        session.log(f"failed only without aiotrace: {test}")
    if real:
        session.error(f"{len(real)} test(s) fail only with aiotrace on:\n  " + "\n  ".join(real))
