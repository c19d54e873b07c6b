"""A pytest plugin to assert how a test's spans nest: ``otel_spans.tree().shape()``.

Context bugs do not fail loudly; they show up as spans in the wrong trace. The useful test is
therefore about the tree (``{"request": {"db": {}, "render": {}}}``), not about single spans,
and writing that by hand from a flat exporter list is tedious. A suite turns this plugin on
itself, with ``pytest -p aiotrace.testing`` or ``pytest_plugins = ["aiotrace.testing"]`` in its
root ``conftest.py``. Installing aiotrace registers nothing: a ``pytest11`` entry point would
make pytest mark every top-level module of the distribution for assertion rewriting, among them
``aiotrace_boot``, which the start-up hook has already imported, and every suite of the
environment run with ``-W error`` would then stop at start-up. It provides two fixtures:

- ``otel_exporter``: an ``InMemorySpanExporter`` that receives every span the global tracer
  provider finishes, emptied before and after each test;
- ``otel_spans``: a :class:`RecordedSpans` over it, with ``tree()`` (a
  :class:`~aiotrace.spantree.SpanTree`), ``shape()`` and ``named()``.

The exporter is added once per provider as a ``SimpleSpanProcessor`` to the global SDK
``TracerProvider``, so a provider the suite already set (in a ``conftest.py``) keeps working
and keeps its own processors. If none is set when a fixture is first used, the plugin sets an
SDK provider as the global one (OpenTelemetry allows that only once per process).
Nothing happens at import, and the OpenTelemetry SDK is imported only when a fixture is used.
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, List

import pytest

from .spantree import SpanNode, SpanTree

__all__ = ["RecordedSpans", "SpanNode", "SpanTree", "otel_exporter", "otel_spans"]

# id(provider) -> (provider, exporter): one processor per provider for the whole session.
_attached: Dict[int, Any] = {}


class RecordedSpans:
    """The spans finished during the current test."""

    def __init__(self, exporter: Any) -> None:
        self.exporter = exporter

    @property
    def finished(self) -> List[Any]:
        """The finished spans, in the order they ended."""
        return list(self.exporter.get_finished_spans())

    def tree(self) -> SpanTree:
        """The finished spans as a tree (built anew at each call)."""
        return SpanTree(self.finished)

    def shape(self) -> Dict[str, Any]:
        """``tree().shape()``: nested dicts of span names, e.g. ``{"request": {"db": {}}}``."""
        return self.tree().shape()

    def named(self, name: str) -> SpanNode:
        """The one finished span called ``name`` (``LookupError`` for none or several)."""
        return self.tree().named(name)

    def clear(self) -> None:
        self.exporter.clear()


def global_exporter() -> Any:
    """The in-memory exporter attached to the global SDK tracer provider (attached on first
    call, setting an SDK provider as the global one if there is none yet)."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider):
        trace.set_tracer_provider(TracerProvider())
        provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        pytest.fail(
            "aiotrace.testing: the global tracer provider is "
            f"{type(provider).__module__}.{type(provider).__qualname__}, not the SDK's "
            "TracerProvider: its spans cannot be recorded in memory",
            pytrace=False,
        )
    held = _attached.get(id(provider))
    if held is None or held[0] is not provider:
        exporter = InMemorySpanExporter()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        held = _attached[id(provider)] = (provider, exporter)
    return held[1]


@pytest.fixture
def otel_exporter() -> Iterator[Any]:
    """An ``InMemorySpanExporter`` receiving the global provider's spans, empty at the start
    of the test (and emptied after it)."""
    exporter = global_exporter()
    exporter.clear()
    yield exporter
    exporter.clear()


@pytest.fixture
def otel_spans(otel_exporter: Any) -> RecordedSpans:
    """The spans finished during this test: ``otel_spans.tree().shape()``, ``named()``."""
    return RecordedSpans(otel_exporter)
