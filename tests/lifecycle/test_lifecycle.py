"""Every way a request's life can end, with the engine's timing under the test's control.

A generation that is neither finished nor cancelled holds a slot until max_tokens: each test checks
that the server cancels what its client abandoned, at every stage, and that every other path ends in
a complete answer or an error in OpenAI's shape (streams: an error event, then [DONE])."""

from __future__ import annotations

import json
import random
import socket
import threading
import time
from urllib.parse import urlparse

import httpx
import pytest

from edge.engine.jobs import (
    ChoiceFinished, EngineUnavailable, GenerationDone, GenerationFailed, QueueFull, RequestInvalid, Started, TextDelta,
)

from .fake import MODEL_ID, LiveApp, wait_until

CHAT = {"model": MODEL_ID, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 50}


def open_request(url: str, body: dict, path: str = "/v1/chat/completions") -> socket.socket:
    """A raw HTTP request, sent whole, on a socket the test closes whenever it wants."""
    address = urlparse(url)
    data = json.dumps(body).encode()
    sock = socket.create_connection((address.hostname, address.port), timeout=10)
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {address.netloc}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return sock


def drip(generation, stop: threading.Event, every: float = 0.02) -> threading.Thread:
    """Started, then a text delta every `every` seconds until `stop` or the generation is cancelled."""
    def run() -> None:
        generation.publish(Started(0))
        while not stop.is_set() and not generation.cancelled:
            generation.publish(TextDelta(0, "word "))
            time.sleep(every)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def finish(generation, text: str = "Hi there") -> None:
    for event in (Started(0), TextDelta(0, text), ChoiceFinished(0, "stop", 2), GenerationDone(3)):
        generation.publish(event)


@pytest.mark.parametrize("streamed", [False, True])
def test_a_client_that_leaves_while_queued_cancels_its_request(live: LiveApp, streamed: bool) -> None:
    sock = open_request(live.url, {**CHAT, "stream": streamed})
    generation = live.engine.wait_submitted()
    assert not generation.cancelled
    sock.close()  # still queued: the engine never said Started
    assert wait_until(lambda: generation.cancelled)


@pytest.mark.parametrize("streamed", [False, True])
def test_a_client_that_left_just_before_admission_still_cancels(live: LiveApp, streamed: bool) -> None:
    """The client is gone, then the engine admits the request before the server has noticed: the
    generation must still be cancelled (it used to stream to nobody until max_tokens)."""
    live.engine.on_submit = lambda generation: threading.Timer(0.3, generation.publish, (Started(0),)).start()
    sock = open_request(live.url, {**CHAT, "stream": streamed})
    generation = live.engine.wait_submitted()
    sock.close()
    assert wait_until(lambda: generation.cancelled)


def test_a_stream_abandoned_between_admission_and_its_first_token_is_cancelled(live: LiveApp) -> None:
    live.engine.on_submit = lambda generation: generation.publish(Started(0))
    sock = open_request(live.url, {**CHAT, "stream": True})
    generation = live.engine.wait_submitted()
    time.sleep(0.05)  # admitted: the response has begun, no token has come
    sock.close()
    assert wait_until(lambda: generation.cancelled)


def test_a_stream_abandoned_mid_way_is_cancelled(live: LiveApp) -> None:
    stop = threading.Event()
    live.engine.on_submit = lambda generation: drip(generation, stop)
    with httpx.Client(base_url=live.url, timeout=10) as client:
        with client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as response:
            chunks = response.iter_lines()
            received = [next(chunks) for _ in range(6)]
    assert any("word" in line for line in received)
    generation = live.engine.generations[-1]
    try:
        assert wait_until(lambda: generation.cancelled)
    finally:
        stop.set()


def test_a_whole_response_abandoned_mid_way_is_cancelled(live: LiveApp) -> None:
    stop = threading.Event()
    live.engine.on_submit = lambda generation: drip(generation, stop)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{live.url}/v1/chat/completions", json=CHAT, timeout=0.5)
    generation = live.engine.generations[-1]
    try:
        assert wait_until(lambda: generation.cancelled)
    finally:
        stop.set()


def test_no_timing_of_admission_and_disconnect_leaks_a_generation(live: LiveApp) -> None:
    """The engine admits the request at a random moment, the client leaves at another: whichever comes
    first, the generation must end up cancelled (none of them ever finishes by itself)."""
    rng = random.Random(7)

    def admit_later(generation) -> None:
        threading.Timer(rng.uniform(0, 0.03), generation.publish, (Started(0),)).start()

    live.engine.on_submit = admit_later
    for round_index in range(30):
        live.engine.submitted.clear()
        sock = open_request(live.url, {**CHAT, "stream": round_index % 2 == 0})
        live.engine.wait_submitted()
        time.sleep(rng.uniform(0, 0.03))
        sock.close()
    assert wait_until(lambda: all(g.cancelled for g in live.engine.generations), timeout=10)
    assert len(live.engine.generations) == 30


def test_a_finished_request_answers_whole_and_streamed(live: LiveApp) -> None:
    live.engine.on_submit = finish
    reply = httpx.post(f"{live.url}/v1/chat/completions", json=CHAT, timeout=10)
    assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["content"] == "Hi there"
    with httpx.stream("POST", f"{live.url}/v1/chat/completions", json={**CHAT, "stream": True}, timeout=10) as response:
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]" and any("Hi there" in line for line in lines)


@pytest.mark.parametrize(("refusal", "status", "code"), [
    (RequestInvalid("the prompt is empty"), 400, "invalid_request"),
    (QueueFull("64 requests are already waiting", 7), 429, "queue_full"),
    (EngineUnavailable("restarting", 5), 503, "engine_unavailable"),
])
def test_each_refusal_has_one_status(live: LiveApp, refusal, status: int, code: str) -> None:
    def refuse(_generation) -> None:
        raise refusal
    live.engine.on_submit = refuse
    for streamed in (False, True):
        reply = httpx.post(f"{live.url}/v1/chat/completions", json={**CHAT, "stream": streamed}, timeout=10)
        assert reply.status_code == status, reply.text
        assert reply.json()["error"]["code"] == code
        if status in (429, 503):
            assert int(reply.headers["retry-after"]) > 0


def test_a_failure_after_admission_is_an_error_event_then_done(live: LiveApp) -> None:
    def fail_mid_way(generation) -> None:
        for event in (Started(0), TextDelta(0, "partial"), GenerationFailed("the engine failed", "engine_unavailable"),
                      GenerationDone(3)):
            generation.publish(event)
    live.engine.on_submit = fail_mid_way
    with httpx.stream("POST", f"{live.url}/v1/chat/completions", json={**CHAT, "stream": True}, timeout=10) as response:
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    error = json.loads(lines[-2].removeprefix("data: "))["error"]
    assert error["code"] == "engine_unavailable"
    whole = httpx.post(f"{live.url}/v1/chat/completions", json=CHAT, timeout=10)
    assert whole.status_code == 503 and whole.json()["error"]["code"] == "engine_unavailable"


def test_an_unexpected_event_still_ends_the_stream_properly(live: LiveApp) -> None:
    def broken(generation) -> None:
        generation.publish(Started(0))
        generation.publish(TextDelta(5, "a choice that does not exist"))  # IndexError in the serving layer
    live.engine.on_submit = broken
    with httpx.stream("POST", f"{live.url}/v1/chat/completions", json={**CHAT, "stream": True}, timeout=10) as response:
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]" and '"error"' in lines[-2]
    assert wait_until(lambda: live.engine.generations[-1].cancelled)


def test_health_tells_the_truth_about_the_engine(live: LiveApp) -> None:
    assert httpx.get(f"{live.url}/health", timeout=10).status_code == 200
    live.engine.ready = False
    reply = httpx.get(f"{live.url}/health", timeout=10)
    assert reply.status_code == 503 and reply.headers["retry-after"] == "3"


def test_preparing_a_huge_request_does_not_stall_other_streams(live: LiveApp) -> None:
    """Rendering and tokenizing a very long prompt runs in a worker thread: a stream that is running
    meanwhile keeps receiving its deltas."""
    stop = threading.Event()
    live.engine.on_submit = lambda generation: drip(generation, stop, every=0.01)
    gaps: list[float] = []
    with httpx.Client(base_url=live.url, timeout=60) as client:
        with client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as response:
            lines = response.iter_lines()
            next(lines)
            huge = {**CHAT, "messages": [{"role": "user", "content": "lorem ipsum dolor sit amet " * 60000}]}
            sender = threading.Thread(target=lambda: httpx.post(f"{live.url}/v1/chat/completions", json=huge, timeout=60))
            sender.start()
            last = time.monotonic()
            while sender.is_alive():
                next(lines)
                now = time.monotonic()
                gaps.append(now - last)
                last = now
            sender.join()
    stop.set()
    # The huge prompt takes far longer to tokenize than a gap between two deltas may last.
    assert gaps and max(gaps) < 0.5, f"longest gap between deltas: {max(gaps):.2f} s"
