"""Queue hand-off: an item is processed in (or linked to) the trace of the task that put it."""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from typing import Any, List, Optional

import pytest
from conftest import tracer
from opentelemetry import baggage, trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, StatusCode
from waiting import enter_span, until_blocked

import aiotrace

QUEUES = {
    "Queue": aiotrace.PropagatingQueue,
    "LifoQueue": aiotrace.PropagatingLifoQueue,
    "PriorityQueue": aiotrace.PropagatingPriorityQueue,
}
PRODUCERS = 3
PER_PRODUCER = 3


def current_span_name(otel_ctx: Optional[Context] = None) -> str:
    """The name of the span current in ``otel_ctx`` (default: the current context)."""
    return getattr(trace.get_current_span(otel_ctx), "name", "<none>")


def _pipeline(queue_cls: Any, mode: Optional[str], maxsize: int = 1) -> Any:
    """A worker task started under span ``startup`` consumes what three request tasks (each a
    root span ``request-<p>``) put, interleaved by a queue of ``maxsize`` 1. For each item the
    worker opens span ``work-<item>``: plainly after ``get()`` (``mode=None``), or inside
    ``consume(mode)``. Returns the order in which items were consumed."""

    async def main() -> List[str]:
        q = queue_cls(maxsize=maxsize)
        consumed: List[str] = []

        async def worker() -> None:
            for _ in range(PRODUCERS * PER_PRODUCER):
                if mode is None:
                    item = await q.get()
                    with tracer.start_as_current_span(f"work-{item}"):
                        consumed.append(item)
                else:
                    async with q.consume(mode) as item:
                        with tracer.start_as_current_span(f"work-{item}"):
                            consumed.append(item)
                q.task_done()

        async def request(p: int) -> None:
            span = enter_span(tracer, f"request-{p}")
            for i in range(PER_PRODUCER):
                await q.put(f"{p}-{i}")
            span.end()

        startup = enter_span(tracer, "startup")
        consumer = asyncio.ensure_future(worker())
        startup.end()
        requests = [
            aiotrace.create_task_with_context(request(p), otel_ctx=Context())
            for p in range(PRODUCERS)
        ]
        await asyncio.gather(*requests)
        await q.join()
        await consumer
        return consumed

    return main()


def _interleaved(consumed: List[str]) -> bool:
    producers = [item.split("-")[0] for item in consumed]
    changes = sum(a != b for a, b in zip(producers, producers[1:]))
    return changes > PRODUCERS - 1


def test_stdlib_queue_puts_the_work_in_the_workers_trace(honest_run, spans):
    """The failure: every item's work is a child of the long-finished startup span. (On the
    context-dropping loop it is worse: the worker resumes in whichever producer woke it.)"""
    consumed = honest_run(_pipeline(asyncio.Queue, None))
    assert _interleaved(consumed)
    for item in consumed:
        assert spans.parent(f"work-{item}") == "startup"
        assert spans.trace_of(f"work-{item}") != spans.trace_of(f"request-{item[0]}")


@pytest.mark.parametrize("kind", sorted(QUEUES))
def test_plain_get_keeps_the_consumers_context(run, spans, kind):
    run(_pipeline(QUEUES[kind], None))
    assert {spans.parent(s.name) for s in spans.finished if s.name.startswith("work-")} == {
        "startup"
    }


@pytest.mark.parametrize("kind", sorted(QUEUES))
def test_parent_mode_puts_each_item_in_its_producers_trace(run, spans, kind):
    consumed = run(_pipeline(QUEUES[kind], "parent"))
    assert sorted(consumed) == sorted(f"{p}-{i}" for p in range(3) for i in range(3))
    if kind == "Queue":
        assert _interleaved(consumed)
    for item in consumed:
        assert spans.parent(f"work-{item}") == f"request-{item[0]}"
        assert spans.trace_of(f"work-{item}") == spans.trace_of(f"request-{item[0]}")


@pytest.mark.parametrize("kind", sorted(QUEUES))
def test_link_mode_starts_a_consumer_trace_linked_to_the_producer(run, spans, kind):
    consumed = run(_pipeline(QUEUES[kind], "link"))
    by_id = {s.context.span_id: s for s in spans.finished}
    for item in consumed:
        work = spans.span(f"work-{item}")
        consumer = by_id[work.parent.span_id]
        request = spans.span(f"request-{item[0]}")
        assert consumer.name == "process"
        assert consumer.kind is SpanKind.CONSUMER
        assert consumer.parent is None
        assert consumer.context.trace_id != request.context.trace_id
        assert [link.context for link in consumer.links] == [request.context]


def test_installed_asyncio_queue_has_the_hand_off(run, spans):
    aiotrace.install()
    consumed = run(_pipeline(asyncio.Queue, "parent"))
    for item in consumed:
        assert spans.parent(f"work-{item}") == f"request-{item[0]}"


@pytest.mark.parametrize("kind", ["propagating", "installed"])
def test_blocked_put_records_the_putters_context_not_the_wakers(run, kind):
    """A ``put`` that waits for room records the context it was called in, even on the loop
    that resumes it in the context of the task that made room: the explicit class by its own
    ``put``, the installed one (asyncio's ``put``) because that loop is repaired."""
    if kind == "installed":
        aiotrace.install()

    async def main() -> None:
        q = (asyncio.Queue if kind == "installed" else aiotrace.PropagatingQueue)(maxsize=1)
        q.put_nowait("first")

        async def putter() -> None:
            enter_span(tracer, "putter")
            await q.put("second")

        task = asyncio.ensure_future(putter())
        await until_blocked(task)
        enter_span(tracer, "waker")
        first, _ = q.get_nowait_with_context()
        await task
        second, otel_ctx = await q.get_with_context()
        assert (first, second) == ("first", "second")
        assert current_span_name(otel_ctx) == "putter"

    run(main())


@pytest.mark.parametrize(
    "receive",
    [aiotrace.PropagatingQueue.get_with_context, aiotrace.receive_with_context],
    ids=["get_with_context", "receive_with_context"],
)
def test_get_with_context_leaves_the_consumers_context(run, receive):
    """The item comes with its producer's context, the consumer's stays current; also through
    ``aiotrace.receive_with_context``, which accepts the queues as well as anyio's streams."""

    async def main() -> None:
        q = aiotrace.PropagatingQueue()
        with tracer.start_as_current_span("producer"):
            q.put_nowait("x")
        with tracer.start_as_current_span("consumer"):
            item, otel_ctx = await receive(q)
            assert current_span_name() == "consumer"
        assert item == "x"
        assert current_span_name(otel_ctx) == "producer"

    run(main())


@dataclasses.dataclass(order=True)
class Job:
    priority: int
    payload: Any = dataclasses.field(compare=False)


@pytest.mark.parametrize(
    "items",
    [
        [Job(1, "a"), Job(1, "b"), Job(0, "c"), Job(1, "d")],  # equal, distinct objects
        [1, 1, 1],  # one object put three times
        [[1, 2], [1, 2], [0]],  # unhashable
        [(1, {}), (0, {})],  # neither hashable nor weak-referenceable
    ],
    ids=["equal", "identical", "unhashable", "tuples"],
)
@pytest.mark.parametrize("kind", sorted(QUEUES))
def test_each_item_gets_its_own_producer_context(honest_run, kind, items):
    """The contexts are never compared (a Context is a dict: ``<`` between two would raise),
    and identity, not equality or hashing, tells items apart."""

    async def main() -> None:
        q = QUEUES[kind]()
        stdlib = getattr(asyncio, kind)()
        for n, item in enumerate(items):
            with tracer.start_as_current_span(f"producer-{n}"):
                q.put_nowait(item)
            stdlib.put_nowait(item)
        got = [q.get_nowait_with_context() for _ in items]
        assert [item for item, _ in got] == [stdlib.get_nowait() for _ in items]
        for item, otel_ctx in got:
            producers = {f"producer-{n}" for n, it in enumerate(items) if it is item}
            assert current_span_name(otel_ctx) in producers
        # An object put several times hands out each of its producers once.
        names = sorted(current_span_name(c) for _, c in got)
        assert names == sorted(f"producer-{n}" for n in range(len(items)))

    honest_run(main())


def test_same_object_hands_out_its_contexts_in_queue_order(honest_run):
    async def main() -> None:
        sentinel = object()
        for kind, expected in (
            ("Queue", ["p0", "p1", "p2"]),
            ("LifoQueue", ["p2", "p1", "p0"]),
            ("PriorityQueue", ["p0", "p1", "p2"]),
        ):
            q = QUEUES[kind]()
            for n in range(3):
                with tracer.start_as_current_span(f"p{n}"):
                    q.put_nowait(sentinel if kind != "PriorityQueue" else 7)
            got = [current_span_name(q.get_nowait_with_context()[1]) for _ in range(3)]
            assert got == expected, kind

    honest_run(main())


@pytest.mark.parametrize("kind", sorted(QUEUES))
def test_items_put_behind_the_queues_back_have_no_context(honest_run, kind):
    """``_queue`` changed directly: no context is handed out that may belong to another item.
    (A change that keeps its length, such as replacing an item in place, goes unnoticed in
    the FIFO and LIFO queues: documented, not supported.)"""

    async def main() -> None:
        q = QUEUES[kind]()
        with tracer.start_as_current_span("producer"):
            q.put_nowait(1)
        q._queue.clear()
        q._queue.extend([2, 3])
        assert sorted([q.get_nowait_with_context(), q.get_nowait_with_context()]) == [
            (2, None),
            (3, None),
        ]
        with tracer.start_as_current_span("later"):
            q.put_nowait(4)
        item, otel_ctx = q.get_nowait_with_context()
        assert item == 4
        assert current_span_name(otel_ctx) == "later"

    honest_run(main())


@pytest.mark.parametrize("kind", ["Queue", "LifoQueue"])
def test_a_queue_emptied_behind_its_back_hands_the_next_item_its_own_context(honest_run, kind):
    """``q._queue.clear()`` (a drain that bypasses ``get``) leaves no stale context in front
    of the next item."""

    async def main() -> None:
        q = QUEUES[kind]()
        with tracer.start_as_current_span("dropped"):
            q.put_nowait(1)
            q.put_nowait(2)
        q._queue.clear()
        with tracer.start_as_current_span("later"):
            q.put_nowait(3)
        item, otel_ctx = q.get_nowait_with_context()
        assert item == 3
        assert current_span_name(otel_ctx) == "later"

    honest_run(main())


def test_consume_restores_the_consumers_context_and_records_errors(run, spans):
    async def main() -> None:
        q = aiotrace.PropagatingQueue()
        with tracer.start_as_current_span("producer"):
            q.put_nowait("boom")
            q.put_nowait("fine")
        enter_span(tracer, "consumer")
        with pytest.raises(RuntimeError):
            async with q.consume("link", span_name="handle") as item:
                assert current_span_name() == "handle"
                raise RuntimeError(item)
        assert current_span_name() == "consumer"
        async with q.consume() as item:
            assert current_span_name() == "producer"
            await asyncio.sleep(0)  # the block may await: leaving it never fails a detach
        assert current_span_name() == "consumer"

    run(main())
    handle = spans.span("handle")
    assert handle.status.status_code is StatusCode.ERROR
    assert [e.name for e in handle.events] == ["exception"]


def test_consume_carries_the_producers_baggage(honest_run):
    async def main() -> None:
        q = aiotrace.PropagatingQueue()
        token = aiotrace._otel.attach(baggage.set_baggage("tenant", "t1"))
        with tracer.start_as_current_span("producer"):
            q.put_nowait("x")
            q.put_nowait("y")
        aiotrace._otel.detach(token)
        async with q.consume():
            assert baggage.get_baggage("tenant") == "t1"
        async with q.consume("link"):
            assert baggage.get_baggage("tenant") == "t1"
        assert baggage.get_baggage("tenant") is None

    honest_run(main())


def test_cancelled_consume_attaches_nothing(run):
    async def main() -> None:
        q = aiotrace.PropagatingQueue()
        seen = []

        async def consumer() -> None:
            enter_span(tracer, "consumer")
            try:
                async with q.consume():
                    seen.append("entered")
            except asyncio.CancelledError:
                seen.append(current_span_name())
                raise

        task = asyncio.ensure_future(consumer())
        await until_blocked(task)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert seen == ["consumer"]
        with tracer.start_as_current_span("producer"):
            q.put_nowait("x")
        assert q.get_nowait_with_context()[0] == "x"

    run(main())


def test_unknown_consume_mode_names_the_accepted_ones(honest_run):
    async def main() -> None:  # a queue is made in a running loop (3.8 and 3.9 need one)
        with pytest.raises(ValueError, match="accepted: parent, link"):
            aiotrace.PropagatingQueue().consume("child")

    honest_run(main())


@pytest.mark.parametrize("kind", sorted(QUEUES))
def test_task_done_join_maxsize_and_qsize_are_unchanged(honest_run, kind):
    async def main() -> None:
        q = QUEUES[kind](maxsize=2)
        with tracer.start_as_current_span("producer"):
            await q.put(1)
            await q.put(2)
        assert (q.qsize(), q.maxsize, q.full()) == (2, 2, True)
        with pytest.raises(asyncio.QueueFull):
            q.put_nowait(3)
        async with q.consume():
            pass
        q.task_done()
        await q.get()
        q.task_done()
        await asyncio.wait_for(q.join(), 5)
        with pytest.raises(ValueError):
            q.task_done()
        assert q.empty()

    honest_run(main())


@pytest.mark.skipif(sys.version_info < (3, 13), reason="Queue.shutdown exists from 3.13 on")
@pytest.mark.parametrize("kind", sorted(QUEUES))
def test_immediate_shutdown_drops_the_held_contexts(honest_run, kind):
    async def main() -> None:
        q = QUEUES[kind]()
        for item in (1, 2):
            q.put_nowait(item)
        q.shutdown(immediate=True)
        assert not q._aiotrace_producers
        with pytest.raises(asyncio.QueueShutDown):
            await q.get()

    honest_run(main())


def test_work_is_not_kept_alive_by_a_consumed_context(honest_run):
    """Only the contexts of items still in the queue are held (plus the last one handed out)."""

    async def main() -> None:
        q = aiotrace.PropagatingQueue()
        for n in range(5):
            with tracer.start_as_current_span(f"p{n}"):
                q.put_nowait(n)
        for _ in range(5):
            await q.get()
        assert len(q._aiotrace_producers) == 0

    honest_run(main())


def test_trace_api_sees_the_producer_span_in_parent_mode(honest_run):
    async def main() -> None:
        q = aiotrace.PropagatingQueue()
        with tracer.start_as_current_span("producer") as producer:
            q.put_nowait("x")
        async with q.consume():
            assert trace.get_current_span() is producer

    honest_run(main())


@pytest.mark.parametrize("kind", sorted(QUEUES))
def test_subclasses_with_their_own_storage(honest_run, kind):
    """A subclass whose ``_get`` bypasses ours never makes the store grow; one that calls
    ``super()._get()`` keeps the hand-off."""

    class Bypassing(QUEUES[kind]):
        def _get(self) -> Any:
            return self._queue.pop(0) if isinstance(self._queue, list) else self._queue.popleft()

    class Calling(QUEUES[kind]):
        def _get(self) -> Any:
            return super()._get()

    async def main() -> None:
        bypassing, calling = Bypassing(), Calling()
        for n in range(50):
            bypassing.put_nowait(n)
            assert bypassing.get_nowait_with_context() == (n, None)
        assert len(bypassing._aiotrace_producers) <= 1
        with tracer.start_as_current_span("producer"):
            calling.put_nowait("x")
        item, otel_ctx = calling.get_nowait_with_context()
        assert (item, current_span_name(otel_ctx)) == ("x", "producer")

    honest_run(main())


def test_an_empty_producer_context_is_handed_over_as_such(honest_run, spans):
    """A producer with no span and no baggage: ``parent`` mode runs the block with nothing
    current (not the consumer's span), ``link`` mode starts an unlinked root."""

    async def main() -> None:
        q = aiotrace.PropagatingQueue()
        q.put_nowait("a")
        q.put_nowait("b")
        with tracer.start_as_current_span("consumer"):
            async with q.consume():
                assert current_span_name() == "<none>"
            async with q.consume("link", span_name="linked"):
                assert current_span_name() == "linked"
                assert baggage.get_all() == {}

    honest_run(main())
    assert spans.span("linked").links == ()
    assert spans.parent("linked") is None


def test_get_with_context_is_not_fooled_by_a_subclass_get_that_awaits(honest_run):
    """The context handed out is the one of the item handed out, even when a subclass's
    ``get`` lets other consumers run between taking an item and returning it."""

    class Slow(aiotrace.PropagatingQueue):
        async def get(self) -> Any:
            item = await super().get()
            await asyncio.sleep(0)
            return item

    async def main() -> None:
        q = Slow()
        for name in ("a", "b"):
            with tracer.start_as_current_span(name):
                q.put_nowait(name)
        got = await asyncio.gather(q.get_with_context(), q.get())
        item, otel_ctx = got[0]
        assert current_span_name(otel_ctx) == item

    honest_run(main())
