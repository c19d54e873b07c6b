"""inject_context() / attached_context(): the trace crosses a boundary that only moves text."""

from __future__ import annotations

import contextvars
import queue
import threading
from typing import Any, Dict, List, Optional, Set

import pytest
from conftest import tracer
from opentelemetry import baggage, context, propagate, trace
from opentelemetry.propagators.textmap import TextMapPropagator

import aiotrace
from aiotrace.propagation import call_with_carrier


def same_span(a: trace.Span, b: trace.Span) -> bool:
    """The remote copy a carrier brings back has the same ids (its flags may differ)."""
    a_ctx, b_ctx = a.get_span_context(), b.get_span_context()
    return (a_ctx.trace_id, a_ctx.span_id) == (b_ctx.trace_id, b_ctx.span_id)


def consumer(inbox: queue.Queue[Dict[str, Any]], use_carrier: bool, seen: List[Any]) -> None:
    """A worker on the far side of a plain queue: it receives messages, not contexts."""
    message = inbox.get()
    if use_carrier:
        with aiotrace.attached_context(message["headers"]):
            handle(seen)
    else:
        handle(seen)


def handle(seen: List[Any]) -> None:
    with tracer.start_as_current_span("handler"):
        seen.append(baggage.get_baggage("user"))


def send_from_producer(use_carrier: bool) -> List[Any]:
    inbox: queue.Queue[Dict[str, Any]] = queue.Queue()
    seen: List[Any] = []
    worker = threading.Thread(target=consumer, args=(inbox, use_carrier, seen))
    worker.start()
    with tracer.start_as_current_span("producer"):
        token = context.attach(baggage.set_baggage("user", "ada"))
        try:
            inbox.put({"headers": aiotrace.inject_context(), "body": b"..."})
        finally:
            context.detach(token)
    worker.join()
    return seen


def test_without_a_carrier_the_consumer_starts_a_new_trace(spans):
    assert send_from_producer(use_carrier=False) == [None]
    assert spans.parent("handler") is None


def test_attached_carrier_continues_the_producers_trace(spans):
    assert send_from_producer(use_carrier=True) == ["ada"]
    assert spans.parent("handler") == "producer"
    assert spans.trace_of("handler") == spans.trace_of("producer")


def test_carrier_is_w3c_text_by_default():
    with tracer.start_as_current_span("s") as span:
        carrier = aiotrace.inject_context()
    ctx = span.get_span_context()
    assert list(carrier) == ["traceparent"]
    assert carrier["traceparent"].startswith(f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-")
    assert aiotrace.inject_context() == {}


def test_inject_an_explicit_context():
    with tracer.start_as_current_span("s") as span:
        saved = context.get_current()
    assert aiotrace.inject_context(saved)["traceparent"].split("-")[2] == (
        f"{span.get_span_context().span_id:016x}"
    )


def test_attached_context_restores_the_previous_one(spans):
    with tracer.start_as_current_span("other") as other:
        carrier = aiotrace.inject_context()
    with tracer.start_as_current_span("outer") as outer:
        with aiotrace.attached_context(carrier) as attached:
            assert same_span(trace.get_current_span(), other)
            assert context.get_current() is attached
        assert trace.get_current_span() is outer


def test_an_empty_carrier_means_no_span_even_inside_one(spans):
    with tracer.start_as_current_span("outer"), aiotrace.attached_context({}):
        assert not trace.get_current_span().get_span_context().is_valid
        with tracer.start_as_current_span("inner"):
            pass
    assert spans.parent("inner") is None


def test_the_block_may_raise(spans):
    with tracer.start_as_current_span("outer") as outer:
        carrier = aiotrace.inject_context()
        with pytest.raises(KeyError), aiotrace.attached_context(carrier):
            raise KeyError("x")
        assert trace.get_current_span() is outer


def test_call_with_carrier():
    with tracer.start_as_current_span("caller") as caller:
        carrier = aiotrace.inject_context()
    got = contextvars.Context().run(call_with_carrier, carrier, trace.get_current_span, None)
    assert same_span(got, caller)
    assert not trace.get_current_span().get_span_context().is_valid


class HeaderPropagator(TextMapPropagator):
    """A propagator of the test's own: one ``x-span`` header with the span id."""

    def inject(self, carrier: Any, context: Optional[Any] = None, setter: Any = None) -> None:
        span_context = trace.get_current_span(context).get_span_context()
        if span_context.is_valid:
            carrier["x-span"] = f"{span_context.trace_id:x}:{span_context.span_id:x}"

    def extract(self, carrier: Any, context: Optional[Any] = None, getter: Any = None) -> Any:
        trace_id, span_id = (int(part, 16) for part in carrier["x-span"].split(":"))
        span_context = trace.SpanContext(
            trace_id,
            span_id,
            is_remote=True,
            trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
        )
        return trace.set_span_in_context(trace.NonRecordingSpan(span_context), context)

    @property
    def fields(self) -> Set[str]:
        return {"x-span"}


def test_the_global_propagator_is_used(spans):
    previous = propagate.get_global_textmap()
    propagate.set_global_textmap(HeaderPropagator())
    try:
        with tracer.start_as_current_span("caller"):
            carrier = aiotrace.inject_context()
        assert set(carrier) == {"x-span"}
        with aiotrace.attached_context(carrier), tracer.start_as_current_span("callee"):
            pass
    finally:
        propagate.set_global_textmap(previous)
    assert spans.parent("callee") == "caller"
