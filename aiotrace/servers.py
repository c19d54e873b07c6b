"""Server connection handlers that start from an empty OpenTelemetry context.

A server is started once, usually inside some startup span, and then serves for hours. Every
connection callback of ``loop.create_server`` / ``create_unix_server`` (and so of
``asyncio.start_server`` / ``start_unix_server``, aiohttp's and uvicorn's servers, which call
them) runs in a copy of the context that was current when the server started listening: each
request's spans become children of that one startup span, in one endless trace.

Both loops call the server's protocol factory once per connection, in the context they then
use for that connection's callbacks (read in their sources, and checked by the tests):

- stock asyncio (``selector_events._accept_connection2``, CPython 3.8-3.13): inside a new task
  per connection; the transport schedules ``connection_made`` and registers its reader from
  there, so both copy that task's context.
- uvloop (``handles/streamserver.pyx``, 0.23): ``run_in_context(self.context,
  protocol_factory)``, where ``self.context`` is the server's own copy, made at ``listen()`` and
  handed to every transport of that server.

So the patch wraps the factory: the wrapper makes an empty OpenTelemetry context current, then
calls the factory. On the stock loop that changes one connection's task, on uvloop the context
reserved for that server's connections; neither is seen by the code that started the server.
Patching the loops' ``create_server``/``create_unix_server`` covers every caller;
``asyncio.start_server`` needs no patch of its own. uvloop's ``Loop`` is a Python subclass of
its Cython loop, so the methods can be set on ``uvloop.Loop``; that happens only if uvloop is
already imported when :func:`aiotrace.install` runs (install() never imports it: call it again
after ``import uvloop``).

From CPython 3.15 (read in 3.15.2's ``base_events.Server``; 3.14.10 has no such copy) the stock
server decides the connections' context itself: ``Server.__init__`` keeps a copy of the context
that creates it (the startup span's), each connection gets a copy of that copy, passed as
``context=`` to the accept task *and* to the transport, which registers its reader with it. The
factory's cleaning reaches that copy only if the accept task really runs in it: a loop that drops
``call_soon(..., context=)`` runs the task in a throwaway copy, and every ``data_received``
then ran in the startup span (tests/test_servers.py, dropping loop, 3.15). So on 3.15+
:func:`patched_server_init` also empties the OpenTelemetry context inside the server's own copy,
which every connection's context is copied from, whatever the loop does with ``context=``.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

from ._lookalike import coroutine_function_like
from ._otel import Context, attach, get_current

__all__ = ["clean_factory", "patched_create_server", "patched_server_init"]

_EMPTY = Context()


def clean_factory(protocol_factory: Callable[[], Any]) -> Callable[[], Any]:
    """``protocol_factory`` that first makes an empty OpenTelemetry context current (see the
    module docstring for why that context is the connection's own). Wrapping twice is a no-op.
    """
    if getattr(protocol_factory, "__aiotrace_clean__", False):
        return protocol_factory

    def factory() -> Any:
        if get_current():  # a Context is a mapping: empty means nothing to clear
            attach(_EMPTY)  # no detach: this context belongs to the connection (or the server)
        return protocol_factory()

    # Not functools.wraps: a factory is often a callable object (aiohttp's ``Server``), whose
    # whole ``__dict__`` would be copied onto the wrapper.
    factory.__wrapped__ = protocol_factory  # type: ignore[attr-defined]
    factory.__aiotrace_clean__ = True  # type: ignore[attr-defined]
    return factory


def patched_create_server(original: Callable[..., Any]) -> Callable[..., Any]:
    """``loop.create_server``/``create_unix_server`` whose connections start with an empty
    OpenTelemetry context; what :func:`aiotrace.install` puts in place of ``original``.

    A coroutine function like ``original`` (``unittest.mock.create_autospec`` builds an
    ``AsyncMock`` of it, as aiohttp's tests expect) that returns ``original``'s own coroutine
    from Python 3.12 on, so nothing else about the call changes (see :mod:`aiotrace._lookalike`).
    """

    def create_server(
        self: Any, protocol_factory: Callable[[], Any], *args: Any, **kwargs: Any
    ) -> Any:
        return original(self, clean_factory(protocol_factory), *args, **kwargs)

    return coroutine_function_like(original, create_server)


def patched_server_init(original: Callable[..., None]) -> Callable[..., None]:
    """``asyncio.base_events.Server.__init__`` (3.15+) whose saved context, the one every
    connection's context is copied from, holds an empty OpenTelemetry context; the code that
    creates the server keeps its own."""

    @functools.wraps(original)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        context = getattr(self, "_context", None)
        if context is not None and context.run(get_current):
            context.run(attach, _EMPTY)  # no detach: this context belongs to the server

    return __init__
