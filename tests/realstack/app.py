"""The service of issue 14, as people write it: FastAPI on uvicorn with OpenTelemetry's FastAPI
and httpx instrumentations. tests/realstack/test_realstack.py runs it in a subprocess and checks
its span trees request by request.

Every span the app opens itself carries the request's ``rid`` (a query parameter) so that the
test can tell which request it belongs to. Spans go to the JSON-lines file named by
``REALSTACK_SPANS``, one line per ended span, from every process that serves the app
(``uvicorn --workers``: each line is one ``write`` to a file opened for appending). ``GET
/aiotrace`` says which attributes aiotrace patched in the process that answers (nothing when
aiotrace is not importable); it and ``GET /detach-errors`` name that process's pid.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import threading
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Dict, Sequence

import httpx
from fastapi import BackgroundTasks, FastAPI, Request
from fastapi.responses import StreamingResponse
from opentelemetry import trace
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from starlette.middleware.base import BaseHTTPMiddleware

CHUNK = b"x" * 65536
STREAM_CHUNKS = 400  # bounds the stream whose client leaves after two chunks (25 MiB at most)


class JsonLinesExporter(SpanExporter):
    """One JSON line per span: name, ids, parent id and the ``rid`` attribute."""

    def __init__(self, path: str) -> None:
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - open for the process
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = []
        for span in spans:
            context, parent = span.get_span_context(), span.parent
            record = {
                "name": span.name,
                "trace": f"{context.trace_id:032x}",
                "span": f"{context.span_id:016x}",
                "parent": f"{parent.span_id:016x}" if parent else None,
                "rid": (span.attributes or {}).get("rid"),
                "pid": os.getpid(),  # which uvicorn worker served it (--workers)
            }
            lines.append(json.dumps(record) + "\n")
        with self._lock:
            self._file.writelines(lines)
            self._file.flush()
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        with self._lock:
            self._file.close()


def _provider() -> Any:
    # Under opentelemetry-instrument and the Operator's sitecustomize, the distro has set an
    # SDK provider already (exporting nothing: OTEL_TRACES_EXPORTER=none); add ours to it.
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(
        SimpleSpanProcessor(JsonLinesExporter(os.environ["REALSTACK_SPANS"]))
    )
    return provider


_provider()
tracer = trace.get_tracer("realstack")


class DetachCounter(logging.Filter):
    """Counts OpenTelemetry's "Failed to detach context" records; lets every record through
    (a filter, not a handler: the log output is what it would be without it)."""

    count = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith("Failed to detach context"):
            DetachCounter.count += 1
        return True


logging.getLogger("opentelemetry.context").addFilter(DetachCounter())


def work(rid: str, done: asyncio.Future[None]) -> None:
    with tracer.start_as_current_span("queue.work", attributes={"rid": rid}):
        done.set_result(None)


async def worker(jobs: asyncio.Queue[Any]) -> None:
    # A worker written for aiotrace: its queues' consume() runs the block in the trace of the
    # put() (aiotrace.queues); asyncio's own queue, with aiotrace off, has only get().
    while True:
        if hasattr(jobs, "consume"):
            async with jobs.consume() as (rid, done):
                work(rid, done)
        else:
            work(*await jobs.get())


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    app.state.jobs = asyncio.Queue()
    task = asyncio.create_task(worker(app.state.jobs))
    async with httpx.AsyncClient() as client:
        app.state.client = client
        yield
    task.cancel()


app = FastAPI(lifespan=lifespan)


class Middleware(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next: Any) -> Any:
        if not request.url.path.startswith("/mw"):
            return await call_next(request)
        rid = request.query_params.get("rid")
        with tracer.start_as_current_span("mw.middleware", attributes={"rid": rid}):
            return await call_next(request)


app.add_middleware(Middleware)


@app.get("/chain")
async def chain(rid: str, request: Request) -> Dict[str, Any]:
    with tracer.start_as_current_span("chain.work", attributes={"rid": rid}):
        base = f"{request.url.scheme}://{request.url.netloc}"
        response = await request.app.state.client.get(f"{base}/leaf", params={"rid": rid})
        return {"leaf": response.json()}


@app.get("/leaf")
async def leaf(rid: str) -> Dict[str, Any]:
    with tracer.start_as_current_span("leaf.work", attributes={"rid": rid}):
        await asyncio.sleep(0)
        return {"rid": rid}


@app.get("/sync")
def sync(rid: str) -> Dict[str, Any]:  # anyio's thread pool
    with tracer.start_as_current_span("sync.work", attributes={"rid": rid}):
        return {"rid": rid}


def background(rid: str) -> None:
    with tracer.start_as_current_span("background.work", attributes={"rid": rid}):
        pass


@app.get("/background")
async def with_background(rid: str, tasks: BackgroundTasks) -> Dict[str, Any]:
    tasks.add_task(background, rid)
    return {"rid": rid}


async def chunks(rid: str, name: str, count: int) -> AsyncIterator[bytes]:
    for _ in range(count):
        with tracer.start_as_current_span(name, attributes={"rid": rid}):
            yield CHUNK


@app.get("/stream")
async def stream(rid: str) -> StreamingResponse:
    # The client reads two chunks and disconnects: Starlette cancels the task that iterates
    # this generator, which is left suspended at a yield inside a span.
    return StreamingResponse(chunks(rid, "stream.chunk", STREAM_CHUNKS))


@app.get("/mw")
async def behind_middleware(rid: str) -> Dict[str, Any]:
    with tracer.start_as_current_span("mw.work", attributes={"rid": rid}):
        return {"rid": rid}


@app.get("/mw/stream")
async def stream_behind_middleware(rid: str) -> StreamingResponse:
    return StreamingResponse(chunks(rid, "mw.chunk", 3))


@app.get("/queue")
async def queue(rid: str, request: Request) -> Dict[str, Any]:
    with tracer.start_as_current_span("queue.put", attributes={"rid": rid}):
        done = asyncio.get_running_loop().create_future()
        await request.app.state.jobs.put((rid, done))
        await done
        return {"rid": rid}


def in_executor(rid: str) -> str:
    with tracer.start_as_current_span("executor.work", attributes={"rid": rid}):
        return rid


@app.get("/executor")
async def executor(rid: str) -> Dict[str, Any]:
    with tracer.start_as_current_span("executor.call", attributes={"rid": rid}):
        await asyncio.get_running_loop().run_in_executor(None, in_executor, rid)
        return {"rid": rid}


@app.post("/upload")
async def upload(rid: str, request: Request) -> Dict[str, Any]:
    with tracer.start_as_current_span("upload.work", attributes={"rid": rid}):
        size = len(await request.body())
        return {"rid": rid, "size": size}


@app.get("/after")
async def after(rid: str) -> Dict[str, Any]:
    with tracer.start_as_current_span("after.work", attributes={"rid": rid}):
        return {"rid": rid}


@app.get("/detach-errors")
def detach_errors() -> Dict[str, int]:
    """The detach errors logged so far, once the garbage collector has finalized what it can."""
    gc.collect()
    return {"count": DetachCounter.count, "pid": os.getpid()}


@app.get("/aiotrace")
def patched() -> Dict[str, Any]:
    try:
        import aiotrace_boot
        from aiotrace import registry
    except ImportError:
        return {"patched": [], "state": None, "pid": os.getpid()}
    return {
        "pid": os.getpid(),
        "patched": sorted(
            p.where for p in registry.PATCHES if registry.original(p.owner, p.attribute)
        ),
        "state": aiotrace_boot.state(),
    }


if not getattr(app, "_is_instrumented_by_opentelemetry", False):  # opentelemetry-instrument did
    FastAPIInstrumentor.instrument_app(app)
if not HTTPXClientInstrumentor().is_instrumented_by_opentelemetry:
    HTTPXClientInstrumentor().instrument()
