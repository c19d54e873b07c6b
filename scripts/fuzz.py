"""Long runs of the model check in tests/model.py, with install(), on each loop.

    python scripts/fuzz.py --examples 100000 [--loop asyncio|uvloop|dropping|all] [--seed N]

Prints, per loop, how many programs ran and how long it took; on a failure, Hypothesis prints the
smallest program it could shrink it to (turn it into a plain regression test in
tests/test_model.py) and the script exits with status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from conftest import _EXPORTER, LOOPS, run_on, tracer
from hypothesis import HealthCheck, given, seed, settings
from model import programs, run_program

import aiotrace


def fuzz(loop_name: str, examples: int, random_seed: int, max_leaves: int) -> int:
    aiotrace.install()
    handoff = hasattr(asyncio.Queue, "consume")
    aiotrace.uninstall()
    ran = 0
    start = time.perf_counter()

    @seed(random_seed)
    @settings(
        max_examples=examples,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(programs(handoff=handoff, executor=loop_name != "dropping", max_leaves=max_leaves))
    def prop(program):
        nonlocal ran
        ran += 1
        if ran % 1000 == 0:
            print(f"{loop_name}: {ran} programs, {time.perf_counter() - start:.0f} s", flush=True)
        _EXPORTER.clear()
        aiotrace.install()
        try:
            outcome = run_program(
                program,
                LOOPS[loop_name],
                tracer,
                _EXPORTER.get_finished_spans,
                detach=loop_name != "dropping",
                run_on=run_on,
            )
        finally:
            aiotrace.uninstall()
        assert outcome.problems() == [], outcome.problems()

    try:
        prop()
    finally:
        print(
            f"{loop_name}: {ran} programs in {time.perf_counter() - start:.1f} s "
            f"(Python {sys.version.split()[0]}, hand-off {'in' if handoff else 'not in'} model)",
            flush=True,
        )
    return ran


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=10_000, help="programs per loop")
    parser.add_argument("--loop", choices=[*sorted(LOOPS), "all"], default="all")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-leaves", type=int, default=16, help="size bound of a program")
    args = parser.parse_args()
    loops = sorted(LOOPS) if args.loop == "all" else [args.loop]
    failed = False
    for name in loops:
        try:
            fuzz(name, args.examples, args.seed, args.max_leaves)
        except Exception as exc:  # Hypothesis has printed the falsifying program
            print(f"{name}: FAILED: {exc}", flush=True)
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
