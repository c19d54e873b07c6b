"""One hand-off API for every source that keeps its items' producer contexts.

A consumer should not have to know whether its messages arrive through an asyncio queue or an
anyio memory object stream to process each one in its sender's trace. These functions take
either: an asyncio queue that keeps contexts (created after ``install()``, or a
``Propagating*`` queue), whose own ``consume()``/``get_with_context()`` they call, or an anyio
``MemoryObjectReceiveStream`` (contexts recorded by the ``anyio_stream`` patch group, see
:mod:`aiotrace.anyio_streams`). The semantics are the queue API's, whose code they reuse.
"""

from __future__ import annotations

from typing import Any, AsyncContextManager, Optional, Tuple

from . import anyio_streams
from ._otel import Context
from .queues import PropagatingQueue, _Consumption, check_consume_mode

__all__ = ["consume", "receive_nowait_with_context", "receive_with_context"]

_ACCEPTED = (
    "an asyncio queue created after aiotrace.install() (or an aiotrace.PropagatingQueue, "
    "PropagatingPriorityQueue, PropagatingLifoQueue) or an anyio MemoryObjectReceiveStream"
)


def _unsupported(function: str, source: Any) -> TypeError:
    kind = type(source)
    return TypeError(
        f"aiotrace.{function}() got {kind.__module__}.{kind.__qualname__}; accepted: {_ACCEPTED}"
    )


def consume(
    source: Any, mode: str = "parent", *, span_name: str = "process"
) -> AsyncContextManager[Any]:
    """``async with aiotrace.consume(source) as item:`` takes the next item (waiting for one)
    and runs the block in its sender's trace; the consumer's own context is back after it.

    ``mode`` and ``span_name`` are those of :meth:`aiotrace.PropagatingQueue.consume`:
    ``"parent"`` makes the sender's context current for the block, ``"link"`` runs it in a new
    root span ``span_name`` linked to the sender's span. The item's context is unknown (the
    block keeps the consumer's context, or its span has no link) if it was sent before
    ``install()``. Raises ``TypeError`` for another kind of source, ``ValueError`` for another
    mode.
    """
    if isinstance(source, PropagatingQueue):
        return source.consume(mode, span_name=span_name)
    if anyio_streams.is_memory_receive_stream(source):
        check_consume_mode(mode)
        return _Consumption(source, mode == "link", span_name, anyio_streams.receive_with_context)
    raise _unsupported("consume", source)


async def receive_with_context(source: Any) -> Tuple[Any, Optional[Context]]:
    """``item, context = await aiotrace.receive_with_context(source)``: the next item (waiting
    like ``get()``/``receive()``) and the OpenTelemetry context that was current where it was
    sent, or None if that is unknown. The caller's own context is not changed."""
    if isinstance(source, PropagatingQueue):
        return await source.get_with_context()
    if anyio_streams.is_memory_receive_stream(source):
        return await anyio_streams.receive_with_context(source)
    raise _unsupported("receive_with_context", source)


def receive_nowait_with_context(source: Any) -> Tuple[Any, Optional[Context]]:
    """:func:`receive_with_context` without waiting: raises what ``get_nowait()`` (asyncio's
    ``QueueEmpty``) or ``receive_nowait()`` (anyio's ``WouldBlock``, ``EndOfStream``...)
    raise."""
    if isinstance(source, PropagatingQueue):
        return source.get_nowait_with_context()
    if anyio_streams.is_memory_receive_stream(source):
        return anyio_streams.receive_nowait_with_context(source)
    raise _unsupported("receive_nowait_with_context", source)
