"""anyio memory object streams that keep each item's trace, as aiotrace's queues do.

anyio's memory object streams (``anyio.create_memory_object_stream``) are the queues of the
Starlette, FastAPI, httpx and MCP SDK world, and an item sent through one leaves its trace
behind exactly as with a stock ``asyncio.Queue``: the receiver runs in its own context. After
``install()`` (patch group ``anyio_stream``, applied once ``anyio.streams.memory`` is imported)
``MemoryObjectSendStream.send_nowait`` records the sender's OpenTelemetry context beside each
item, and ``MemoryObjectReceiveStream.receive_nowait`` takes it out again in step. ``send()`` and
``receive()`` are anyio's own, unpatched: they call these two (read in anyio 4.0.0, 4.3.0,
4.5.2 and 4.16.0, ``src/anyio/streams/memory.py``), so clones of a stream, which share its
state, are covered too. Nothing is wrapped: the buffer holds exactly the caller's objects, and
``statistics()``, ``receive()`` and ``async for`` see what anyio alone would.

Where each context is kept, beside the stream's shared state (``_MemoryObjectStreamState``):

- items in ``buffer``: a deque of their contexts, aligned with the buffer's right end (items
  enter at the right and leave at the left; an item that was already there before
  ``install()`` has no context, and the deque is only ever shorter than the buffer then);
- items of senders waiting for room (``send()`` on a full stream): ``waiting_senders`` is
  replaced, the first time a send has to wait, by :class:`_Senders`, the same ``OrderedDict``
  plus the context of each entry, recorded where ``send()`` inserts it (in the sender's task);
- items handed straight to a receiver that was already waiting (anyio sets the item on the
  receiver's slot in ``send_nowait``): only a receiver inside :func:`receive_with_context`
  needs that context, and it registers a slot for it through ``waiting_receivers``, replaced by
  :class:`_Receivers` when such a receiver first waits; the sender's ``popitem`` fills the slot.

Every context leaves with its item (received, withdrawn by a cancelled or closed sender, or
with the stream's state when the streams are gone): nothing else is held. The replaced
dictionaries stay on streams that were used while installed; after ``uninstall()`` they still
only hold the contexts of waiting senders, and nothing reads them.

The memory streams are anyio's own code on every backend, so on trio they record the same
contexts; aiotrace changes nothing else there (its other patches are asyncio's).

anyio is never imported here: the registry applies the patches once someone else imported it.
"""

from __future__ import annotations

import collections
import contextvars
import sys
from typing import Any, Callable, Dict, List, Optional, Tuple

from ._otel import Context, get_current

__all__ = [
    "is_memory_receive_stream",
    "patched_receive_nowait",
    "patched_send_nowait",
    "receive_nowait_with_context",
    "receive_with_context",
]

_MODULE = "anyio.streams.memory"

# The slot of the receive_with_context call running in this task: the context of the item it
# gets is appended to it, by receive_nowait or by the sender that hands the item over.
_SLOT: contextvars.ContextVar[Optional[List[Optional[Context]]]] = contextvars.ContextVar(
    "aiotrace_anyio_slot", default=None
)


class _Senders(collections.OrderedDict):  # type: ignore[type-arg]
    """``waiting_senders``: event -> item, plus event -> the sending task's context."""

    def __init__(self, waiting: Any = ()) -> None:
        self.contexts: Dict[Any, Optional[Context]] = {}
        super().__init__()
        for key, value in dict(waiting).items():  # senders waiting since before: unknown
            collections.OrderedDict.__setitem__(self, key, value)

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        self.contexts[key] = get_current()  # send() inserts its item in the sender's task

    def __delitem__(self, key: Any) -> None:
        super().__delitem__(key)
        self.contexts.pop(key, None)

    def pop(self, key: Any, *default: Any) -> Any:
        self.contexts.pop(key, None)
        return super().pop(key, *default)

    def popitem(self, last: bool = True) -> Tuple[Any, Any]:
        key, value = super().popitem(last)
        self.contexts.pop(key, None)
        return key, value

    def clear(self) -> None:
        super().clear()
        self.contexts.clear()


class _Receivers(collections.OrderedDict):  # type: ignore[type-arg]
    """``waiting_receivers``: event -> receiver, plus event -> the slot of a waiting
    :func:`receive_with_context` call, filled by the sender that hands it an item."""

    def __init__(self, waiting: Any = ()) -> None:
        self.slots: Dict[Any, List[Optional[Context]]] = {}
        super().__init__()
        for key, value in dict(waiting).items():  # receivers waiting since before: no slot
            collections.OrderedDict.__setitem__(self, key, value)

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        slot = _SLOT.get()  # receive() inserts its receiver in the receiving task
        if slot is not None:
            self.slots[key] = slot

    def __delitem__(self, key: Any) -> None:
        super().__delitem__(key)
        self.slots.pop(key, None)

    def pop(self, key: Any, *default: Any) -> Any:
        self.slots.pop(key, None)
        return super().pop(key, *default)

    def popitem(self, last: bool = True) -> Tuple[Any, Any]:
        # send_nowait pops the receiver it hands the item to, in the sender's task (and, from
        # anyio 4.4 on, first any receiver with a pending cancellation, which never gets it:
        # its receive() raises, and its slot is dropped with it).
        # The slot is taken first: on CPython 3.8 OrderedDict.popitem calls the subclass's pop.
        slot = self.slots.pop(next(reversed(self) if last else iter(self)), None) if self else None
        key, value = super().popitem(last)
        if slot is not None:
            slot.append(get_current())
        return key, value

    def clear(self) -> None:
        super().clear()
        self.slots.clear()


def _align(contexts: Any, size: int) -> None:
    """Make ``contexts`` as long as the buffer (``size``): drop the oldest contexts of items
    that left it unseen, or put None (unknown) for items that entered it unseen."""
    extra = len(contexts) - size
    if extra > 0:
        for _ in range(extra):
            contexts.popleft()
    elif extra < 0:
        contexts.extendleft([None] * -extra)


def _start_contexts(state: Any, size: int) -> Any:
    """The context deque of a stream seen for the first time, for a buffer of ``size`` items
    that entered it unseen."""
    contexts = state._aiotrace_contexts = collections.deque()
    _align(contexts, size)
    return contexts


def _wait_for_room(state: Any) -> None:
    # send() puts the item in waiting_senders next: keep its context there, for receive_nowait
    # to move it beside the buffer with the item.
    senders = state.waiting_senders
    if type(senders) is not _Senders:
        state.waiting_senders = _Senders(senders)
        if not hasattr(state, "_aiotrace_contexts"):
            _start_contexts(state, len(state.buffer))


def patched_send_nowait(original: Callable[[Any, Any], None]) -> Callable[[Any, Any], None]:
    """``MemoryObjectSendStream.send_nowait`` that records the sender's context beside the item."""
    would_block = sys.modules[_MODULE].WouldBlock

    def send_nowait(self: Any, item: Any) -> None:
        state = self._state
        try:
            if state.waiting_receivers:
                # The item goes to the first receiver without a pending cancellation (its slot,
                # if any, is filled by _Receivers.popitem) or, if there is none, to the buffer.
                size = len(state.buffer)
                original(self, item)
                if len(state.buffer) == size:
                    return
            else:
                original(self, item)
        except would_block:
            _wait_for_room(state)
            raise
        try:
            state._aiotrace_contexts.append(get_current())
        except AttributeError:
            _start_contexts(state, len(state.buffer) - 1).append(get_current())

    send_nowait.__wrapped__ = original  # type: ignore[attr-defined]
    send_nowait.__aiotrace_patch__ = True  # type: ignore[attr-defined]
    for name in ("__module__", "__name__", "__qualname__", "__doc__"):
        setattr(send_nowait, name, getattr(original, name))
    return send_nowait


def patched_receive_nowait(original: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``MemoryObjectReceiveStream.receive_nowait`` that takes the item's context out with it."""

    def receive_nowait(self: Any) -> Any:
        state = self._state
        try:
            contexts = state._aiotrace_contexts
        except AttributeError:  # nothing was sent while installed
            return original(self)
        if state.waiting_senders and not self._closed:
            return _receive_from_sender(original, self, state, contexts)
        size = len(state.buffer)
        item = original(self)  # raises (EndOfStream, WouldBlock...) before taking anything
        held = len(contexts)
        if held >= size:
            if held > size:
                _align(contexts, size)
            otel_ctx = contexts.popleft()
            slot = _SLOT.get()
            if slot is not None:
                slot.append(otel_ctx)
        return item

    receive_nowait.__wrapped__ = original  # type: ignore[attr-defined]
    receive_nowait.__aiotrace_patch__ = True  # type: ignore[attr-defined]
    for name in ("__module__", "__name__", "__qualname__", "__doc__"):
        setattr(receive_nowait, name, getattr(original, name))
    return receive_nowait


def _receive_from_sender(
    original: Callable[[Any], Any], stream: Any, state: Any, contexts: Any
) -> Any:
    # anyio moves the first waiting sender's item to the end of the buffer, then returns the
    # buffer's first item (read in anyio 4.0.0-4.16.0): its context goes the same way.
    senders = state.waiting_senders
    sender_ctx = senders.contexts.get(next(iter(senders))) if type(senders) is _Senders else None
    _align(contexts, len(state.buffer))
    contexts.append(sender_ctx)
    item = original(stream)
    otel_ctx = contexts.popleft()
    slot = _SLOT.get()
    if slot is not None:
        slot.append(otel_ctx)
    return item


def is_memory_receive_stream(source: Any) -> bool:
    """Whether ``source`` is an anyio ``MemoryObjectReceiveStream`` (without importing anyio)."""
    memory = sys.modules.get(_MODULE)
    return memory is not None and isinstance(source, memory.MemoryObjectReceiveStream)


def _recording() -> bool:
    # Whether the anyio_stream group is applied: only then does anything record contexts, and
    # only then may receive_with_context replace waiting_receivers.
    memory = sys.modules[_MODULE]
    return getattr(memory.MemoryObjectReceiveStream.receive_nowait, "__aiotrace_patch__", False)


async def receive_with_context(stream: Any) -> Tuple[Any, Optional[Context]]:
    """``await stream.receive()`` that also returns the item's sender context (None if unknown:
    sent before ``install()`` or while the ``anyio_stream`` group was off)."""
    if not _recording():
        return await stream.receive(), None
    state = stream._state
    receivers = state.waiting_receivers
    if type(receivers) is not _Receivers:
        state.waiting_receivers = _Receivers(receivers)
    slot: List[Optional[Context]] = []
    token = _SLOT.set(slot)
    try:
        item = await stream.receive()
    finally:
        _SLOT.reset(token)
    return item, slot[-1] if slot else None


def receive_nowait_with_context(stream: Any) -> Tuple[Any, Optional[Context]]:
    """``stream.receive_nowait()`` that also returns the item's sender context, like
    :func:`receive_with_context`; raises what ``receive_nowait()`` raises."""
    slot: List[Optional[Context]] = []
    token = _SLOT.set(slot)
    try:
        item = stream.receive_nowait()
    finally:
        _SLOT.reset(token)
    return item, slot[-1] if slot else None
