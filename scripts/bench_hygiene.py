"""Cost of the ``asyncgen`` and ``transport`` patches against stock asyncio, measured in one run.

Each workload runs alternately on stock asyncio and after ``aiotrace.install()`` (``--repeat``
short samples each), on a fresh loop each time. Printed per workload: the stock and patched cost
per operation, their ratio and the microseconds aiotrace adds per operation, from the fastest
sample of each (the least disturbed by the rest of the machine: on a shared 2-core VM the
medians moved by 15 % between runs), and the added microseconds from the medians beside them.

    python scripts/bench_hygiene.py [--loop asyncio|uvloop] [--repeat 31] [--scale 1.0]
                                    [--groups asyncgen,transport] [--clock wall|cpu]

``--groups`` installs only the named patch groups (default: everything ``install()`` applies).
``--clock cpu`` times with ``time.process_time`` (this process's CPU time, kernel included):
steadier than the wall clock on a machine that other work keeps busy.

An operation is one ``async for`` loop over a three-item generator (left with ``break`` after the
first item in every loop, in one loop of four, or in none), one request/response on a TCP
connection whose server pauses reading in ``data_received`` and resumes it from the task that
answers (uvicorn's flow control), or one ``pause_reading()``/``resume_reading()`` pair alone.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from typing import Any, Awaitable, Callable, Dict, List, Tuple

import aiotrace

Workload = Callable[[int], Awaitable[None]]


async def three() -> Any:
    try:
        yield 1
        yield 2
        yield 3
    finally:
        pass


def async_for(break_every: int) -> Workload:
    async def workload(n: int) -> None:
        for i in range(n):
            leave = break_every and i % break_every == 0
            async for _ in three():
                if leave:
                    break
        await asyncio.sleep(0)  # let stock asyncio's close tasks run inside the timing

    return workload


class PausingEcho(asyncio.Protocol):
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.answering: Any = None

    def data_received(self, data: bytes) -> None:
        self.transport.pause_reading()
        self.answering = asyncio.ensure_future(self.answer(data))

    async def answer(self, data: bytes) -> None:
        self.transport.write(data)
        self.transport.resume_reading()


async def paused_echo(n: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(PausingEcho, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for _ in range(n):
        writer.write(b"x")
        await reader.readexactly(1)
    writer.close()
    server.close()
    await server.wait_closed()


async def pause_resume(n: int) -> None:
    """The patch's own cost, without the I/O: pause and resume one connected transport."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    transport, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
    await asyncio.sleep(0)  # the transport registers its reader on the next loop turn
    for _ in range(n):
        transport.pause_reading()
        transport.resume_reading()
    transport.close()
    server.close()
    await server.wait_closed()


WORKLOADS: Dict[str, Tuple[Workload, int]] = {
    "async for, no break": (async_for(0), 10_000),
    "async for, 1 in 4 break": (async_for(4), 10_000),
    "async for, all break": (async_for(1), 10_000),
    "paused echo round trip": (paused_echo, 1_000),
    "pause+resume, no I/O": (pause_resume, 10_000),
}


def new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


CLOCK: Dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


def timed(kind: str, workload: Workload, n: int, clock: Callable[[], float]) -> float:
    loop = new_loop(kind)
    try:
        loop.run_until_complete(workload(min(n, 500)))  # warm up
        start = clock()
        loop.run_until_complete(workload(n))
        elapsed = clock() - start
        loop.run_until_complete(loop.shutdown_asyncgens())
        return elapsed / n
    finally:
        loop.close()


def measure(
    kind: str, workload: Workload, n: int, repeat: int, exclude: List[str], clock: str
) -> Tuple[List[float], List[float]]:
    new_loop(kind).close()  # import uvloop first: install() patches its hooks only once imported
    stock: List[float] = []
    patched: List[float] = []
    for _ in range(repeat):
        aiotrace.uninstall()
        stock.append(timed(kind, workload, n, CLOCK[clock]))
        aiotrace.install(exclude=exclude)
        patched.append(timed(kind, workload, n, CLOCK[clock]))
        aiotrace.uninstall()
    return stock, patched


def main(argv: Any = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    parser.add_argument("--repeat", type=int, default=31)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply operation counts")
    parser.add_argument("--only", help="run only workloads whose name contains this")
    parser.add_argument("--groups", help="comma list of patch groups to install (default: all)")
    parser.add_argument("--clock", choices=sorted(CLOCK), default="wall")
    args = parser.parse_args(argv)
    groups = args.groups.split(",") if args.groups else list(aiotrace.PATCH_NAMES)
    exclude = [name for name in aiotrace.PATCH_NAMES if name not in groups]
    print(
        f"Python {sys.version.split()[0]}, loop {args.loop}, {args.repeat} repetitions, "
        f"fastest of each (median in the last column), {args.clock} clock, "
        f"installed: {args.groups or 'install()'}"
    )
    print(
        f"{'workload':<26}{'stock µs/op':>13}{'aiotrace µs/op':>16}{'ratio':>8}{'added µs/op':>13}"
        f"{'(median)':>10}"
    )
    for name, (workload, n) in WORKLOADS.items():
        if args.only and args.only not in name:
            continue
        stocks, patcheds = measure(
            args.loop, workload, int(n * args.scale), args.repeat, exclude, args.clock
        )
        stock, patched = min(stocks), min(patcheds)
        median_added = statistics.median(patcheds) - statistics.median(stocks)
        print(
            f"{name:<26}{stock * 1e6:>13.3f}{patched * 1e6:>16.3f}"
            f"{patched / stock:>8.3f}{(patched - stock) * 1e6:>+13.3f}{median_added * 1e6:>+10.3f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
