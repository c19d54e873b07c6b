"""anyio memory object streams carry each item's sender context after install(), and behave
exactly as anyio's own with and without it, on anyio's asyncio backend with the stock loop and
uvloop (and, if trio is installed, on the trio backend).

Stock anyio (read in anyio 4.0.0-4.16.0, ``src/anyio/streams/memory.py``, and run here with
4.16.0 on CPython 3.11 and 4.5.2 on 3.8): a received item runs in the receiver's context, so
the work done for it is cut off from the trace of the task that sent it.
"""

from __future__ import annotations

import gc
import sys
import weakref
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest
from conftest import tracer, uvloop
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context

import aiotrace
from aiotrace import registry

anyio = pytest.importorskip("anyio")
# Imported before any install(): anyio 4.x imports it lazily (on the first
# create_memory_object_stream), and install() only patches it once it is imported.
memory = pytest.importorskip("anyio.streams.memory")
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream  # noqa: E402

try:
    import trio
except ImportError:  # pragma: no cover - optional: anyio[trio] is not in the test extra
    trio = None

BACKENDS: Dict[str, Tuple[str, Dict[str, Any]]] = {"asyncio": ("asyncio", {})}
if uvloop is not None:
    BACKENDS["uvloop"] = ("asyncio", {"use_uvloop": True})
if trio is not None:
    BACKENDS["trio"] = ("trio", {})


@pytest.fixture(params=sorted(BACKENDS))
def run(request: pytest.FixtureRequest) -> Callable[..., Any]:
    backend, options = BACKENDS[request.param]
    return lambda fn, *args: anyio.run(fn, *args, backend=backend, backend_options=options)


@pytest.fixture(params=["stock", "installed"])
def installed(request: pytest.FixtureRequest) -> bool:
    if request.param == "installed":
        aiotrace.install()
        assert "anyio_stream" in aiotrace.installed()
    return request.param == "installed"


def span_name(otel_ctx: Optional[Context]) -> Optional[str]:
    """The name of the span current in ``otel_ctx`` (None: no context, or no span in it)."""
    if otel_ctx is None:
        return None
    return getattr(trace.get_current_span(otel_ctx), "name", None)


def held(receive: Any) -> int:
    """How many sender contexts aiotrace holds for this stream."""
    state = receive._state
    contexts = len(getattr(state, "_aiotrace_contexts", ()))
    contexts += len(getattr(state.waiting_senders, "contexts", ()))
    slots = getattr(state.waiting_receivers, "slots", {})  # registered, filled on hand-off
    return contexts + sum(len(slot) for slot in slots.values())


async def all_blocked() -> None:
    """``anyio.wait_all_tasks_blocked()`` without its 0.1 s sleeps on asyncio: yields to the
    loop until every other task is parked on a future. Counts loop iterations, never time."""
    import asyncio

    try:
        me = asyncio.current_task()
    except RuntimeError:  # no asyncio loop: trio, whose own wait does not sleep
        return await anyio.wait_all_tasks_blocked()
    for _ in range(100):
        await anyio.lowlevel.checkpoint()
        waiters = [task._fut_waiter for task in asyncio.all_tasks() if task is not me]
        if all(waiter is not None and not waiter.done() for waiter in waiters):
            return None
    raise AssertionError("tasks never blocked")


# -- the patch group ---------------------------------------------------------------------------


def test_group_is_applied_and_undone_exactly() -> None:
    send_nowait = vars(MemoryObjectSendStream)["send_nowait"]
    receive_nowait = vars(MemoryObjectReceiveStream)["receive_nowait"]
    assert "anyio_stream" in registry.PATCH_NAMES
    assert "anyio_stream" in aiotrace.install()
    assert vars(MemoryObjectSendStream)["send_nowait"] is not send_nowait
    assert vars(MemoryObjectSendStream)["send_nowait"].__wrapped__ is send_nowait
    aiotrace.uninstall()
    assert vars(MemoryObjectSendStream)["send_nowait"] is send_nowait
    assert vars(MemoryObjectReceiveStream)["receive_nowait"] is receive_nowait


def test_group_can_be_excluded() -> None:
    from aiotrace_boot import _config

    send_nowait = vars(MemoryObjectSendStream)["send_nowait"]
    assert "anyio_stream" not in aiotrace.install(exclude=["anyio_stream"])
    assert vars(MemoryObjectSendStream)["send_nowait"] is send_nowait
    config = _config.from_environ(
        {"AIOTRACE_ENABLE": "1", "AIOTRACE_DISABLED_PATCHES": "anyio_stream"}, print
    )
    arguments, unknown = config.install_arguments(registry.PATCH_NAMES)
    assert not unknown
    assert "anyio_stream" not in registry.selected(**arguments)


def test_applied_by_a_later_install_once_imported(monkeypatch) -> None:
    # As for uvloop: install() never imports anyio.streams.memory; the next install() after
    # the import patches it (the start-up hook watches the import and calls install() itself).
    monkeypatch.delitem(sys.modules, "anyio.streams.memory")
    assert "anyio_stream" not in aiotrace.install()
    monkeypatch.undo()
    assert "anyio_stream" in aiotrace.install()


def test_start_up_hook_installs_when_the_stream_module_loads() -> None:
    from aiotrace_boot import _config, _hook

    assert "anyio.streams.memory" in _hook.LATE_PATCH_MODULES
    config = _config.from_environ({"AIOTRACE_ENABLE": "1"}, print)
    _hook._Finder(config).loaded("anyio.streams.memory", memory)
    assert "anyio_stream" in aiotrace.installed()


def test_start_up_hook_catches_anyios_lazy_import_of_the_streams() -> None:
    # anyio 4.16 imports anyio.streams.memory at the first create_memory_object_stream (4.5.2
    # with anyio itself): AIOTRACE_ENABLE=1 applies the group then, with no install() call.
    import os
    import site
    import subprocess

    if not any(os.path.exists(os.path.join(d, "aiotrace.pth")) for d in site.getsitepackages()):
        pytest.skip("aiotrace is not installed in this environment (no aiotrace.pth)")
    code = (
        "import anyio, aiotrace\n"
        "send, receive = anyio.create_memory_object_stream()\n"
        "print(sorted(aiotrace.installed()))\n"
        "send.close(); receive.close()\n"
    )
    env = {**os.environ, "AIOTRACE_ENABLE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert "'anyio_stream'" in done.stdout, done.stdout + done.stderr
    env["AIOTRACE_DISABLED_PATCHES"] = "anyio_stream"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert "'anyio_stream'" not in done.stdout and "'queue'" in done.stdout, done.stdout


def test_doctor_says_when_the_streams_are_not_patched(tmp_path) -> None:
    from aiotrace import doctor

    aiotrace.install(exclude=["anyio_stream"])
    problems = doctor.collect({}, [str(tmp_path)])["problems"]
    assert any("anyio's memory object streams" in p["message"] for p in problems)
    aiotrace.install()
    problems = doctor.collect({}, [str(tmp_path)])["problems"]
    assert not any("anyio" in p["message"] for p in problems)


def test_aiotrace_import_does_not_import_anyio() -> None:
    import subprocess

    code = "import aiotrace, sys; print('anyio' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


# -- the sender's context, beside each item ----------------------------------------------------


def test_buffered_items_keep_their_senders_context(run, installed, spans) -> None:
    first, second = object(), object()

    async def main() -> Tuple[List[Any], int]:
        send, receive = anyio.create_memory_object_stream(2)
        with send, receive, send.clone() as clone:
            with tracer.start_as_current_span("first"):
                send.send_nowait(first)
            with tracer.start_as_current_span("second"):
                await clone.send(second)  # a clone shares the stream: covered too
            assert receive.statistics().current_buffer_used == 2
            with tracer.start_as_current_span("consumer"):
                got = [await aiotrace.receive_with_context(receive)]
                got.append(aiotrace.receive_nowait_with_context(receive))
            return got, held(receive)

    got, left = run(main)
    assert [item for item, _ in got] == [first, second]  # anyio's own objects, never wrapped
    names = [span_name(otel_ctx) for _, otel_ctx in got]
    assert names == (["first", "second"] if installed else [None, None])
    assert left == 0


@pytest.mark.parametrize("receiver", ["with_context", "plain"])
def test_item_handed_to_a_waiting_receiver(run, installed, spans, receiver) -> None:
    item = object()

    async def main() -> Tuple[Any, Any, int]:
        send, receive = anyio.create_memory_object_stream(0)
        got: List[Any] = []

        async def receive_one() -> None:
            if receiver == "plain":
                got.append((await receive.receive(), None))
            else:
                got.append(await aiotrace.receive_with_context(receive))

        with send, receive:
            async with anyio.create_task_group() as tg:
                tg.start_soon(receive_one)
                await all_blocked()
                assert receive.statistics().tasks_waiting_receive == 1
                with tracer.start_as_current_span("sender"):
                    send.send_nowait(item)  # straight into the waiting receiver's slot
                assert receive.statistics().current_buffer_used == 0
            return got[0][0], got[0][1], held(receive)

    got, otel_ctx, left = run(main)
    assert got is item
    expected = "sender" if installed and receiver == "with_context" else None
    assert span_name(otel_ctx) == expected
    assert left == 0


def test_item_of_a_sender_waiting_for_room(run, installed, spans) -> None:
    async def main() -> Tuple[List[Any], int]:
        send, receive = anyio.create_memory_object_stream(1)
        with send, receive:
            with tracer.start_as_current_span("buffered"):
                send.send_nowait("a")
            async with anyio.create_task_group() as tg:

                async def send_b() -> None:
                    with tracer.start_as_current_span("waiting"):
                        await send.send("b")

                tg.start_soon(send_b)
                await all_blocked()
                assert receive.statistics().tasks_waiting_send == 1
                got = [aiotrace.receive_nowait_with_context(receive)]
                got.append(aiotrace.receive_nowait_with_context(receive))
            return got, held(receive)

    got, left = run(main)
    assert [item for item, _ in got] == ["a", "b"]
    names = [span_name(otel_ctx) for _, otel_ctx in got]
    assert names == (["buffered", "waiting"] if installed else [None, None])
    assert left == 0


def test_sender_waiting_on_a_zero_buffer(run, installed, spans) -> None:
    async def main() -> Tuple[Any, int]:
        send, receive = anyio.create_memory_object_stream(0)
        with send, receive:
            async with anyio.create_task_group() as tg:

                async def sender() -> None:
                    with tracer.start_as_current_span("sender"):
                        await send.send("x")

                tg.start_soon(sender)
                await all_blocked()
                got = await aiotrace.receive_with_context(receive)
            return got, held(receive)

    (item, otel_ctx), left = run(main)
    assert item == "x"
    assert span_name(otel_ctx) == ("sender" if installed else None)
    assert left == 0


def test_stream_in_use_across_install(run, spans) -> None:
    """Items, a waiting sender and a waiting receiver from before install(): they go on as in
    anyio, their contexts unknown; what is sent after install() carries its context."""

    async def main() -> List[Any]:
        got: List[Any] = []
        send, receive = anyio.create_memory_object_stream(1)
        with send, receive:
            async with anyio.create_task_group() as tg:
                # Before install(): one item buffered, one sender waiting for room.
                send.send_nowait("old")
                tg.start_soon(send.send, "old waiting")
                await all_blocked()
                aiotrace.install()
                with tracer.start_as_current_span("new"):
                    tg.start_soon(send.send, "new waiting")
                await all_blocked()
                assert receive.statistics().tasks_waiting_send == 2
                for _ in range(3):
                    got.append(await aiotrace.receive_with_context(receive))
            aiotrace.uninstall()
            # A plain receiver waiting from before install(), one of aiotrace's after it.
            async with anyio.create_task_group() as tg:

                async def plain() -> None:
                    got.append((await receive.receive(), None))

                async def with_context() -> None:
                    got.append(await aiotrace.receive_with_context(receive))

                tg.start_soon(plain)
                await all_blocked()
                aiotrace.install()
                tg.start_soon(with_context)
                await all_blocked()
                assert receive.statistics().tasks_waiting_receive == 2
                send.send_nowait("to plain")
                with tracer.start_as_current_span("to aiotrace's"):
                    send.send_nowait("to aiotrace's")
            assert held(receive) == 0
        return got

    got = run(main)
    assert [(item, span_name(ctx)) for item, ctx in got[:3]] == [
        ("old", None),
        ("old waiting", None),
        ("new waiting", "new"),
    ]
    assert sorted((item, span_name(ctx) or "") for item, ctx in got[3:]) == [
        ("to aiotrace's", "to aiotrace's"),
        ("to plain", ""),
    ]


# -- consume() ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["parent", "link"])
def test_consume_runs_the_block_in_the_senders_trace(run, installed, spans, mode) -> None:
    async def main() -> Optional[str]:
        send, receive = anyio.create_memory_object_stream(1)
        with send, receive:
            with tracer.start_as_current_span("producer"):
                send.send_nowait("job")
            with tracer.start_as_current_span("consumer"):
                before = trace.get_current_span()
                async with aiotrace.consume(receive, mode, span_name="handle") as job:
                    assert job == "job"
                    with tracer.start_as_current_span("work"):
                        pass
                assert trace.get_current_span() is before
        return None

    run(main)
    if mode == "parent":
        assert spans.parent("work") == ("producer" if installed else "consumer")
    else:
        handle = spans.span("handle")
        assert spans.parent("work") == "handle"
        assert handle.parent is None
        linked = [link.context.span_id for link in handle.links]
        assert linked == ([spans.span("producer").context.span_id] if installed else [])


def test_consume_takes_queues_too(request, run, spans) -> None:
    if request.node.callspec.params["run"] == "trio":
        pytest.skip("an asyncio queue needs an asyncio loop")
    aiotrace.install()

    async def main() -> None:
        import asyncio

        queue = asyncio.Queue()
        with tracer.start_as_current_span("producer"):
            queue.put_nowait("job")
        async with aiotrace.consume(queue) as job, anyio.create_task_group():
            assert job == "job"
            with tracer.start_as_current_span("work"):
                pass
        with tracer.start_as_current_span("second"):
            await queue.put("next")
        assert span_name(aiotrace.receive_nowait_with_context(queue)[1]) == "second"

    run(main)
    assert spans.parent("work") == "producer"


def test_unsupported_sources_are_refused() -> None:
    import asyncio

    async def stock_queue() -> asyncio.Queue:  # a loop of its own on 3.8-3.9
        return asyncio.Queue()

    for source in (asyncio.run(stock_queue()), [], None):
        for call in (aiotrace.consume, aiotrace.receive_nowait_with_context):
            with pytest.raises(TypeError, match="accepted: an asyncio queue created after"):
                call(source)
    with pytest.raises(TypeError, match="MemoryObjectReceiveStream"):
        anyio.run(aiotrace.receive_with_context, [])
    send, receive = anyio.create_memory_object_stream(0)
    with send, receive, pytest.raises(ValueError, match="accepted: parent, link"):
        aiotrace.consume(receive, "child")
    with send, pytest.raises(TypeError, match="MemoryObjectSendStream"):
        aiotrace.consume(send)


# -- anyio's behaviour, unchanged --------------------------------------------------------------


async def anyio_behaviour(with_context: bool) -> List[Any]:
    """Every outcome anyio's streams show, recorded step by step: items, exceptions and
    statistics, with buffers of 0 and 2. ``with_context``: receive through aiotrace's functions
    instead of anyio's."""
    log: List[Any] = []
    for size in (0, 2):
        await _behaviour(size, with_context, log)
    return log


async def _behaviour(size: int, with_context: bool, log: List[Any]) -> None:
    def stats(stream: Any) -> None:
        log.append(tuple(stream.statistics()))
        # Contexts are held for the items still in the stream only (none without install()).
        statistics = stream.statistics()
        in_stream = statistics.current_buffer_used + statistics.tasks_waiting_send
        log.append(("held beyond the items", max(0, held(stream) - in_stream)))

    def attempt(name: str, call: Callable[[], Any]) -> None:
        try:
            log.append((name, call()))
        except Exception as exc:
            log.append((name, type(exc).__name__))

    async def attempt_async(name: str, call: Callable[[], Any]) -> None:
        try:
            log.append((name, await call()))
        except Exception as exc:
            log.append((name, type(exc).__name__))

    def receive_nowait(stream: Any) -> Any:
        if with_context:
            return aiotrace.receive_nowait_with_context(stream)[0]
        return stream.receive_nowait()

    async def receive(stream: Any) -> Any:
        if with_context:
            return (await aiotrace.receive_with_context(stream))[0]
        return await stream.receive()

    async def cancelled_while_waiting(stream: Any, wait: Callable[[], Any]) -> None:
        scope = anyio.CancelScope()

        async def waiter() -> None:
            with scope:
                log.append(("not cancelled", await wait()))

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await all_blocked()
            stats(stream)
            scope.cancel()
        stats(stream)

    send, receive_stream = anyio.create_memory_object_stream(size)
    with tracer.start_as_current_span(f"sender-{size}"):
        for i in range(size):
            attempt(f"send_nowait {i}", lambda: send.send_nowait(object()))
        attempt("send_nowait full", lambda: send.send_nowait("x"))
        stats(send)
        await cancelled_while_waiting(receive_stream, lambda: send.send("cancelled"))
    for _ in range(size):
        attempt("receive_nowait", lambda: type(receive_nowait(receive_stream)).__name__)
    stats(send)
    attempt("receive_nowait empty", lambda: receive_nowait(receive_stream))
    await cancelled_while_waiting(receive_stream, lambda: receive(receive_stream))

    # Two receivers waiting; the first one's cancellation is pending when an item comes.
    first, second = anyio.CancelScope(), anyio.CancelScope()
    got: List[Any] = []

    async def waiter(scope: Any, name: str) -> None:
        with scope:
            got.append((name, await receive(receive_stream)))

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter, first, "first")
        await all_blocked()
        tg.start_soon(waiter, second, "second")
        await all_blocked()
        first.cancel()
        attempt("send_nowait to waiting", lambda: send.send_nowait("handed"))
        stats(send)
        await all_blocked()
        second.cancel()
    log.append(("got", got))
    stats(send)

    # Closing: the send side (EndOfStream, ClosedResourceError), then the receive side.
    clone = send.clone()
    send.close()
    attempt("send_nowait closed", lambda: send.send_nowait(1))
    await attempt_async("send closed", lambda: send.send(1))
    attempt("clone closed", send.clone)
    attempt("clone send_nowait", lambda: clone.send_nowait("last") if size else None)
    stats(clone)
    clone.close()
    attempt("receive_nowait after close", lambda: receive_nowait(receive_stream))
    attempt("receive_nowait end", lambda: receive_nowait(receive_stream))
    await attempt_async("receive end", lambda: receive(receive_stream))
    receive_stream.close()
    attempt("receive_nowait closed", lambda: receive_nowait(receive_stream))
    await attempt_async("receive closed", lambda: receive(receive_stream))
    stats(receive_stream)

    # A sender waiting when the receive side closes: BrokenResourceError.
    send, receive_stream = anyio.create_memory_object_stream(size)
    with send:
        for _ in range(size):
            send.send_nowait(object())

        async def blocked_send() -> None:
            await attempt_async("send to closing", lambda: send.send("never"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(blocked_send)
            await all_blocked()
            stats(send)
            receive_stream.close()
        attempt("send_nowait broken", lambda: send.send_nowait(1))
        stats(send)


@pytest.mark.parametrize("with_context", [False, True], ids=["anyio_api", "aiotrace_api"])
def test_streams_behave_exactly_as_anyios(run, with_context) -> None:
    stock = run(anyio_behaviour, False)
    # anyio 4.5.2 and 4.16.0 skip a receiver whose cancellation is pending; 4.0.0-4.3.0 (read;
    # 4.0.0 run here) hand it the item, which is lost with its cancelled receive().
    assert ("got", [("second", "handed")]) in stock or ("got", []) in stock
    aiotrace.install()
    assert run(anyio_behaviour, with_context) == stock


def test_contexts_of_received_items_are_not_held(run) -> None:
    aiotrace.install()
    refs: List[Any] = []

    async def main() -> None:
        send, receive = anyio.create_memory_object_stream(10)
        with send, receive:
            for i in range(3):
                with tracer.start_as_current_span(f"sender-{i}"):
                    refs.append(weakref.ref(otel_context.get_current()))
                    send.send_nowait(i)
            receive.receive_nowait()
            async for _ in receive:
                if not receive.statistics().current_buffer_used:
                    break
            assert held(receive) == 0

    run(main)
    gc.collect()
    assert [ref() for ref in refs] == [None, None, None]


# -- the MCP SDK's server pattern --------------------------------------------------------------

MESSAGES = 4


async def serve(buffer: int) -> None:
    """A server shaped like the MCP Python SDK's: a reader task (the transport) feeds the
    messages it reads into a memory object stream, each in the span its request came with (as
    a server instrumentation starts a trace per request); the session loop receives them and
    starts one handler task per message in a task group. ``aiotrace.consume`` is the one line
    that puts each handler in its message's trace."""
    send, receive = anyio.create_memory_object_stream(buffer)

    async def reader() -> None:
        with send:
            for i in range(MESSAGES):
                # A new trace per request, as a server instrumentation starts one.
                with tracer.start_as_current_span(f"request-{i}", context=Context()):
                    await send.send({"id": i})

    async def handle(message: Dict[str, int]) -> None:
        with tracer.start_as_current_span(f"handle-{message['id']}"):
            await anyio.lowlevel.checkpoint()  # the handler's own await: the span stays its own
            with tracer.start_as_current_span(f"work-{message['id']}"):
                pass

    with tracer.start_as_current_span("session"):
        async with anyio.create_task_group() as tg:
            tg.start_soon(reader)
            with receive:
                async with anyio.create_task_group() as handlers:
                    while True:
                        try:
                            async with aiotrace.consume(receive) as message:
                                handlers.start_soon(handle, message)
                        except anyio.EndOfStream:
                            break


@pytest.mark.parametrize("buffer", [0, 2])
def test_server_handlers_land_in_their_messages_trace(run, spans, buffer) -> None:
    aiotrace.install()
    run(serve, buffer)
    for i in range(MESSAGES):
        assert spans.parent(f"handle-{i}") == f"request-{i}"
        assert spans.trace_of(f"handle-{i}") == spans.trace_of(f"request-{i}")
        assert spans.parent(f"work-{i}") == f"handle-{i}"
    assert len({spans.trace_of(f"request-{i}") for i in range(MESSAGES)}) == MESSAGES


@pytest.mark.parametrize("buffer", [0, 2])
def test_server_handlers_lose_their_messages_trace_without_install(run, spans, buffer) -> None:
    # Stock anyio (4.16.0 and 4.5.2 run here): every handler is a child of the session loop.
    run(serve, buffer)
    assert [spans.parent(f"handle-{i}") for i in range(MESSAGES)] == ["session"] * MESSAGES
    session = spans.trace_of("session")
    assert all(spans.trace_of(f"handle-{i}") == session for i in range(MESSAGES))
