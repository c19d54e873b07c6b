"""A task cancelled inside a span leaves nothing behind in its parent and logs no detach failure
(directly, by ``wait_for``, by ``asyncio.timeout`` and by a TaskGroup sibling failing), on stock
asyncio and uvloop, with and without install(). Stock asyncio is already right; these tests keep
it so, and keep aiotrace from changing it."""

from __future__ import annotations

import asyncio
import sys

import pytest
from conftest import tracer
from opentelemetry import context

import aiotrace

needs_311 = pytest.mark.skipif(sys.version_info < (3, 11), reason="new in Python 3.11")


async def blocked_in_span(name, started=None):
    with tracer.start_as_current_span(name):
        if started is not None:
            started.set()
        await asyncio.Event().wait()


async def direct_cancel():
    started = asyncio.Event()
    task = asyncio.ensure_future(blocked_in_span("child", started))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def wait_for_timeout():
    # The timer fires on a later loop turn than the one that starts the coroutine, so the
    # span is open when the cancellation arrives; the coroutine never finishes by itself.
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(blocked_in_span("child"), timeout=1e-6)


async def timeout_cm():
    loop = asyncio.get_running_loop()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout_at(loop.time()):
            await blocked_in_span("child")


async def task_group_sibling_fails():
    async def failing(started):
        await started.wait()
        raise ValueError("sibling failed")

    started = asyncio.Event()
    with pytest.raises(BaseException) as info:  # ExceptionGroup, a 3.11 builtin
        async with asyncio.TaskGroup() as group:
            group.create_task(blocked_in_span("child", started))
            group.create_task(failing(started))
    assert [type(e) for e in info.value.exceptions] == [ValueError]


SCENARIOS = {
    "direct": direct_cancel,
    "wait_for": wait_for_timeout,
    "timeout": pytest.param(timeout_cm, marks=needs_311),
    "task_group": pytest.param(task_group_sibling_fails, marks=needs_311),
}


async def parent(scenario):
    with tracer.start_as_current_span("parent"):
        before = context.get_current()
        await scenario()
        assert context.get_current() is before
        with tracer.start_as_current_span("after"):
            pass
    return context.get_current()


@pytest.mark.parametrize("installed", [False, True], ids=["stock", "installed"])
@pytest.mark.parametrize("scenario", SCENARIOS.values(), ids=list(SCENARIOS))
def test_cancelled_span_leaves_nothing_behind(honest_run, spans, scenario, installed):
    if installed:
        aiotrace.install()
    outside = context.get_current()
    assert honest_run(parent(scenario)) == outside
    assert spans.parent("child") == "parent"
    assert spans.parent("after") == "parent"
    assert spans.span("child").end_time is not None
