"""A randomized model check of aiotrace: random asyncio programs, what their spans must look like.

A program is a tree of operations (tasks, gather, TaskGroups, queues, locks, events, semaphores,
conditions, executor jobs, async generators, cancellations). Its meaning is lexical: every span
a program opens must be the child of the span that encloses it in the program text (for a
queue hand-off, the span around the producer's ``put``), wherever the code really runs. The
interpreter records that expected parent for each span, runs the program on a real loop, and
reports:

- every finished span whose parent differs from the model;
- every operation after which the task's OpenTelemetry context is not the one it had before;
- every ``Failed to detach context`` that OpenTelemetry logged.

Used by tests/test_model.py (a fixed-seed profile) and scripts/fuzz.py (long runs).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

from hypothesis import strategies as st
from opentelemetry import context, trace

Op = Tuple[Any, ...]
Block = List[Op]

HAS_TASK_GROUP = sys.version_info >= (3, 11)
WAITS = ("lock", "event", "semaphore", "condition")
CANCELS = ("cancel", "wait_for") + (("timeout",) if HAS_TASK_GROUP else ())


def programs(
    handoff: bool, executor: bool = True, max_leaves: int = 12
) -> st.SearchStrategy[Block]:
    """Random programs. ``handoff``: include the queue producer hand-off (``consume()``);
    ``executor``: include ``await loop.run_in_executor(...)``."""
    leaves = st.sampled_from([("sleep",), ("executor",)] if executor else [("sleep",)])
    # Bodies of cancelled tasks: spans and sleeps only, so a cancellation can land anywhere.
    cancellable = st.recursive(
        st.lists(st.just(("sleep",)), max_size=2),
        lambda inner: st.lists(
            st.one_of(st.just(("sleep",)), st.tuples(st.just("span"), inner)), max_size=2
        ),
        max_leaves=4,
    )

    def compound(blocks: st.SearchStrategy[Block]) -> st.SearchStrategy[Op]:
        many = st.lists(blocks, min_size=1, max_size=3)
        options = [
            st.tuples(st.just("span"), blocks),
            st.tuples(st.just("task"), blocks),
            st.tuples(st.just("gather"), many),
            st.tuples(st.sampled_from(("queue",) + (("handoff",) if handoff else ())), blocks),
            st.tuples(st.sampled_from(WAITS), blocks),
            st.tuples(
                st.just("agen"),
                st.integers(0, 3),  # items yielded
                st.integers(0, 3),  # break after this item (>= items: runs to the end)
                st.booleans(),  # cleanup awaits
                blocks,  # loop body
            ),
            st.tuples(st.sampled_from(CANCELS), cancellable),
        ]
        if HAS_TASK_GROUP:
            options.append(st.tuples(st.just("task_group"), many))
        return st.one_of(options)

    return st.recursive(
        st.lists(leaves, max_size=2),
        lambda blocks: st.lists(st.one_of(leaves, compound(blocks)), min_size=1, max_size=3),
        max_leaves=max_leaves,
    )


class _DetachFailures(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: List[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@dataclass
class Outcome:
    expected: Dict[str, Optional[str]]
    actual: Dict[str, Optional[str]]
    changed_context: List[str] = field(default_factory=list)
    detach_failures: List[str] = field(default_factory=list)
    cancelled: bool = False

    def problems(self) -> List[str]:
        found = [
            f"span {name}: parent {self.actual[name]}, model says {self.expected.get(name, '?')}"
            for name in sorted(self.actual, key=lambda n: int(n[1:]))
            if self.expected.get(name, "<not in model>") != self.actual[name]
        ]
        if not self.cancelled and set(self.actual) != set(self.expected):
            found.append(f"spans not finished: {sorted(set(self.expected) - set(self.actual))}")
        found += [f"context changed by {what}" for what in self.changed_context]
        found += [f"OpenTelemetry logged: {msg}" for msg in self.detach_failures]
        return found


class _Scope:
    """A current span. ``detach=False`` restores the previous context by attaching it again
    instead of detaching a token: on the context-dropping loop a task resumes in another
    ``contextvars.Context`` after an await, where no token of its own could be reset (that is
    the test loop's defect, not aiotrace's; see tests/waiting.py)."""

    def __init__(self, tracer: trace.Tracer, name: str, detach: bool) -> None:
        self.tracer, self.name, self.detach = tracer, name, detach

    def __enter__(self) -> None:
        self.span = self.tracer.start_span(self.name)
        self.saved = context.get_current()
        self.token = context.attach(trace.set_span_in_context(self.span))

    def __exit__(self, *exc: Any) -> None:
        if self.detach:
            context.detach(self.token)
        else:
            context.attach(self.saved)
        self.span.end()


class Interpreter:
    def __init__(self, tracer: trace.Tracer, detach: bool, pool: concurrent.futures.Executor):
        self.tracer, self.detach, self.pool = tracer, detach, pool
        self.expected: Dict[str, Optional[str]] = {}
        self.changed: List[str] = []
        self.cancelled = False

    def new(self, parent: Optional[str]) -> str:
        name = f"s{len(self.expected)}"
        self.expected[name] = parent
        return name

    def scope(self, name: str) -> _Scope:
        return _Scope(self.tracer, name, self.detach)

    async def block(self, ops: Block, cur: Optional[str]) -> None:
        for op in ops:
            before = context.get_current()
            await self.op(op, cur)
            if context.get_current() is not before:
                self.changed.append(op[0])
                context.attach(before)

    async def op(self, op: Op, cur: Optional[str]) -> None:
        kind = op[0]
        loop = asyncio.get_running_loop()
        if kind == "sleep":
            await asyncio.sleep(0)
        elif kind == "executor":
            await loop.run_in_executor(self.pool, self.in_thread, cur)
        elif kind == "span":
            name = self.new(cur)
            with self.scope(name):
                await self.block(op[1], name)
        elif kind == "task":
            await asyncio.ensure_future(self.spanned_at(op[1], cur))
        elif kind == "gather":
            await asyncio.gather(*[self.spanned_at(body, cur) for body in op[1]])
        elif kind == "task_group":
            async with asyncio.TaskGroup() as group:
                for body in op[1]:
                    group.create_task(self.spanned_at(body, cur))
        elif kind in ("queue", "handoff"):
            await self.queue(op, cur)
        elif kind in WAITS:
            await self.wait(kind, op[1], cur)
        elif kind == "agen":
            await self.agen(*op[1:], cur=cur)
        else:
            await self.cancel(kind, op[1], cur)

    async def spanned_at(self, ops: Block, cur: Optional[str]) -> None:
        name = self.new(cur)
        with self.scope(name):
            await self.block(ops, name)

    def in_thread(self, cur: Optional[str]) -> None:
        with self.scope(self.new(cur)):
            pass

    async def queue(self, op: Op, cur: Optional[str]) -> None:
        queue: Any = asyncio.Queue()
        producer = self.new(cur)
        handoff = op[0] == "handoff"

        async def consumer() -> None:
            if handoff:
                async with queue.consume():
                    await self.spanned_at(op[1], producer)
            else:
                await queue.get()
                await self.spanned_at(op[1], cur)

        task = asyncio.ensure_future(consumer())
        await _until_blocked(task)
        with self.scope(producer):
            await queue.put(1)
        await task

    async def wait(self, kind: str, body: Block, cur: Optional[str]) -> None:
        primitive: Any = {
            "lock": asyncio.Lock,
            "event": asyncio.Event,
            "semaphore": lambda: asyncio.Semaphore(0),
            "condition": asyncio.Condition,
        }[kind]()
        if kind == "lock":
            await primitive.acquire()

        async def waiter() -> None:
            if kind == "condition":
                async with primitive:
                    await primitive.wait()
            elif kind == "event":
                await primitive.wait()
            else:
                await primitive.acquire()
            await self.spanned_at(body, cur)
            if kind == "lock":
                primitive.release()

        task = asyncio.ensure_future(waiter())
        await _until_blocked(task)
        with self.scope(self.new(cur)):
            if kind == "condition":
                async with primitive:
                    primitive.notify_all()
            elif kind == "event":
                primitive.set()
            else:
                primitive.release()
        await task

    async def agen(
        self, items: int, break_at: int, cleanup_awaits: bool, body: Block, cur: Optional[str]
    ) -> None:
        name = self.new(cur)

        async def gen() -> Any:
            with self.scope(name):
                try:
                    for i in range(items):
                        yield i
                finally:
                    if cleanup_awaits:
                        await asyncio.sleep(0)
                        with self.scope(self.new(name)):
                            pass

        async for i in gen():
            await self.block(body, name)
            if i == break_at:
                break
        # An awaiting cleanup finishes in a task of its own: let it run before the next check.
        for _ in range(3):
            await asyncio.sleep(0)

    async def cancel(self, kind: str, body: Block, cur: Optional[str]) -> None:
        self.cancelled = True
        reached = asyncio.Event()

        async def child() -> None:
            name = self.new(cur)
            with self.scope(name):
                await self.block(body, name)
                reached.set()
                await asyncio.Event().wait()

        if kind == "cancel":
            task = asyncio.ensure_future(child())
            await reached.wait()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        elif kind == "wait_for":
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(child(), timeout=1e-6)
        else:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(asyncio.get_running_loop().time()):
                    await child()


async def _until_blocked(task: asyncio.Task[Any]) -> None:
    for _ in range(1000):
        if task._fut_waiter is not None:  # type: ignore[attr-defined]
            return
        await asyncio.sleep(0)
    raise AssertionError(f"{task!r} never blocked")


def run_program(
    program: Block,
    make_loop: Callable[[], asyncio.AbstractEventLoop],
    tracer: trace.Tracer,
    finished: Callable[[], List[Any]],
    detach: bool,
    run_on: Callable[..., Any],
) -> Outcome:
    """Run ``program`` on a new loop; ``finished()`` returns the spans exported so far (the
    caller clears its exporter before)."""
    handler = _DetachFailures()
    otel_logger = logging.getLogger("opentelemetry.context")
    otel_logger.addHandler(handler)
    pool = concurrent.futures.ThreadPoolExecutor(1)
    interpreter = Interpreter(tracer, detach, pool)

    async def main() -> None:
        await interpreter.block(program, None)

    try:
        run_on(make_loop, main())
    finally:
        otel_logger.removeHandler(handler)
        pool.shutdown(wait=True)
    spans = finished()
    names = {s.context.span_id: s.name for s in spans}
    actual = {
        s.name: None if s.parent is None else names.get(s.parent.span_id, "<unknown>")
        for s in spans
    }
    return Outcome(
        expected=interpreter.expected,
        actual=actual,
        changed_context=interpreter.changed,
        detach_failures=[r.getMessage() for r in handler.records],
        cancelled=interpreter.cancelled,
    )
