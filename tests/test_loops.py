"""A loop that drops ``call_soon(context=)`` is repaired while aiotrace is installed, and only
such a loop (aiotrace/loops.py): the stock loop and uvloop are left exactly as they are."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import types
from typing import Any, Callable, List

import pytest
from conftest import LOOPS, DroppingLoop, run_on, tracer
from test_waiters import SCENARIOS

import aiotrace
from aiotrace import loops, registry

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("test_loops", default="unset")
STDLIB = types.SimpleNamespace(Lock=asyncio.Lock, Event=asyncio.Event)


class DropsEverything(asyncio.SelectorEventLoop):
    """Ignores ``context=`` in all four methods that take it."""

    def call_soon(self, callback: Callable[..., Any], *args: Any, context: Any = None) -> Any:
        return super().call_soon(callback, *args)

    def call_soon_threadsafe(
        self, callback: Callable[..., Any], *args: Any, context: Any = None
    ) -> Any:
        return super().call_soon_threadsafe(callback, *args)

    def call_later(
        self, delay: float, callback: Callable[..., Any], *args: Any, context: Any = None
    ) -> Any:
        return super().call_later(delay, callback, *args)

    def call_at(
        self, when: float, callback: Callable[..., Any], *args: Any, context: Any = None
    ) -> Any:
        return super().call_at(when, callback, *args)


def _seen_by_callbacks(loop: asyncio.AbstractEventLoop) -> List[str]:
    """What ``VAR`` reads in a callback scheduled with ``context=`` by each of the four
    methods, the context given being one where ``VAR`` is ``"given"``."""
    ctx = contextvars.copy_context()
    ctx.run(VAR.set, "given")
    seen: List[str] = []

    def record() -> None:
        seen.append(VAR.get())

    async def main() -> None:
        done = asyncio.Event()
        loop.call_soon(record, context=ctx)
        loop.call_soon_threadsafe(record, context=ctx)
        loop.call_later(0, record, context=ctx)
        loop.call_at(loop.time(), record, context=ctx)
        loop.call_later(0.001, done.set)
        await done.wait()

    loop.run_until_complete(main())
    return seen


@pytest.mark.parametrize("name", [name for name in sorted(LOOPS) if name != "dropping"])
def test_honest_loops_are_left_as_they_are(name):
    aiotrace.install()
    loop = LOOPS[name]()
    try:
        before = dict(vars(loop)) if hasattr(loop, "__dict__") else None
        assert _seen_by_callbacks(loop) == ["given"] * 4
        assert loops.repaired(loop) == ()
        if before is not None:
            assert set(vars(loop)) == set(before)
    finally:
        loop.close()


def test_the_dropping_loop_has_only_its_call_soon_repaired():
    aiotrace.install()
    loop = DroppingLoop()
    try:
        assert loops.repaired(loop) == ("call_soon",)  # probed when made
        assert _seen_by_callbacks(loop) == ["given"] * 4
    finally:
        loop.close()


def test_each_dropping_method_is_repaired_and_uninstall_takes_the_repairs_off():
    loop = DropsEverything()
    try:
        assert _seen_by_callbacks(loop) == ["unset"] * 4  # the failure
        aiotrace.install()  # after the loop was made: probed when it starts
        assert _seen_by_callbacks(loop) == ["given"] * 4
        assert sorted(loops.repaired(loop)) == sorted(loops.METHODS)
        aiotrace.uninstall()
        assert not set(loops.METHODS) & set(vars(loop))
        assert _seen_by_callbacks(loop) == ["unset"] * 4
    finally:
        loop.close()


def test_install_inside_a_running_dropping_loop_repairs_it_at_once(spans):
    """``install()`` called from a coroutine: the loop it runs in is repaired right away, and
    asyncio's own classes (taken before install) resume their waiters in their own context."""

    async def main() -> None:
        aiotrace.install()
        assert loops.repaired(asyncio.get_running_loop()) == ("call_soon",)
        await SCENARIOS["Lock.acquire"].run(STDLIB, tracer)

    run_on(DroppingLoop, main())
    assert spans.parent("after") == "waiter"


def test_the_first_step_of_a_task_queued_before_the_loop_runs_keeps_its_context():
    """``run_until_complete`` queues its task before the loop runs: the loop is probed when it
    is made, so that first step already runs in the task's own context, and what it sets is
    still there after an ``await``."""
    aiotrace.install()

    async def main() -> str:
        VAR.set("first step")
        await asyncio.sleep(0)
        return VAR.get()

    assert run_on(DroppingLoop, main()) == "first step"


def test_the_repair_goes_with_the_waiter_groups():
    assert "loop_context" in registry.selected()
    assert "loop_context" in registry.selected(patch_locks=False)
    assert "loop_context" in registry.selected(patch_queue=False)
    assert "loop_context" not in registry.selected(patch_queue=False, patch_locks=False)
    assert "loop_context" not in registry.selected(exclude=["loop_context"])


def test_uninstall_leaves_a_loop_method_replaced_by_someone_else():
    aiotrace.install()
    loop = DroppingLoop()
    try:
        # aiotrace's repair, wrapped by someone else
        loop.call_soon = functools.partial(loop.call_soon)  # type: ignore[method-assign]
        mine = loop.call_soon
        aiotrace.uninstall()
        assert loop.call_soon is mine
    finally:
        loop.close()
