"""What the start-up hook costs every Python process of an environment that has aiotrace.

Builds a wheel from this checkout and two fresh virtual environments with the same
OpenTelemetry SDK, one of them with aiotrace, then starts ``python -c pass`` (and ``python -c
"import asyncio"``) over and over in each, interleaved so that machine noise hits every
configuration alike:

- ``bare``: aiotrace not installed (the baseline);
- ``bare+pth``: not installed, but site-packages has some other ``.pth`` file (as nearly every
  real environment has: setuptools', editable installs'…): the first ``.pth`` costs ``site``
  an import of the ``utf-8-sig`` codec on Python 3.13, whoever ships it;
- ``bare+start`` (Python 3.15+): not installed, but site-packages has some other PEP 829
  ``.start`` file (entry point ``os:getpid``): what ``site`` itself costs to run any entry point
  (on 3.15.2 it imports ``pkgutil`` and ``re`` to resolve it), whoever ships it;
- ``unset``: installed, ``AIOTRACE_ENABLE`` unset (what every process pays);
- ``set``: installed and enabled, the program never imports asyncio;
- with ``import asyncio``: stock vs. enabled, i.e. what installing costs once asyncio loads.

It also times the ``.pth`` line itself in-process (``timeit``), which is the precise figure for
the unset case: process start-up varies by far more than the line costs.

Usage: ``python scripts/bench_startup.py [--python PATH] [--runs N]`` (needs ``uv``).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def sh(*command: str) -> str:
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout


def make_venvs(python: str, base: Path) -> dict:
    sh("uv", "build", "-q", "--wheel", "-o", str(base / "dist"), str(ROOT))
    (wheel,) = (base / "dist").glob("aiotrace-*.whl")
    venvs = {}
    names = [("bare", []), ("bare+pth", []), ("aiotrace", [str(wheel)])]
    if start_files(python):
        names.insert(2, ("bare+start", []))
    for name, extra in names:
        path = base / name
        sh("uv", "venv", "-q", "-p", python, str(path))
        python_path = str(path / "bin" / "python")
        # Byte-compiled, as pip installs by default.
        install = ["uv", "pip", "install", "-q", "--compile-bytecode", "-p", python_path]
        sh(*install, "opentelemetry-sdk", *extra)
        venvs[name] = python_path
    purelib = sh(
        venvs["bare+pth"], "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    )
    Path(purelib.strip(), "other.pth").write_text("# a path-only .pth file\n")
    if "bare+start" in venvs:
        purelib = sh(
            venvs["bare+start"], "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"
        )
        Path(purelib.strip(), "other.start").write_text("os:getpid\n")
    return venvs


def start_files(python: str) -> bool:
    """Whether ``python`` reads PEP 829 ``.start`` files (3.15+)."""
    return sh(python, "-c", "import sys; print(sys.version_info >= (3, 15))").strip() == "True"


def clean_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIOTRACE_", "PYTHON"))}
    env.update(extra)
    return env


def launch_ms(python: str, code: str, env: dict) -> tuple:
    """(wall, CPU) milliseconds of one launch. CPU time (user + system, of the child) hardly
    depends on how busy the machine is; wall time does."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([python, "-c", code], env=env, check=True)
    wall = (time.perf_counter() - start) * 1e3
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1e3
    return wall, cpu


def pth_line_us(python: str) -> float:
    """The ``.pth`` line's own cost with the variable unset, as ``site`` executes it."""
    site_packages = sh(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    line = Path(site_packages.strip(), "aiotrace.pth").read_text().strip()
    code = (
        "import timeit\n"
        f"line = compile({line!r}, 'aiotrace.pth', 'exec')\n"
        "n, total = timeit.Timer(lambda: exec(line)).autorange()\n"
        "print(total / n * 1e6)\n"
    )
    return float(sh_env(python, code, clean_env()))


def start_us(python: str) -> float:
    """``import aiotrace_boot; start()`` with the variable set, in a fresh interpreter each time
    (the variable is set inside, so the ``.pth`` has not run it already)."""
    code = (
        "import os, time\n"
        "os.environ['AIOTRACE_ENABLE'] = '1'\n"
        "t = time.perf_counter()\n"
        "import aiotrace_boot; aiotrace_boot.start()\n"
        "print((time.perf_counter() - t) * 1e6)\n"
    )
    return statistics.median(float(sh_env(python, code, clean_env())) for _ in range(21))


def entry_point_us(python: str) -> float:
    """The ``.start`` entry point's own cost with the variable unset (3.15+): importing
    ``aiotrace_boot`` and calling ``start()``, in a fresh interpreter each time, with ``site``
    off (-S) so that it is not imported already; ``os`` first, as a normal start has it."""
    site_packages = sh(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    code = (
        "import os, sys, time\n"
        f"sys.path.append({site_packages.strip()!r})\n"
        "t = time.perf_counter()\n"
        "import aiotrace_boot; aiotrace_boot.start()\n"
        "print((time.perf_counter() - t) * 1e6)\n"
    )
    runs = [float(sh_env(python, code, clean_env(), "-S")) for _ in range(51)]
    return statistics.median(runs)


def sh_env(python: str, code: str, env: dict, *options: str) -> str:
    return subprocess.run(
        [python, *options, "-c", code], env=env, check=True, capture_output=True, text=True
    ).stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--runs", type=int, default=200)
    options = parser.parse_args()
    if shutil.which("uv") is None:
        sys.exit("bench_startup.py needs uv on PATH")

    base = Path(tempfile.mkdtemp(prefix="boot-bench-"))
    try:
        venvs = make_venvs(options.python, base)
        configs = {
            "bare,   -c pass": (venvs["bare"], "pass", clean_env()),
            "bare+pth, -c pass": (venvs["bare+pth"], "pass", clean_env()),
            **(
                {"bare+start, -c pass": (venvs["bare+start"], "pass", clean_env())}
                if "bare+start" in venvs
                else {}
            ),
            "unset,  -c pass": (venvs["aiotrace"], "pass", clean_env()),
            "set,    -c pass": (venvs["aiotrace"], "pass", clean_env(AIOTRACE_ENABLE="1")),
            "unset,  import asyncio": (venvs["aiotrace"], "import asyncio", clean_env()),
            "set,    import asyncio": (
                venvs["aiotrace"],
                "import asyncio",
                clean_env(AIOTRACE_ENABLE="1"),
            ),
        }
        times: dict = {name: ([], []) for name in configs}
        for config in configs.values():  # warm the file system caches and .pyc files
            launch_ms(*config)
        for _ in range(options.runs):
            for name, config in configs.items():
                wall, cpu = launch_ms(*config)
                times[name][0].append(wall)
                times[name][1].append(cpu)

        version = sh(venvs["bare"], "-c", "import sys; print(sys.version.split()[0])").strip()
        load = os.getloadavg()[0]
        print(f"Python {version}, {options.runs} interleaved launches each, load {load:.1f}")
        print(f"{'configuration':<24} {'wall median':>12} {'CPU median':>11} {'CPU mean':>9}")
        for name, (wall, cpu) in times.items():
            print(
                f"{name:<24} {statistics.median(wall):9.2f} ms {statistics.median(cpu):8.2f} ms "
                f"{statistics.mean(cpu):6.2f} ms"
            )
        for label, a, b in (
            ("unset - bare", "unset,  -c pass", "bare,   -c pass"),
            ("unset - bare+pth", "unset,  -c pass", "bare+pth, -c pass"),
            ("unset - bare+start", "unset,  -c pass", "bare+start, -c pass"),
            ("set - bare, no asyncio", "set,    -c pass", "bare,   -c pass"),
            ("set - unset, import asyncio", "set,    import asyncio", "unset,  import asyncio"),
        ):
            if a not in times or b not in times:
                continue
            wall = statistics.median(times[a][0]) - statistics.median(times[b][0])
            cpu = statistics.median(times[a][1]) - statistics.median(times[b][1])
            print(f"{label + ':':<30} wall {wall:+6.2f} ms   CPU {cpu:+6.2f} ms (medians)")
        print(f".pth line, unset (in-process): {pth_line_us(venvs['aiotrace']):.3f} µs")
        if "bare+start" in venvs:
            us = entry_point_us(venvs["aiotrace"])
            print(f".start entry point, unset (import + start(), in-process): {us:.0f} µs")
        print(f"start() with the variable set (in-process): {start_us(venvs['aiotrace']):.0f} µs")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
