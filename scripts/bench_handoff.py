"""Cost of the queue hand-off (a producer context kept per item) against stock asyncio queues.

Each workload runs as many short samples (``--samples``, default 101), alternately with asyncio's
class and with aiotrace's, in one loop, with an SDK tracer provider installed and a span current
at every ``put`` so that there is a real context to keep. Printed per workload: the stock and
aiotrace cost per item, their ratio and the microseconds aiotrace adds per item, from the
fastest sample of each (the least disturbed by the rest of the machine: on a shared 2-core VM
the medians of long runs moved by up to 50 % between runs, the minima by a few per cent), and
the added microseconds from the medians for comparison.

    python scripts/bench_handoff.py [--loop asyncio|uvloop] [--samples 101] [--scale 1.0]
                                    [--clock wall|cpu] [--only queue|anyio]

``--clock cpu`` uses the process's CPU time instead of ``time.perf_counter``.

The ``anyio`` rows time anyio's memory object streams (``anyio.create_memory_object_stream``)
as they are and with the ``anyio_stream`` patch group installed, alternately in one run; their
``consume``/``receive_with_context`` rows use aiotrace's functions when installed. anyio must be
installed (it is in the test extra); ``--only queue`` or ``--only anyio`` picks the rows.

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
from aiotrace import registry

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


# -- anyio memory object streams: stock anyio against anyio with the anyio_stream group installed
# (toggled between samples, outside the timed part, by ``prepare``). The nowait row needs no
# event loop; the others run anyio on the benchmark's asyncio loop, as anyio allows.


def anyio_prepare(installed: bool) -> None:
    if installed:
        names = [name for name in registry.PATCH_NAMES if name != "anyio_stream"]
        assert "anyio_stream" in aiotrace.install(exclude=names)
    else:
        aiotrace.uninstall()


async def anyio_nowait_batch(installed: bool, n: int) -> None:
    """send_nowait 100 items into a stream, receive_nowait them back: the storage cost alone."""
    import anyio

    send, receive = anyio.create_memory_object_stream(100)
    items = list(range(100))
    with send, receive:
        for _ in range(n // 100):
            for item in items:
                send.send_nowait(item)
            for _ in items:
                receive.receive_nowait()


async def anyio_parked_receiver(installed: bool, n: int) -> None:
    """A receiver parked on ``receive()`` gets every ``send()`` handed straight to it."""
    import anyio

    send, receive = anyio.create_memory_object_stream(0)

    async def receiver() -> None:
        for _ in range(n):
            if installed:
                await aiotrace.receive_with_context(receive)
            else:
                await receive.receive()

    with send, receive:
        task = asyncio.ensure_future(receiver())
        for i in range(n):
            await send.send(i)
        await task


async def anyio_consume_batch(installed: bool, n: int) -> None:
    """``aiotrace.consume()`` (parent mode) with the group installed; ``receive()`` without."""
    import anyio

    send, receive = anyio.create_memory_object_stream(100)
    items = list(range(100))
    with send, receive:
        for _ in range(n // 100):
            for item in items:
                send.send_nowait(item)
            for _ in items:
                if installed:
                    async with aiotrace.consume(receive):
                        pass
                else:
                    await receive.receive()


for _workload in (anyio_nowait_batch, anyio_parked_receiver, anyio_consume_batch):
    _workload.prepare = anyio_prepare  # type: ignore[attr-defined]

# Items per sample.
WORKLOADS: Dict[str, Tuple[Workload, str, int]] = {
    "Queue put_nowait/get_nowait": (nowait_batch, "Queue", 2000),
    "Queue put/get, parked consumer": (producer_consumer, "Queue", 1000),
    "LifoQueue put_nowait/get_nowait": (nowait_batch, "LifoQueue", 2000),
    "PriorityQueue put_nowait/get_nowait": (priority_nowait_batch, "PriorityQueue", 2000),
    "PriorityQueue, same objects many times": (priority_same_object, "PriorityQueue", 2000),
    "Queue consume() vs get()": (consume_batch, "Queue", 2000),
    "anyio send_nowait/receive_nowait": (anyio_nowait_batch, "anyio", 2000),
    "anyio send/receive_with_context, parked": (anyio_parked_receiver, "anyio", 1000),
    "anyio consume() vs receive()": (anyio_consume_batch, "anyio", 2000),
}

CLASSES = {
    "Queue": (asyncio.Queue, aiotrace.PropagatingQueue),
    "LifoQueue": (asyncio.LifoQueue, aiotrace.PropagatingLifoQueue),
    "PriorityQueue": (asyncio.PriorityQueue, aiotrace.PropagatingPriorityQueue),
    "anyio": (False, True),  # installed or not
}


def new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


CLOCKS: Dict[str, Callable[[], float]] = {"cpu": time.process_time, "wall": time.perf_counter}


async def samples(
    workload: Workload, classes: Tuple[Any, Any], n: int, count: int, clock: Callable[[], float]
) -> Tuple[List[float], List[float]]:
    """``count`` alternating samples of ``n`` items for each class, seconds per item."""
    timings: Tuple[List[float], List[float]] = ([], [])
    with trace.get_tracer("bench").start_as_current_span("producer"):
        prepare = getattr(workload, "prepare", lambda cls: None)
        for cls in classes:  # warm up
            prepare(cls)
            await workload(cls, n)
        for _ in range(count):
            for cls, into in zip(classes, timings):
                prepare(cls)
                start = clock()
                await workload(cls, n)
                into.append((clock() - start) / n)
    return timings


def measure(
    kind: str, workload: Workload, name: str, n: int, count: int, clock: Callable[[], float]
) -> Tuple[List[float], List[float]]:
    if name == "anyio":  # on anyio's own runner: outside it, every anyio call looks up its backend
        import anyio

        return anyio.run(
            samples,
            workload,
            CLASSES[name],
            n,
            count,
            clock,
            backend="asyncio",
            backend_options={"use_uvloop": kind == "uvloop"},
        )
    loop = new_loop(kind)
    try:
        return loop.run_until_complete(samples(workload, CLASSES[name], n, count, clock))
    finally:
        loop.close()


def main(argv: Any = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    parser.add_argument("--samples", type=int, default=101)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply items per sample")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall")
    parser.add_argument("--only", choices=["queue", "anyio"], help="only these rows")
    args = parser.parse_args(argv)
    trace.set_tracer_provider(TracerProvider())
    print(
        f"Python {sys.version.split()[0]}, loop {args.loop}, {args.samples} alternating "
        f"samples, per item, {args.clock} time; fastest sample of each (median in the last "
        "column)"
    )
    print(
        f"{'workload':40} {'stock µs':>9} {'aiotrace µs':>12} {'ratio':>7} {'added µs':>9}"
        f" {'(median)':>9}"
    )
    for label, (workload, name, size) in WORKLOADS.items():
        if args.only and (name == "anyio") != (args.only == "anyio"):
            continue
        n = max(100, int(size * args.scale)) // 100 * 100
        stock, ours = measure(args.loop, workload, name, n, args.samples, CLOCKS[args.clock])
        fast_stock, fast_ours = min(stock), min(ours)
        median_added = statistics.median(ours) - statistics.median(stock)
        print(
            f"{label:40} {fast_stock * 1e6:9.3f} {fast_ours * 1e6:12.3f} "
            f"{fast_ours / fast_stock:7.3f} {(fast_ours - fast_stock) * 1e6:+9.3f}"
            f" {median_added * 1e6:+9.3f}",
            flush=True,
        )
    aiotrace.uninstall()
    return 0


if __name__ == "__main__":
    sys.exit(main())
