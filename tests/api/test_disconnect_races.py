"""A client that leaves at an awkward moment frees its slot (issue 10, items 2 and 3).

Each test holds a real `edge serve` (one slot) open at one window with a fault injected at a library
edge does not own (tests/faults/sitecustomize.py, loaded into the server process only): starlette's
disconnect check is slow, or uvicorn holds a stream's first bytes. In that window, the client hangs
up. Then, from outside: the busy-slot gauge must fall back to 0 within seconds, and the next request
must be served at once. A generation that nobody cancelled would hold the slot for its 4000 tokens
(the counting prompt never ends by itself), and the next request would wait for all of them.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import httpx
import pytest
from support import MODEL, Server, wait_for_metric

FAULTS = Path(__file__).resolve().parent.parent / "faults"
LONG = {"model": MODEL, "prompt": "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,", "temperature": 0, "max_tokens": 4000}
SHORT = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "temperature": 0, "max_tokens": 4}
FREED_S = 2.0  # a cancelled generation's slot is free within a decode step; this is ample
NEXT_S = 10.0  # a 4-token chat, even on a loaded machine


def faulty_server(tmp_path: Path, **delays: float) -> Server:
    """One slot; `delays` as EDGE_FAULT_<NAME>_S for this server's process only."""
    env = {f"EDGE_FAULT_{name.upper()}_S": str(seconds) for name, seconds in delays.items()}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(FAULTS), os.environ.get("PYTHONPATH")]))
    server = Server(["--parallel", "1", "--ctx-size", "4096"], env, tmp_path / "serve.log")
    assert "edge-fault: injection loaded" in server.log_path.read_text(), "the fault injection did not load"
    return server


def post_raw(server: Server, path: str, body: dict) -> socket.socket:
    """A request on a plain socket: the test decides the very moment the client is gone (close)."""
    data = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return sock


def read_until(sock: socket.socket, marker: bytes) -> None:
    received = b""
    while marker not in received:
        chunk = sock.recv(65536)
        assert chunk, f"the server closed the connection before {marker!r}: {received[:300]!r}"
        received += chunk


def log_count(server: Server, text: str) -> int:
    return server.log_path.read_text().count(text)


def gauges(server: Server) -> dict[str, float]:
    """Busy slots, queued requests and the requests that ended cancelled, in one reading of /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    found = {"busy": 0.0, "queued": 0.0, "cancelled": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "edge_busy_slots":
                found["busy"] = sample.value
            elif sample.name == "edge_queue_depth":
                found["queued"] = sample.value
            elif sample.name == "edge_requests_total" and sample.labels.get("status") == "cancelled":
                found["cancelled"] = sample.value
    return found


def idle(reading: dict[str, float]) -> bool:
    return reading["busy"] == 0 and reading["queued"] == 0


def assert_slot_freed_and_next_served(server: Server, budget_s: float, left_at: float) -> None:
    """Within `budget_s` of the hang-up the server is idle, and then a short request is served at
    once (the gauge alone could read 0 for a moment between one generation and the next)."""
    deadline = left_at + budget_s
    while not idle(reading := gauges(server)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert idle(reading), (f"the slot was still busy {time.monotonic() - left_at:.1f} s after the client left: "
                           f"its generation was never cancelled ({reading})")
    try:
        response = httpx.post(f"{server.url}/v1/chat/completions", json=SHORT, timeout=NEXT_S)
    except httpx.TimeoutException:
        pytest.fail(f"the next request was not served within {NEXT_S} s: a generation that nobody "
                    f"cancelled holds the only slot")
    assert response.status_code == 200, response.text
    assert idle(reading := gauges(server)), f"something still runs after the next request ({reading})"


def test_a_request_admitted_while_its_disconnect_is_checked_is_cancelled(tmp_path):
    """Item 2: the engine starts a queued request at the moment the server looks for its client's
    disconnect, and the client is gone. The request must be cancelled, not dropped while it runs.
    Here the check takes 8 s; the occupying stream ends inside it, so the queued request starts."""
    check_s = 8.0  # wide: on a loaded machine the occupier's cancel and the next admission take seconds
    server = faulty_server(tmp_path, disconnect_check=check_s)
    try:
        occupier = post_raw(server, "/v1/completions", {**LONG, "stream": True})
        read_until(occupier, b"data: ")  # it holds the only slot
        checks = log_count(server, "edge-fault: disconnect check")
        queued = post_raw(server, "/v1/completions", LONG)
        # A server that polls for disconnects starts a (slow) check within its poll interval; one
        # that waits for the disconnect message does not poll, and then there is nothing to wait for.
        deadline = time.monotonic() + 3.0
        while log_count(server, "edge-fault: disconnect check") == checks and time.monotonic() < deadline:
            time.sleep(0.02)
        wait_for_metric(server, "edge_queue_depth", 1, timeout=10)  # it waits for the slot
        queued.close()    # gone before the check looks...
        occupier.close()  # ...and the slot frees, so the queued request starts while the check waits
        left_at = time.monotonic()
        assert_slot_freed_and_next_served(server, check_s + FREED_S, left_at)
    finally:
        server.stop()


def test_a_stream_whose_client_left_before_its_first_bytes_is_cancelled(tmp_path):
    """Item 3: the generation runs, but the client is gone before the stream's first bytes are out
    (uvicorn holds them 5 s): the stream is never iterated, and it must still cancel."""
    hold_s = 5.0
    server = faulty_server(tmp_path, stream_start=hold_s)
    try:
        held = log_count(server, "edge-fault: stream start held")
        client = post_raw(server, "/v1/completions", {**LONG, "stream": True})
        deadline = time.monotonic() + 10.0
        while log_count(server, "edge-fault: stream start held") == held:  # admitted, generating
            assert time.monotonic() < deadline, "the stream's start was never held"
            time.sleep(0.02)
        client.close()  # before a byte of the response arrived
        left_at = time.monotonic()
        assert_slot_freed_and_next_served(server, hold_s + FREED_S, left_at)
    finally:
        server.stop()
