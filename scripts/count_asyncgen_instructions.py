"""Instructions aiotrace adds per async generator started, counted by valgrind.

Runs a workload of ``n`` three-item generators iterated to the end (no ``break``: only the
firstiter hook's record is paid) under ``valgrind --tool=callgrind``, at two sizes, stock and
after ``aiotrace.install()``, and prints the instructions per generator and those added.
``--per-task`` starts each generator in a task of its own (the lookup of a task's context
happens once per task before Python 3.12). ``--asyncgens FILE`` loads FILE as
``aiotrace.asyncgens`` instead of the installed module, to compare with an earlier version
(``git show REV:aiotrace/asyncgens.py > FILE``).

    python scripts/count_asyncgen_instructions.py [--per-task] [--asyncgens FILE]

Needs ``valgrind`` on PATH; slow (four interpreter runs under valgrind).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.abc
import importlib.machinery
import importlib.util
import re
import subprocess
import sys
from typing import Any, List, Optional


def workload(n: int, mode: str, per_task: bool, asyncgens: Optional[str]) -> None:
    if asyncgens:
        _load_asyncgens_from(asyncgens)
    import aiotrace

    if mode == "patched":
        aiotrace.install()

    async def three() -> Any:
        yield 1
        yield 2
        yield 3

    async def one() -> None:
        async for _ in three():
            pass

    async def main() -> None:
        for _ in range(n):
            if per_task:
                await asyncio.ensure_future(one())
            else:
                await one()

    loop = asyncio.SelectorEventLoop()
    try:
        loop.run_until_complete(main())
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        loop.close()


class _AsyncgensLoader(importlib.machinery.SourceFileLoader):
    """Loads FILE as ``aiotrace.asyncgens``. A module older than ``on_change`` (4dbbcf4) gets
    the one the registry did then: ``set_recording`` and ``sync_running_loop_hooks``."""

    def exec_module(self, module: Any) -> None:
        super().exec_module(module)
        if not hasattr(module, "on_change"):

            def on_change(applied: bool) -> None:
                module.set_recording(applied)
                module.sync_running_loop_hooks()

            module.on_change = on_change


class _AsyncgensFinder(importlib.abc.MetaPathFinder):
    def __init__(self, path: str) -> None:
        self._path = path

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "aiotrace.asyncgens":
            return None
        loader = _AsyncgensLoader(name, self._path)
        return importlib.util.spec_from_file_location(name, self._path, loader=loader)


def _load_asyncgens_from(path: str) -> None:
    """Makes ``import aiotrace`` load ``path`` as ``aiotrace.asyncgens``: the catalogue takes
    the hooks from that module when aiotrace is imported, so replacing the module afterwards
    (as this script did up to 2026-12-03) left install() with the installed one."""
    sys.meta_path.insert(0, _AsyncgensFinder(path))


def count(n: int, mode: str, extra: List[str]) -> int:
    command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable]
    command += [__file__, "--child", str(n), mode, *extra]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count in valgrind's output:\n{done.stderr}")
    return int(found.group(1))


def main(argv: Any = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-task", action="store_true")
    parser.add_argument("--asyncgens", metavar="FILE")
    parser.add_argument("--child", nargs=2, metavar=("N", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        workload(int(args.child[0]), args.child[1], args.per_task, args.asyncgens)
        return 0
    extra = (["--per-task"] if args.per_task else []) + (
        ["--asyncgens", args.asyncgens] if args.asyncgens else []
    )
    per = {}
    for mode in ("stock", "patched"):
        per[mode] = (count(3000, mode, extra) - count(1000, mode, extra)) / 2000
    shape = "one task per generator" if args.per_task else "one task for all"
    print(
        f"Python {sys.version.split()[0]}, {shape}: stock {per['stock']:.0f}, "
        f"aiotrace {per['patched']:.0f}, added {per['patched'] - per['stock']:+.0f} "
        "instructions per generator started"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
