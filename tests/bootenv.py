"""Fresh virtual environments with aiotrace installed from a wheel built from this checkout,
for the start-up tests (``test_boot_*``): the bootstrapper is tested as users meet it.

Environments are built once per test session and shared (``environments()``); each is made
with ``uv`` when it is on PATH (seconds), else with ``venv`` and pip. They use the Python that
runs pytest, so the nox matrix covers every interpreter.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _find_uv() -> Optional[str]:
    uv = shutil.which("uv")
    if uv is None:
        return None
    # A pyenv shim may exist without a uv behind it for the current version.
    works = subprocess.run([uv, "--version"], capture_output=True, check=False).returncode == 0
    return uv if works else None


UV = _find_uv()
# Part of a test app (after ``import asyncio`` and ``from opentelemetry import trace``, with a
# provider set): a span opened in a run_in_executor job; ``nested`` says whether it nests under
# the caller's span.
EXECUTOR_NESTING = """\
tracer = trace.get_tracer("app")

def job():
    with tracer.start_as_current_span("job") as span:
        return span.parent.span_id if span.parent else None

async def main():
    with tracer.start_as_current_span("caller") as caller:
        parent = await asyncio.get_running_loop().run_in_executor(None, job)
        return parent == caller.get_span_context().span_id

nested = asyncio.run(main())
"""
TIMEOUT = 300  # guards against a hang only; no test depends on how long anything takes

# Environment variables that would change how a child interpreter starts.
_STRIPPED = ("AIOTRACE_", "PYTHON", "VIRTUAL_ENV", "COVERAGE_", "__PYVENV_LAUNCHER__", "UV_")


class Venv:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.python = str(path / "bin" / "python")
        self.bin = path / "bin"
        self.site_packages = Path(
            subprocess.run(
                [self.python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                check=True,
                capture_output=True,
                text=True,
            ).stdout.strip()
        )

    def run(
        self,
        *args: str,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[Path] = None,
        input: Optional[str] = None,
        executable: Optional[str] = None,
    ) -> subprocess.CompletedProcess:
        """Run ``python *args`` (or ``executable *args``) in this environment."""
        return subprocess.run(
            [executable or self.python, *args],
            check=False,
            env=clean_env(env),
            cwd=str(cwd) if cwd else None,
            input=input,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )


def clean_env(extra: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """The test process's environment without anything that changes Python's start, plus
    ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_STRIPPED)}
    env.update(extra or {})
    return env


def _check(command: Sequence[str], **kwargs: object) -> None:
    done = subprocess.run(
        list(command),
        check=False,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=clean_env(),
        **kwargs,  # type: ignore[arg-type]
    )
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")


def _new_venv(path: Path, seed: bool = False) -> Venv:
    if UV:
        _check([UV, "venv", "-q", *(["--seed"] if seed else []), "-p", sys.executable, str(path)])
    else:
        # Without uv, packages are installed with the environment's own pip: it needs one.
        _check([sys.executable, "-m", "venv", str(path)])
    return Venv(path)


def _install(venv: Venv, *requirements: str, no_deps: bool = False) -> None:
    extra = ["--no-deps"] if no_deps else []
    if UV:
        _check([UV, "pip", "install", "-q", "-p", venv.python, *extra, *requirements])
    else:
        _check([venv.python, "-m", "pip", "install", "-q", *extra, *requirements])


class Environments:
    """The shared environments, created on first use."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self._venvs: Dict[str, Venv] = {}
        self._wheel: Optional[Path] = None

    @property
    def wheel(self) -> Path:
        if self._wheel is None:
            if not (ROOT / "pyproject.toml").is_file() or not (ROOT / "aiotrace.pth").is_file():
                pytest.skip("the start-up tests need the aiotrace source checkout")
            out = self.base / "dist"
            if UV:
                _check([UV, "build", "-q", "--wheel", "-o", str(out), str(ROOT)])
            else:
                _check(
                    [
                        sys.executable,
                        "-m",
                        "pip",
                        "wheel",
                        "-q",
                        "--no-deps",
                        "-w",
                        str(out),
                        str(ROOT),
                    ]
                )
            (self._wheel,) = out.glob("aiotrace-*.whl")
        return self._wheel

    def _get(self, name: str, make: Callable[[], Venv]) -> Venv:
        if name not in self._venvs:
            self._venvs[name] = make()
        return self._venvs[name]

    @property
    def full(self) -> Venv:
        """The wheel, the OpenTelemetry SDK and uvloop."""

        def make() -> Venv:
            venv = _new_venv(self.base / "full")
            _install(venv, str(self.wheel), "opentelemetry-sdk", "uvloop")
            return venv

        return self._get("full", make)

    @property
    def hooks(self) -> Venv:
        """The wheel, the OpenTelemetry SDK, pytest and typeguard: other import hooks that
        stand before aiotrace's (tests/test_boot_hooks.py). Installed here only, not in the
        test extra: the suite itself never imports typeguard."""

        def make() -> Venv:
            venv = _new_venv(self.base / "hooks")
            _install(venv, str(self.wheel), "opentelemetry-sdk", "pytest", "typeguard")
            return venv

        return self._get("hooks", make)

    @property
    def with_pytest(self) -> Venv:
        """The wheel, the OpenTelemetry SDK and pytest: another project's test environment."""

        def make() -> Venv:
            venv = _new_venv(self.base / "with-pytest")
            _install(venv, str(self.wheel), "opentelemetry-sdk", "pytest")
            return venv

        return self._get("with_pytest", make)

    @property
    def no_otel(self) -> Venv:
        """The wheel alone, without its dependencies: OpenTelemetry is missing."""

        def make() -> Venv:
            venv = _new_venv(self.base / "no-otel")
            _install(venv, str(self.wheel), no_deps=True)
            return venv

        return self._get("no_otel", make)

    @property
    def editable(self) -> Venv:
        """An editable install of the checkout (``uv pip install -e``, else ``pip -e``)."""

        def make() -> Venv:
            venv = _new_venv(self.base / "editable")
            _install(venv, "-e", str(ROOT))
            return venv

        return self._get("editable", make)

    @property
    def broken_start(self) -> Venv:
        """The wheel without its dependencies, for tests that damage its ``aiotrace.start``."""

        def make() -> Venv:
            venv = _new_venv(self.base / "broken-start")
            _install(venv, str(self.wheel), no_deps=True)
            return venv

        return self._get("broken_start", make)

    @property
    def bare(self) -> Venv:
        """No packages at all."""
        return self._get("bare", lambda: _new_venv(self.base / "bare"))

    @property
    def target(self) -> Path:
        """A directory with the wheel and the SDK installed by ``--target``: importable through
        ``PYTHONPATH``, but its ``aiotrace.pth`` is not in a site directory."""
        path = self.base / "target"
        if not path.exists():
            if UV:
                _check(
                    [
                        UV,
                        "pip",
                        "install",
                        "-q",
                        "-p",
                        self.bare.python,
                        "--target",
                        str(path),
                        str(self.wheel),
                        "opentelemetry-sdk",
                    ]
                )
            else:
                _check(
                    [
                        self.bare.python,
                        "-m",
                        "pip",
                        "install",
                        "-q",
                        "--target",
                        str(path),
                        str(self.wheel),
                        "opentelemetry-sdk",
                    ]
                )
        return path

    @property
    def pip_source(self) -> Venv:
        """``pip install <checkout>`` with pip itself (not uv), from the source tree."""

        def make() -> Venv:
            venv = _new_venv(self.base / "pip-source", seed=True)
            # The build backend and the dependency come first (quickly, by uv where there is
            # one), so that pip's own part is the install of this checkout.
            _install(venv, "hatchling", "opentelemetry-api")
            pip = [venv.python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation"]
            _check([*pip, str(ROOT)])
            return venv

        return self._get("pip_source", make)


_environments: List[Environments] = []


def environments() -> Environments:
    """The environments of this test session (one set, however many modules ask)."""
    if not _environments:
        _environments.append(Environments(Path(tempfile.mkdtemp(prefix="boot-"))))
    return _environments[0]


def cleanup() -> None:
    for envs in _environments:
        shutil.rmtree(envs.base, ignore_errors=True)
    _environments.clear()


def write(directory: Path, files: Mapping[str, str]) -> Path:
    """Write ``files`` (relative path -> text) under ``directory``; return it."""
    for name, text in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return directory
