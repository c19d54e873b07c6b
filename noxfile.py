"""The one entry point for the test matrix: ``nox`` runs the suite on every CPython 3.8-3.15
found on this machine (pyenv's versions included), each on the stock loop, uvloop and the
context-dropping test loop, once more against the lowest supported OpenTelemetry API, then
combines coverage; ``lint`` (ruff) runs first."""

from __future__ import annotations

import glob
import os
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
    and uvloop + httptools, aiotrace off and on in its five ways (a few minutes)."""
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
