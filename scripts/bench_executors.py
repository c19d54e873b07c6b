"""Cost of aiotrace's executor hand-offs (thread pools and process pools) against stock.

Every workload runs alternately on stock asyncio/concurrent.futures and after
``aiotrace.install()`` (several repetitions each, medians compared), in one process, with an SDK
tracer provider installed and a span current in the submitter, so that there is a real context
to carry. The same pools serve both sides (the patches are on the classes), created and warmed
up before any timing. Printed per workload: stock and aiotrace cost per operation, their ratio,
and the microseconds aiotrace adds per operation.

    python scripts/bench_executors.py [--repeat 11] [--scale 1.0] [--only TEXT]

The ``alone`` rows time aiotrace's wrapper without a real hand-off, in CPU time of the calling
thread, which isolates its cost from thread wake-up, IPC and scheduling noise: for threads the
job runs inline (``copy_context().run`` and the checks), for processes the job and its
arguments make a pickle round trip and run inline (the carrier's inject, the larger pickle,
extract/attach/detach in the "worker").
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import multiprocessing
import pickle
import statistics
import sys
import time
from typing import Any, Callable, Dict, List, Tuple

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

import aiotrace
from aiotrace import executors

Timed = Callable[[int], float]


def noop() -> None:
    pass


def per_op(fn: Callable[[int], None], clock: Callable[[], float] = time.perf_counter) -> Timed:
    def timed(n: int) -> float:
        start = clock()
        fn(n)
        return (clock() - start) / n

    return timed


def on_loop(kind: str, coro_fn: Callable[[int], Any]) -> Timed:
    def timed(n: int) -> float:
        if kind == "uvloop":
            import uvloop

            loop = uvloop.new_event_loop()
        else:
            loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(coro_fn(min(n, 200)))  # warm up: default executor threads
            start = time.perf_counter()
            loop.run_until_complete(coro_fn(n))
            return (time.perf_counter() - start) / n
        finally:
            loop.close()

    return timed


def thread_workloads(pool: concurrent.futures.ThreadPoolExecutor) -> Dict[str, Tuple[Timed, int]]:
    def submit_result(n: int) -> None:
        for _ in range(n):
            pool.submit(noop).result()

    def submit_burst(n: int) -> None:
        for _ in range(n // 500):
            concurrent.futures.wait([pool.submit(noop) for _ in range(500)])

    async def run_in_executor(n: int) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(n // 10):
            await asyncio.gather(*[loop.run_in_executor(pool, noop) for _ in range(10)])

    def inline(self: Any, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(*args)

    wrapped = executors.patched_submit(inline)

    def alone(n: int) -> None:
        # Stock: the bare inline call; aiotrace: its submit wrapper around that same call.
        submit = wrapped if aiotrace.installed() else inline
        for _ in range(n):
            submit(pool, noop)

    return {
        "thread: submit().result()": (per_op(submit_result), 20_000),
        "thread: submit burst of 500, wait": (per_op(submit_burst), 50_000),
        "thread: run_in_executor x10 (asyncio)": (on_loop("asyncio", run_in_executor), 20_000),
        "thread: run_in_executor x10 (uvloop)": (on_loop("uvloop", run_in_executor), 20_000),
        "thread: wrapper alone (job inline, CPU)": (per_op(alone, time.thread_time), 200_000),
    }


def process_workloads(
    pools: Dict[str, concurrent.futures.ProcessPoolExecutor],
) -> Dict[str, Tuple[Timed, int]]:
    found: Dict[str, Tuple[Timed, int]] = {}
    for method, pool in pools.items():

        def round_trip(n: int, pool: Any = pool) -> None:
            for _ in range(n):
                pool.submit(noop).result()

        async def run_in_executor(n: int, pool: Any = pool) -> None:
            loop = asyncio.get_running_loop()
            for _ in range(n // 10):
                await asyncio.gather(*[loop.run_in_executor(pool, noop) for _ in range(10)])

        found[f"process ({method}): submit().result()"] = (per_op(round_trip), 2_000)
        found[f"process ({method}): run_in_executor x10"] = (
            on_loop("asyncio", run_in_executor),
            4_000,
        )

    def hop(self: Any, fn: Callable[..., Any], *args: Any) -> Any:
        fn, args = pickle.loads(pickle.dumps((fn, args)))
        return fn(*args)

    wrapped = executors.patched_process_submit(hop)

    def alone(n: int) -> None:
        submit = wrapped if aiotrace.installed() else hop
        for _ in range(n):
            submit(None, noop)

    found["process: carrier alone (pickle hop, CPU)"] = (per_op(alone, time.thread_time), 50_000)
    return found


def measure(timed: Timed, n: int, repeat: int) -> Tuple[float, float]:
    stock: List[float] = []
    patched: List[float] = []
    timed(max(n // 10, 10))  # warm up
    for _ in range(repeat):
        aiotrace.uninstall()
        stock.append(timed(n))
        aiotrace.install()
        patched.append(timed(n))
        aiotrace.uninstall()
    return statistics.median(stock), statistics.median(patched)


def main(argv: Any = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=11)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply operation counts")
    parser.add_argument("--only", help="run only workloads whose name contains this")
    args = parser.parse_args(argv)

    trace.set_tracer_provider(TracerProvider())
    tracer = trace.get_tracer("bench")
    methods = [m for m in ("fork", "spawn") if m in multiprocessing.get_all_start_methods()]
    thread_pool = concurrent.futures.ThreadPoolExecutor(4)
    process_pools = {
        m: concurrent.futures.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context(m))
        for m in methods
    }
    for pool in process_pools.values():  # start the workers outside the timings
        concurrent.futures.wait([pool.submit(noop) for _ in range(20)])
    workloads = {**thread_workloads(thread_pool), **process_workloads(process_pools)}

    print(
        f"Python {sys.version.split()[0]}, {args.repeat} repetitions, medians, "
        "a recording span current in the submitter"
    )
    print(f"{'workload':<42}{'stock µs/op':>13}{'aiotrace µs/op':>16}{'ratio':>8}{'added µs':>10}")
    try:
        with tracer.start_as_current_span("bench"):
            for name, (timed, n) in workloads.items():
                if args.only and args.only not in name:
                    continue
                stock, patched = measure(timed, max(int(n * args.scale), 20), args.repeat)
                print(
                    f"{name:<42}{stock * 1e6:>13.3f}{patched * 1e6:>16.3f}"
                    f"{patched / stock:>8.3f}{(patched - stock) * 1e6:>+10.3f}"
                )
    finally:
        thread_pool.shutdown()
        for pool in process_pools.values():
            pool.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
