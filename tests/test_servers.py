"""Server connection handlers start from an empty context, not from the server's startup span."""

from __future__ import annotations

import asyncio
import os
import ssl
import sys
import tempfile
from typing import Any, Awaitable, Callable, Dict, Iterator, Optional, Tuple

import pytest
from conftest import tracer
from opentelemetry import trace

import aiotrace
from aiotrace.servers import clean_factory

UNIX = sys.platform != "win32"


async def _stream_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    line = await reader.readline()
    with tracer.start_as_current_span("request"):
        pass
    writer.write(line)
    await writer.drain()
    writer.close()


class _Protocol(asyncio.Protocol):
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        with tracer.start_as_current_span("connection_made"):
            pass

    def data_received(self, data: bytes) -> None:
        with tracer.start_as_current_span("request"):
            pass
        self.transport.write(data)
        self.transport.close()


async def _tcp_start_server(directory: str) -> Any:
    return await asyncio.start_server(_stream_handler, "127.0.0.1", 0)


async def _tcp_create_server(directory: str = "") -> Any:
    return await asyncio.get_running_loop().create_server(_Protocol, "127.0.0.1", 0)


async def _unix_start_server(directory: str) -> Any:
    return await asyncio.start_unix_server(_stream_handler, os.path.join(directory, "s"))


async def _unix_create_server(directory: str) -> Any:
    loop = asyncio.get_running_loop()
    return await loop.create_unix_server(_Protocol, os.path.join(directory, "s"))


@pytest.fixture
def directory() -> Iterator[str]:
    """A directory for a unix socket; short, because AF_UNIX paths are limited to about 100
    bytes and pytest's tmp_path can be longer."""
    with tempfile.TemporaryDirectory(prefix="aiotrace-") as name:
        yield name


STARTERS: Dict[str, Callable[[str], Awaitable[Any]]] = {
    "start_server": _tcp_start_server,
    "create_server": _tcp_create_server,
}
if UNIX:
    STARTERS["start_unix_server"] = _unix_start_server
    STARTERS["create_unix_server"] = _unix_create_server


async def _request(server: Any) -> None:
    address = server.sockets[0].getsockname()
    if isinstance(address, str):
        reader, writer = await asyncio.open_unix_connection(address)
    else:
        reader, writer = await asyncio.open_connection(*address[:2])
    writer.write(b"ping\n")
    assert await reader.readline() == b"ping\n"
    writer.close()


def _serve_one(starter: str, directory: str) -> Any:
    """Start the server inside span ``startup``, then send one request from outside it."""

    async def main() -> None:
        span = tracer.start_span("startup")
        with trace.use_span(span, end_on_exit=True):
            server = await STARTERS[starter](directory)
        async with server:
            await _request(server)  # every handler ends its span before it answers

    return main()


@pytest.mark.stock_detach_failures
@pytest.mark.parametrize("starter", sorted(STARTERS))
def test_stock_handlers_are_children_of_the_startup_span(run, spans, starter, directory):
    """The failure: every request of a long-running server is a child of its startup span."""
    run(_serve_one(starter, directory))
    assert spans.parent("request") == "startup"


@pytest.mark.parametrize("starter", sorted(STARTERS))
def test_installed_handlers_start_clean(run, spans, starter, directory):
    aiotrace.install()
    run(_serve_one(starter, directory))
    assert spans.parent("request") is None
    if starter.startswith("create"):
        assert spans.parent("connection_made") is None


@pytest.mark.parametrize("starter", sorted(STARTERS))
def test_server_context_inherit_keeps_the_stdlib_behaviour(run, spans, starter, directory):
    assert "server" not in aiotrace.install(server_context="inherit")
    run(_serve_one(starter, directory))
    assert spans.parent("request") == "startup"


def test_startup_code_keeps_its_own_context(honest_run, spans):
    """Cleaning happens in the connection's context (stock loop) or the server's own copy
    (uvloop): the code that started the server keeps its span."""
    aiotrace.install()

    async def main() -> None:
        with tracer.start_as_current_span("startup"):
            server = await _tcp_create_server()
            async with server:
                await _request(server)
                assert trace.get_current_span().name == "startup"
            with tracer.start_as_current_span("after"):
                pass

    honest_run(main())
    assert spans.parent("request") is None
    assert spans.parent("after") == "startup"


def test_every_connection_starts_clean(run, spans):
    """Several connections, each sending its request from inside a different client span."""
    aiotrace.install()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        name = (await reader.readline()).decode().strip()
        assert not trace.get_current_span().get_span_context().is_valid
        with tracer.start_as_current_span(f"request-{name}"):
            pass
        writer.write(b"ok\n")
        await writer.drain()
        writer.close()

    async def main() -> None:
        with tracer.start_as_current_span("startup"):
            server = await asyncio.start_server(handler, "127.0.0.1", 0)
        host, port = server.sockets[0].getsockname()[:2]

        async def client(n: int) -> None:
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(f"{n}\n".encode())
            assert await reader.readline() == b"ok\n"
            writer.close()

        async with server:
            await asyncio.gather(*[client(n) for n in range(3)])

    run(main())
    for n in range(3):
        assert spans.parent(f"request-{n}") is None


@pytest.fixture(scope="module")
def tls() -> Tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context, client context) for the self-signed localhost certificate of the
    test suite (tests/localhost.pem, shared with test_transports)."""
    cert = os.path.join(os.path.dirname(__file__), "localhost.pem")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert)
    client = ssl.create_default_context(cafile=cert)
    client.check_hostname = False
    return server, client


@pytest.mark.stock_detach_failures
@pytest.mark.parametrize("installed", [False, True], ids=["stock", "installed"])
def test_tls_server_handlers(run, spans, tls, installed):
    """With TLS the protocol is wrapped (stock loop: sslproto; uvloop: its own SSLProtocol);
    the factory is still called in the connection's context."""
    if installed:
        aiotrace.install()
    server_tls, client_tls = tls

    async def main() -> None:
        with tracer.start_as_current_span("startup"):
            server = await asyncio.start_server(_stream_handler, "127.0.0.1", 0, ssl=server_tls)
        host, port = server.sockets[0].getsockname()[:2]
        async with server:
            reader, writer = await asyncio.open_connection(host, port, ssl=client_tls)
            writer.write(b"ping\n")
            assert await reader.readline() == b"ping\n"
            writer.close()

    run(main())
    assert spans.parent("request") == (None if installed else "startup")


def test_wrapping_twice_is_a_no_op():
    factory = clean_factory(_Protocol)
    assert clean_factory(factory) is factory
    assert factory.__wrapped__ is _Protocol


def test_uninstall_restores_the_loop_methods():
    import asyncio.base_events

    before = asyncio.base_events.BaseEventLoop.create_server
    aiotrace.install()
    assert asyncio.base_events.BaseEventLoop.create_server is not before
    aiotrace.uninstall()
    assert asyncio.base_events.BaseEventLoop.create_server is before


uvloop: Optional[Any]
try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is in the test extra on every platform we test
    uvloop = None


@pytest.mark.skipif(uvloop is None, reason="uvloop is not installed")
def test_uvloop_methods_are_set_on_its_python_class_and_removed_again():
    cython_create_server = uvloop.Loop.create_server
    assert "create_server" not in vars(uvloop.Loop)
    aiotrace.install()
    assert "create_server" in vars(uvloop.Loop)
    aiotrace.uninstall()
    assert "create_server" not in vars(uvloop.Loop)
    assert uvloop.Loop.create_server is cython_create_server


try:
    import aiohttp
    from aiohttp import web
except ImportError:  # pragma: no cover - aiohttp is in the test extra
    aiohttp = None


def _aiohttp_app() -> Any:
    async def hello(request: Any) -> Any:
        with tracer.start_as_current_span("request"):
            pass
        return web.Response(text="hello")

    app = web.Application()
    app.router.add_get("/", hello)
    return app


def _aiohttp_serve_one() -> Any:
    async def main() -> None:
        runner = web.AppRunner(_aiohttp_app())
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        with tracer.start_as_current_span("startup"):
            await site.start()
        host, port = runner.addresses[0][:2]
        try:
            async with aiohttp.ClientSession() as session, session.get(
                f"http://{host}:{port}/"
            ) as response:
                assert await response.text() == "hello"
        finally:
            await runner.cleanup()

    return main()


@pytest.mark.skipif(aiohttp is None, reason="aiohttp is not installed")
def test_aiohttp_requests_are_children_of_the_startup_span(honest_run, spans):
    """The failure as aiohttp users meet it (aiohttp serves through ``loop.create_server``)."""
    honest_run(_aiohttp_serve_one())
    assert spans.parent("request") == "startup"


@pytest.mark.skipif(aiohttp is None, reason="aiohttp is not installed")
def test_aiohttp_requests_start_clean(honest_run, spans):
    aiotrace.install()
    honest_run(_aiohttp_serve_one())
    assert spans.parent("request") is None
