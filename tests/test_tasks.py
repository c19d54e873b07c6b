"""Task creation: stock asyncio already nests spans correctly (kept so), ``otel_ctx=`` lets the
caller choose the context a task starts with, and ``linked_root`` starts background work in a
new trace linked to the caller's."""

from __future__ import annotations

import asyncio
import contextvars
import sys

import pytest
from conftest import tracer
from opentelemetry import baggage, context, trace
from opentelemetry.trace import StatusCode

import aiotrace

needs_311 = pytest.mark.skipif(sys.version_info < (3, 11), reason="needs Python 3.11+")
needs_312 = pytest.mark.skipif(sys.version_info < (3, 12), reason="needs Python 3.12+")
var = contextvars.ContextVar("var", default="unset")


async def child(name: str = "child") -> str:
    with tracer.start_as_current_span(name):
        await asyncio.sleep(0)
    return name


@pytest.mark.stock_detach_failures
@pytest.mark.parametrize("installed", [False, True], ids=["stock", "installed"])
@pytest.mark.parametrize("how", ["create_task", "ensure_future", "gather", "loop.create_task"])
def test_children_nest_under_their_creator(run, spans, installed, how):
    if installed:
        aiotrace.install()

    async def main() -> None:
        with tracer.start_as_current_span("parent"):
            if how == "create_task":
                await asyncio.create_task(child())
            elif how == "ensure_future":
                await asyncio.ensure_future(child())
            elif how == "gather":
                await asyncio.gather(child())
            else:
                await asyncio.get_running_loop().create_task(child())

    run(main())
    assert spans.parent("child") == "parent"


@pytest.mark.stock_detach_failures
@needs_311
@pytest.mark.parametrize("installed", [False, True], ids=["stock", "installed"])
def test_task_group_children_nest(run, spans, installed):
    if installed:
        aiotrace.install()

    async def main() -> None:
        with tracer.start_as_current_span("parent"):
            async with asyncio.TaskGroup() as group:
                group.create_task(child("a"))
                group.create_task(child("b"))

    run(main())
    assert spans.parent("a") == spans.parent("b") == "parent"


def test_stock_create_task_cannot_detach_but_otel_ctx_can(honest_run, spans):
    async def main() -> None:
        with tracer.start_as_current_span("request"):
            await asyncio.create_task(child("stock"))
            await aiotrace.create_task_with_context(child("detached"), otel_ctx=context.Context())

    honest_run(main())
    assert spans.parent("stock") == "request"
    assert spans.parent("detached") is None
    assert spans.trace_of("detached") != spans.trace_of("request")


def test_otel_ctx_can_name_another_parent(honest_run, spans):
    async def main() -> None:
        with tracer.start_as_current_span("elsewhere"):
            handed_over = context.get_current()
        with tracer.start_as_current_span("caller"):
            await aiotrace.create_task_with_context(child(), otel_ctx=handed_over)
            assert trace.get_current_span().name == "caller"

    honest_run(main())
    assert spans.parent("child") == "elsewhere"


def test_default_is_the_callers_context_and_get_coro_name_are_kept(honest_run, spans):
    async def main() -> None:
        with tracer.start_as_current_span("parent"):
            coro = child()
            task = aiotrace.create_task_with_context(coro, name="worker")
            assert task.get_coro() is coro
            assert task.get_name() == "worker"
            assert await task == "child"
            coro2 = child("child2")
            task2 = aiotrace.create_task_with_context(coro2, otel_ctx=context.Context(), name="w2")
            assert task2.get_coro() is coro2
            assert task2.get_name() == "w2"
            await task2

    honest_run(main())
    assert spans.parent("child") == "parent"
    assert spans.parent("child2") is None


@needs_311
def test_callers_context_is_honoured_and_never_changed(honest_run, spans):
    async def read_var() -> str:
        with tracer.start_as_current_span("inside"):
            return var.get()

    async def main() -> None:
        own = contextvars.copy_context()
        own.run(var.set, "mine")
        with tracer.start_as_current_span("parent"):
            assert await aiotrace.create_task_with_context(read_var(), context=own) == "mine"
            before = dict(own.items())
            got = await aiotrace.create_task_with_context(
                read_var(), context=own, otel_ctx=context.Context()
            )
            assert got == "mine"
            assert dict(own.items()) == before

    honest_run(main())
    # ``own`` was copied before "parent" started, so both tasks ran without a parent span.
    assert [s.parent for s in spans.finished if s.name == "inside"] == [None, None]


@needs_312
def test_eager_task_factory_starts_in_otel_ctx(spans):
    # Stock loop only: uvloop 0.23 passes ``eager_start=`` to the task factory, which
    # asyncio.eager_task_factory of CPython 3.13.0 rejects (TypeError, seen here without aiotrace).
    async def main() -> None:
        asyncio.get_running_loop().set_task_factory(asyncio.eager_task_factory)
        seen = []

        async def eager() -> None:
            seen.append(trace.get_current_span().name)
            with tracer.start_as_current_span("eager"):
                pass

        with tracer.start_as_current_span("request"):
            with tracer.start_as_current_span("other") as other:
                other_ctx = trace.set_span_in_context(other)
            task = aiotrace.create_task_with_context(eager(), otel_ctx=other_ctx)
            assert task.done()  # ran eagerly, to completion, inside create_task
            assert seen == ["other"]

    asyncio.run(main())
    assert spans.parent("eager") == "other"


def test_installed_create_task_accepts_otel_ctx(honest_run, spans):
    original = asyncio.create_task
    aiotrace.install()
    assert asyncio.create_task is not original
    assert asyncio.create_task.__wrapped__ is original
    assert asyncio.tasks.create_task is asyncio.create_task

    async def main() -> None:
        with tracer.start_as_current_span("request"):
            coro = child("detached")
            task = asyncio.create_task(coro, otel_ctx=context.Context(), name="n")
            assert task.get_coro() is coro and task.get_name() == "n"
            await task
            await asyncio.create_task(child("attached"))

    honest_run(main())
    aiotrace.uninstall()
    assert asyncio.create_task is original
    assert spans.parent("detached") is None
    assert spans.parent("attached") == "request"


@needs_311
def test_propagating_task_group_otel_ctx(honest_run, spans):
    async def main() -> None:
        with tracer.start_as_current_span("request"):
            async with aiotrace.PropagatingTaskGroup() as group:
                group.create_task(child("same"))
                group.create_task(child("detached"), otel_ctx=context.Context(), name="d")

    honest_run(main())
    assert spans.parent("same") == "request"
    assert spans.parent("detached") is None


@needs_311
def test_installed_task_group_is_the_propagating_one(honest_run, spans):
    stock = asyncio.TaskGroup
    aiotrace.install()
    assert issubclass(asyncio.TaskGroup, aiotrace.PropagatingTaskGroup)
    assert isinstance(stock(), asyncio.TaskGroup)

    async def main() -> None:
        async with asyncio.TaskGroup() as group:
            with tracer.start_as_current_span("request"):
                group.create_task(child("detached"), otel_ctx=context.Context())

    honest_run(main())
    assert spans.parent("detached") is None


@pytest.mark.skipif(sys.version_info >= (3, 11), reason="TaskGroup exists")
def test_task_group_before_311_says_why():
    with pytest.raises(RuntimeError, match=r"Python 3\.11"):
        aiotrace.PropagatingTaskGroup()


def test_wrapper_for_a_create_task_that_takes_any_keyword(honest_run, spans):
    """Python 3.14's ``asyncio.create_task(coro, **kwargs)`` (and any foreign wrapper with an
    unknown signature) gets the forwarding form of the patch."""
    from aiotrace.tasks import patched_create_task

    calls = []

    def create_task(coro, **kwargs):
        calls.append(sorted(kwargs))
        return asyncio.get_running_loop().create_task(coro, **kwargs)

    wrapped = patched_create_task(create_task)

    async def main() -> None:
        with tracer.start_as_current_span("request"):
            await wrapped(child("attached"), name="a")
            await wrapped(child("detached"), otel_ctx=context.Context())

    honest_run(main())
    assert spans.parent("attached") == "request"
    assert spans.parent("detached") is None
    expected_second = ["context"] if sys.version_info >= (3, 11) else []
    assert calls == [["name"], expected_second]


needs_314 = pytest.mark.skipif(sys.version_info < (3, 14), reason="needs Python 3.14+")


@needs_314
def test_installed_create_task_passes_eager_start_through(honest_run, spans):
    """3.14's ``asyncio.create_task(coro, **kwargs)`` takes ``eager_start=``; the installed one
    passes it on, with and without ``otel_ctx=`` (uvloop 0.23's create_task takes it too)."""
    aiotrace.install()

    async def quick(name):
        with tracer.start_as_current_span(name):
            return trace.get_current_span().name

    async def main():
        with tracer.start_as_current_span("request"):
            task = asyncio.create_task(quick("eager"), eager_start=True)
            assert task.done() and task.result() == "eager"
            lazy = asyncio.create_task(quick("lazy"), eager_start=False)
            assert not lazy.done()
            detached = asyncio.create_task(
                quick("detached"), eager_start=True, otel_ctx=context.Context()
            )
            assert detached.done()
            await lazy

    honest_run(main())
    assert spans.parent("eager") == "request"
    assert spans.parent("lazy") == "request"
    assert spans.parent("detached") is None


@needs_314
def test_task_factory_given_keyword_arguments(honest_run, spans):
    """3.14 hands ``create_task``'s keyword arguments to the task factory (uvloop 0.23 hands it
    ``context`` and ``eager_start`` and sets the name afterwards): the installed create_task
    passes ``eager_start=`` and ``name=`` on, and ``otel_ctx=`` arrives as ``context=``, a
    context holding that OpenTelemetry context."""
    aiotrace.install()
    seen = {}

    def factory(loop, coro, **kwargs):
        seen[coro.cr_frame.f_locals.get("name")] = kwargs
        return asyncio.Task(coro, loop=loop, **kwargs)

    async def main():
        asyncio.get_running_loop().set_task_factory(factory)
        with tracer.start_as_current_span("request"):
            named = asyncio.create_task(child("named"), name="n", eager_start=False)
            assert named.get_name() == "n"
            await named
            detached = asyncio.create_task(child("detached"), otel_ctx=context.Context())
            await detached

    honest_run(main())
    assert seen["named"]["eager_start"] is False
    assert isinstance(seen["detached"]["context"], contextvars.Context)
    assert spans.parent("named") == "request"
    assert spans.parent("detached") is None


@pytest.mark.skipif(
    not hasattr(getattr(asyncio, "TaskGroup", None), "cancel"), reason="TaskGroup.cancel is 3.15+"
)
def test_installed_task_group_cancel(honest_run, spans):
    """3.15's ``TaskGroup.cancel()`` on the installed group: children are cancelled, the group
    exits without ``CancelledError``, and the code after it still runs in its span. (On the
    context-dropping loop the body resumes from a TaskGroup's exit, cancelled or not, in a
    child's context: the waiter work of issue 15, not specific to cancel().)"""
    aiotrace.install()
    cancelled = []

    async def forever(name):
        with tracer.start_as_current_span(name):
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.append(name)
                raise

    async def main():
        with tracer.start_as_current_span("request"):
            async with asyncio.TaskGroup() as group:
                assert isinstance(group, aiotrace.PropagatingTaskGroup)
                group.create_task(forever("a"))
                group.create_task(forever("b"), otel_ctx=context.Context())
                await asyncio.sleep(0)
                group.cancel()
            assert trace.get_current_span().name == "request"

    honest_run(main())
    assert sorted(cancelled) == ["a", "b"]
    assert spans.parent("a") == "request"
    assert spans.parent("b") is None


# -- background work detached from the request, linked to it -----------------------------------
# On honest loops only: a loop that drops ``call_soon(..., context=)`` runs every task in its
# creator's context, whatever context it was given (see test_tasks).


async def _background(name: str = "work") -> None:
    with tracer.start_as_current_span(name):
        pass


def test_stdlib_background_task_stays_in_the_requests_trace(run, spans):
    """What ``linked_root`` changes: by default, fire-and-forget work is a child of the request
    (often of a span that has long ended when the work runs)."""

    async def main() -> None:
        with tracer.start_as_current_span("request"):
            task = asyncio.ensure_future(_background())
        await task

    run(main())
    assert spans.parent("work") == "request"


def test_linked_root_starts_a_new_trace_linked_to_the_caller(honest_run, spans):
    async def main() -> None:
        with tracer.start_as_current_span("request"):
            task = aiotrace.create_task_with_context(
                _background(), otel_ctx=aiotrace.linked_root("cleanup", attributes={"n": 1})
            )
        await task

    honest_run(main())
    cleanup, request = spans.span("cleanup"), spans.span("request")
    assert spans.parent("work") == "cleanup"
    assert cleanup.parent is None
    assert cleanup.context.trace_id != request.context.trace_id
    assert [link.context for link in cleanup.links] == [request.context]
    assert cleanup.attributes["n"] == 1
    assert cleanup.end_time >= spans.span("work").end_time


def test_linked_root_names_the_span_after_the_coroutine(honest_run, spans):
    aiotrace.install()

    async def main() -> None:
        with tracer.start_as_current_span("request"):
            task = asyncio.create_task(_background(), otel_ctx=aiotrace.linked_root())
        await task

    honest_run(main())
    assert spans.parent("work") == "_background"
    assert spans.parent("_background") is None


@pytest.mark.skipif(sys.version_info < (3, 11), reason="TaskGroup exists from 3.11 on")
def test_linked_root_in_a_task_group(honest_run, spans):
    async def main() -> None:
        async with aiotrace.PropagatingTaskGroup() as group:
            with tracer.start_as_current_span("request"):
                group.create_task(_background(), otel_ctx=aiotrace.linked_root("bg"))

    honest_run(main())
    assert spans.parent("work") == "bg"
    assert [link.context for link in spans.span("bg").links] == [spans.span("request").context]


def test_linked_root_carries_baggage_and_records_failures(honest_run, spans):
    async def fail() -> None:
        assert baggage.get_baggage("tenant") == "t1"
        raise KeyError("gone")

    async def main() -> None:
        token = aiotrace._otel.attach(baggage.set_baggage("tenant", "t1"))
        try:
            task = aiotrace.create_task_with_context(fail(), otel_ctx=aiotrace.linked_root("bg"))
        finally:
            aiotrace._otel.detach(token)
        with pytest.raises(KeyError):
            await task

    honest_run(main())
    bg = spans.span("bg")
    assert bg.links == ()  # no span was current: nothing to link to
    assert bg.status.status_code is StatusCode.ERROR
    assert [e.name for e in bg.events] == ["exception"]


def test_linked_root_leaves_unretrieved_exceptions_reported(honest_run):
    """The span records the failure without retrieving it: asyncio still reports a
    fire-and-forget task whose exception nobody looked at."""
    import gc

    reported = []

    async def fail() -> None:
        raise KeyError("gone")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda loop, context: reported.append(context["message"]))
        task = aiotrace.create_task_with_context(fail(), otel_ctx=aiotrace.linked_root("bg"))
        while not task.done():
            await asyncio.sleep(0)
        await asyncio.sleep(0)  # let the done callback that ends the span run
        del task
        gc.collect()

    honest_run(main())
    assert reported == ["Task exception was never retrieved"]


def test_cancelled_linked_root_task_ends_its_span_without_error(honest_run, spans):
    async def main() -> None:
        started = asyncio.Event()

        async def forever() -> None:
            started.set()
            await asyncio.Event().wait()

        with tracer.start_as_current_span("request"):
            task = aiotrace.create_task_with_context(forever(), otel_ctx=aiotrace.linked_root("bg"))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0)

    honest_run(main())
    assert spans.span("bg").status.status_code is StatusCode.UNSET


def test_linked_root_span_is_ended_when_the_task_cannot_be_created(honest_run, spans):
    """A refused ``create_task`` (here: not a coroutine) must not leave the linked root span
    open: it is ended and the error reaches the caller unchanged."""

    async def main() -> None:
        with tracer.start_as_current_span("request"), pytest.raises(TypeError):
            aiotrace.create_task_with_context(
                object(),  # type: ignore[arg-type]
                otel_ctx=aiotrace.linked_root("refused"),
            )

    honest_run(main())
    refused = spans.span("refused")
    assert refused.end_time is not None
    assert [link.context.span_id for link in refused.links] == [
        spans.span("request").context.span_id
    ]
