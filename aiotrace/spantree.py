"""Finished spans as a tree, to read a trace in a terminal or assert its shape in a test.

Exporters hand spans over as a flat list in the order they ended, each naming its parent by id;
what people want to see (and what a context bug changes) is the tree: which span is the child of
which, and which spans ended up in a trace of their own. :class:`SpanTree` rebuilds it from any
finished spans (the SDK's ``ReadableSpan``, e.g. from ``InMemorySpanExporter``), renders it as
text (``aiotrace demo``) and reduces it to nested dicts of names for assertions
(:mod:`aiotrace.testing`). It needs nothing but the spans: no SDK import happens here.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Sequence

__all__ = ["SpanNode", "SpanTree"]

_UNICODE = ("├── ", "└── ", "│   ", "    ", "↪")
_ASCII = ("|-- ", "`-- ", "|   ", "    ", "->")


class SpanNode:
    """One finished span and its place in the tree."""

    def __init__(self, span: Any) -> None:
        self.span = span
        self.parent: Optional[SpanNode] = None
        self.children: List[SpanNode] = []
        # The span names a parent that is not among the spans given (not finished yet, from
        # another process, or exported elsewhere): it is shown as a root.
        self.parent_missing = False

    @property
    def name(self) -> str:
        return str(self.span.name)

    @property
    def trace_id(self) -> int:
        return int(self.span.context.trace_id)

    @property
    def span_id(self) -> int:
        return int(self.span.context.span_id)

    @property
    def duration_ns(self) -> Optional[int]:
        start, end = self.span.start_time, self.span.end_time
        return None if start is None or end is None else end - start

    @property
    def links(self) -> Sequence[Any]:
        return tuple(getattr(self.span, "links", None) or ())

    def shape(self) -> Dict[str, Any]:
        """The names below this span as nested dicts, e.g. ``{"db": {}, "render": {}}``."""
        return _shape(self.children)

    def walk(self) -> Iterable[SpanNode]:
        """This node and every node below it, depth first, children in start order."""
        yield self
        for child in self.children:
            yield from child.walk()

    def __repr__(self) -> str:
        return f"SpanNode({self.name!r}, children={[c.name for c in self.children]})"


def _start_key(node: SpanNode) -> int:
    return node.span.start_time or 0


def _shape(nodes: Sequence[SpanNode]) -> Dict[str, Any]:
    shape: Dict[str, Any] = {}
    seen: Dict[str, int] = {}
    for node in nodes:
        seen[node.name] = seen.get(node.name, 0) + 1
        key = node.name if seen[node.name] == 1 else f"{node.name} #{seen[node.name]}"
        shape[key] = node.shape()
    return shape


class SpanTree:
    """Spans arranged by parent: ``roots`` in start order, each with its ``children``.

    A span whose parent is not among the given spans is a root (``parent_missing`` is then
    true). Siblings are ordered by start time; equal names among siblings are told apart in
    :meth:`shape` as ``"name"``, ``"name #2"``, ``"name #3"`` in that order.
    """

    def __init__(self, spans: Iterable[Any]) -> None:
        self.nodes: List[SpanNode] = [SpanNode(span) for span in spans]
        # Python's sort is stable: spans that started in the same nanosecond keep export order.
        self.nodes.sort(key=_start_key)
        by_id = {(n.trace_id, n.span_id): n for n in self.nodes}
        self.roots: List[SpanNode] = []
        for node in self.nodes:
            parent_ctx = node.span.parent
            parent = None
            if parent_ctx is not None:
                parent = by_id.get((int(parent_ctx.trace_id), int(parent_ctx.span_id)))
                node.parent_missing = parent is None
            if parent is None:
                self.roots.append(node)
            else:
                node.parent = parent
                parent.children.append(node)

    def __len__(self) -> int:
        return len(self.nodes)

    def shape(self) -> Dict[str, Any]:
        """The whole forest as nested dicts of span names: ``{"request": {"db": {}}}``.

        Roots of every trace are keys at the top level; a span with no children maps to
        ``{}``. Order does not matter to ``==`` on dicts, so this compares structure only.
        """
        return _shape(self.roots)

    def traces(self) -> List[SpanTree]:
        """One tree per trace id, in the order their first span started."""
        grouped: Dict[int, List[Any]] = {}
        for node in self.nodes:
            grouped.setdefault(node.trace_id, []).append(node.span)
        return [SpanTree(spans) for spans in grouped.values()]

    def named(self, name: str) -> SpanNode:
        """The one span called ``name``; ``LookupError`` if there are none or several."""
        found = self.all_named(name)
        if len(found) != 1:
            names = sorted({n.name for n in self.nodes})
            raise LookupError(f"expected one span named {name!r}, found {len(found)}: {names}")
        return found[0]

    def all_named(self, name: str) -> List[SpanNode]:
        """Every span called ``name``, in start order."""
        return [node for node in self.nodes if node.name == name]

    def render(self, *, durations: bool = True, ascii: bool = False) -> str:
        """The forest as text: one block per trace, each span on its own line with its
        duration, children indented under their parent, links and missing parents noted."""
        glyphs = _ASCII if ascii else _UNICODE
        labels = {trace_id: i for i, trace_id in enumerate(self._trace_order(), 1)}
        names = {(n.trace_id, n.span_id): n.name for n in self.nodes}
        lines: List[str] = []

        def draw(node: SpanNode, first: str, rest: str) -> None:
            text = node.name
            if durations:
                text += f"  {format_duration(node.duration_ns)}"
            if node.parent_missing:
                text += "  (parent span not recorded)"
            lines.append(first + text)
            for link in node.links:
                key = (int(link.context.trace_id), int(link.context.span_id))
                where = labels.get(key[0])
                suffix = f" (trace {where})" if where is not None else ""
                lines.append(
                    f"{rest}{glyphs[4]} linked to {names.get(key, 'a span not recorded')}{suffix}"
                )
            for i, child in enumerate(node.children):
                last = i == len(node.children) - 1
                draw(
                    child,
                    rest + (glyphs[1] if last else glyphs[0]),
                    rest + (glyphs[3] if last else glyphs[2]),
                )

        for number, trace in enumerate(self.traces(), 1):
            count = len(trace)
            lines.append(f"trace {number} ({count} span{'s' if count != 1 else ''})")
            for root in trace.roots:
                draw(root, "  ", "  ")
        return "\n".join(lines)

    def _trace_order(self) -> List[int]:
        return list(dict.fromkeys(node.trace_id for node in self.nodes))


def format_duration(ns: Optional[int]) -> str:
    """``0.42 ms``, ``12.3 ms``, ``1.20 s``."""
    if ns is None:
        return "?"
    ms = ns / 1e6
    if ms < 10:
        return f"{ms:.2f} ms"
    if ms < 1000:
        return f"{ms:.1f} ms"
    return f"{ms / 1000:.2f} s"
