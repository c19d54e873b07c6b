"""Cost of the queue hand-off (a producer context kept per item) against stock asyncio queues.

Each workload runs alternately with asyncio's class and with aiotrace's (several repetitions
each, medians compared), on a fresh loop each time, with an SDK tracer provider installed and a
span current at every ``put`` so that there is a real context to keep. Printed per workload: the
stock and aiotrace cost per item, their ratio, and the microseconds aiotrace adds per item.

    python scripts/bench_handoff.py [--loop asyncio|uvloop] [--repeat 15] [--scale 1.0]
                                    [--clock cpu|wall]

Every workload runs in one thread, so by default the clock is the process's CPU time: other
processes competing for the cores (a busy CI machine) then inflate both columns less.
``--clock wall`` uses ``time.perf_counter`` instead.

The ``consume`` rows compare ``async with q.consume() as item`` against the hand-written
equivalent on a stock queue (``get()`` plus nothing): they price the explicit API itself.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from typing import Any, Callable, Dict, List, Tuple

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

import aiotrace

Workload = Callable[[Any, int], Any]


async def nowait_batch(cls: Any, n: int) -> None:
    """put_nowait 100 items, get_nowait them back: the storage cost alone, no waiting."""
    q = cls()
    items = list(range(100))
    for _ in range(n // 100):
        for item in items:
            q.put_nowait(item)
        for _ in items:
            q.get_nowait()


async def producer_consumer(cls: Any, n: int) -> None:
    """A consumer parked on ``get()`` is woken by every ``put()``: one put/get pair per item."""
    q = cls()

    async def consumer() -> None:
        for _ in range(n):
            await q.get()
            q.task_done()

    task = asyncio.ensure_future(consumer())
    for i in range(n):
        await q.put(i)
        await asyncio.sleep(0)
    await q.join()
    await task


async def priority_nowait_batch(cls: Any, n: int) -> None:
    """PriorityQueue: 100 ``(priority, sequence)`` items, seven priorities, in then out."""
    q = cls()
    items = [(i % 7, i) for i in range(100)]
    for _ in range(n // 100):
        for item in items:
            q.put_nowait(item)
        for _ in items:
            q.get_nowait()


async def priority_same_object(cls: Any, n: int) -> None:
    """PriorityQueue, worst case for the hand-off: seven objects (small ints), each in the
    queue many times at once, so each holds a list of producer contexts."""
    q = cls()
    items = [i % 7 for i in range(100)]
    for _ in range(n // 100):
        for item in items:
            q.put_nowait(item)
        for _ in items:
            q.get_nowait()


async def consume_batch(cls: Any, n: int) -> None:
    """``consume()`` (parent mode) on aiotrace's queue; plain ``get()`` on the stock one."""
    q = cls()
    items = list(range(100))
    handoff = hasattr(q, "consume")
    for _ in range(n // 100):
        for item in items:
            q.put_nowait(item)
        for _ in items:
            if handoff:
                async with q.consume():
                    pass
            else:
                await q.get()


WORKLOADS: Dict[str, Tuple[Workload, str, int]] = {
    "Queue put_nowait/get_nowait": (nowait_batch, "Queue", 200_000),
    "Queue put/get, parked consumer": (producer_consumer, "Queue", 40_000),
    "LifoQueue put_nowait/get_nowait": (nowait_batch, "LifoQueue", 200_000),
    "PriorityQueue put_nowait/get_nowait": (priority_nowait_batch, "PriorityQueue", 100_000),
    "PriorityQueue, same objects many times": (priority_same_object, "PriorityQueue", 100_000),
    "Queue consume() vs get()": (consume_batch, "Queue", 100_000),
}

CLASSES = {
    "Queue": (asyncio.Queue, aiotrace.PropagatingQueue),
    "LifoQueue": (asyncio.LifoQueue, aiotrace.PropagatingLifoQueue),
    "PriorityQueue": (asyncio.PriorityQueue, aiotrace.PropagatingPriorityQueue),
}


def new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


async def in_span(workload: Workload, cls: Any, n: int) -> None:
    with trace.get_tracer("bench").start_as_current_span("producer"):
        await workload(cls, n)


CLOCKS: Dict[str, Callable[[], float]] = {"cpu": time.process_time, "wall": time.perf_counter}


def timed(kind: str, workload: Workload, cls: Any, n: int, clock: Callable[[], float]) -> float:
    loop = new_loop(kind)
    try:
        loop.run_until_complete(in_span(workload, cls, min(n, 2000)))  # warm up
        start = clock()
        loop.run_until_complete(in_span(workload, cls, n))
        return (clock() - start) / n
    finally:
        loop.close()


def measure(
    kind: str, workload: Workload, name: str, n: int, repeat: int, clock: Callable[[], float]
) -> Tuple[float, float]:
    stock_cls, ours_cls = CLASSES[name]
    stock: List[float] = []
    ours: List[float] = []
    for _ in range(repeat):
        stock.append(timed(kind, workload, stock_cls, n, clock))
        ours.append(timed(kind, workload, ours_cls, n, clock))
    return statistics.median(stock), statistics.median(ours)


def main(argv: Any = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="cpu")
    args = parser.parse_args(argv)
    trace.set_tracer_provider(TracerProvider())
    print(
        f"Python {sys.version.split()[0]}, loop {args.loop}, {args.repeat} alternating "
        f"repetitions, medians per item, {args.clock} time"
    )
    print(f"{'workload':40} {'stock µs':>9} {'aiotrace µs':>12} {'ratio':>7} {'added µs':>9}")
    for label, (workload, name, size) in WORKLOADS.items():
        n = max(1000, int(size * args.scale)) // 100 * 100
        stock, ours = measure(args.loop, workload, name, n, args.repeat, CLOCKS[args.clock])
        print(
            f"{label:40} {stock * 1e6:9.3f} {ours * 1e6:12.3f} {ours / stock:7.3f} "
            f"{(ours - stock) * 1e6:9.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
