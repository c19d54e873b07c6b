"""Instructions per operation, stock asyncio against ``aiotrace.install()``, counted by valgrind.

Timings on a shared machine move by several per cent between runs, more than some of the costs
being measured (a paused echo round trip is 70-100 µs, the patch's share a few µs). The number
of instructions a workload executes in user space does not move: this script runs each
``bench_overhead.py`` workload under ``valgrind --tool=callgrind`` at two sizes, stock and
patched, and prints the instructions per operation (the difference between the sizes divided by
the difference in operations, so start-up and warm-up cancel out), their ratio and the
instructions added. Time spent in the kernel (the echo's socket calls) is not counted, so for
I/O workloads the ratio overstates the relative cost.

    python scripts/count_instructions.py [--only NAME] [--loop asyncio|uvloop] [--size 1000]

Needs ``valgrind`` on PATH. Slow: each row runs the interpreter four times under valgrind.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
from typing import Any, List

HERE = os.path.dirname(os.path.abspath(__file__))


def run_once(mode: str, loop_kind: str, name: str, n: int) -> None:
    """The measured process: one workload, ``n`` operations, after a small warm-up."""
    sys.path.insert(0, HERE)
    import bench_overhead

    import aiotrace

    workload = bench_overhead.WORKLOADS[name][0]
    loop = bench_overhead.new_loop(loop_kind)  # imports uvloop first, as install() needs
    if mode == "patched":
        aiotrace.install()
    try:
        loop.run_until_complete(workload(min(n, 200)))
        loop.run_until_complete(workload(n))
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        loop.close()
        asyncio.set_event_loop(None)


def count(mode: str, loop_kind: str, name: str, n: int) -> int:
    command = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        mode,
        "--loop",
        loop_kind,
        "--only",
        name,
        "--size",
        str(n),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"valgrind run failed for {name!r} ({mode}):\n{done.stderr[-2000:]}")
    return int(found.group(1))


def per_operation(mode: str, loop_kind: str, name: str, size: int) -> float:
    small, large = count(mode, loop_kind, name, size), count(mode, loop_kind, name, 3 * size)
    return (large - small) / (2 * size)


def main(argv: Any = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    parser.add_argument("--only", help="run only workloads whose name contains this")
    parser.add_argument("--size", type=int, default=1000, help="operations in the small run")
    parser.add_argument("--child", choices=["stock", "patched"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        run_once(args.child, args.loop, args.only, args.size)
        return 0
    if shutil.which("valgrind") is None:
        print("count_instructions.py: valgrind is not on PATH", file=sys.stderr)
        return 2
    sys.path.insert(0, HERE)
    import bench_overhead

    names: List[str] = [
        name for name in bench_overhead.WORKLOADS if not args.only or args.only in name
    ]
    print(f"Python {sys.version.split()[0]}, loop {args.loop}, user-space instructions per op")
    print(f"{'workload':<25}{'stock':>12}{'aiotrace':>12}{'ratio':>8}{'added':>10}")
    for name in names:
        stock = per_operation("stock", args.loop, name, args.size)
        patched = per_operation("patched", args.loop, name, args.size)
        print(
            f"{name:<25}{stock:>12.0f}{patched:>12.0f}{patched / stock:>8.3f}"
            f"{patched - stock:>+10.0f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
