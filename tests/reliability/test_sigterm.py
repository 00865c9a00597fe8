"""SIGTERM while streams and whole requests run (and others still wait in the queue): every
client learns how its request ended, in time, and the process exits 0.

Each request in flight gets a complete response, an error in OpenAI's shape (for a stream: an
error event, then `data: [DONE]`), all within --shutdown-timeout plus a margin; a request sent
after shutdown began is refused (connection refused, or an OpenAI-shaped error). Never a body
cut short without an error.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx
import pytest
from support import MODEL, Server, metric

from .chaos_kinds import is_error_body

pytestmark = pytest.mark.reliability

SHUTDOWN_TIMEOUT = 5
MARGIN = 4.0  # seconds past the shutdown timeout for the last bytes to arrive
PARALLEL = 4
# This model continues the count for as long as it may: these never finish within the timeout.
COUNTING = {"model": MODEL, "prompt": "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,", "temperature": 0, "max_tokens": 900}
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Name three colors."}], "temperature": 0,
        "max_tokens": 16}
STREAMS = [("/v1/completions", {**COUNTING, "stream": True}), ("/v1/completions", {**COUNTING, "stream": True}),
           ("/v1/chat/completions", {**CHAT, "stream": True, "max_tokens": 600})]
WHOLES = [("/v1/completions", COUNTING), ("/v1/completions", COUNTING), ("/v1/chat/completions", CHAT),
          ("/v1/chat/completions", {**CHAT, "max_tokens": 600})]  # 7 requests on 4 slots: 3 wait in the queue


@dataclass
class Result:
    name: str
    status: int | None = None
    events: list[str] = field(default_factory=list)  # a stream's data lines
    body: object = None  # a whole response's JSON (None: not JSON)
    text: str = ""  # the start of a whole response's body
    error: str | None = None  # what the client raised
    ended: float = 0.0


def run_stream(url: str, path: str, body: dict, first_event: threading.Event) -> Result:
    result = Result(f"stream {path}")
    try:
        with httpx.stream("POST", url + path, json=body, timeout=120) as response:
            result.status = response.status_code
            if response.status_code != 200:
                response.read()
                result.body, result.text = _json(response.text), response.text[:120]
                return result
            for line in response.iter_lines():
                if line.startswith("data: "):
                    result.events.append(line.removeprefix("data: "))
                    first_event.set()
    except Exception as error:  # noqa: BLE001 - every client-side failure is judged below
        result.error = f"{type(error).__name__}: {error}"
    finally:
        first_event.set()
        result.ended = time.monotonic()
    return result


def run_whole(url: str, path: str, body: dict, name: str = "whole") -> Result:
    result = Result(f"{name} {path}")
    try:
        response = httpx.post(url + path, json=body, timeout=120)
        result.status, result.body, result.text = response.status_code, _json(response.text), response.text[:120]
    except Exception as error:  # noqa: BLE001
        result.error = f"{type(error).__name__}: {error}"
    result.ended = time.monotonic()
    return result


def _json(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError:
        return None


def stream_problem(result: Result) -> str | None:
    """None when the stream ended properly: [DONE] last, and any error event right before it."""
    if result.error:
        return f"dropped: {result.error}"
    if result.status != 200:
        return None if is_error_body(result.body) else f"status {result.status} without an OpenAI error body: {result.text!r}"
    if not result.events or result.events[-1] != "[DONE]":
        return f"ended without [DONE] after {len(result.events)} events: {result.events[-2:]}"
    chunks = [_json(event) for event in result.events[:-1]]
    if any(not isinstance(chunk, dict) for chunk in chunks):
        return "an event that is not JSON"
    errors = [i for i, chunk in enumerate(chunks) if "error" in chunk]
    if errors and (errors != [len(chunks) - 1] or not is_error_body(chunks[-1])):
        return f"error events at {errors} of {len(chunks)}, not one OpenAI-shaped error right before [DONE]"
    return None


def whole_problem(result: Result) -> str | None:
    if result.error:
        return f"dropped: {result.error}"
    if result.status == 200:
        body = result.body
        complete = isinstance(body, dict) and body.get("choices") and all(c.get("finish_reason") for c in body["choices"])
        return None if complete else f"200 with an incomplete body: {str(body)[:200]}"
    return None if is_error_body(result.body) else f"status {result.status} without an OpenAI error body: {result.text!r}"


def late_problem(result: Result) -> str | None:
    """A request sent after SIGTERM: refused at connect, or answered properly."""
    if result.error and result.error.startswith("ConnectError"):
        return None
    return whole_problem(result)


def start_load(server: Server, pool: ThreadPoolExecutor) -> list[tuple[str, Future]]:
    """The streams first (each has sent its first event), then the whole requests, until every
    slot is busy and the rest wait in the queue."""
    futures = []
    for path, body in STREAMS:
        first = threading.Event()
        futures.append(("stream", pool.submit(run_stream, server.url, path, body, first)))
        assert first.wait(60), "a stream never started"
    futures += [("whole", pool.submit(run_whole, server.url, path, body)) for path, body in WHOLES]
    deadline = time.monotonic() + 30
    while metric(server, "edge_busy_slots") < PARALLEL or metric(server, "edge_queue_depth") < 1:
        assert time.monotonic() < deadline, "the load never filled the slots and the queue"
        time.sleep(0.1)
    return futures


def test_sigterm_under_load_ends_every_request_cleanly_and_exits_0(tmp_path):
    server = Server(["--parallel", str(PARALLEL), "--ctx-size", "1024", "--shutdown-timeout", str(SHUTDOWN_TIMEOUT)],
                    {}, tmp_path / "serve.log")
    try:
        with ThreadPoolExecutor(len(STREAMS) + len(WHOLES) + 2) as pool:
            futures = start_load(server, pool)
            time.sleep(0.5)
            server.process.send_signal(signal.SIGTERM)
            sigterm = time.monotonic()
            for delay in (0.3, 2.0):
                time.sleep(delay)
                futures.append(("late", pool.submit(run_whole, server.url, "/v1/chat/completions", CHAT, "late")))
            results = [(kind, future.result(timeout=SHUTDOWN_TIMEOUT + 120)) for kind, future in futures]
        exit_code = server.process.wait(timeout=SHUTDOWN_TIMEOUT + 30)
    finally:
        server.stop()
    judge = {"stream": stream_problem, "whole": whole_problem, "late": late_problem}
    report = [(kind, r.name, r.status or r.error, round(r.ended - sigterm, 2), judge[kind](r)) for kind, r in results]
    print(f"\nSIGTERM under load: exit code {exit_code}; (kind, request, status, seconds after SIGTERM, problem):")
    for line in report:
        print(f"  {line}")
    broken = [line for line in report if line[4]]
    assert not broken, f"requests that did not end cleanly: {broken}"
    late = [line for line in report if line[0] != "late" and line[3] > SHUTDOWN_TIMEOUT + MARGIN]
    assert not late, f"requests still open {SHUTDOWN_TIMEOUT} + {MARGIN} s after SIGTERM: {late}"
    assert exit_code == 0, f"exit code {exit_code} after SIGTERM; log tail:\n{server.log_path.read_text()[-2000:]}"
