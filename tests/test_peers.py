"""The ``peers`` nox session's comparison (scripts/peers.py): what counts as a difference.

The session runs other projects' suites without and with aiotrace and fails on the tests this
comparison returns; these tests pin down its rules on small made-up outcomes.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "peers.py"


@pytest.fixture(scope="module")
def peers():
    spec = importlib.util.spec_from_file_location("peers_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses looks the module up
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


def test_a_test_failing_only_with_aiotrace_on_is_a_difference(peers):
    off = {"t::a": "passed", "t::b": "failed", "t::c": "skipped", "t::d": "passed"}
    on = {"t::a": "failed", "t::b": "failed", "t::c": "error", "t::d": "passed"}
    result = peers.compare("nobody", off, on)
    assert result.only_on == ["t::a", "t::c"]
    assert result.unexplained == ["t::a", "t::c"]
    assert result.only_off == []


def test_a_test_missing_with_aiotrace_on_is_a_difference(peers):
    # Its module failed to import, or pytest stopped before it (a start-up crash).
    off = {"t::a": "passed", "t::b": "passed"}
    on = {"t::a": "passed", "<collect>t": "error"}
    assert peers.compare("nobody", off, on).only_on == ["t::b", "<collect>t"]
    assert peers.rerunnable(["t::b", "<collect>t"]) is None
    assert peers.rerunnable(["t::b"]) == ["t::b"]


def test_failing_only_without_aiotrace_is_reported_not_a_difference(peers):
    result = peers.compare("nobody", {"t::a": "error"}, {"t::a": "passed"})
    assert (result.only_on, result.only_off) == ([], ["t::a"])


def test_known_differences_are_explained_by_peer_and_test_id(peers, monkeypatch):
    monkeypatch.setitem(peers.KNOWN_DIFFERENCES, ("nobody", "t::a"), "timing")
    monkeypatch.setitem(peers.KNOWN_DIFFERENCES, ("nobody", "t::z"), "private attribute")
    result = peers.compare("nobody", {"t::a": "passed", "t::b": "passed"}, {"t::a": "failed"})
    assert result.known == {"t::a": "timing"}
    assert result.unexplained == ["t::b"]
    assert result.unused_known == ["t::z"]
    assert peers.compare("other", {"t::a": "passed"}, {"t::a": "failed"}).unexplained == ["t::a"]


def test_counts_fold_errors_into_failed_and_xfail_into_skipped(peers):
    outcomes = {"a": "passed", "b": "error", "c": "failed", "d": "xfailed", "e": "xpassed"}
    assert peers.summary(outcomes) == "2 passed, 2 failed, 1 skipped"


def test_every_peer_is_pinned_to_one_release(peers):
    for name, peer in peers.PEERS.items():
        assert peer.version.count(".") >= 1 and "=" not in peer.version, name
        assert peer.ci, name
