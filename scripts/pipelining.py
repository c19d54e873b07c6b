"""Where uvicorn puts a pipelined HTTP/1.1 request's server span (docs/async-generators.md).

Serves a two-line ASGI app behind OpenTelemetry's ASGI middleware with uvicorn on 127.0.0.1,
sends two pipelined ``GET`` requests on one socket, and prints each request span's kind and
parent. Needs ``uvicorn`` (and ``httptools``/``uvloop`` for those choices) and
``opentelemetry-instrumentation-asgi``, none of which aiotrace uses.

    python scripts/pipelining.py [--http h11|httptools] [--loop asyncio|uvloop]
                                 [--aiotrace] [--reset-contextvars]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
from typing import Any, Dict

import uvicorn
from opentelemetry import trace
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import aiotrace


async def app(scope: Dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    )
    await send({"type": "http.response.body", "body": b"ok"})


async def serve_two_pipelined(http: str, reset_contextvars: bool) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    port = sock.getsockname()[1]
    extra = {"reset_contextvars": True} if reset_contextvars else {}
    config = uvicorn.Config(
        OpenTelemetryMiddleware(app), http=http, lifespan="off", log_level="warning", **extra
    )
    server = uvicorn.Server(config)
    serving = asyncio.ensure_future(server.serve(sockets=[sock]))
    for _ in range(500):
        if server.started:
            break
        await asyncio.sleep(0.01)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n")
    received = b""
    while received.count(b"HTTP/1.1 200") < 2:
        received += await asyncio.wait_for(reader.read(65536), 10)
    writer.close()
    server.should_exit = True
    await serving


def main(argv: Any = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--http", choices=["h11", "httptools"], default="h11")
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    parser.add_argument("--aiotrace", action="store_true", help="aiotrace.install() first")
    parser.add_argument("--reset-contextvars", action="store_true", help="uvicorn 0.45+")
    args = parser.parse_args(argv)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    if args.aiotrace:
        aiotrace.install()
    if args.loop == "uvloop":
        import uvloop

        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(serve_two_pipelined(args.http, args.reset_contextvars))
    finally:
        loop.close()
    spans = exporter.get_finished_spans()
    names = {span.context.span_id: span.name for span in spans}
    for span in spans:
        if span.name in ("GET /a", "GET /b"):
            parent = names.get(span.parent.span_id) if span.parent else None
            print(f"{span.name}: {span.kind.name}, parent {parent}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
