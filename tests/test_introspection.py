"""Every object aiotrace puts in place of an original looks like that original to introspection
(issue 13).

One walk over the whole registry (``aiotrace.registry.PATCHES``: every patch of every group,
the opt-in ``thread`` group and the patches that wait for their module, uvloop's and the process
pool's, included) records what introspection says about each original on stock asyncio, then
installs everything and compares each replacement on the same points: the descriptor kind
(function, ``classmethod``, ``staticmethod``, class), ``inspect.iscoroutinefunction`` and
``asyncio.iscoroutinefunction``, ``inspect.signature``, ``__name__``, ``__qualname__``,
``__doc__``, ``__module__``, the kind of mock ``unittest.mock.create_autospec`` builds (of the
object itself and, for a method, of the attribute on an autospecced instance), pickling by
reference, and for a class, pickling a new instance. Each replacement's ``__wrapped__`` is its
original. A patch added to the registry later is walked without any change here.

The alias classes (``asyncio.Queue`` and the rest while installed) take the original's
``__module__`` and ``__qualname__``: ``repr(asyncio.Queue)`` stays ``<class
'asyncio.queues.Queue'>``, an instance's default repr (``<asyncio.locks.Lock object at ...>``)
and every "module.qualname" a logger or serializer builds stay the stock ones, and a pickle of
the class (or of an instance) names ``asyncio.queues.Queue``, as without aiotrace: it loads as
the stdlib class in a process without aiotrace, and as the alias where aiotrace is installed.
aiotrace's class is still visible where one looks for it: ``type(asyncio.Queue)`` is
``aiotrace.aliases.StdlibAlias`` and the MRO shows ``aiotrace.queues.PropagatingQueue``.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import inspect
import pickle
import sys
import traceback
import warnings
from typing import Any, Dict, List, Tuple
from unittest import mock

import pytest

import aiotrace
from aiotrace import registry
from aiotrace.patching import _resolve as _owner  # the engine's own lookup of an owner

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is in the test extra
    uvloop = None


def _outcome(call: Any) -> Any:
    """What ``call()`` returns, or the name of the exception it raises."""
    try:
        return call()
    except Exception as exc:
        return type(exc).__name__


def _kind(static: Any) -> str:
    """How the attribute behaves when looked up on its owner or an instance."""
    for kind in (staticmethod, classmethod, property, type):
        if isinstance(static, kind):
            return kind.__name__
    if hasattr(type(static), "__get__"):  # Python and Cython functions bind to instances
        return "function"
    return type(static).__name__


def _asyncio_iscoroutinefunction(obj: Any) -> Any:
    if not hasattr(asyncio, "iscoroutinefunction"):  # pragma: no cover - not removed by 3.15
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # deprecated from 3.14 on
        return asyncio.iscoroutinefunction(obj)


def _mock_kind(spec: Any, **kwargs: Any) -> str:
    built = mock.create_autospec(spec, **kwargs)
    return type(getattr(built, "mock", built)).__name__  # a function's autospec wraps its mock


def _instance_pickles(cls: type) -> Any:
    async def make() -> Any:
        return cls()

    def roundtrip() -> Any:
        obj = asyncio.run(make())
        return type(pickle.loads(pickle.dumps(obj))) is cls

    return _outcome(roundtrip)


def _profile(owner: Any, attribute: str) -> Dict[str, Any]:
    """What introspection says about ``owner.attribute`` as it is now."""
    static = inspect.getattr_static(owner, attribute)
    obj = getattr(owner, attribute)
    profile = {
        "kind": _kind(static),
        "inspect.iscoroutinefunction": inspect.iscoroutinefunction(obj),
        "asyncio.iscoroutinefunction": _asyncio_iscoroutinefunction(obj),
        "signature": _outcome(lambda: str(inspect.signature(obj))),
        "create_autospec": _outcome(lambda: _mock_kind(obj)),
        **{name: getattr(obj, name, None) for name in ("__name__", "__qualname__", "__doc__")},
        "__module__": getattr(obj, "__module__", None),
    }
    if isinstance(owner, type):
        profile["autospecced instance"] = _outcome(
            lambda: type(getattr(mock.create_autospec(owner, instance=True), attribute)).__name__
        )
    if not isinstance(owner, type) or attribute in vars(owner):
        # Pickled by reference (module and qualified name): where the original lives in
        # ``owner`` itself. An inherited original pickles under its base class's name.
        profile["pickle"] = _outcome(lambda: pickle.loads(pickle.dumps(obj)) is obj)
    if isinstance(obj, type):
        profile["pickled instance"] = _instance_pickles(obj)
        profile["repr"] = repr(obj)
    return profile


def _installed(owner: str) -> bool:
    """Whether the library ``owner`` belongs to is installed (uvloop is in the test extra)."""
    return importlib.util.find_spec(owner.partition(":")[0].partition(".")[0]) is not None


def _walk() -> Dict[Tuple[str, str], Dict[str, Any]]:
    # Resolving an owner imports its module, so the patches that wait for their module to be
    # imported (``if_imported``: uvloop's, the process pool's) apply at install() below.
    return {
        (patch.owner, patch.attribute): _profile(_owner(patch.owner), patch.attribute)
        for patch in registry.PATCHES
        if _installed(patch.owner)
    }


def test_every_replacement_looks_like_its_original() -> None:
    stock = _walk()
    aiotrace.install(patch_threads=True)
    replaced = _walk()
    assert set(replaced) == set(stock)
    differences = []
    for key, before in stock.items():
        where = ".".join(key).replace(":", ".")
        original = registry.original(*key)
        assert original is not None, f"{where} was not patched"
        replacement = inspect.getattr_static(_owner(key[0]), key[1])
        if getattr(replacement, "__wrapped__", None) is not original:
            differences.append(f"{where}: __wrapped__ is not the original")
        after = replaced[key]
        differences += [
            f"{where}: {point}: {before[point]!r} became {after.get(point)!r}"
            for point in before
            if after.get(point) != before[point]
        ]
    assert not differences, "\n".join(differences)


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_an_autospecced_create_server_is_awaited_as_aiohttp_tests_do(loop_kind: str) -> None:
    """aiohttp's tests/test_run_app.py patches the running loop's ``create_server`` with
    ``mock.patch.object(loop, "create_server", autospec=True)`` and awaits it: with a
    replacement that is not a coroutine function the mock is synchronous and the await fails
    (``TypeError: object NonCallableMagicMock can't be used in 'await' expression``)."""
    if loop_kind == "uvloop" and uvloop is None:  # pragma: no cover - in the test extra
        pytest.skip("uvloop is not installed")
    make = uvloop.new_event_loop if loop_kind == "uvloop" else asyncio.new_event_loop
    aiotrace.install()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for name in ("create_server", "create_unix_server"):
            with mock.patch.object(loop, name, autospec=True) as patched:
                await getattr(loop, name)(asyncio.Protocol)
            patched.assert_awaited_once()

    loop = make()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()


@pytest.mark.skipif(sys.version_info < (3, 12), reason="inspect.markcoroutinefunction: 3.12+")
def test_create_server_adds_no_frame_to_the_await_chain() -> None:
    """From 3.12 on the replacement is a plain function marked as a coroutine function that
    returns the original's own coroutine: an error raised inside ``create_server`` has, in its
    traceback, the caller's frame then the original's, as without aiotrace."""
    aiotrace.install()

    async def serve() -> Any:
        loop = asyncio.get_running_loop()

        def fail(*args: Any, **kwargs: Any) -> Any:
            raise OSError("stop here")

        with mock.patch.object(loop, "_ensure_resolved", fail), pytest.raises(OSError) as info:
            await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        return [(frame.name, frame.filename) for frame in traceback.extract_tb(info.tb)]

    frames = asyncio.run(serve())
    assert frames[0][0] == "serve" and frames[1][0] == "create_server", frames
    assert frames[1][1] == asyncio.base_events.__file__, frames
    assert all(filename != aiotrace.servers.__file__ for _, filename in frames), frames


@pytest.mark.skipif(
    sys.version_info < (3, 10), reason="stock asyncio queues pickle from 3.10 on (3.8: WeakSet)"
)
def test_a_queue_holding_items_pickles_as_a_stock_one() -> None:
    """A stock queue with items pickles (CPython 3.10-3.15, run here); an installed one with an
    item put under a span must too. The producers' contexts stay in this process (an SDK span
    holds a lock, and a context means nothing elsewhere): a copy knows none, as for items put
    before install(). The pickle names ``asyncio.queues.Queue``: it loads as the stock class
    without aiotrace, and a stock queue's pickle loads as aiotrace's class with it."""
    from opentelemetry import trace

    aiotrace.install()

    async def filled() -> Any:
        queue = asyncio.Queue()
        with trace.get_tracer("test").start_as_current_span("producer"):
            queue.put_nowait("item")
        return queue

    queue = asyncio.run(filled())
    data = pickle.dumps(queue)
    copy = pickle.loads(data)
    assert type(copy) is asyncio.Queue and copy.get_nowait() == "item"

    aiotrace.uninstall()
    stock_copy = pickle.loads(data)
    assert type(stock_copy) is asyncio.queues.Queue and stock_copy.get_nowait() == "item"
    assert not any(name.startswith("_aiotrace") for name in vars(stock_copy))

    stock = asyncio.Queue()
    stock.put_nowait("stock item")
    stock_data = pickle.dumps(stock)
    aiotrace.install()
    ours = pickle.loads(stock_data)
    assert type(ours) is asyncio.Queue and isinstance(ours, aiotrace.PropagatingQueue)
    ours.put_nowait("next")
    assert [ours.get_nowait(), ours.get_nowait()] == ["stock item", "next"]


@pytest.mark.skipif(sys.version_info < (3, 10), reason="stock asyncio locks pickle from 3.10 on")
def test_an_instance_made_while_installed_still_pickles_after_uninstall() -> None:
    aiotrace.install()
    lock = asyncio.Lock()
    aiotrace.uninstall()
    assert type(pickle.loads(pickle.dumps(lock))) is type(lock)
    assert pickle.loads(pickle.dumps(type(lock))) is type(lock)


@pytest.mark.skipif(sys.version_info < (3, 14), reason="asyncio.capture_call_graph: 3.14+")
def test_the_call_graph_of_a_task_in_create_server_is_the_stock_one() -> None:
    """``asyncio.capture_call_graph`` of a task suspended inside ``loop.create_server`` lists
    the same coroutines with aiotrace installed as without (seen on 3.14 and 3.15:
    ``BaseEventLoop.create_server`` awaited by the task's own coroutine)."""

    async def call_stack() -> List[str]:
        loop = asyncio.get_running_loop()
        gate = asyncio.Event()

        async def held(*args: Any, **kwargs: Any) -> Any:
            await gate.wait()
            raise OSError("stop here")

        async def serve() -> None:
            await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)

        with mock.patch.object(loop, "_ensure_resolved", held):
            task = asyncio.create_task(serve())
            await asyncio.sleep(0)  # one step: the task is now suspended in ``held``
            graph = asyncio.capture_call_graph(task)
            gate.set()
            with pytest.raises(OSError):
                await task
        return [entry.frame.f_code.co_qualname for entry in graph.call_stack]

    stock = asyncio.run(call_stack())
    aiotrace.install()
    assert asyncio.run(call_stack()) == stock
    assert "BaseEventLoop.create_server" in stock
