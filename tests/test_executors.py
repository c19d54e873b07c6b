"""Thread-pool and process-pool hand-offs run in the submitter's context.

Every path is shown twice: on stock asyncio the worker's span is a new root (or, for a forked
process-pool worker, a child of whatever span was current when the worker was forked), and with
aiotrace it is the caller's child.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import multiprocessing
import re
import subprocess
import sys
import threading
from typing import Any, Awaitable, Callable, Dict

import procjobs
import pytest
from conftest import LOOPS, run_on, tracer
from opentelemetry import baggage, context, trace

import aiotrace
from aiotrace import executors, registry
from aiotrace.propagation import call_with_carrier

Work = Callable[[], int]


def work(name: str = "worker") -> int:
    with tracer.start_as_current_span(name):
        return threading.get_ident()


async def via_default_executor(fn: Work) -> int:
    return await asyncio.get_running_loop().run_in_executor(None, fn)


async def via_run_in_executor(fn: Work) -> int:
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return await asyncio.get_running_loop().run_in_executor(pool, fn)


async def via_set_default_executor(fn: Work) -> int:
    loop = asyncio.get_running_loop()
    pool = concurrent.futures.ThreadPoolExecutor(1)
    loop.set_default_executor(pool)
    try:
        return await loop.run_in_executor(None, fn)
    finally:
        pool.shutdown()


async def via_submit(fn: Work) -> int:
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return await asyncio.wrap_future(pool.submit(fn))


async def via_map(fn: Work) -> int:
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        (result,) = pool.map(lambda _: fn(), [None])
        return result


THREAD_PATHS: Dict[str, Callable[[Work], Awaitable[int]]] = {
    "run_in_executor(None)": via_default_executor,
    "run_in_executor(pool)": via_run_in_executor,
    "set_default_executor": via_set_default_executor,
    "submit": via_submit,
    "map": via_map,
}


async def in_caller(path: Callable[[Work], Awaitable[int]]) -> None:
    with tracer.start_as_current_span("caller"):
        assert await path(work) != threading.get_ident()


@pytest.mark.parametrize("path", sorted(THREAD_PATHS))
def test_thread_pool_job_is_a_root_without_aiotrace(honest_run, spans, path):
    honest_run(in_caller(THREAD_PATHS[path]))
    assert spans.parent("worker") is None


@pytest.mark.parametrize("path", sorted(THREAD_PATHS))
def test_installed_thread_pool_job_is_the_callers_child(honest_run, spans, path):
    aiotrace.install()
    honest_run(in_caller(THREAD_PATHS[path]))
    assert spans.parent("worker") == "caller"
    assert spans.trace_of("worker") == spans.trace_of("caller")


@pytest.mark.parametrize("executor", [None, "pool"])
def test_run_in_executor_with_context_needs_no_install(honest_run, spans, executor):
    async def main() -> None:
        with concurrent.futures.ThreadPoolExecutor(1) as pool, tracer.start_as_current_span(
            "caller"
        ):
            await aiotrace.run_in_executor_with_context(pool if executor else None, work)

    honest_run(main())
    assert spans.parent("worker") == "caller"


@pytest.mark.skipif(sys.version_info < (3, 9), reason="asyncio.to_thread is 3.9+")
@pytest.mark.parametrize("patched", [False, True], ids=["stock", "installed"])
def test_to_thread_stays_correct(honest_run, spans, patched):
    if patched:
        aiotrace.install()

    async def main() -> None:
        with tracer.start_as_current_span("caller"):
            await asyncio.to_thread(work)

    honest_run(main())
    assert spans.parent("worker") == "caller"


@pytest.mark.parametrize("patched", [False, True], ids=["stock", "installed"])
def test_reused_worker_thread_never_keeps_a_jobs_context(spans, patched):
    """A job that attaches a context and never detaches it: on stock asyncio the next job on
    the same worker thread runs under it; with aiotrace each job has its own copy."""
    if patched:
        aiotrace.install()

    def leaky() -> int:
        span = tracer.start_span("leaky")
        span.end()
        context.attach(trace.set_span_in_context(span))
        return threading.get_ident()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        with tracer.start_as_current_span("first"):
            first_thread = pool.submit(leaky).result()
        second_thread = pool.submit(work, "next").result()
    assert first_thread == second_thread
    assert spans.parent("next") == (None if patched else "leaky")


def test_each_job_on_a_reused_worker_gets_its_own_submitter(spans):
    aiotrace.install()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        threads = set()
        for i in range(3):
            with tracer.start_as_current_span(f"caller{i}"):
                threads.add(pool.submit(work, f"job{i}").result())
    assert len(threads) == 1
    assert [spans.parent(f"job{i}") for i in range(3)] == ["caller0", "caller1", "caller2"]


def test_submit_wrapper_leaves_callables_that_carry_their_context():
    """``ctx.run`` (``run_in_executor_with_context``), ``partial(ctx.run, ...)``
    (``asyncio.to_thread``) and opentelemetry-instrumentation-threading's wrapper are passed
    through unwrapped; anything else is wrapped exactly once."""
    received = []
    submit = executors.patched_submit(lambda self, fn, *args: received.append(fn))
    ctx = contextvars.copy_context()
    foreign = functools.partial(ctx.run, work)

    def theirs() -> None:
        pass

    theirs.__module__ = "opentelemetry.instrumentation.threading"
    for fn in (ctx.run, foreign, theirs, work):
        submit(None, fn)
    assert received[:3] == [ctx.run, foreign, theirs]
    assert isinstance(received[3].__self__, contextvars.Context)


# Process pools --------------------------------------------------------------------------------

START_METHODS = [
    m for m in ("fork", "spawn", "forkserver") if m in multiprocessing.get_all_start_methods()
]
fork_warning = pytest.mark.filterwarnings(
    # 3.12+ warns that forking a process with threads may deadlock; the pool's children here
    # only run the module-level jobs of procjobs.
    "ignore:This process .* is multi-threaded:DeprecationWarning"
)


@pytest.fixture(params=START_METHODS)
def pool(request: pytest.FixtureRequest) -> Any:
    ctx = multiprocessing.get_context(request.param)
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:
        yield pool


@pytest.fixture
def span_file(tmp_path: Any) -> str:
    return str(tmp_path / "worker-spans.jsonl")


def in_process_caller(pool: Any, hand_off: Callable[..., Awaitable[Any]]) -> Any:
    """On a fresh loop: start the pool's worker outside any span, then call ``hand_off`` under
    span ``caller`` with baggage ``user=ada``. Returns the caller's span context."""

    async def main() -> Any:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(pool, procjobs.noop)
        with tracer.start_as_current_span("caller") as caller:
            token = context.attach(baggage.set_baggage("user", "ada"))
            try:
                await hand_off(loop)
            finally:
                context.detach(token)
            return caller.get_span_context()

    return main()


@fork_warning
def test_process_pool_job_is_a_root_without_aiotrace(pool, span_file):
    caller = run_on(
        asyncio.SelectorEventLoop,
        in_process_caller(
            pool, lambda loop: loop.run_in_executor(pool, procjobs.traced, span_file, "worker")
        ),
    )
    worker = procjobs.one(span_file, "worker")
    assert worker["parent_id"] is None
    assert worker["trace_id"] != caller.trace_id
    assert worker["attributes"]["baggage.user"] == "None"


def assert_callers_child(span_file: str, name: str, caller: Any) -> None:
    worker = procjobs.one(span_file, name)
    assert worker["parent_id"] == caller.span_id
    assert worker["trace_id"] == caller.trace_id
    assert worker["attributes"]["baggage.user"] == "ada"


@fork_warning
def test_run_in_executor_with_context_carries_to_a_process_pool(pool, span_file):
    caller = run_on(
        asyncio.SelectorEventLoop,
        in_process_caller(
            pool,
            lambda loop: aiotrace.run_in_executor_with_context(
                pool, procjobs.traced, span_file, "worker"
            ),
        ),
    )
    assert_callers_child(span_file, "worker", caller)
    assert aiotrace.installed() == frozenset()


@fork_warning
@pytest.mark.parametrize("loop_name", [name for name in sorted(LOOPS) if name != "dropping"])
def test_installed_run_in_executor_carries_to_a_process_pool(pool, span_file, loop_name):
    aiotrace.install()
    caller = run_on(
        LOOPS[loop_name],
        in_process_caller(
            pool, lambda loop: loop.run_in_executor(pool, procjobs.traced, span_file, "worker")
        ),
    )
    assert_callers_child(span_file, "worker", caller)


@fork_warning
def test_installed_submit_and_map_carry_to_a_process_pool(pool, span_file):
    aiotrace.install()

    async def hand_off(loop: Any) -> None:
        pool.submit(procjobs.traced, span_file, "submitted").result()
        list(pool.map(procjobs.traced, [span_file], ["mapped"]))
        # Not wrapped twice when both the explicit helper and the patch are in play.
        await aiotrace.run_in_executor_with_context(pool, procjobs.traced, span_file, "helper")

    caller = run_on(asyncio.SelectorEventLoop, in_process_caller(pool, hand_off))
    for name in ("submitted", "mapped", "helper"):
        assert_callers_child(span_file, name, caller)


@fork_warning
@pytest.mark.parametrize("patched", [False, True], ids=["stock", "installed"])
def test_forked_worker_keeps_the_forkers_span_only_without_aiotrace(span_file, patched):
    """A forked worker starts with a copy of the context of the thread that forked it, so on
    stock asyncio every later job runs under the span that happened to be current then."""
    if patched:
        aiotrace.install()
    ctx = multiprocessing.get_context("fork")

    async def main() -> Any:
        loop = asyncio.get_running_loop()
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:
            with tracer.start_as_current_span("forker") as forker:
                await loop.run_in_executor(pool, procjobs.noop)
            await loop.run_in_executor(pool, procjobs.traced, span_file, "worker")
        return forker.get_span_context()

    forker = run_on(asyncio.SelectorEventLoop, main())
    assert procjobs.parent_id(span_file, "worker") == (None if patched else forker.span_id)


def test_process_submit_wrapper_sends_the_carrier_once():
    received = []
    submit = executors.patched_process_submit(lambda self, fn, *args: received.append(fn))
    with tracer.start_as_current_span("caller") as caller:
        submit(None, procjobs.noop)
        submit(None, received[0])
    assert received[1] is received[0]
    carried = received[0]
    assert carried.func is call_with_carrier
    assert carried.args[1] is procjobs.noop
    assert f"{caller.get_span_context().span_id:016x}" in carried.args[0]["traceparent"]


def test_install_imports_no_process_pool_machinery_and_a_later_install_patches_it():
    """``install()`` leaves ``concurrent.futures.process`` (and so multiprocessing) unimported;
    once the application has imported it, the next ``install()`` patches it."""
    script = (
        "import asyncio, sys, aiotrace\n"
        "aiotrace.install()\n"
        "async def main():\n"
        "    await aiotrace.run_in_executor_with_context(None, int)\n"
        "asyncio.run(main())\n"
        "print('multiprocessing' in sys.modules, 'process_pool' in aiotrace.installed())\n"
        "from concurrent.futures import ProcessPoolExecutor\n"
        "print('process_pool' in aiotrace.install())\n"
        "print(aiotrace.threads.thread_propagation()['ProcessPoolExecutor.submit'])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert done.stdout.split() == ["False", "False", "True", "aiotrace"]


def test_interpreter_pools_are_left_alone(monkeypatch):
    """Python 3.14's InterpreterPoolExecutor pickles each job for another interpreter: a bound
    ``Context.run`` cannot go there, so its jobs are submitted unchanged. (Simulated here, on
    every Python; the real pool runs in test_real_interpreter_pool_keeps_working_under_install.)"""

    class InterpreterPoolExecutor(concurrent.futures.ThreadPoolExecutor):
        pass

    fake = type(sys)("concurrent.futures.interpreter")
    fake.InterpreterPoolExecutor = InterpreterPoolExecutor
    monkeypatch.setitem(sys.modules, "concurrent.futures.interpreter", fake)
    received = []
    submit = executors.patched_submit(lambda self, fn, *args: received.append(fn))

    class Subclass(concurrent.futures.ThreadPoolExecutor):
        pass

    for cls in (InterpreterPoolExecutor, Subclass, concurrent.futures.ThreadPoolExecutor):
        submit(cls.__new__(cls), work)
    assert received[0] is work
    assert [isinstance(fn.__self__, contextvars.Context) for fn in received[1:]] == [True, True]


@pytest.mark.skipif(sys.version_info < (3, 14), reason="InterpreterPoolExecutor is 3.14+")
def test_real_interpreter_pool_keeps_working_under_install(run):
    """The real 3.14+ pool, on every loop: submit, map and run_in_executor work under
    install(), and the pool receives the caller's own callable (left alone, nothing to
    pickle but what the caller gave)."""
    import operator
    from concurrent.futures import InterpreterPoolExecutor

    aiotrace.install()
    received = []

    class Recording(InterpreterPoolExecutor):
        def submit(self, fn, /, *args, **kwargs):
            received.append(fn)
            return super().submit(fn, *args, **kwargs)

    async def main():
        with Recording(1) as pool, tracer.start_as_current_span("caller"):
            assert pool.submit(operator.add, 2, 3).result() == 5
            assert list(pool.map(operator.neg, [1, 2])) == [-1, -2]
            loop = asyncio.get_running_loop()
            assert await loop.run_in_executor(pool, operator.mul, 3, 4) == 12

    run(main())
    assert received[0] is operator.add
    assert all(fn in (operator.add, operator.neg, operator.mul) for fn in received)


def test_submit_without_a_positional_callable_behaves_as_the_stdlibs():
    """``submit()`` with no callable: TypeError; Python 3.8's deprecated ``submit(fn=...)``:
    a DeprecationWarning and the job runs. The stdlib decides both, as without aiotrace."""
    import concurrent.futures
    import concurrent.futures.process  # before install(): its pool is patched when imported
    import sys
    import warnings

    aiotrace.install()
    stock = registry.original("concurrent.futures.process:ProcessPoolExecutor", "submit")
    with concurrent.futures.ProcessPoolExecutor(1) as processes:  # refused before any worker
        with pytest.raises(TypeError) as refused:
            stock(processes, arg=1)
        with pytest.raises(TypeError, match=f"^{re.escape(str(refused.value))}$"):
            processes.submit(arg=1)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        with pytest.raises(TypeError):
            pool.submit(arg=1)
        if sys.version_info < (3, 9):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                assert pool.submit(fn=lambda **kw: kw, arg=1).result() == {"arg": 1}
            assert [w.category for w in caught] == [DeprecationWarning]
