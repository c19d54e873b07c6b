"""``aiotrace demo`` (aiotrace/demo.py): the service it runs really shows what aiotrace fixes.

The "without" run is asserted too: if stock asyncio ever got these boundaries right, the demo
would be showing nothing and should say so.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from bootenv import clean_env
from conftest import LOOPS

import aiotrace
from aiotrace import demo

STEPS = {"db.query": {}, "render": {}, "audit.write": {}}
REAL_LOOPS = [name for name in sorted(LOOPS) if name != "dropping"]


@pytest.mark.parametrize("loop", REAL_LOOPS)
def test_with_aiotrace_each_request_is_one_trace_with_all_its_work(loop: str) -> None:
    result = demo.run_service(with_aiotrace=True, requests=3, loop=loop)
    assert aiotrace.installed() == frozenset()
    shapes = [t.shape() for t in result.tree.traces()]
    assert shapes[0] == {"startup": {}}
    assert sorted(shapes[1:], key=list) == [{f"GET /orders/{n}": STEPS} for n in (1, 2, 3)]
    assert result.own_traces() == 3


@pytest.mark.parametrize("loop", REAL_LOOPS)
def test_without_aiotrace_requests_share_the_startup_trace(loop: str) -> None:
    result = demo.run_service(with_aiotrace=False, requests=2, loop=loop)
    tree = result.tree
    assert tree.shape() == {
        "startup": {
            "GET /orders/1": {"render": {}},
            "GET /orders/2": {"render": {}},
            "audit.write": {},
            "audit.write #2": {},
        },
        "db.query": {},
        "db.query #2": {},
    }
    assert (result.own_traces(), result.nested("db.query"), result.nested("render")) == (0, 0, 2)


def test_main_prints_both_trees_and_the_measured_difference(capsys) -> None:
    assert demo.main(["--requests", "2", "--ascii", "--no-durations"]) == 0
    out = capsys.readouterr().out
    without, with_ = out.split("WITH aiotrace.install()")
    assert "WITHOUT aiotrace" in without
    assert "  startup\n  |-- GET /orders/1\n  |   `-- render\n" in without
    assert "  GET /orders/1\n  |-- db.query\n  |-- render\n  `-- audit.write\n" in with_
    rows = [line.split() for line in with_.splitlines() if "under its request" in line]
    assert [row[-2:] for row in rows] == [["0/2", "2/2"], ["2/2", "2/2"], ["0/2", "2/2"]]
    assert "request is a trace of its own (server)" in with_
    assert aiotrace.installed() == frozenset()


def test_main_puts_back_an_existing_install(capsys) -> None:
    before = aiotrace.install(exclude=["queue"])
    assert demo.main(["--requests", "1"]) == 0
    assert aiotrace.installed() == before
    # With the queue patch excluded by the caller, the demo still shows it fixed in its own run.
    assert "audit.write under its request (queue)" in capsys.readouterr().out


def test_without_the_sdk_one_line_and_exit_2(monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)
    assert demo.main([]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip().splitlines() == [demo.SDK_MISSING]
    assert "pip install opentelemetry-sdk" in demo.SDK_MISSING


def test_bad_arguments(capsys) -> None:
    assert demo.main(["--requests", "0"]) == 2
    with pytest.raises(SystemExit) as exc:
        demo.main(["--loop", "trio"])
    assert exc.value.code == 2


def test_python_m_aiotrace_demo() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "aiotrace", "demo", "--requests", "1"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "WITH aiotrace.install()" in done.stdout
    assert done.stderr == ""


def _example(*launcher: str) -> str:
    example = Path(__file__).resolve().parents[1] / "examples" / "service.py"
    done = subprocess.run(
        [sys.executable, *launcher, str(example)],
        capture_output=True,
        text=True,
        check=False,
        env=clean_env(),
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_example_service_with_and_without_aiotrace_run() -> None:
    plain = _example()
    assert plain.startswith("aiotrace: off\n")
    # Stock asyncio: both requests under the startup span, each lookup a trace of its own.
    assert next(line for line in plain.splitlines() if "GET /orders/" in line).startswith(
        "  ├── GET /orders/"
    )
    assert plain.count("\n  db.load_order") == 2
    launched = _example("-m", "aiotrace", "run")
    assert "executor" in launched.splitlines()[0]
    # Each request the root of its own trace, its lookup nested under it.
    assert sum(line.startswith("  GET /orders/") for line in launched.splitlines()) == 2
    assert launched.count("  ├── db.load_order") == 2


def test_the_tree_falls_back_to_ascii_where_the_terminal_cannot_draw() -> None:
    import io

    assert demo._can_draw(io.TextIOWrapper(io.BytesIO(), encoding="utf-8"))
    assert not demo._can_draw(io.TextIOWrapper(io.BytesIO(), encoding="ascii"))
    assert not demo._can_draw(object())
