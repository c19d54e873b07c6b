"""``aiotrace demo``: a small service traced twice, without and with aiotrace, drawn as trees.

Reading that contexts get lost at asyncio boundaries is abstract; seeing one's own requests
fall apart into stray traces is not. The service here has the three boundaries most services
have: requests served by ``asyncio.start_server`` (on loopback, port chosen by the system), a
database call in a thread pool (``loop.run_in_executor``) and an audit record handed to a
background worker through an ``asyncio.Queue``. It is run once on stock asyncio and once after
:func:`aiotrace.install`, with the same code, and the SDK's in-memory exporter collects the
spans of each run. The comparison printed at the end is counted from those spans, never
written in advance: a boundary stock asyncio already gets right shows as right in both runs,
and one this installation does not fix shows as broken in both.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, AsyncIterator, Dict, FrozenSet, List, Optional, Sequence, Tuple

from .spantree import SpanTree

__all__ = ["DemoResult", "comparison", "main", "run_service"]

SDK_MISSING = "aiotrace demo needs the OpenTelemetry SDK: pip install opentelemetry-sdk"
LOOPS = ("asyncio", "uvloop")
# The spans each request should own, and the boundary each one crosses to get there.
STEPS = (("db.query", "thread pool"), ("render", "same task"), ("audit.write", "queue"))


class DemoResult:
    """The spans of one run of the service, and how its requests came out."""

    def __init__(self, tree: SpanTree, requests: int) -> None:
        self.tree = tree
        self.requests = requests

    def request_nodes(self) -> List[Any]:
        return [n for n in self.tree.nodes if n.name.startswith("GET /orders/")]

    def own_traces(self) -> int:
        """How many requests are the root of a trace of their own."""
        roots = [n for n in self.request_nodes() if n.span.parent is None]
        return len({n.trace_id for n in roots})

    def nested(self, step: str) -> int:
        """How many requests have their ``step`` span as a child."""
        return sum(any(c.name == step for c in node.children) for node in self.request_nodes())


# -- the service ----------------------------------------------------------------------------


def _db_query(tracer: Any, order: int) -> Dict[str, Any]:
    with tracer.start_as_current_span("db.query", attributes={"db.statement": "SELECT …"}):
        time.sleep(0.002)  # stands in for the database round trip
        return {"order": order, "items": order * 2}


@contextlib.asynccontextmanager
async def _next_item(queue: asyncio.Queue) -> AsyncIterator[Any]:  # type: ignore[type-arg]
    # How an aiotrace user writes a consumer: ``consume()`` runs the block in the producer's
    # trace. Stock asyncio's Queue has no such method; there the plain ``get()`` people write
    # today is what runs.
    consume = getattr(queue, "consume", None)
    if consume is None:
        yield await queue.get()
    else:
        async with consume() as item:
            yield item


async def _audit_worker(tracer: Any, queue: asyncio.Queue) -> None:  # type: ignore[type-arg]
    while True:
        async with _next_item(queue) as event:
            with tracer.start_as_current_span("audit.write", attributes={"event": event}):
                await asyncio.sleep(0)
        queue.task_done()


async def _serve(
    tracer: Any,
    queue: asyncio.Queue,  # type: ignore[type-arg]
    pool: ThreadPoolExecutor,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
) -> None:
    line = (await reader.readline()).decode().strip()
    _, path = line.split(" ", 1)
    order = int(path.rsplit("/", 1)[1])
    with tracer.start_as_current_span(f"GET {path}", attributes={"http.route": "/orders/{id}"}):
        row = await asyncio.get_running_loop().run_in_executor(pool, _db_query, tracer, order)
        with tracer.start_as_current_span("render"):
            body = f"order {row['order']}: {row['items']} items"
        await queue.put(f"viewed order {order}")
        writer.write(f"200 {body}\n".encode())
        await writer.drain()
    writer.close()
    await writer.wait_closed()


async def _client(port: int, order: int) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /orders/{order}\n".encode())
    await writer.drain()
    reply = (await reader.readline()).decode().strip()
    writer.close()
    await writer.wait_closed()
    return reply


async def _service(tracer: Any, requests: int) -> None:
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="db") as pool:
        with tracer.start_as_current_span("startup"):
            queue: asyncio.Queue[str] = asyncio.Queue()
            worker = asyncio.ensure_future(_audit_worker(tracer, queue))
            server = await asyncio.start_server(
                lambda r, w: _serve(tracer, queue, pool, r, w), "127.0.0.1", 0
            )
        port = server.sockets[0].getsockname()[1]
        try:
            await asyncio.gather(*(_client(port, n) for n in range(1, requests + 1)))
            await queue.join()
        finally:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
            server.close()
            await server.wait_closed()


def _new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def run_service(*, with_aiotrace: bool, requests: int = 3, loop: str = "asyncio") -> DemoResult:
    """Run the service once on a new loop of kind ``loop`` and return its spans.

    With ``with_aiotrace`` the run happens between :func:`aiotrace.install` and
    :func:`aiotrace.uninstall`; without, aiotrace must not be installed (see :func:`main` for
    how an installed aiotrace is set aside and put back). Uses its own tracer provider, never
    the global one. Raises ``ImportError`` if the OpenTelemetry SDK is missing.
    """
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from . import registry

    exporter = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("aiotrace.demo")
    if loop == "uvloop":
        import uvloop  # noqa: F401 - imported before install(): its Loop gets patched too
    if with_aiotrace:
        registry.install()
    try:
        event_loop = _new_loop(loop)
        try:
            event_loop.run_until_complete(_service(tracer, requests))
            event_loop.run_until_complete(event_loop.shutdown_asyncgens())
        finally:
            event_loop.close()
    finally:
        if with_aiotrace:
            registry.uninstall()
    return DemoResult(SpanTree(exporter.get_finished_spans()), requests)


# -- the command ----------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aiotrace demo",
        description="Run a small asyncio service twice, without and with aiotrace, and print "
        "the span tree of each run.",
    )
    parser.add_argument("--requests", type=int, default=3, help="requests to send (default 3)")
    parser.add_argument("--loop", choices=LOOPS, default="asyncio", help="event loop to use")
    parser.add_argument("--ascii", action="store_true", help="draw the tree with ASCII only")
    parser.add_argument(
        "--no-durations", action="store_true", help="leave span durations out of the tree"
    )
    return parser


def _can_draw(stream: Any) -> bool:
    encoding = getattr(stream, "encoding", None) or "ascii"
    try:
        "├└│↪…".encode(encoding)
    except (LookupError, UnicodeEncodeError):
        return False
    return True


def _restore(groups: FrozenSet[str]) -> None:
    from . import registry

    if groups:
        registry.install(
            patch_threads="thread" in groups,
            exclude=[name for name in registry.PATCH_NAMES if name not in groups],
        )


def comparison(without: DemoResult, with_: DemoResult) -> List[Tuple[str, str, str]]:
    """Rows of (what, without aiotrace, with aiotrace), measured from the two runs."""
    rows = [
        (
            "request is a trace of its own (server)",
            f"{without.own_traces()}/{without.requests}",
            f"{with_.own_traces()}/{with_.requests}",
        )
    ]
    for step, boundary in STEPS:
        rows.append(
            (
                f"{step} under its request ({boundary})",
                f"{without.nested(step)}/{without.requests}",
                f"{with_.nested(step)}/{with_.requests}",
            )
        )
    return rows


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``python -m aiotrace demo``; returns the exit code."""
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.requests < 1:
        print("aiotrace demo: --requests must be at least 1", file=sys.stderr)
        return 2
    try:
        import opentelemetry.sdk.trace  # noqa: F401
    except ImportError:
        print(SDK_MISSING, file=sys.stderr)
        return 2
    if args.loop == "uvloop":
        try:
            import uvloop  # noqa: F401
        except ImportError:
            print("aiotrace demo --loop uvloop needs uvloop: pip install uvloop", file=sys.stderr)
            return 2

    from . import registry

    ascii = args.ascii or not _can_draw(sys.stdout)
    durations = not args.no_durations
    already = registry.installed()  # e.g. AIOTRACE_ENABLE=1: set aside for the first run
    registry.uninstall()
    try:
        without = run_service(with_aiotrace=False, requests=args.requests, loop=args.loop)
        with_ = run_service(with_aiotrace=True, requests=args.requests, loop=args.loop)
    finally:
        _restore(already)

    rule = "-" * 72
    print(
        f"A service on {args.loop}: {args.requests} request(s) over TCP on 127.0.0.1, each "
        "querying a database\nin a thread pool and queueing an audit record for a worker task."
    )
    for title, result in (("WITHOUT aiotrace", without), ("WITH aiotrace.install()", with_)):
        print(f"\n{rule}\n{title}\n{rule}")
        print(result.tree.render(ascii=ascii, durations=durations))
    rows = [("", "without", "with aiotrace"), *comparison(without, with_)]
    width = max(len(row[0]) for row in rows)
    print(f"\n{rule}")
    for what, before, after in rows:
        print(f"{what:<{width}}  {before:>8}  {after:>13}")
    print(
        "\nSwitch it on for any program: AIOTRACE_ENABLE=1 python app.py, "
        "or python -m aiotrace run app.py"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
