"""A small asyncio service that prints its own span tree: run it with and without aiotrace.

    python examples/service.py                    # stock asyncio
    python -m aiotrace run examples/service.py    # the same program, aiotrace switched on

The code never mentions aiotrace's patches (it only borrows its tree printer): a server started
inside a ``startup`` span, a request handler that looks an order up in a thread pool
(``run_in_executor``) and prices it with two concurrent tasks (``gather``). On stock asyncio the
requests land in the ``startup`` trace and the lookups become traces of their own; under
``aiotrace run`` each request is one trace holding all of its work. Needs opentelemetry-sdk.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import aiotrace
from aiotrace.spantree import SpanTree

tracer = trace.get_tracer("examples.service")
pool = ThreadPoolExecutor(max_workers=2)


def load_order(order_id: int) -> dict:
    with tracer.start_as_current_span("db.load_order"):
        time.sleep(0.001)  # the database round trip
        return {"id": order_id, "items": [3, 5]}


async def price(item: int) -> int:
    with tracer.start_as_current_span(f"price item {item}"):
        await asyncio.sleep(0)
        return item * 10


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    order_id = int((await reader.readline()).decode().split("/")[-1])
    with tracer.start_as_current_span(f"GET /orders/{order_id}"):
        loop = asyncio.get_running_loop()
        order = await loop.run_in_executor(pool, load_order, order_id)
        prices = await asyncio.gather(*(price(item) for item in order["items"]))
        writer.write(f"{sum(prices)}\n".encode())
        await writer.drain()
    writer.close()


async def request(port: int, order_id: int) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /orders/{order_id}\n".encode())
    reply = await reader.readline()
    writer.close()
    return reply.decode().strip()


async def main() -> None:
    with tracer.start_as_current_span("startup"):
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        await asyncio.gather(request(port, 1), request(port, 2))


if __name__ == "__main__":
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    asyncio.run(main())
    pool.shutdown()
    active = ", ".join(sorted(aiotrace.installed())) or "off"
    print(f"aiotrace: {active}\n")
    print(SpanTree(exporter.get_finished_spans()).render())
