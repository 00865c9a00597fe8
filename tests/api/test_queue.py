"""One slot, a bounded queue: a client that disconnects frees its slot for the next request,
a full queue answers 429 with Retry-After, a long wait answers 503, shutdown is graceful."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import pytest
from support import MODEL, Server, metric, wait_for_metric

# A prompt this model continues for as long as it may: the occupying stream never ends by itself.
COUNTING = {"model": MODEL, "prompt": "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,", "temperature": 0, "max_tokens": 800,
            "stream": True}
SHORT = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "temperature": 0, "max_tokens": 4}


@pytest.fixture(scope="module")
def one_slot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("one_slot") / "serve.log"
    server = Server(["--parallel", "1", "--max-queue", "1", "--ctx-size", "1024"], {}, log)
    yield server
    server.stop()


@contextmanager
def occupied(server: Server) -> Iterator[httpx.Response]:
    """A running stream that holds the server's only slot until the block ends (disconnect)."""
    with httpx.Client(base_url=server.url, timeout=120) as session:
        with session.stream("POST", "/v1/completions", json=COUNTING) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            assert next(line for line in lines if line.startswith("data: "))
            yield response


def post_in_background(pool: ThreadPoolExecutor, server: Server, body: dict) -> Future:
    return pool.submit(httpx.post, f"{server.url}/v1/chat/completions", json=body, timeout=300)


def test_disconnect_frees_the_slot_and_the_queued_request_starts(one_slot):
    cancelled = metric(one_slot, "edge_requests_total", {"status": "cancelled"})
    generated = metric(one_slot, "edge_completion_tokens_total")
    with ThreadPoolExecutor(1) as pool:
        with occupied(one_slot):
            queued = post_in_background(pool, one_slot, SHORT)
            wait_for_metric(one_slot, "edge_queue_depth", 1)
            assert not queued.done()
        response = queued.result()
    assert response.status_code == 200 and response.json()["choices"][0]["message"]["content"]
    assert metric(one_slot, "edge_requests_total", {"status": "cancelled"}) == cancelled + 1
    # The occupying stream stopped before its 800 tokens: the queued request did not wait for it.
    # (Bounded by the count, not by a time: how far it got depends on the machine's speed.)
    occupier_tokens = metric(one_slot, "edge_completion_tokens_total") - generated - response.json()["usage"]["completion_tokens"]
    assert 0 < occupier_tokens < COUNTING["max_tokens"]
    assert metric(one_slot, "edge_busy_slots") == 0 and metric(one_slot, "edge_queue_depth") == 0


def test_a_full_queue_answers_429_with_retry_after(one_slot):
    rejected = metric(one_slot, "edge_requests_total", {"status": "rejected"})
    with ThreadPoolExecutor(1) as pool:
        with occupied(one_slot):
            queued = post_in_background(pool, one_slot, SHORT)
            wait_for_metric(one_slot, "edge_queue_depth", 1)
            overflow = httpx.post(f"{one_slot.url}/v1/chat/completions", json={**SHORT, "stream": True}, timeout=60)
        assert queued.result().status_code == 200
    assert overflow.status_code == 429
    assert int(overflow.headers["retry-after"]) >= 1
    error = overflow.json()["error"]
    assert error["type"] == "rate_limit_error" and error["code"] == "queue_full" and "busy" in error["message"]
    assert metric(one_slot, "edge_requests_total", {"status": "rejected"}) == rejected + 1


def test_a_request_that_waits_too_long_gets_a_clear_503(tmp_path):
    server = Server(["--parallel", "1", "--queue-timeout", "1", "--ctx-size", "1024"], {}, tmp_path / "serve.log")
    try:
        with occupied(server):
            late = httpx.post(f"{server.url}/v1/chat/completions", json=SHORT, timeout=60)
        assert late.status_code == 503 and "retry-after" in late.headers
        error = late.json()["error"]
        assert error["code"] == "queue_timeout" and "waited more than 1 s" in error["message"]
        assert metric(server, "edge_requests_total", {"status": "timeout"}) == 1
    finally:
        server.stop()


def test_shutdown_lets_a_running_stream_finish(tmp_path):
    server = Server(["--parallel", "1", "--ctx-size", "1024"], {}, tmp_path / "serve.log")
    try:
        body = {**COUNTING, "max_tokens": 24}
        with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=120) as response:
            lines = (line for line in response.iter_lines() if line.startswith("data: "))
            first = next(lines)
            server.process.send_signal(signal.SIGTERM)
            rest = list(lines)
        assert first and rest[-1] == "data: [DONE]"
        assert '"finish_reason": "length"' in rest[-2]
        # A clean shutdown is a clean exit (uvicorn alone re-raises the signal and dies by it).
        assert server.process.wait(timeout=60) == 0
        log = server.log_path.read_text()
        assert "Application shutdown complete" in log and "Traceback" not in log
    finally:
        server.stop()


def test_a_client_that_leaves_a_whole_response_early_frees_the_slot(one_slot):
    cancelled = metric(one_slot, "edge_requests_total", {"status": "cancelled"})
    generated = metric(one_slot, "edge_completion_tokens_total")
    with pytest.raises(httpx.TimeoutException):  # the client gives up after 1 s and closes the connection
        httpx.post(f"{one_slot.url}/v1/completions", json={**COUNTING, "stream": False}, timeout=1)
    wait_for_metric(one_slot, "edge_busy_slots", 0)
    assert metric(one_slot, "edge_requests_total", {"status": "cancelled"}) == cancelled + 1
    # It stopped short of its 800 tokens (a CI machine made 416 in 3 s, so no time-based bound).
    assert 0 < metric(one_slot, "edge_completion_tokens_total") - generated < COUNTING["max_tokens"]
