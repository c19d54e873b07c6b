"""The pytest plugin (aiotrace/testing.py), run by pytest itself on small test suites."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

SUITE = """
from opentelemetry import trace

tracer = trace.get_tracer("suite")

def test_shape(otel_spans):
    with tracer.start_as_current_span("request"):
        with tracer.start_as_current_span("db"):
            pass
        with tracer.start_as_current_span("render"):
            pass
    assert otel_spans.shape() == {"request": {"db": {}, "render": {}}}
    assert otel_spans.named("db").parent.name == "request"
    assert [s.name for s in otel_spans.finished] == ["db", "render", "request"]

def test_each_test_starts_empty(otel_spans, otel_exporter):
    assert otel_spans.finished == []
    with tracer.start_as_current_span("alone"):
        pass
    assert [s.name for s in otel_exporter.get_finished_spans()] == ["alone"]
    assert otel_spans.tree().shape() == {"alone": {}}
"""


def _plugin_args() -> list:
    """How a suite turns the plugin on: it is never registered by installing aiotrace."""
    return ["-p", "aiotrace.testing"]


def test_fixtures_in_a_suite_without_a_provider(pytester: pytest.Pytester) -> None:
    # A new interpreter: no tracer provider is set, so the plugin sets the SDK's.
    pytester.makepyfile(test_suite=SUITE)
    result = pytester.runpytest_subprocess(*_plugin_args())
    result.assert_outcomes(passed=2)


def test_fixtures_reuse_the_provider_a_conftest_set(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
            InMemorySpanExporter,
        )

        OWN = InMemorySpanExporter()
        PROVIDER = TracerProvider()
        PROVIDER.add_span_processor(SimpleSpanProcessor(OWN))
        trace.set_tracer_provider(PROVIDER)
        """
    )
    pytester.makepyfile(
        test_suite=SUITE
        + """
def test_the_suites_own_processor_still_receives_spans(otel_spans):
    import conftest
    conftest.OWN.clear()
    with tracer.start_as_current_span("both"):
        pass
    assert trace.get_tracer_provider() is conftest.PROVIDER
    assert [s.name for s in conftest.OWN.get_finished_spans()] == ["both"]
    assert otel_spans.shape() == {"both": {}}
"""
    )
    result = pytester.runpytest_subprocess(*_plugin_args())
    result.assert_outcomes(passed=3)
    result.stderr.no_fnmatch_line("*Overriding of current TracerProvider*")


def test_a_provider_that_is_not_the_sdks_fails_clearly(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        from opentelemetry import trace
        trace.set_tracer_provider(trace.NoOpTracerProvider())
        """
    )
    pytester.makepyfile(test_suite=SUITE)
    result = pytester.runpytest_subprocess(*_plugin_args())
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(
        ["*aiotrace.testing: the global tracer provider is *NoOpTracerProvider, not the SDK's*"]
    )


def test_in_this_process_the_plugin_shares_the_suites_provider(pytester: pytest.Pytester) -> None:
    # tests/conftest.py set an SDK provider in this interpreter; the plugin adds to it.
    pytester.makepyfile(test_suite=SUITE)
    result = pytester.runpytest_inprocess(*_plugin_args())
    result.assert_outcomes(passed=2)


def test_the_plugin_is_off_unless_a_suite_asks_for_it(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=SUITE)
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(["*fixture 'otel_spans' not found*"])


def test_a_conftest_turns_the_plugin_on(pytester: pytest.Pytester) -> None:
    pytester.makeconftest('pytest_plugins = ["aiotrace.testing"]')
    pytester.makepyfile(test_suite=SUITE)
    result = pytester.runpytest_subprocess("-W", "error")
    result.assert_outcomes(passed=2)
