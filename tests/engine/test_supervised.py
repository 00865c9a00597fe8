"""SupervisedEngine against engine processes that misbehave on command (tests/engine/fake_child.py).

Each test starts real child processes (spawned, as in production); all but the last load no model.
Every wait is bounded, so a regression shows as a failure, not as a hung test run.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from support import EMBEDDED_GGUF

from edge.api.errors import EdgeError
from edge.api.serving import Prepared, ServingLayer
from edge.engine.config import EngineConfig
from edge.engine.jobs import (
    ChoiceFinished, EngineUnavailable, Event, Generation, GenerationDone, GenerationFailed, GenerationRequest,
    RequestInvalid, ShuttingDown, TextDelta,
)
from edge.engine.llama_model import LoadOptions
from edge.engine.supervised import ChildSpec, SupervisedEngine
from tests.engine import fake_child
from tests.engine.fake_child import (
    BAD_EVENT, BUG, CRASH, ECHO, FULL, HOLD, INVALID, POISON, RAISE, STALL, UNPICKLABLE,
)

READY_TIMEOUT = 60.0  # a spawned child imports llama_cpp; the machine may be busy
RESTART_TIMEOUT = 60.0  # back-off (1 s) plus a new child's start


@pytest.fixture()
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop on a thread of its own, as uvicorn's is: the test thread never runs it, so a
    blocking `submit` blocks only the caller and cannot hide behind a stalled loop."""
    running = asyncio.new_event_loop()
    thread = threading.Thread(target=running.run_forever, daemon=True)
    thread.start()
    yield running
    running.call_soon_threadsafe(running.stop)
    thread.join(5)


@pytest.fixture()
def start() -> Iterator[Callable[..., SupervisedEngine]]:
    """Start SupervisedEngines (fake children by default); close them all afterwards, bounded."""
    engines: list[SupervisedEngine] = []

    def start_engine(child_main=fake_child.main, ctx_size: int = 4096, wait: bool = True,
                     spec: ChildSpec | None = None) -> SupervisedEngine:
        spec = spec or ChildSpec(Path("fake.gguf"), LoadOptions(), EngineConfig(ctx_size=ctx_size, parallel=2))
        engine = SupervisedEngine(spec, child_main)
        engines.append(engine)
        if wait:
            assert engine.wait_ready(READY_TIMEOUT), "the engine process did not start"
        return engine

    yield start_engine
    for engine in engines:
        if not _within(30.0, engine.close):
            for child in multiprocessing.active_children():
                child.kill()
            _within(30.0, engine.close)


def _within(seconds: float, work: Callable[[], object]) -> bool:
    """Run `work` on a thread; whether it finished within `seconds`."""
    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(seconds)
    return not thread.is_alive()


def request(op: int, *args: int, max_tokens: int = 3, filler: int = 0) -> GenerationRequest:
    return GenerationRequest([op, *args, *([0] * filler)], max_tokens)


def events(loop: asyncio.AbstractEventLoop, generation: Generation, timeout: float = 20.0) -> list[Event]:
    """Every event after Started, up to GenerationDone."""
    async def gather() -> list[Event]:
        return [event async for event in generation.events()]
    return asyncio.run_coroutine_threadsafe(gather(), loop).result(timeout)


def started(loop: asyncio.AbstractEventLoop, generation: Generation, timeout: float = 20.0) -> None:
    assert asyncio.run_coroutine_threadsafe(generation.started(), loop).result(timeout) is None


def failure_code(received: list[Event]) -> str | None:
    assert isinstance(received[-1], GenerationDone), received[-3:]
    failures = [event for event in received if isinstance(event, GenerationFailed)]
    return failures[0].code if failures else None


def echoes(engine: SupervisedEngine, loop: asyncio.AbstractEventLoop) -> None:
    """The engine serves: a request runs to the end."""
    received = events(loop, engine.submit(request(ECHO, max_tokens=2), loop))
    assert [type(event) for event in received] == [TextDelta, TextDelta, ChoiceFinished, GenerationDone]


def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def our_children() -> set[int]:
    return {child.pid for child in multiprocessing.active_children()}


# --- 1. supervision survives unexpected errors; ready only while serving -----------------------

def test_a_message_the_server_cannot_read_replaces_the_child(start, loop):
    engine = start()
    held = engine.submit(request(HOLD), loop)
    started(loop, held)
    bad = engine.submit(request(BAD_EVENT), loop)  # its event raises while the relay unpickles it
    assert failure_code(events(loop, bad)) == "engine_unavailable"
    assert failure_code(events(loop, held)) == "engine_unavailable"
    assert not engine.ready  # cleared before the requests were failed; the restart waits 1 s
    with pytest.raises(EngineUnavailable):
        engine.submit(request(ECHO), loop)
    assert engine.wait_ready(RESTART_TIMEOUT), "supervision stopped: no new engine process"
    echoes(engine, loop)
    assert b"edge_engine_restarts_total 1.0" in engine.metrics.render()


def test_a_crashed_child_is_not_ready_until_its_successor_serves(start, loop):
    engine = start()
    assert failure_code(events(loop, engine.submit(request(CRASH), loop))) == "engine_unavailable"
    assert not engine.ready
    with pytest.raises(EngineUnavailable) as refused:
        engine.submit(request(ECHO), loop)
    assert refused.value.code == "engine_unavailable" and refused.value.retry_after > 0
    assert engine.wait_ready(RESTART_TIMEOUT)
    echoes(engine, loop)
    text = engine.metrics.render()
    assert b"edge_engine_up 1.0" in text and b"edge_requests_unavailable_total 1.0" in text


def test_not_ready_while_the_model_loads(start, loop):
    engine = start(fake_child.never_ready, wait=False)
    assert not engine.wait_ready(1.0) and not engine.ready
    with pytest.raises(EngineUnavailable):
        engine.submit(request(ECHO), loop)
    assert engine.metrics.render().count(b"edge_engine_up 0.0") == 1


# --- 2. the engine thread dies inside the child ------------------------------------------------

def test_engine_thread_death_ends_the_child_and_fails_its_requests(start, loop, caplog):
    caplog.set_level(logging.INFO, logger="edge.supervisor")
    engine = start()
    held = engine.submit(request(HOLD), loop)
    started(loop, held)
    fatal = engine.submit(request(RAISE), loop)
    for generation in (fatal, held):
        received = events(loop, generation)
        assert failure_code(received) == "engine_unavailable"
        assert "the engine failed" in received[0].message
    assert not engine.ready
    assert engine.wait_ready(RESTART_TIMEOUT)
    echoes(engine, loop)
    exits = [record.args[0] for record in caplog.records if record.msg.startswith("engine process exited")]
    assert exits == [3], exits  # child.EXIT_ENGINE_DIED: it ended itself, non-zero


def test_real_engine_thread_death_is_reported_through_on_death(start, loop):
    """The production child (model, Engine with on_death) whose decode step raises: loads the model."""
    config = EngineConfig(ctx_size=128, parallel=2, threads=1)
    engine = start(fake_child.real_engine_child, spec=ChildSpec(EMBEDDED_GGUF, LoadOptions(), config))
    normal = events(loop, engine.submit(GenerationRequest([1, 2, 3, 4], 2), loop))
    assert failure_code(normal) is None and isinstance(normal[-2], ChoiceFinished)
    received = events(loop, engine.submit(GenerationRequest([POISON, 2, 3], 2), loop), timeout=30)
    assert failure_code(received) == "engine_unavailable"
    assert wait_until(lambda: not engine.ready, 10.0), "the engine process did not report its engine's death"
    assert engine.wait_ready(RESTART_TIMEOUT)
    assert failure_code(events(loop, engine.submit(GenerationRequest([1, 2, 3, 4], 2), loop))) is None
    assert b"edge_engine_restarts_total 1.0" in engine.metrics.render()


# --- 3. nothing blocks on the pipe; no lock is held across pipe I/O ----------------------------

def test_submit_returns_at_once_while_the_child_does_not_read(start, loop):
    engine = start(ctx_size=2_100_000)
    stalled = engine.submit(request(STALL), loop)
    long_prompt = request(ECHO, filler=2_000_000)  # about 6 MB pickled: far beyond a pipe buffer
    began = time.monotonic()
    submitted: list[Generation] = []
    assert _within(5.0, lambda: submitted.append(engine.submit(long_prompt, loop))), "submit blocked on the pipe"
    assert time.monotonic() - began < 0.5
    assert _within(0.5, lambda: engine.submit(request(ECHO), loop))  # and so does the next one
    assert _within(15.0, engine.close), "close() hung on a child that does not read"
    for generation in (stalled, *submitted):
        assert failure_code(events(loop, generation)) == "shutting_down"


def test_long_prompts_while_streams_run_do_not_deadlock(start, loop):
    engine = start(ctx_size=1_100_000)
    # ~16 MB of events come up the pipe while ~15 MB of prompts go down it.
    flood = engine.submit(request(ECHO, 2000, max_tokens=8000), loop)
    long_prompts: list[Generation] = []
    assert _within(10.0, lambda: long_prompts.extend(
        engine.submit(request(ECHO, filler=1_000_000, max_tokens=1), loop) for _ in range(3)))
    received = events(loop, flood, timeout=120)
    assert failure_code(received) is None and len(received) == 8002
    for generation in long_prompts:
        assert failure_code(events(loop, generation, timeout=60)) is None


def test_cancel_reaches_the_child_without_waiting_for_other_events(start, loop):
    engine = start()
    held = engine.submit(request(HOLD), loop)
    started(loop, held)
    began = time.monotonic()
    held.cancel()
    assert [type(event) for event in events(loop, held)] == [GenerationDone]
    assert time.monotonic() - began < 1.0


# --- 4. one failure channel ---------------------------------------------------------------------

def test_refusals_and_losses_keep_their_codes_up_to_the_http_status(start, loop):
    engine = start()
    layer = ServingLayer(SimpleNamespace(engine=engine))

    def answer(generation: GenerationRequest) -> EdgeError:
        """The API's error for `generation`: refused at submit, or failed before it started."""
        with pytest.raises(EdgeError) as raised:
            submitted = layer.submit(Prepared(generation, "text"), loop)  # a worker thread's call, as in the API
            asyncio.run_coroutine_threadsafe(layer.wait_started(submitted), loop).result(20)
        return raised.value

    full = answer(request(FULL))
    assert (full.status, full.code) == (429, "queue_full") and full.retry_after > 0
    invalid = answer(request(INVALID))
    assert (invalid.status, invalid.code, invalid.retry_after) == (400, "invalid_request", None)
    too_long = answer(request(ECHO, max_tokens=5000))  # refused here, before the pipe
    assert (too_long.status, too_long.code) == (400, "invalid_request")
    lost = answer(request(CRASH))
    assert (lost.status, lost.code) == (503, "engine_unavailable") and lost.retry_after > 0
    down = answer(request(ECHO))  # refused at submit while the child restarts
    assert (down.status, down.code) == (503, "engine_unavailable") and down.retry_after > 0


def test_an_error_queueing_a_request_fails_only_that_request(start, loop):
    engine = start()
    received = events(loop, engine.submit(request(BUG), loop))
    assert failure_code(received) == "decode_failed" and "a bug while queueing" in received[0].message
    echoes(engine, loop)
    assert b"edge_engine_restarts_total 0.0" in engine.metrics.render()


def test_an_event_that_cannot_be_pickled_fails_only_its_request(start, loop):
    engine = start()
    assert failure_code(events(loop, engine.submit(request(UNPICKLABLE), loop))) == "decode_failed"
    echoes(engine, loop)
    assert b"edge_engine_restarts_total 0.0" in engine.metrics.render()


def test_it_is_an_engine_client(start, loop):
    engine = start()
    assert engine.ready is True and engine.retry_after() > 0
    text = engine.metrics.render()  # the child's figures, then the supervisor's own
    assert text.index(b"fake_engine_metric 1.0") < text.index(b"edge_engine_up 1.0")
    with pytest.raises(RequestInvalid):
        engine.submit(GenerationRequest([], 1), loop)
    engine.close()
    assert engine.ready is False and engine.metrics.render().startswith(b"# HELP edge_requests_unavailable")


# --- 5. close() is bounded ----------------------------------------------------------------------

def test_close_ends_running_requests_and_the_child(start, loop):
    engine = start()
    before = our_children()
    held = engine.submit(request(HOLD), loop)
    started(loop, held)
    began = time.monotonic()
    engine.close()
    assert time.monotonic() - began < 5.0
    assert failure_code(events(loop, held)) == "shutting_down"
    assert not before & our_children()
    with pytest.raises(ShuttingDown):
        engine.submit(request(HOLD), loop)
    engine.close()  # a second close (the owner, after a shutdown timer) is a no-op


def test_close_kills_a_child_that_is_stuck(start, loop):
    engine = start()
    before = our_children()
    engine.submit(request(STALL), loop)
    assert _within(15.0, engine.close), "close() hung"
    assert not before & our_children(), "the stuck child was left running"


def test_close_kills_a_child_that_is_still_loading(start, loop):
    engine = start(fake_child.never_ready, wait=False)
    assert wait_until(lambda: bool(our_children()), 10.0)
    before = our_children()
    began = time.monotonic()
    engine.close()
    assert time.monotonic() - began < 15.0
    assert not before & our_children()
