"""Jobs that run in a process-pool worker and export their spans to a file the test reads.

Module-level, so that a process pool can pickle them by reference under every start method.
The worker uses its own ``TracerProvider`` with a real exporter (JSON lines appended to a file):
a forked worker has a copy of the test process's provider whose spans the test would never see,
and a spawned one has none.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional, Sequence

from opentelemetry import baggage, trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

_tracers: Dict[str, trace.Tracer] = {}


class JsonLinesExporter(SpanExporter):
    """Appends one JSON object per finished span to ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with open(self.path, "a") as out:
            for span in spans:
                record = {
                    "name": span.name,
                    "trace_id": span.context.trace_id,
                    "span_id": span.context.span_id,
                    "parent_id": span.parent.span_id if span.parent else None,
                    "attributes": dict(span.attributes or {}),
                    "pid": os.getpid(),
                }
                out.write(json.dumps(record) + "\n")
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def _tracer(path: str) -> trace.Tracer:
    if path not in _tracers:
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(JsonLinesExporter(path)))
        _tracers[path] = provider.get_tracer("aiotrace-tests-worker")
    return _tracers[path]


def traced(path: str, name: str) -> int:
    """Open and end span ``name`` (recording the ``user`` baggage); return the worker's pid."""
    with _tracer(path).start_as_current_span(name) as span:
        span.set_attribute("baggage.user", str(baggage.get_baggage("user")))
    return os.getpid()


def noop() -> int:
    return os.getpid()


def read(path: str) -> List[Dict[str, Any]]:
    if not os.path.exists(path):
        return []
    with open(path) as spans:
        return [json.loads(line) for line in spans]


def one(path: str, name: str) -> Dict[str, Any]:
    found = [s for s in read(path) if s["name"] == name]
    assert len(found) == 1, f"expected one worker span named {name!r}, got {found}"
    return found[0]


def parent_id(path: str, name: str) -> Optional[int]:
    return one(path, name)["parent_id"]
