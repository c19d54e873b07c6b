"""No aiotrace frame in any await chain: ``asyncio.capture_call_graph()`` (Python 3.14+) shows
the same thing with and without ``install()``, for every primitive aiotrace replaces and every
boundary it patches, on the stock loop, uvloop and the context-dropping loop.

Each scenario parks tasks inside a primitive (or across a boundary), captures the call graph of
every other task, releases them and returns what it captured: the chain of coroutine frames
(file name and qualified name) of each task and of the tasks awaiting it. Run once on stock
asyncio and once after ``install()``, the two must be equal. Before aiotrace's installed classes
inherited asyncio's own waiting methods, ``Queue.get`` showed an extra ``get`` frame
(``PropagatingQueue.get``), ``Lock.acquire`` an extra ``acquire`` and so on; CPython's own
``test_asyncio.test_graph`` failed with aiotrace installed for that reason.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from typing import Any, Awaitable, Callable, Dict, List

import pytest
from waiting import until_blocked

import aiotrace

pytestmark = pytest.mark.skipif(
    sys.version_info < (3, 14), reason="asyncio.capture_call_graph exists from Python 3.14 on"
)

AIOTRACE_DIR = os.path.dirname(os.path.abspath(aiotrace.__file__))


def _shape(graph: Any) -> str:
    """A call graph as text: each task (by coroutine name) with its frames, then its awaiters."""
    lines: List[str] = []

    def walk(node: Any, depth: int) -> None:
        future = node.future
        coro = future.get_coro() if isinstance(future, asyncio.Task) else None
        lines.append("  " * depth + f"{type(future).__name__} {getattr(coro, '__qualname__', '')}")
        for entry in node.call_stack:
            code = entry.frame.f_code
            place = "aiotrace/" if os.path.dirname(code.co_filename) == AIOTRACE_DIR else ""
            lines.append(
                "  " * depth + f"  {place}{os.path.basename(code.co_filename)}:{code.co_qualname}"
            )
        for awaiter in node.awaited_by:
            walk(awaiter, depth + 1)

    walk(graph, 0)
    return "\n".join(lines)


async def _snapshot() -> List[str]:
    """The call graph of every task but the current one, each parked first, in a stable order."""
    me = asyncio.current_task()
    others: List[asyncio.Task[Any]] = []
    while len(others) != len(asyncio.all_tasks()) - 1:  # until no parked task made a new one
        others = [t for t in asyncio.all_tasks() if t is not me]
        for task in others:
            await until_blocked(task)
    return sorted(_shape(asyncio.capture_call_graph(t)) for t in others)


async def _parked(wait: Callable[[], Awaitable[Any]], wake: Callable[[], Any]) -> List[str]:
    """Park a task in ``wait()`` (called from a coroutine of this file, so that the chain has
    frames around the wait), capture, then ``wake()`` it and let it finish."""

    async def waiter() -> None:
        await wait()

    task = asyncio.ensure_future(waiter())
    graph = await _snapshot()
    woken = wake()
    if asyncio.iscoroutine(woken):
        await woken
    await task
    return graph


def _queue(kind: str) -> Callable[[], Awaitable[List[str]]]:
    async def scenario() -> List[str]:
        q = getattr(asyncio, kind)()
        return await _parked(q.get, lambda: q.put_nowait(1))

    return scenario


async def _queue_put() -> List[str]:
    q = asyncio.Queue(maxsize=1)
    q.put_nowait(0)
    return await _parked(lambda: q.put(1), q.get_nowait)


async def _queue_join() -> List[str]:
    q = asyncio.Queue()
    q.put_nowait(0)

    def done() -> None:
        q.get_nowait()
        q.task_done()

    return await _parked(q.join, done)


async def _lock() -> List[str]:
    lock = asyncio.Lock()
    await lock.acquire()
    return await _parked(lock.acquire, lock.release)


async def _event() -> List[str]:
    event = asyncio.Event()
    return await _parked(event.wait, event.set)


async def _semaphore() -> List[str]:
    sem = asyncio.Semaphore(0)
    return await _parked(sem.acquire, sem.release)


async def _bounded_semaphore() -> List[str]:
    sem = asyncio.BoundedSemaphore(1)
    await sem.acquire()
    return await _parked(sem.acquire, sem.release)


def _condition(how: str) -> Callable[[], Awaitable[List[str]]]:
    async def scenario() -> List[str]:
        cond = asyncio.Condition()
        ready = [False]

        async def wait() -> None:
            async with cond:
                if how == "wait":
                    await cond.wait()
                else:
                    await cond.wait_for(lambda: ready[0])

        async def notify() -> None:
            async with cond:
                ready[0] = True
                cond.notify_all()

        return await _parked(wait, notify)

    return scenario


async def _condition_acquire() -> List[str]:
    cond = asyncio.Condition()
    await cond.acquire()

    async def enter() -> None:
        async with cond:
            pass

    return await _parked(enter, cond.release)


async def _task_group() -> List[str]:
    event = asyncio.Event()

    async def child() -> None:
        await event.wait()

    async def group() -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(child())

    return await _parked(group, event.set)


async def _create_task() -> List[str]:
    event = asyncio.Event()

    async def child() -> None:
        await event.wait()

    async def parent() -> None:
        await asyncio.create_task(child())

    return await _parked(parent, event.set)


async def _run_in_executor() -> List[str]:
    release = threading.Event()

    async def offload() -> None:
        await asyncio.get_running_loop().run_in_executor(None, release.wait)

    return await _parked(offload, release.set)


async def _async_generator() -> List[str]:
    event = asyncio.Event()

    async def numbers() -> Any:
        await event.wait()
        yield 1

    async def consume() -> None:
        async for _ in numbers():
            pass

    return await _parked(consume, event.set)


async def _stream_server() -> List[str]:
    """A handler parked on an event after reading a line, its client parked on the reply."""
    reached, release = asyncio.Event(), asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = await reader.readline()
        reached.set()
        await release.wait()
        writer.write(line)
        await writer.drain()
        writer.close()

    async def client(address: Any) -> bytes:
        reader, writer = await asyncio.open_connection(*address[:2])
        writer.write(b"ping\n")
        line = await reader.readline()
        writer.close()
        return line

    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    async with server:
        task = asyncio.ensure_future(client(server.sockets[0].getsockname()))
        await reached.wait()
        graph = await _snapshot()
        release.set()
        assert await task == b"ping\n"
    return graph


SCENARIOS: Dict[str, Callable[[], Awaitable[List[str]]]] = {
    "Queue.get": _queue("Queue"),
    "PriorityQueue.get": _queue("PriorityQueue"),
    "LifoQueue.get": _queue("LifoQueue"),
    "Queue.put": _queue_put,
    "Queue.join": _queue_join,
    "Lock.acquire": _lock,
    "Event.wait": _event,
    "Semaphore.acquire": _semaphore,
    "BoundedSemaphore.acquire": _bounded_semaphore,
    "Condition.wait": _condition("wait"),
    "Condition.wait_for": _condition("wait_for"),
    "Condition.acquire": _condition_acquire,
    "TaskGroup": _task_group,
    "create_task": _create_task,
    "run_in_executor": _run_in_executor,
    "async generator": _async_generator,
    "stream server": _stream_server,
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_call_graph_is_the_same_with_aiotrace_installed(run, scenario):
    stock = run(SCENARIOS[scenario]())
    aiotrace.install()
    installed = run(SCENARIOS[scenario]())
    assert installed == stock
    assert not any("aiotrace/" in graph for graph in installed)
