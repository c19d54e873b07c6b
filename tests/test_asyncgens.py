"""Async generators with a span around their ``yield``, left early: closed where they were left
after install(), leaking into the consumer (and failing to detach) on stock asyncio and uvloop."""

from __future__ import annotations

import asyncio
import gc
import sys
import threading

import pytest
from conftest import LOOPS, run_on, tracer, uvloop

import aiotrace
from aiotrace import asyncgens, registry

DETACH_FAILURE = "Failed to detach context"


async def spanning_gen(log, cleanup_awaits=False):
    with tracer.start_as_current_span("gen"):
        try:
            yield 1
            yield 2
        finally:
            if cleanup_awaits:
                await asyncio.sleep(0)
                with tracer.start_as_current_span("cleanup"):
                    pass
            log.append("finally")


async def plain_gen(log):
    try:
        yield 1
        yield 2
    finally:
        log.append("finally")


async def break_early(log, cleanup_awaits=False):
    with tracer.start_as_current_span("main"):
        async for _ in spanning_gen(log, cleanup_awaits):
            break
        log.append("after loop")
        with tracer.start_as_current_span("after"):
            pass
    # Let asyncio's own close task (stock) or the continuation (cleanup_awaits) finish.
    for _ in range(5):
        await asyncio.sleep(0)


def detach_failures(caplog):
    return [r for r in caplog.records if r.name == "opentelemetry.context"]


def test_stock_break_leaks_the_generators_span_and_fails_to_detach(honest_run, spans, caplog):
    log = []
    honest_run(break_early(log))
    assert spans.parent("after") == "gen"
    assert log == ["after loop", "finally"]
    assert [r.getMessage() for r in detach_failures(caplog)] == [DETACH_FAILURE]
    # The failure shown is the point of this test; clear it so the autouse guard passes.
    caplog.clear()


def test_installed_break_closes_the_generator_at_the_break(run, spans):
    aiotrace.install()
    log = []
    run(break_early(log))
    assert log == ["finally", "after loop"]
    assert spans.parent("after") == "main"
    assert spans.parent("gen") == "main"


def test_close_asyncgens_false_keeps_asyncios_behaviour(honest_run, spans, caplog):
    assert "asyncgen" not in aiotrace.install(close_asyncgens=False)
    log = []
    honest_run(break_early(log))
    assert spans.parent("after") == "gen"
    assert len(detach_failures(caplog)) == 1
    caplog.clear()  # the stock failure is expected here


def test_cleanup_that_awaits_finishes_in_a_task_without_detach_failure(honest_run, spans):
    aiotrace.install()
    released = asyncgens.released_foreign_tokens()
    log = []
    honest_run(break_early(log, cleanup_awaits=True))
    assert log == ["after loop", "finally"]
    assert spans.parent("after") == "main"
    assert spans.parent("cleanup") == "gen"
    assert spans.parent("gen") == "main"
    # The generator's own detach ran in the continuation task, a copy of the consumer's context.
    assert asyncgens.released_foreign_tokens() == released + 1


def test_generator_without_spans_is_closed_in_place_and_context_untouched(run, spans):
    aiotrace.install()
    log = []

    async def main():
        with tracer.start_as_current_span("main"):
            async for _ in plain_gen(log):
                break
            log.append("after loop")
            with tracer.start_as_current_span("after"):
                pass

    run(main())
    assert log == ["finally", "after loop"]
    assert spans.parent("after") == "main"


async def _broken_cleanup(awaits):
    try:
        yield 1
    finally:
        if awaits:
            await asyncio.sleep(0)
        raise ValueError("cleanup failed")


async def _collect_handler_calls(awaits):
    loop = asyncio.get_running_loop()
    calls = []
    loop.set_exception_handler(lambda _loop, context: calls.append(context))
    async for _ in _broken_cleanup(awaits):
        break
    for _ in range(5):
        await asyncio.sleep(0)
    gc.collect()  # the failed task is freed (and reported) by the collector
    return calls


@pytest.mark.parametrize("awaits", [False, True], ids=["sync-cleanup", "awaiting-cleanup"])
@pytest.mark.parametrize("installed", [False, True], ids=["stock", "installed"])
def test_cleanup_error_reaches_the_exception_handler_as_asyncio_reports_it(
    honest_run, installed, awaits
):
    if installed:
        aiotrace.install()
    calls = honest_run(_collect_handler_calls(awaits))
    assert [(c["message"], type(c["exception"]), str(c["exception"])) for c in calls] == [
        ("Task exception was never retrieved", ValueError, "cleanup failed")
    ]
    assert isinstance(calls[0]["future"], asyncio.Task)


KEPT = []


async def leave_open(log):
    with tracer.start_as_current_span("main"):
        gen = spanning_gen(log)
        await gen.__anext__()
        KEPT.append(gen)  # still open when main returns: shutdown_asyncgens closes it


def test_stock_shutdown_asyncgens_fails_to_detach(honest_run, spans, caplog):
    log = []
    try:
        honest_run(leave_open(log))
    finally:
        KEPT.clear()
    assert log == ["finally"]
    assert [r.getMessage() for r in detach_failures(caplog)] == [DETACH_FAILURE]
    caplog.clear()  # the failure is what this test shows


def test_installed_shutdown_asyncgens_closes_without_detach_failure(honest_run, spans):
    aiotrace.install()
    released = asyncgens.released_foreign_tokens()
    log = []
    try:
        honest_run(leave_open(log))
    finally:
        KEPT.clear()
    assert log == ["finally"]
    assert spans.parent("gen") == "main"
    # 3.12+ closes it in the finished main task's own context; before, that context cannot be
    # named (C tasks keep it private) and the token is released quietly instead.
    expected = 0 if sys.version_info >= (3, 12) else 1
    assert asyncgens.released_foreign_tokens() == released + expected


def test_shutdown_reports_cleanup_errors_like_asyncio(honest_run):
    aiotrace.install()
    calls = []

    async def main():
        asyncio.get_running_loop().set_exception_handler(lambda _l, c: calls.append(c))
        gen = _broken_cleanup(awaits=True)
        await gen.__anext__()
        KEPT.append(gen)

    try:
        honest_run(main())
    finally:
        KEPT.clear()
    assert len(calls) == 1
    assert calls[0]["message"].startswith("an error occurred during closing of asynchronous gen")
    assert isinstance(calls[0]["exception"], ValueError)


def test_generator_left_in_another_task_falls_back_to_asyncio(honest_run):
    """The task that breaks is not the one the generator started in (whose context holds
    anything the generator attached): asyncio's own hook runs, and closes it later."""
    aiotrace.install()
    log = []

    async def plain():
        try:
            yield 1
            yield 2
        finally:
            log.append("finally")

    async def other(box):
        async for _ in box.pop():
            break
        log.append("other done")

    async def main():
        gen = plain()
        await gen.__anext__()
        box = [gen]
        del gen
        await asyncio.create_task(other(box))
        for _ in range(5):
            await asyncio.sleep(0)

    honest_run(main())
    assert log == ["other done", "finally"]


def test_generator_finalized_on_another_thread_falls_back_to_asyncio(honest_run):
    aiotrace.install()
    log = []

    async def plain():
        try:
            yield 1
        finally:
            log.append(threading.current_thread() is threading.main_thread())

    async def main():
        gen = plain()
        await gen.__anext__()
        box = [gen]
        del gen
        thread = threading.Thread(target=box.clear)
        thread.start()
        thread.join()
        for _ in range(5):
            await asyncio.sleep(0)

    honest_run(main())
    assert log == [True]  # asyncio's hook scheduled aclose() on the loop, as without aiotrace


def test_install_and_uninstall_inside_a_running_loop_switch_its_hooks(honest_run, spans):
    log = []

    async def main():
        stock_finalizer = sys.get_asyncgen_hooks().finalizer
        aiotrace.install()
        assert sys.get_asyncgen_hooks().finalizer.__func__ is not stock_finalizer.__func__
        await break_early(log)
        aiotrace.uninstall()
        assert sys.get_asyncgen_hooks() == (
            asyncio.get_running_loop()._asyncgen_firstiter_hook,
            stock_finalizer,
        )

    honest_run(main())
    assert log == ["finally", "after loop"]
    assert spans.parent("after") == "main"


def test_foreign_hooks_are_left_alone_by_install():
    def firstiter(agen):
        pass

    def finalizer(agen):
        pass

    async def main():
        sys.set_asyncgen_hooks(firstiter=firstiter, finalizer=finalizer)
        aiotrace.install()
        return sys.get_asyncgen_hooks()

    assert run_on(LOOPS["asyncio"], main()) == (firstiter, finalizer)


def test_records_of_generators_run_to_the_end_are_swept(run):
    aiotrace.install()

    async def gen():
        yield 1

    async def main():
        for _ in range(3000):
            async for _ in gen():
                pass

    run(main())
    assert len(asyncgens._started) < 2048


def _hook_owners():
    owners = [asyncio.base_events.BaseEventLoop]
    if uvloop is not None:
        owners.append(uvloop.Loop)
    return owners


HOOKS = ("_asyncgen_firstiter_hook", "_asyncgen_finalizer_hook", "shutdown_asyncgens")


def test_uninstall_restores_the_loops_hooks_exactly():
    before = {(o, name): vars(o).get(name, "<inherited>") for o in _hook_owners() for name in HOOKS}
    sys_hooks = sys.get_asyncgen_hooks()
    assert "asyncgen" in aiotrace.install()
    for owner in _hook_owners():
        for name in HOOKS:
            assert getattr(owner, name).__wrapped__ is not None
    for make in LOOPS.values():
        run_on(make, asyncio.sleep(0))
    assert sys.get_asyncgen_hooks() == sys_hooks
    aiotrace.uninstall()
    after = {(o, name): vars(o).get(name, "<inherited>") for o in _hook_owners() for name in HOOKS}
    assert all(after[key] is before[key] for key in before)


@pytest.mark.skipif(uvloop is None, reason="uvloop not installed")
def test_uvloop_is_patched_only_once_imported():
    patches = [p for p in registry.PATCHES if p.owner == "uvloop:Loop"]
    assert patches and all(p.if_imported for p in patches)
    # conftest imported uvloop, so install() patches uvloop's own hooks here.
    aiotrace.install()
    assert registry.original("uvloop:Loop", "_asyncgen_finalizer_hook") is not None


def test_records_of_generators_that_ran_to_the_end_are_swept():
    """Generators that finish normally never reach the finalizer hook; their records are
    swept once the table has grown past its mark, so it does not grow with the program."""
    import weakref

    class Gone:
        pass

    aiotrace.install()
    dead = {
        -(i + 1): (weakref.ref(Gone()), None, None, None, None)
        for i in range(asyncgens._sweep_at[0] + 10)
    }
    asyncgens._started.update(dead)

    async def one():
        yield 1

    async def main() -> None:
        async for _ in one():
            pass

    run_on(LOOPS["asyncio"], main())
    assert not set(dead) & set(asyncgens._started)


# -- the loop's own bookkeeping: replaced while installed, handed back by uninstall() -----------


def test_uninstall_hands_open_generators_back_to_the_loop(run):
    """The firstiter hook keeps generators in aiotrace's record instead of the loop's own set;
    a generator still open when uninstall() runs must be closed by the loop's (now asyncio's)
    shutdown_asyncgens all the same."""
    aiotrace.install()
    log = []

    async def main():
        gen = plain_gen(log)
        await gen.__anext__()
        KEPT.append(gen)
        aiotrace.uninstall()

    try:
        run(main())
        assert log == ["finally"]
    finally:
        KEPT.clear()


def _in_thread(make_loop, main):
    errors = []

    def target():
        try:
            run_on(make_loop, main())
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    return thread, errors


def test_uninstall_from_another_thread_hands_back_and_stops_recording(loop_name):
    """A loop running in another thread keeps the hooks it read at start after uninstall():
    a generator it had already started, and one it starts afterwards, are both closed by its
    shutdown_asyncgens."""
    aiotrace.install()
    log = []
    started, uninstalled = threading.Event(), threading.Event()

    async def main():
        before = plain_gen(log)
        await before.__anext__()
        started.set()
        assert uninstalled.wait(10)  # blocks this loop's thread while the main thread acts
        after = plain_gen(log)
        await after.__anext__()
        KEPT.extend([before, after])

    thread, errors = _in_thread(LOOPS[loop_name], main)
    try:
        assert started.wait(10)
        aiotrace.uninstall()
        uninstalled.set()
        thread.join(10)
        assert not errors
        assert log == ["finally", "finally"]
    finally:
        uninstalled.set()
        KEPT.clear()


def test_generator_started_while_shutdown_closes_others_is_closed_too(honest_run):
    """A generator first iterated by another's cleanup during shutdown_asyncgens goes to the
    loop's own set (asyncio's hook), which the loop's own shutdown then closes: asyncio would
    warn that it was started after the shutdown began and leave it open."""
    aiotrace.install()
    log = []

    async def late():
        try:
            yield 1
        finally:
            log.append("late finally")

    async def cleanup_starts_another():
        try:
            yield 1
        finally:
            gen = late()
            await gen.__anext__()
            KEPT.append(gen)

    async def main():
        gen = cleanup_starts_another()
        await gen.__anext__()
        KEPT.append(gen)

    try:
        honest_run(main())
        assert log == ["late finally"]
    finally:
        KEPT.clear()
