"""Overhead of aiotrace's patches against stock asyncio, measured in one run.

Each workload runs alternately on stock asyncio and after ``aiotrace.install()`` (several
repetitions each, medians compared), on a fresh loop each time. Printed per workload: the stock
and patched cost per operation, their ratio, and the microseconds aiotrace adds per operation.

    python scripts/bench_overhead.py [--loop asyncio|uvloop] [--repeat 15] [--scale 1.0] [--cpu]

The async-generator and paused-echo rows are the workloads of ``bench_hygiene.py`` (which
also times the ``asyncgen`` and ``transport`` patches alone and their variants).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from typing import Any, Awaitable, Callable, Dict, List, Tuple

from bench_hygiene import async_for, paused_echo

import aiotrace

try:  # before any install(): the anyio_stream patch waits for this module (anyio imports it lazily)
    import anyio.streams.memory as anyio_memory
except ImportError:  # anyio is in the test extra, not a dependency
    anyio_memory = None

Workload = Callable[[int], Awaitable[None]]


async def create_task_gather(n: int) -> None:
    async def noop() -> None:
        pass

    for _ in range(n // 100):
        await asyncio.gather(*[asyncio.create_task(noop()) for _ in range(100)])


async def queue_put_get(n: int) -> None:
    """A consumer parked on ``get()`` is woken by every ``put()``: one put/get pair per op."""
    q = asyncio.Queue()

    async def consumer() -> None:
        for _ in range(n):
            await q.get()

    task = asyncio.create_task(consumer())
    for i in range(n):
        await q.put(i)
        await asyncio.sleep(0)
    await task


async def queue_batches(n: int) -> None:
    """``await put()`` a batch of 100 items, then ``await get()`` them: neither waits, so this is
    the producer-context hand-off alone (plus the classes' fast-path test). One pair per op."""
    q = asyncio.Queue()
    for _ in range(n // 100):
        for i in range(100):
            await q.put(i)
        for _ in range(100):
            await q.get()


async def _take_turns(primitive: Any, n: int) -> None:
    """Four tasks take turns on ``primitive`` (an async context manager held by one task at a
    time): each acquisition waits for the holder."""
    per_task = n // 4

    async def worker() -> None:
        for _ in range(per_task):
            async with primitive:
                await asyncio.sleep(0)

    await asyncio.gather(*[worker() for _ in range(4)])


async def lock_contended(n: int) -> None:
    """Four tasks take turns on one lock, each acquisition waits for the holder."""
    await _take_turns(asyncio.Lock(), n)


async def semaphore_contended(n: int) -> None:
    """Four tasks take turns on a ``Semaphore(1)``: each acquisition waits for the holder."""
    await _take_turns(asyncio.Semaphore(1), n)


async def condition_wait_notify(n: int) -> None:
    """A task parked in ``Condition.wait()`` is notified once per op (and takes the lock)."""
    cond = asyncio.Condition()
    turn = [0]

    async def waiter() -> None:
        async with cond:
            for i in range(n):
                await cond.wait_for(lambda i=i: turn[0] > i)  # type: ignore[misc]

    task = asyncio.create_task(waiter())
    await asyncio.sleep(0)
    for _ in range(n):
        async with cond:
            turn[0] += 1
            cond.notify()
        await asyncio.sleep(0)
    await task


async def queue_put_parked(n: int) -> None:
    """A producer parked on ``put()`` to a full queue is woken by every ``get()``."""
    q = asyncio.Queue(maxsize=1)

    async def producer() -> None:
        for i in range(n):
            await q.put(i)

    task = asyncio.create_task(producer())
    for _ in range(n):
        await asyncio.sleep(0)
        q.get_nowait()
    await task


async def event_wait_set(n: int) -> None:
    async def waiter(ev: asyncio.Event) -> None:
        await ev.wait()

    for _ in range(n):
        ev = asyncio.Event()
        task = asyncio.create_task(waiter(ev))
        await asyncio.sleep(0)
        ev.set()
        await task


async def run_in_executor(n: int) -> None:
    loop = asyncio.get_running_loop()
    for _ in range(n // 10):
        await asyncio.gather(*[loop.run_in_executor(None, int) for _ in range(10)])


async def anyio_stream_batches(n: int) -> None:
    """anyio memory object stream: send_nowait 100 items, receive_nowait them back."""
    send, receive = anyio.create_memory_object_stream(100)
    items = list(range(100))
    with send, receive:
        for _ in range(n // 100):
            for item in items:
                send.send_nowait(item)
            for _ in items:
                receive.receive_nowait()


WORKLOADS: Dict[str, Tuple[Workload, int]] = {
    "create_task+gather": (create_task_gather, 20_000),
    "queue put/get, no waiting": (queue_batches, 100_000),
    "queue put/get, parked": (queue_put_get, 20_000),
    "queue put, parked (full)": (queue_put_parked, 20_000),
    "lock (contended)": (lock_contended, 20_000),
    "semaphore (contended)": (semaphore_contended, 20_000),
    "condition wait/notify": (condition_wait_notify, 10_000),
    "event wait/set": (event_wait_set, 10_000),
    "run_in_executor": (run_in_executor, 4_000),
    "async for, 1 in 4 break": (async_for(4), 20_000),
    "paused echo round trip": (paused_echo, 3_000),
}
if anyio_memory is not None:
    import anyio

    WORKLOADS["anyio stream, no waiting"] = (anyio_stream_batches, 100_000)


def new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


# Wall time by default; ``--cpu`` switches to the process's CPU time (every thread's), which
# moves less when other processes share the cores.
CLOCK = [time.perf_counter]


def timed(kind: str, workload: Workload, n: int) -> float:
    loop = new_loop(kind)
    try:
        loop.run_until_complete(workload(min(n, 1000)))  # warm up (default executor, caches)
        clock = CLOCK[0]
        start = clock()
        loop.run_until_complete(workload(n))
        return (clock() - start) / n
    finally:
        loop.close()


def measure(kind: str, workload: Workload, n: int, repeat: int) -> Tuple[float, float]:
    stock: List[float] = []
    patched: List[float] = []
    for _ in range(repeat):
        aiotrace.uninstall()
        stock.append(timed(kind, workload, n))
        aiotrace.install()
        patched.append(timed(kind, workload, n))
        aiotrace.uninstall()
    return statistics.median(stock), statistics.median(patched)


def main(argv: Any = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply operation counts")
    parser.add_argument("--only", help="run only workloads whose name contains this")
    parser.add_argument("--cpu", action="store_true", help="CPU time instead of wall time")
    args = parser.parse_args(argv)
    if args.cpu:
        CLOCK[0] = time.process_time
    print(
        f"Python {sys.version.split()[0]}, loop {args.loop}, {args.repeat} repetitions, medians"
        f"{', CPU time' if args.cpu else ''}"
    )
    print(
        f"{'workload':<27}{'stock µs/op':>13}{'aiotrace µs/op':>16}{'ratio':>8}{'added µs/op':>13}"
    )
    for name, (workload, n) in WORKLOADS.items():
        if args.only and args.only not in name:
            continue
        stock, patched = measure(args.loop, workload, int(n * args.scale), args.repeat)
        print(
            f"{name:<27}{stock * 1e6:>13.3f}{patched * 1e6:>16.3f}"
            f"{patched / stock:>8.3f}{(patched - stock) * 1e6:>+13.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
