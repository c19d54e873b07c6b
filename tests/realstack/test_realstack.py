"""The service of issue 14 (tests/realstack/app.py: FastAPI, Starlette, uvicorn, httpx and the
OpenTelemetry instrumentations, real packages pinned in requirements.txt) served on 127.0.0.1 by
a subprocess, on asyncio + h11 and on uvloop + httptools, with aiotrace switched on in each of
the issue's five ways (plus ``install()`` from code) and, for comparison, off. ``nox -s
realstack`` runs it; elsewhere it is skipped.

Each request carries a ``traceparent`` with a trace id of its own, so every span of the server
is expected in the trace of the request it served, under the parent the route's code implies.
With aiotrace on: every parent right, no span in another request's trace, no stray trace, zero
"Failed to detach context" in the server's log, and the same patched attributes in every way of
switching it on and in every worker process (``uvicorn --workers 2``). With aiotrace off the
same checks are counted, not asserted, and printed (``-s``) beside the counts with it on: the
figures of docs/frameworks.md.
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("opentelemetry.instrumentation.fastapi")

from bootenv import UV, _check, _install, _new_venv, clean_env  # noqa: E402

pytestmark = [pytest.mark.realstack, pytest.mark.skipif("sys.platform == 'win32'")]

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CONCURRENCY = 20  # requests in flight at once, per route
DETACH = "Failed to detach context"
OTHER_ERRORS = ("Task exception was never retrieved", "Exception ignored in", "Exception in ")
TIMEOUT = 120  # guards against a hang only
QUIET = {
    "OTEL_TRACES_EXPORTER": "none",
    "OTEL_METRICS_EXPORTER": "none",
    "OTEL_LOGS_EXPORTER": "none",
}
LOOPS = {
    "asyncio": ["--loop", "asyncio", "--http", "h11"],
    "uvloop": ["--loop", "uvloop", "--http", "httptools"],
}

# Span name -> the name of its expected parent. Server spans (the ASGI instrumentation's
# "GET /route") are expected under the request's remote parent, except /leaf's, under the
# httpx client span of /chain; "http send"/"http receive" spans under their server span.
PARENTS = {
    "chain.work": "GET /chain",
    "leaf.work": "GET /leaf",
    "sync.work": "GET /sync",
    "BackgroundTask background": "GET /background",  # opentelemetry-instrumentation-fastapi's
    "background.work": "BackgroundTask background",
    "stream.chunk": "GET /stream",
    "mw.middleware": None,  # "GET /mw" or "GET /mw/stream": checked by route below
    "mw.work": "mw.middleware",
    "mw.chunk": "mw.middleware",
    "queue.put": "GET /queue",
    "queue.work": "queue.put",
    "executor.call": "GET /executor",
    "executor.work": "executor.call",
    "upload.work": "POST /upload",
    "after.work": "GET /after",
}


class Request:
    def __init__(self, route: str, rid: str) -> None:
        self.route = route
        self.rid = rid
        self.trace = f"{random.getrandbits(128):032x}"
        self.remote = f"{random.getrandbits(64):016x}"

    @property
    def headers(self) -> Dict[str, str]:
        return {"traceparent": f"00-{self.trace}-{self.remote}-01"}


# -- the ways of running the server -----------------------------------------------------------


class Stack:
    """The environments: this one (nox's, with aiotrace installed) and the Operator layout
    (an application environment without OpenTelemetry or aiotrace, and the directory that
    ``pip install --target`` filled with them)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.python = sys.executable
        self.bin = Path(sys.executable).parent
        pins = (HERE / "requirements.txt").read_text().split("\n")
        pins = [line for line in pins if line and not line.startswith("#")]
        app_pins = [p for p in pins if not p.startswith(("opentelemetry", "#"))]
        self.app_env = _new_venv(base / "app-env")
        _install(self.app_env, *app_pins)
        self.target = base / "autoinstrumentation"
        wheel = self._wheel()
        otel = [p for p in pins if p.startswith("opentelemetry")]
        if UV:
            command = [UV, "pip", "install", "-q", "-p", self.app_env.python]
        else:
            command = [self.app_env.python, "-m", "pip", "install", "-q"]
        _check([*command, "--target", str(self.target), str(wheel), *otel])
        sitecustomize = self.target / "opentelemetry/instrumentation/auto_instrumentation"
        self.operator_path = f"{sitecustomize}:{self.target}"

    def _wheel(self) -> Path:
        out = self.base / "dist"
        if UV:
            _check([UV, "build", "-q", "--wheel", "-o", str(out), str(ROOT)])
        else:
            _check(
                [self.python, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(ROOT)]
            )
        (wheel,) = out.glob("aiotrace-*.whl")
        return wheel

    def command(self, mode: str, on: bool, loop: str) -> Tuple[List[str], Dict[str, str]]:
        uvicorn = ["app:app", "--host", "127.0.0.1", "--port", "0", *LOOPS[loop]]
        serve = [str(HERE / "serve.py"), *uvicorn]
        env = {"PYTHONPATH": str(HERE)}
        off = {} if on else {"OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "aiotrace"}
        if mode == "plain":  # aiotrace installed but not switched on
            return [self.python, *serve], env
        if mode == "AIOTRACE_ENABLE=1":
            return [self.python, *serve], {**env, "AIOTRACE_ENABLE": "1"}
        if mode == "aiotrace run":
            return [self.python, "-m", "aiotrace", "run", *serve], env
        if mode == "uvicorn --workers 2":
            # The supervisor binds the socket and spawns the workers: fresh interpreters, in
            # which the start-up hook reads the variable they inherit.
            command = [str(self.bin / "uvicorn"), *uvicorn, "--workers", str(WORKERS[mode])]
            # The supervisor pings each worker every half second and kills one that has not
            # answered within --timeout-worker-healthcheck (5 s by default; uvicorn 0.55.0's
            # supervisors/multiprocess.py), a worker still starting up included: on a loaded
            # machine that reset the client's connections (httpx.ReadError). Only a hang guard.
            command += ["--timeout-worker-healthcheck", str(TIMEOUT)]
            return command, {**env, "AIOTRACE_ENABLE": "1"} if on else env
        if mode == "install() from code":
            return [self.python, *serve], {**env, "REALSTACK_INSTALL": "1"}
        if mode == "opentelemetry-instrument":
            instrument = str(self.bin / "opentelemetry-instrument")
            return [instrument, self.python, *serve], {**env, **QUIET, **off}
        if mode == "Operator layout":
            path = f"{self.operator_path}:{HERE}"
            return [self.app_env.python, *serve], {"PYTHONPATH": path, **QUIET, **off}
        raise AssertionError(mode)


class Server:
    """The server process, its log, and its port once it has said so and every worker has
    finished its application start-up (with ``--workers`` the supervisor binds the socket and
    logs the port before its workers start)."""

    def __init__(self, command: List[str], env: Dict[str, str], spans: Path, workers: int) -> None:
        env = clean_env({**env, "REALSTACK_SPANS": str(spans)})
        self.process = subprocess.Popen(
            command,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=str(HERE),
        )
        self.log: List[str] = []
        self.port: Optional[int] = None
        started = threading.Event()

        def read() -> None:
            assert self.process.stdout is not None
            ready = 0
            for line in self.process.stdout:
                self.log.append(line)
                if "Uvicorn running on http://127.0.0.1:" in line:
                    self.port = int(line.split("127.0.0.1:")[1].split()[0])
                ready += "Application startup complete." in line
                if self.port is not None and ready == workers:
                    started.set()
            started.set()

        self.reader = threading.Thread(target=read, daemon=True)
        self.reader.start()
        started.wait(TIMEOUT)
        assert self.port is not None and started.is_set(), "".join(self.log)

    def stop(self) -> str:
        self.process.terminate()  # uvicorn shuts down gracefully on SIGTERM
        self.process.wait(TIMEOUT)
        self.reader.join(TIMEOUT)
        return "".join(self.log)


# -- the client ---------------------------------------------------------------------------------


async def _drive(port: int, workers: int) -> Tuple[List[Request], dict]:
    base = f"http://127.0.0.1:{port}"
    requests: List[Request] = []
    limits = httpx.Limits(max_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=TIMEOUT) as client:

        async def each_worker(route: str) -> Dict[int, dict]:
            """The first answer to ``GET route`` of each worker process, by pid. Every request
            is a new connection (``Connection: close``), served by whichever worker accepts it;
            ten at a time, so that one worker busy with one leaves the next to another."""
            answers: Dict[int, dict] = {}
            for attempt in range(50):
                batch = [Request(route, f"{route}-{attempt}-{i}") for i in range(10)]
                requests.extend(batch)
                responses = await asyncio.gather(
                    *(
                        client.get(route, headers={**r.headers, "Connection": "close"})
                        for r in batch
                    )
                )
                for response in responses:
                    answer = response.raise_for_status().json()
                    answers.setdefault(answer["pid"], answer)
                if len(answers) == workers:
                    return answers
            raise AssertionError(f"{route}: {len(answers)} of {workers} workers answered")

        async def get(route: str, i: int) -> None:
            request = Request(route, f"{route}-{i}")
            requests.append(request)
            response = await client.get(route, params={"rid": request.rid}, headers=request.headers)
            response.raise_for_status()

        async def two_chunks_then_leave(i: int) -> None:
            request = Request("/stream", f"/stream-{i}")
            requests.append(request)
            # A client of its own: leaving closes its connection, which the server sees.
            params = {"rid": request.rid}
            async with httpx.AsyncClient(base_url=base, timeout=TIMEOUT) as own, own.stream(
                "GET", "/stream", params=params, headers=request.headers
            ) as response:
                seen = 0
                async for _ in response.aiter_raw(65536):
                    seen += 1
                    if seen == 2:
                        break

        async def upload_then_keep_alive(i: int) -> None:
            # One connection: a 256 KiB body (the server pauses reading), then three requests.
            async with httpx.AsyncClient(base_url=base, timeout=TIMEOUT) as own:
                request = Request("/upload", f"/upload-{i}")
                requests.append(request)
                response = await own.post(
                    "/upload",
                    params={"rid": request.rid},
                    headers=request.headers,
                    content=b"u" * 262144,
                )
                assert response.json()["size"] == 262144
                for j in range(3):
                    request = Request("/after", f"/after-{i}-{j}")
                    requests.append(request)
                    response = await own.get(
                        "/after", params={"rid": request.rid}, headers=request.headers
                    )
                    response.raise_for_status()

        for route in ("/chain", "/sync", "/background", "/mw", "/mw/stream", "/queue", "/executor"):
            await asyncio.gather(*(get(route, i) for i in range(CONCURRENCY)))
        await asyncio.gather(*(upload_then_keep_alive(i) for i in range(CONCURRENCY)))
        # The streamed responses whose client leaves come last: the detach errors logged
        # before them (counted in the server after a gc.collect()) are the other routes'.
        counts = await each_worker("/detach-errors")
        before_stream = sum(answer["count"] for answer in counts.values())
        await asyncio.gather(*(two_chunks_then_leave(i) for i in range(CONCURRENCY)))
        # Their generators, left suspended at a yield, are garbage now: collected here, in
        # another request's task, as the garbage collector would during later traffic.
        await each_worker("/detach-errors")
        patched = await each_worker("/aiotrace")
    by_worker = [answer["patched"] for answer in patched.values()]
    return requests, {"patched": by_worker, "before_stream": before_stream}


# -- the checks ---------------------------------------------------------------------------------


def _descends(by_id: Dict[str, dict], span: dict, ancestor: str) -> bool:
    """True if a span named ``ancestor`` is among ``span``'s ancestors."""
    parent = by_id.get(span["parent"])
    while parent is not None:
        if parent["name"] == ancestor:
            return True
        parent = by_id.get(parent["parent"])
    return False


def _problems(spans: List[dict], requests: List[Request]) -> Counter:
    """What is wrong with the span trees, counted by kind and span name."""
    problems: Counter = Counter()
    by_trace: Dict[str, Request] = {r.trace: r for r in requests}
    by_id = {s["span"]: s for s in spans}
    for span in spans:
        request = by_trace.get(span["trace"])
        name = span["name"]
        if request is None:
            problems[f"in no request's trace: {name}"] += 1
            continue
        if span["rid"] is not None and span["rid"] != request.rid:
            problems[f"in another request's trace: {name}"] += 1
            continue
        parent = by_id.get(span["parent"])
        parent_name = parent["name"] if parent else None
        if name.endswith("http send"):  # the ASGI middleware's own spans
            ok = parent_name is not None and name.startswith(parent_name)
        elif name.endswith("http receive"):  # in the context of whoever reads the body
            ok = _descends(by_id, span, name[: -len(" http receive")])
        elif name == "GET":  # the httpx client span of /chain
            ok = parent_name == "chain.work"
        elif name == "GET /leaf":  # served for /chain's client
            ok = parent_name == "GET" and by_id[span["parent"]]["parent"] in {
                s["span"] for s in spans if s["name"] == "chain.work"
            }
        elif name.startswith(("GET /", "POST /")):  # the server span of the request
            ok = span["parent"] == request.remote
        elif name == "mw.middleware":
            ok = parent_name == f"GET {request.route}"
        else:
            ok = parent_name == PARENTS.get(name, parent_name)  # unknown span: its trace only
        if not ok:
            problems[f"wrong parent: {name} under {parent_name}"] += 1
    for request in requests:
        if not any(s["trace"] == request.trace for s in spans):
            problems[f"request without spans: {request.route}"] += 1
    return problems


MODES_ON = [
    "AIOTRACE_ENABLE=1",
    "aiotrace run",
    "uvicorn --workers 2",
    "opentelemetry-instrument",
    "Operator layout",
    "install() from code",
]
MODES_OFF = ["plain", "uvicorn --workers 2", "opentelemetry-instrument", "Operator layout"]
WORKERS = {"uvicorn --workers 2": 2}  # server processes; 1 in the other ways
RUNS = [(mode, True) for mode in MODES_ON] + [(mode, False) for mode in MODES_OFF]
RESULTS: Dict[Tuple[str, str, bool], dict] = {}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Stack:
    return Stack(tmp_path_factory.mktemp("realstack"))


def _serve(stack: Stack, mode: str, on: bool, loop: str, tmp_path: Path) -> dict:
    spans_file = tmp_path / "spans.jsonl"
    command, env = stack.command(mode, on, loop)
    workers = WORKERS.get(mode, 1)
    server = Server(command, env, spans_file, workers)
    try:
        requests, reported = asyncio.run(_drive(server.port, workers))
    except Exception as error:  # the server's side of it, for whoever reads the failure
        raise AssertionError(f"the client failed: {error!r}\n{server.stop()[-5000:]}") from error
    log = server.stop()
    spans = [json.loads(line) for line in spans_file.read_text().splitlines()]
    detach = sum(line.startswith(DETACH) for line in log.splitlines())
    # Seen with aiotrace off, all after the /stream disconnects (the garbage collector closes
    # OpenTelemetry's own start_as_current_span generators, or an async generator's aclose()
    # races with its finalization in another thread); asserted to be 0 with aiotrace on.
    others = sum(line.startswith(OTHER_ERRORS) for line in log.splitlines())
    result = {
        "problems": _problems(spans, requests),
        "detach": detach,
        "others": others,
        "detach_before_stream": reported["before_stream"],
        "patched": reported["patched"][0],
        "patched_by_worker": reported["patched"],
        "servers": len({span["pid"] for span in spans}),
        "log": log,
    }
    RESULTS[(loop, mode, on)] = result
    print(
        f"\n{loop:8} {mode:26} aiotrace {'on ' if on else 'off'}: {detach} detach errors "
        f"({reported['before_stream']} before the /stream disconnects), {others} other "
        f"errors logged, "
        f"{sum(result['problems'].values())} span problems {dict(result['problems'])}, "
        f"{len(result['patched'])} patched attributes, spans from {result['servers']} "
        f"process(es)"
    )
    return result


@pytest.mark.parametrize("loop", list(LOOPS))
@pytest.mark.parametrize(("mode", "on"), RUNS, ids=[f"{m}-{'on' if o else 'off'}" for m, o in RUNS])
def test_span_trees(stack: Stack, mode: str, on: bool, loop: str, tmp_path: Path) -> None:
    result = _serve(stack, mode, on, loop, tmp_path)
    assert result["servers"] == WORKERS.get(mode, 1), result["log"][-3000:]
    if not on:
        assert result["patched_by_worker"] == [[]] * WORKERS.get(mode, 1)
        return
    assert dict(result["problems"]) == {}, result["log"][-3000:]
    assert result["detach_before_stream"] == 0, result["log"]
    if loop == "uvloop":
        assert "uvloop.Loop.create_server" in result["patched"]
        assert "uvloop.Loop.shutdown_asyncgens" in result["patched"]
    assert all(patched == result["patched"] for patched in result["patched_by_worker"])
    reference = RESULTS.get((loop, MODES_ON[0], True))
    if reference is not None:
        assert result["patched"] == reference["patched"]


def test_no_detach_error_after_stream_disconnects_with_aiotrace_on() -> None:
    """The /stream generators, left suspended in a span by a cancelled task and freed by the
    garbage collector (in the loop's thread, or in a thread-pool worker running the sync
    /detach-errors route), are closed in their task's context: see docs/async-generators.md."""
    on = {key: (r["detach"], r["others"]) for key, r in RESULTS.items() if key[2]}
    assert on, "test_span_trees did not run"
    # Nor the other errors the same collections log with aiotrace off: OpenTelemetry's own
    # generator finalized by the collector ("Exception ignored in"), a close racing with it in
    # another thread ("Task exception was never retrieved ... generator already executing").
    assert all(counts == (0, 0) for counts in on.values()), on
