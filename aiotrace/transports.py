"""Paused transports resume reading in their connection's context, not the resumer's.

On the stock selector loop a transport's reads are delivered by a reader callback registered
with the selector, and a callback runs in the context that was current when it was registered.
``pause_reading()`` unregisters it; ``resume_reading()`` registers a new one *in the caller's
context*. A server that pauses in ``data_received`` and resumes from the request task it started
(uvicorn's flow control, CPython issue 140947) therefore gets every later ``data_received`` in
that task's context: the next request becomes a child of the previous one, one endless trace
per connection. uvloop keeps the connection's context and needs nothing (the tests show it).

:func:`aiotrace.install` replaces ``pause_reading``/``resume_reading`` of asyncio's selector
socket transport (TCP and Unix sockets, server and client side, and the socket under SSL). On
pause it keeps the context the reader callback ran in; on resume it re-registers the reader in a
copy of that context. From Python 3.11, SSL keeps its own read pause above the socket and, when
resumed, delivers buffered data from a callback scheduled by the resumer; that callback is
scheduled in the socket's context too.
"""

from __future__ import annotations

import contextvars
from typing import Any, Callable, Optional

from ._lookalike import like

__all__ = ["patched_pause_reading", "patched_resume_reading", "patched_ssl_resume_reading"]

Method = Callable[[Any], None]


def _reader_context(transport: Any) -> Optional[contextvars.Context]:
    """The context the transport's registered reader callback runs in, if one is registered.

    The selector loops keep ``(reader_handle, writer_handle)`` as each key's data, and a handle
    its context in ``_context``; the stdlib selectors index their keys in ``_fd_to_key``, a
    plain dict read here directly because ``get_key()`` costs a microsecond of Python calls
    (CPython 3.8-3.13, read in ``asyncio/selector_events.py``, ``asyncio/events.py`` and
    ``selectors.py``).
    """
    try:
        selector = transport._loop._selector
        fd_to_key = getattr(selector, "_fd_to_key", None)
        if fd_to_key is not None:
            key = fd_to_key.get(transport._sock_fd)
        else:
            key = selector.get_key(transport._sock_fd)
        reader = None if key is None else key.data[0]
    except Exception:
        # Private structures that are not what this reads (a selector mocked in a test suite,
        # as in CPython's test_selector_events): behave as stock asyncio, never fail the call.
        return None
    context = None if reader is None else getattr(reader, "_context", None)
    return context if isinstance(context, contextvars.Context) else None


def patched_pause_reading(original: Method) -> Method:
    """``pause_reading`` that remembers the context reads were delivered in."""

    def pause_reading(self: Any) -> None:
        context = _reader_context(self)
        original(self)
        if context is not None and getattr(self, "_paused", False):  # it really paused
            self._aiotrace_context = context

    return like(original)(pause_reading)


def patched_resume_reading(original: Method) -> Method:
    """``resume_reading`` that registers the reader in the context it was paused in."""

    def resume_reading(self: Any) -> None:
        # Attribute access, never ``self.__dict__``: on CPython 3.11+ reading ``__dict__``
        # turns the instance's inline attribute values into a dict object, after which every
        # attribute access of the transport's own methods takes a slower path (measured with
        # scripts/bench_hygiene.py: +4.9 µs per paused echo round trip with ``__dict__.pop``,
        # +1.7 µs with this).
        context = getattr(self, "_aiotrace_context", None)
        if context is None:
            original(self)
        else:
            self._aiotrace_context = None
            # A copy: the remembered context may be the one running right now.
            context.copy().run(original, self)

    return like(original)(resume_reading)


def patched_ssl_resume_reading(original: Method) -> Method:
    """``SSLProtocol._resume_reading`` (3.11+) that schedules the delivery of buffered data in
    the context of the socket underneath."""

    def _resume_reading(self: Any) -> None:
        transport = getattr(self, "_transport", None)
        context = None
        if transport is not None:
            context = getattr(transport, "_aiotrace_context", None) or _reader_context(transport)
        if context is None:
            original(self)
        else:
            context.copy().run(original, self)

    return like(original)(_resume_reading)
