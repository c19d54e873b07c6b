"""SpanTree (aiotrace/spantree.py): the tree, its shape and its text, from real SDK spans."""

from __future__ import annotations

import pytest
from conftest import tracer
from opentelemetry import context, trace

from aiotrace.spantree import SpanTree, format_duration


def test_shape_nests_children_under_parents(spans) -> None:
    with tracer.start_as_current_span("request"):
        with tracer.start_as_current_span("db"):
            pass
        with tracer.start_as_current_span("render"), tracer.start_as_current_span("template"):
            pass
    with tracer.start_as_current_span("other"):
        pass
    tree = SpanTree(spans.finished)
    assert tree.shape() == {"request": {"db": {}, "render": {"template": {}}}, "other": {}}
    assert [t.shape() for t in tree.traces()] == [
        {"request": {"db": {}, "render": {"template": {}}}},
        {"other": {}},
    ]
    assert tree.named("template").parent.name == "render"
    assert len(tree) == 5
    assert [n.name for n in tree.roots[0].walk()] == ["request", "db", "render", "template"]
    assert repr(tree.roots[0]) == "SpanNode('request', children=['db', 'render'])"


def test_repeated_sibling_names_are_numbered_in_start_order(spans) -> None:
    with tracer.start_as_current_span("request"):
        for n in range(3):
            with tracer.start_as_current_span("db") as db:
                db.set_attribute("n", n)
    tree = SpanTree(spans.finished)
    assert tree.shape() == {"request": {"db": {}, "db #2": {}, "db #3": {}}}
    assert [node.span.attributes["n"] for node in tree.all_named("db")] == [0, 1, 2]
    with pytest.raises(LookupError, match="expected one span named 'db', found 3"):
        tree.named("db")


def test_a_span_whose_parent_is_not_recorded_is_a_root(spans) -> None:
    parent = tracer.start_span("still open")
    with tracer.start_as_current_span("child", context=trace.set_span_in_context(parent)):
        pass
    tree = SpanTree(spans.finished)
    parent.end()
    assert tree.shape() == {"child": {}}
    assert tree.named("child").parent_missing
    assert "child  (parent span not recorded)" in tree.render(durations=False)


def test_render_draws_traces_children_and_links(spans) -> None:
    with tracer.start_as_current_span("request") as request:
        with tracer.start_as_current_span("db"):
            pass
        with tracer.start_as_current_span("render"):
            pass
    link = trace.Link(request.get_span_context())
    with tracer.start_as_current_span("batch", context=context.Context(), links=[link]):
        pass
    tree = SpanTree(spans.finished)
    assert tree.render(durations=False).splitlines() == [
        "trace 1 (3 spans)",
        "  request",
        "  ├── db",
        "  └── render",
        "trace 2 (1 span)",
        "  batch",
        "  ↪ linked to request (trace 1)",
    ]
    assert tree.render(durations=False, ascii=True).splitlines()[2:4] == [
        "  |-- db",
        "  `-- render",
    ]
    assert tree.render().splitlines()[1].startswith("  request  ")
    assert tree.render().splitlines()[1].endswith(" ms")


@pytest.mark.parametrize(
    ("ns", "text"),
    [(None, "?"), (420_000, "0.42 ms"), (12_340_000, "12.3 ms"), (1_200_000_000, "1.20 s")],
)
def test_format_duration(ns, text) -> None:
    assert format_duration(ns) == text
