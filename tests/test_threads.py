"""threading.Thread and Timer start in their starter's context with install(patch_threads=True),
and aiotrace stays out of opentelemetry-instrumentation-threading's way."""

from __future__ import annotations

import concurrent.futures
import concurrent.futures.process  # so that install() patches process pools too
import contextvars
import subprocess
import sys
import threading
from typing import Any, Callable

import pytest
from conftest import tracer

import aiotrace
from aiotrace import registry
from aiotrace.threads import OTEL_THREADING, thread_propagation


def work(name: str = "worker") -> None:
    with tracer.start_as_current_span(name):
        pass


class RunOverridden(threading.Thread):
    def run(self) -> None:
        work()


STARTS = {
    "Thread": lambda: threading.Thread(target=work),
    "Timer": lambda: threading.Timer(0, work),
    "Thread subclass": RunOverridden,
}


def start_in_caller(make: Callable[[], threading.Thread]) -> None:
    with tracer.start_as_current_span("caller"):
        thread = make()
        thread.start()
    thread.join()


@pytest.mark.parametrize("kind", sorted(STARTS))
def test_thread_span_is_a_root_without_aiotrace(spans, kind):
    start_in_caller(STARTS[kind])
    assert spans.parent("worker") is None


@pytest.mark.parametrize("kind", sorted(STARTS))
def test_threads_are_opt_in(spans, kind):
    assert "thread" not in aiotrace.install()
    start_in_caller(STARTS[kind])
    assert spans.parent("worker") is None


@pytest.mark.parametrize("kind", sorted(STARTS))
def test_patched_thread_starts_in_the_starters_context(spans, kind):
    assert "thread" in aiotrace.install(patch_threads=True)
    start_in_caller(STARTS[kind])
    assert spans.parent("worker") == "caller"


def test_context_is_taken_at_start_not_at_creation(spans):
    aiotrace.install(patch_threads=True)
    thread = threading.Thread(target=work)
    with tracer.start_as_current_span("starter"):
        thread.start()
    thread.join()
    assert spans.parent("worker") == "starter"


def test_thread_changes_stay_in_the_thread(spans):
    aiotrace.install(patch_threads=True)
    var = contextvars.ContextVar("var", default="caller's")
    var.set("caller's")
    thread = threading.Thread(target=var.set, args=("thread's",))
    thread.start()
    thread.join()
    assert var.get() == "caller's"


def test_pool_workers_do_not_inherit_the_submitter_that_started_them(spans):
    """A worker thread started by ``submit`` serves every later submitter: with the executor
    patch left out, a thread that inherited its first submitter's context would put every job
    under that submitter's span."""
    aiotrace.install(patch_threads=True, exclude=["executor"])
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        with tracer.start_as_current_span("first"):
            pool.submit(int).result()
        pool.submit(work).result()
    assert spans.parent("worker") is None


@pytest.mark.skipif(sys.version_info < (3, 14), reason="Thread(context=) is 3.14+")
def test_an_explicit_context_is_kept(spans):
    aiotrace.install(patch_threads=True)
    given = contextvars.Context()
    with tracer.start_as_current_span("caller"):
        thread = threading.Thread(target=work, context=given)
        thread.start()
    thread.join()
    assert thread._context is given  # the caller's own object, not a copy or a wrapper
    assert spans.parent("worker") is None


@pytest.mark.skipif(sys.version_info < (3, 14), reason="Thread(context=) is 3.14+")
def test_patched_threads_run_in_the_stdlib_context_slot(spans):
    """3.14+: the copy goes where ``Thread(context=)`` would put it; ``run()`` is not wrapped
    and ``_bootstrap_inner`` is not patched (one mechanism, no double wrap)."""
    aiotrace.install(patch_threads=True)
    assert "_bootstrap_inner" not in {p.attribute for p in registry.PATCHES}
    with tracer.start_as_current_span("caller"):
        thread = threading.Thread(target=work)
        thread.start()
    thread.join()
    assert isinstance(thread._context, contextvars.Context)
    assert thread.run.__func__ is threading.Thread.run
    assert spans.parent("worker") == "caller"


INHERIT_FLAG_CHILD = """
import contextvars, sys, threading
import aiotrace, aiotrace.threads as threads
copies = []
real = threads.copy_context
threads.copy_context = lambda: copies.append(1) or real()
var = contextvars.ContextVar("var", default="unset")
var.set("starter")
seen = []
aiotrace.install(patch_threads=True)
thread = threading.Thread(target=lambda: seen.append(var.get()))
thread.start(); thread.join()
print(sys.flags.thread_inherit_context, seen[0], len(copies))
"""


@pytest.mark.skipif(sys.version_info < (3, 14), reason="thread_inherit_context is 3.14+")
@pytest.mark.parametrize("flag", ["0", "1"])
def test_thread_inherit_context_flag_is_left_to_the_stdlib(flag):
    """With ``-X thread_inherit_context=1`` the stdlib already starts each thread in a copy of
    its starter's context: the patch adds nothing (no copy of its own); with it off, the patch
    makes the one copy."""
    done = subprocess.run(
        [sys.executable, "-X", f"thread_inherit_context={flag}", "-c", INHERIT_FLAG_CHILD],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.stdout.split() == [flag, "starter", "0" if flag == "1" else "1"], done.stderr


def test_uninstall_restores_thread_and_timer():
    before = {
        (cls, name): vars(cls).get(name)
        for cls in (threading.Thread, threading.Timer)
        for name in ("start", "_bootstrap_inner")
    }
    aiotrace.install(patch_threads=True)
    assert threading.Timer.start is threading.Thread.start
    assert threading.Thread.start is not before[(threading.Thread, "start")]
    aiotrace.uninstall()
    after = {key: vars(key[0]).get(key[1]) for key in before}
    assert after == before


def test_thread_propagation_reports_aiotrace():
    assert thread_propagation() == {
        "ThreadPoolExecutor.submit": None,
        "threading.Thread": None,
        "ProcessPoolExecutor.submit": None,
    }
    aiotrace.install(patch_threads=True)
    assert set(thread_propagation().values()) == {"aiotrace"}


# opentelemetry-instrumentation-threading ------------------------------------------------------


@pytest.fixture
def instrumentor() -> Any:
    try:
        from opentelemetry.instrumentation.threading import ThreadingInstrumentor
    except ImportError as error:  # not installed, or a release that needs a newer API
        pytest.skip(f"opentelemetry-instrumentation-threading is not importable: {error}")
    instrumentor = ThreadingInstrumentor()
    timer_has_start = "start" in vars(threading.Timer)
    yield instrumentor
    # Its wrappers may sit on top of aiotrace's: take them off first.
    if instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.uninstrument()
    aiotrace.uninstall()
    if not timer_has_start and "start" in vars(threading.Timer):
        del threading.Timer.start  # the stray wrapper its uninstrument() leaves behind


def spy_copy_context(monkeypatch: pytest.MonkeyPatch) -> list:
    """Counts the contexts aiotrace copies for jobs and threads."""
    from aiotrace import executors, threads

    calls = []

    def copy_context() -> contextvars.Context:
        calls.append(1)
        return contextvars.copy_context()

    for module in (executors, threads):
        monkeypatch.setattr(module, "copy_context", copy_context)
    return calls


def pool_and_thread_in_caller() -> None:
    with concurrent.futures.ThreadPoolExecutor(1) as pool, tracer.start_as_current_span("caller"):
        pool.submit(work, "job").result()
    start_in_caller(STARTS["Thread"])


def test_instrumentor_first_aiotrace_stays_out(spans, instrumentor, monkeypatch, caplog):
    instrumentor.instrument()
    caplog.set_level("DEBUG", logger="aiotrace")
    active = aiotrace.install(patch_threads=True)
    assert active.isdisjoint({"executor", "thread"})
    assert registry.original("concurrent.futures.thread:ThreadPoolExecutor", "submit") is None
    assert f"{OTEL_THREADING} already carries the context" in caplog.text
    assert thread_propagation() == {
        "ThreadPoolExecutor.submit": OTEL_THREADING,
        "threading.Thread": OTEL_THREADING,
        "ProcessPoolExecutor.submit": "aiotrace",
    }
    calls = spy_copy_context(monkeypatch)
    pool_and_thread_in_caller()
    assert calls == []
    assert spans.parent("job") == "caller"
    assert spans.parent("worker") == "caller"


def test_instrumentor_after_aiotrace_does_the_work_alone(spans, instrumentor, monkeypatch):
    assert {"executor", "thread"} <= aiotrace.install(patch_threads=True)
    instrumentor.instrument()
    assert thread_propagation()["ThreadPoolExecutor.submit"] == OTEL_THREADING
    assert thread_propagation()["threading.Thread"] == OTEL_THREADING
    calls = spy_copy_context(monkeypatch)
    pool_and_thread_in_caller()
    assert calls == []
    assert spans.parent("job") == "caller"
    assert spans.parent("worker") == "caller"


def test_after_uninstrument_aiotrace_installs_on_thread_and_timer(spans, instrumentor):
    """Its uninstrument() leaves its start wrapper in Timer's own dict (without the run wrapper
    that would use what it records); aiotrace patches that attribute too, and takes it back."""
    instrumentor.instrument()
    instrumentor.uninstrument()
    assert "start" in vars(threading.Timer)
    aiotrace.install(patch_threads=True)
    assert thread_propagation()["threading.Thread"] == "aiotrace"
    start_in_caller(STARTS["Timer"])
    assert spans.parent("worker") == "caller"
    aiotrace.uninstall()
    spans.clear()
    start_in_caller(STARTS["Timer"])
    assert spans.parent("worker") is None
