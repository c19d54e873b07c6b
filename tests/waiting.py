"""Helpers for tests that park one task on a primitive and wake it from another."""

from __future__ import annotations

import asyncio
from typing import Any, Callable

from opentelemetry import context, trace


async def until_blocked(task: asyncio.Task[Any]) -> None:
    """Yield to the loop until ``task`` is parked on a future.

    Deterministic: it counts loop iterations, never time. ``Task._fut_waiter`` is the future a
    task is suspended on (present in CPython's C and Python tasks, 3.8-3.13, which uvloop uses).
    """
    for _ in range(100):
        if task._fut_waiter is not None:  # type: ignore[attr-defined]
            return
        await asyncio.sleep(0)
    raise AssertionError(f"{task!r} never blocked")


def enter_span(tracer: trace.Tracer, name: str) -> trace.Span:
    """Start span ``name`` and make it current for the rest of this task, without a ``with``
    block: on the context-dropping loop a token reset after an ``await`` would fail because
    the task resumes in another ``contextvars.Context`` (that is the loop's defect, not the
    code under test)."""
    span = tracer.start_span(name)
    context.attach(trace.set_span_in_context(span))
    return span


def current_span_name() -> str:
    return getattr(trace.get_current_span(), "name", "<none>")


class Scenario:
    """One way of parking a task: ``prepare`` sets the primitive up, ``wait`` blocks the waiter,
    ``wake`` (run by another task) releases it. Each takes the primitive."""

    def __init__(
        self,
        make: Callable[[Any], Any],
        wait: Callable[[Any], Any],
        wake: Callable[[Any], Any],
        prepare: Callable[[Any], Any] = lambda obj: None,
    ) -> None:
        self.make, self.wait, self.wake, self.prepare = make, wait, wake, prepare

    async def run(self, classes: Any, tracer: trace.Tracer) -> None:
        """The waiter opens span ``waiter`` and blocks; the waker opens ``waker`` and wakes it;
        the resumed waiter opens ``after``. Which of the two is ``after``'s parent is the
        question every test asks."""
        obj = self.make(classes)
        await _maybe_await(self.prepare(obj))

        async def waiter() -> None:
            span = enter_span(tracer, "waiter")
            await self.wait(obj)
            with tracer.start_as_current_span("after"):
                pass
            span.end()

        task = asyncio.ensure_future(waiter())
        await until_blocked(task)
        span = enter_span(tracer, "waker")
        await _maybe_await(self.wake(obj))
        span.end()
        await task


async def _maybe_await(value: Any) -> Any:
    if asyncio.iscoroutine(value) or isinstance(value, asyncio.Future):
        return await value
    return value
