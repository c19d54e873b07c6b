"""install()/uninstall(): what they replace, that they put back exactly what they found, and
that they behave under repetition, threads, bad arguments and other libraries' patches."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import os
import subprocess
import sys
import threading
import types

import pytest

import aiotrace
from aiotrace import catalogue, patching, registry

_resolve = patching._resolve  # tests below break the registry's own


def _snapshot():
    """Every attribute the registry may replace, with the object it holds now."""
    found = {}
    for patch in registry.PATCHES:
        owner = _resolve(patch.owner)
        found[(patch.owner, patch.attribute)] = vars(owner).get(patch.attribute, "<inherited>")
    return found


def test_importing_aiotrace_patches_nothing():
    assert aiotrace.installed() == frozenset()
    assert asyncio.Queue.__module__ == "asyncio.queues"
    assert asyncio.Lock.__module__ == "asyncio.locks"


def test_install_patches_every_group_and_uninstall_restores_identity():
    before = _snapshot()
    active = aiotrace.install()
    expected = set(registry.PATCH_NAMES) - registry.OPT_IN
    assert active == frozenset(expected) == aiotrace.installed()
    after_install = _snapshot()
    changed = {key for key in before if before[key] is not after_install[key]}
    assert changed == {(p.owner, p.attribute) for p in registry.PATCHES if p.group in expected}
    aiotrace.uninstall()
    restored = _snapshot()
    assert all(restored[key] is before[key] for key in before)


def test_install_and_uninstall_are_idempotent():
    before = _snapshot()
    first = aiotrace.install()
    queue_class = asyncio.Queue
    assert aiotrace.install() == first
    assert asyncio.Queue is queue_class
    aiotrace.uninstall()
    aiotrace.uninstall()
    assert _snapshot() == before


def test_a_second_install_only_adds():
    aiotrace.install(patch_queue=False)
    assert "queue" not in aiotrace.installed()
    assert "queue" in aiotrace.install()
    assert "lock" in aiotrace.installed()


def test_exclude_and_flags_select_groups():
    active = aiotrace.install(patch_locks=False, exclude=["executor"])
    assert active.isdisjoint(registry.LOCK_PATCHES | {"executor"})
    assert asyncio.Event.__module__ == "asyncio.locks"
    assert concurrent.futures.ThreadPoolExecutor.submit.__module__ == "concurrent.futures.thread"


def test_every_switch_maps_to_its_groups():
    everything = set(registry.PATCH_NAMES)
    assert registry.selected(patch_threads=True) == everything
    assert registry.selected() == everything - registry.OPT_IN
    assert "server" not in registry.selected(server_context="inherit")
    assert "asyncgen" not in registry.selected(close_asyncgens=False)
    assert "queue" not in registry.selected(patch_queue=False)


def test_original_reports_what_was_replaced():
    stock = asyncio.Lock
    assert registry.original("asyncio", "Lock") is None
    aiotrace.install()
    assert registry.original("asyncio", "Lock") is stock
    aiotrace.uninstall()
    assert registry.original("asyncio", "Lock") is None


def test_unknown_names_are_refused_with_the_accepted_ones():
    with pytest.raises(aiotrace.UnknownPatchError, match=r"'quuee'.*accepted: create_task"):
        aiotrace.install(exclude=["quuee"])
    with pytest.raises(ValueError, match="server_context 'dirty'; accepted: clean, inherit"):
        aiotrace.install(server_context="dirty")
    assert aiotrace.installed() == frozenset()


def test_threads_racing_install_and_uninstall_leave_a_consistent_state():
    before = _snapshot()
    barrier = threading.Barrier(4)
    errors = []

    def hammer(i: int) -> None:
        try:
            barrier.wait()
            for _ in range(200):
                if i % 2:
                    aiotrace.install()
                else:
                    aiotrace.uninstall()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    # Whatever won the race, the state is all-or-nothing and undoable.
    active = aiotrace.installed()
    assert active in (frozenset(), frozenset(set(registry.PATCH_NAMES) - registry.OPT_IN))
    assert (asyncio.Queue is before[("asyncio", "Queue")]) == ("queue" not in active)
    aiotrace.uninstall()
    assert _snapshot() == before


def test_objects_created_before_install_still_pass_isinstance(honest_run):
    # Created inside a running loop: Python 3.8 binds primitives to the current loop.
    async def main() -> None:
        before = {
            name: getattr(asyncio, name)() for name in ("Queue", "Lock", "Event", "Condition")
        }
        before["PriorityQueue"] = asyncio.PriorityQueue()
        before["Semaphore"] = asyncio.BoundedSemaphore()
        stock_queue = asyncio.Queue
        aiotrace.install()
        for name, obj in before.items():
            assert isinstance(obj, getattr(asyncio, name)), name
        assert isinstance(before["PriorityQueue"], asyncio.Queue)
        assert issubclass(stock_queue, asyncio.Queue)
        assert issubclass(asyncio.PriorityQueue, asyncio.Queue)
        assert not isinstance(before["Queue"], aiotrace.PropagatingQueue)
        during = asyncio.Queue()
        assert type(during) is asyncio.Queue
        assert isinstance(during, aiotrace.PropagatingQueue)
        assert not isinstance(object(), asyncio.Queue)
        aiotrace.uninstall()
        assert isinstance(during, asyncio.Queue)
        assert asyncio.Queue is stock_queue

    honest_run(main())


def test_subclasses_of_the_installed_classes_work(honest_run):
    aiotrace.install()

    class Mine(asyncio.Queue):
        pass

    async def main() -> None:
        q = Mine()
        await q.put(1)
        assert await q.get() == 1

    honest_run(main())
    assert issubclass(Mine, aiotrace.PropagatingQueue)

    class Deeper(Mine):
        pass

    # Instances made without __init__: Python 3.8 would bind them to an event loop.
    assert isinstance(object.__new__(Deeper), Mine)
    assert issubclass(Deeper, Mine)
    assert not isinstance(object.__new__(asyncio.PriorityQueue), Mine)
    assert not issubclass(asyncio.PriorityQueue, Mine)


def test_a_foreign_class_is_left_alone_and_reported(caplog, monkeypatch):
    class TheirQueue(asyncio.Queue):
        pass

    monkeypatch.setattr(asyncio, "Queue", TheirQueue)
    registry.conflicts.clear()
    with caplog.at_level(logging.DEBUG, logger="aiotrace"):
        aiotrace.install()
    assert asyncio.Queue is TheirQueue
    assert "asyncio.Queue" in registry.conflicts
    assert "TheirQueue" in registry.conflicts["asyncio.Queue"]
    assert "asyncio.queues.Queue" not in registry.conflicts  # the submodule name was patched
    assert any("not asyncio's; left alone" in r.getMessage() for r in caplog.records)
    found = dict(registry.conflicts)
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="aiotrace"):
        aiotrace.install()  # again (the late-module finder does): the same conflict, said once
    assert registry.conflicts == found
    assert not any("left alone" in r.getMessage() for r in caplog.records)
    aiotrace.uninstall()
    assert asyncio.Queue is TheirQueue
    registry.conflicts.clear()


def test_a_patch_replaced_after_install_is_not_clobbered(caplog):
    original = asyncio.Lock
    aiotrace.install()

    class Later(asyncio.Lock):
        pass

    asyncio.Lock = Later
    try:
        with caplog.at_level(logging.WARNING, logger="aiotrace"):
            aiotrace.uninstall()
        assert asyncio.Lock is Later
        assert any("asyncio.Lock was replaced again" in r.getMessage() for r in caplog.records)
        assert asyncio.locks.Lock is original
    finally:
        asyncio.Lock = original


def test_a_fresh_interpreter_importing_aiotrace_changes_nothing():
    code = (
        "import asyncio, concurrent.futures, sys\n"
        "before = (asyncio.Queue, asyncio.Lock, asyncio.create_task,"
        " concurrent.futures.ThreadPoolExecutor.submit)\n"
        "import aiotrace\n"
        "after = (asyncio.Queue, asyncio.Lock, asyncio.create_task,"
        " concurrent.futures.ThreadPoolExecutor.submit)\n"
        "assert all(a is b for a, b in zip(before, after)), after\n"
        "assert aiotrace.installed() == frozenset()\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIOTRACE_")}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


# -- all or nothing (issue 18) ----------------------------------------------------------------


def _all_owners_imported() -> None:
    # The registry's ``if_imported`` owners, so that every group has patches to apply.
    import concurrent.futures.process  # noqa: F401

    pytest.importorskip("uvloop")


def _last_patch_of(group: str) -> registry.Patch:
    # The last one, so that the patches before it (of other groups and of its own) are applied
    # when it fails, and must be undone.
    return [p for p in registry.PATCHES if p.group == group][-1]


FAULTS = ("factory", "setattr", "resolve")


def _inject(monkeypatch: pytest.MonkeyPatch, target: registry.Patch, fault: str) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError(f"injected {fault} fault")

    if fault == "factory":
        patches = tuple(
            dataclasses.replace(p, make=broken) if p is target else p for p in registry.PATCHES
        )
        monkeypatch.setattr(catalogue, "PATCHES", patches)
    elif fault == "setattr":
        owner = patching._resolve(target.owner)

        def setattr_(obj: object, name: str, value: object) -> None:
            if obj is owner and name == target.attribute and value is not vars(owner).get(name):
                broken()
            setattr(obj, name, value)

        monkeypatch.setattr(patching, "setattr", setattr_, raising=False)
    else:
        resolve = patching._resolve
        monkeypatch.setattr(
            patching,
            "_resolve",
            lambda owner: broken() if owner == target.owner else resolve(owner),
        )


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("group", registry.PATCH_NAMES)
def test_a_failing_patch_undoes_everything_that_call_applied(monkeypatch, group, fault):
    _all_owners_imported()
    target = _last_patch_of(group)
    failing = target
    if fault == "resolve":  # a broken owner fails at the first patch of that owner
        failing = next(p for p in registry.PATCHES if p.owner == target.owner)
    before = _snapshot()
    _inject(monkeypatch, target, fault)

    async def fail_in_a_running_loop() -> None:
        # A running loop: install() also sets its async generator hooks, which must come back.
        hooks = sys.get_asyncgen_hooks()
        with pytest.raises(aiotrace.InstallError) as failed:
            aiotrace.install(patch_threads=True)
        assert sys.get_asyncgen_hooks() == hooks
        message = str(failed.value)
        assert message.startswith(f"aiotrace could not patch {failing.where}: RuntimeError: ")
        assert f"injected {fault} fault; nothing was changed" in message
        assert isinstance(failed.value.__cause__, RuntimeError)

    asyncio.run(fail_in_a_running_loop())
    after = _snapshot()
    assert [key for key in before if after[key] is not before[key]] == []
    assert aiotrace.installed() == frozenset()
    monkeypatch.undo()
    # Nothing was left half-done: the next call applies everything.
    assert aiotrace.install(patch_threads=True) == frozenset(registry.PATCH_NAMES)


def test_an_interrupt_during_install_undoes_everything_and_is_not_wrapped(monkeypatch):
    """Ctrl-C (or ``SystemExit``) while install() runs: what it applied is undone and the
    exception leaves as it is, not as an InstallError."""
    _all_owners_imported()
    before = _snapshot()
    target = _last_patch_of("thread")

    def interrupted(original: object) -> None:
        raise KeyboardInterrupt

    patches = tuple(
        dataclasses.replace(p, make=interrupted) if p is target else p for p in registry.PATCHES
    )
    monkeypatch.setattr(catalogue, "PATCHES", patches)
    with pytest.raises(KeyboardInterrupt):
        aiotrace.install(patch_threads=True)
    after = _snapshot()
    assert [key for key in before if after[key] is not before[key]] == []
    assert aiotrace.installed() == frozenset()


def test_an_on_change_hook_failing_again_while_undoing_is_logged(monkeypatch, caplog):
    """The error install() reports is the one that made it fail; the same hook failing again
    while the call is undone is a warning."""
    calls = []

    def hook(active: bool) -> None:
        calls.append(active)
        raise RuntimeError(f"hook broken (active={active})")

    monkeypatch.setattr(catalogue, "ON_CHANGE", {**catalogue.ON_CHANGE, "asyncgen": hook})
    caplog.set_level(logging.WARNING, logger="aiotrace")
    with pytest.raises(aiotrace.InstallError) as failed:
        aiotrace.install()
    assert str(failed.value).startswith(
        "aiotrace could not patch the asyncgen group's on-change hook: RuntimeError: "
        "hook broken (active=True); nothing was changed"
    )
    assert calls == [True, False]  # told it was on, then off again
    assert [r.getMessage() for r in caplog.records] == [
        "aiotrace: the asyncgen group's on-change hook failed: "
        "RuntimeError('hook broken (active=False)')"
    ]
    assert aiotrace.installed() == frozenset()


def test_a_late_module_still_being_imported_is_patched_once_done(monkeypatch):
    """install() running while uvloop is half imported (it imports asyncio first, which may
    start aiotrace): its ``Loop`` does not exist yet, so its patches wait for the next
    install(), which the late-module finder calls once uvloop has loaded. Any other owner
    missing is an error."""
    uvloop = pytest.importorskip("uvloop")
    loop_class = uvloop.Loop
    monkeypatch.delattr(uvloop, "Loop")
    groups = aiotrace.install()
    assert "asyncgen" in groups  # asyncio's own loops are patched
    assert registry.original("uvloop:Loop", "shutdown_asyncgens") is None
    monkeypatch.setattr(uvloop, "Loop", loop_class, raising=False)  # its import is done
    aiotrace.install()
    assert registry.original("uvloop:Loop", "shutdown_asyncgens") is not None
    aiotrace.uninstall()

    monkeypatch.delattr(asyncio.base_events, "BaseEventLoop")
    with pytest.raises(aiotrace.InstallError, match=r"^aiotrace could not patch asyncio\.base"):
        aiotrace.install()
    assert aiotrace.installed() == frozenset()


def test_the_late_module_finder_installs_only_what_was_asked_for(monkeypatch):
    """What the registry hands the late-module finder (aiotrace_boot/_late.py) to call after
    uvloop, the process pool or anyio's streams load: install() again with the groups asked for
    so far, and nothing once uninstall() ran."""
    from aiotrace_boot import _late

    handed = []
    monkeypatch.setattr(_late, "follow_late_modules", handed.append)
    groups = aiotrace.install(exclude=["queue"])
    (again,) = set(handed)
    assert again() == groups
    assert "queue" not in aiotrace.installed()
    aiotrace.uninstall()
    assert again() == frozenset()
    assert aiotrace.installed() == frozenset()


@pytest.mark.parametrize("group", registry.PATCH_NAMES)
def test_a_failing_call_keeps_what_earlier_calls_applied(monkeypatch, group):
    _all_owners_imported()
    first = aiotrace.install(patch_threads=True, exclude=[group])
    assert group not in first
    applied = _snapshot()
    _inject(monkeypatch, _last_patch_of(group), "factory")
    with pytest.raises(aiotrace.InstallError, match="nothing was changed"):
        aiotrace.install(patch_threads=True)
    assert aiotrace.installed() == first
    after = _snapshot()
    assert [key for key in applied if after[key] is not applied[key]] == []
    aiotrace.uninstall()
    assert aiotrace.installed() == frozenset()


def test_rebind_is_all_or_nothing():
    aiotrace.install()

    class Module(types.ModuleType):
        def __setattr__(self, name: str, value: object) -> None:
            if name == "Lock":
                raise AttributeError("read-only")
            super().__setattr__(name, value)

    module = Module("captured")
    stock = {
        "Queue": registry.original("asyncio", "Queue"),
        "Lock": registry.original("asyncio", "Lock"),
    }
    for name, value in stock.items():
        object.__setattr__(module, name, value)  # in this order: Queue is rebound first
    with pytest.raises(aiotrace.InstallError, match=r"captured\.Lock: AttributeError: read-only"):
        registry.rebind(module)
    assert all(vars(module)[name] is value for name, value in stock.items())
    assert not any(key[0] is module for key in patching._rebound)


def test_the_registry_keeps_every_public_name_of_before_the_split():
    """aiotrace.registry is still where these are imported from (their homes are now the
    engine, aiotrace/patching.py, and the catalogue, aiotrace/catalogue.py)."""
    from aiotrace.registry import (  # noqa: F401
        LOCK_PATCHES,
        PATCH_NAMES,
        PATCHES,
        InstallError,
        Patch,
        UnknownPatchError,
        conflicts,
        install,
        installed,
        original,
        rebind,
        selected,
        uninstall,
    )

    assert PATCHES is catalogue.PATCHES and conflicts is patching.conflicts
    assert install is aiotrace.install and InstallError is aiotrace.InstallError
