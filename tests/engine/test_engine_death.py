"""The in-process engine: a decode thread that dies fails every request and says it is not ready;
closing it (from a shutdown timer and its owner at once) ends what runs and refuses what comes; the
batch can never be written past its end."""

from __future__ import annotations

import asyncio
import threading

import llama_cpp
import pytest
from support import EMBEDDED_GGUF

from edge.engine.batch import BatchWriter
from edge.engine.config import EngineConfig
from edge.engine.engine import Engine
from edge.engine.jobs import EngineUnavailable, GenerationDone, GenerationFailed, GenerationRequest, ShuttingDown
from edge.engine.llama_model import LlamaModel


class _DyingEngine(Engine):
    """Fault injection: the first decode step raises, as a bug or a llama.cpp failure would."""

    def _step(self, active) -> None:  # noqa: ANN001 - the engine's own list of jobs
        raise RuntimeError("injected fault in the decode loop")


def test_an_engine_thread_that_dies_fails_its_requests_and_refuses_new_ones() -> None:
    model = LlamaModel(EMBEDDED_GGUF)
    deaths: list[BaseException] = []
    reported = threading.Event()
    engine = _DyingEngine(model, EngineConfig(ctx_size=256, parallel=2, threads=2),
                          lambda error: (deaths.append(error), reported.set()))

    async def run() -> list[object]:
        generation = engine.submit(GenerationRequest([1, 2, 3, 4], 8), asyncio.get_running_loop())
        return [event async for event in generation.events()]

    try:
        events = asyncio.run(asyncio.wait_for(run(), timeout=60))
        assert isinstance(events[0], GenerationFailed) and events[0].code == "engine_unavailable"
        assert isinstance(events[-1], GenerationDone)
        # Requests are failed first, then the death is reported (which stops the server).
        assert reported.wait(10) and not engine.ready and len(deaths) == 1
        with pytest.raises(EngineUnavailable):
            engine.submit(GenerationRequest([1, 2, 3], 4), asyncio.new_event_loop())
    finally:
        engine.close()
        model.close()


def test_closing_from_two_threads_ends_running_requests_and_refuses_new_ones() -> None:
    model = LlamaModel(EMBEDDED_GGUF)
    engine = Engine(model, EngineConfig(ctx_size=256, parallel=1, threads=2))

    async def run() -> list[object]:
        loop = asyncio.get_running_loop()
        running = engine.submit(GenerationRequest([1, 2, 3, 4], 200), loop)
        queued = engine.submit(GenerationRequest([5, 6, 7], 200), loop)
        assert await running.started() is None
        closers = [threading.Thread(target=engine.close) for _ in range(2)]  # the timer and the owner
        for closer in closers:
            closer.start()
        ends = [[event async for event in generation.events()] for generation in (running, queued)]
        for closer in closers:
            closer.join(30)
        return ends

    try:
        running, queued = asyncio.run(asyncio.wait_for(run(), timeout=60))
        assert [e.code for e in running if isinstance(e, GenerationFailed)] == ["shutting_down"]
        assert isinstance(running[-1], GenerationDone)
        assert [e.code for e in queued if isinstance(e, GenerationFailed)] == ["shutting_down"]
        with pytest.raises(ShuttingDown):
            engine.submit(GenerationRequest([1, 2, 3], 4), asyncio.new_event_loop())
    finally:
        engine.close()
        model.close()


def test_more_sequences_than_the_batch_holds_are_refused_at_configuration() -> None:
    with pytest.raises(ValueError, match="must not exceed the batch size"):
        EngineConfig(ctx_size=256, parallel=600, n_batch=512)


def test_the_batch_writer_never_writes_past_its_capacity() -> None:
    batch = llama_cpp.llama_batch_init(4, 0, 1)
    try:
        writer = BatchWriter(batch, 4)
        for position in range(4):
            writer.add(1, position, [0], False)
        with pytest.raises(IndexError, match="the batch is full"):
            writer.add(1, 4, [0], False)
    finally:
        llama_cpp.llama_batch_free(batch)


class _RecordingEngine(Engine):
    """Records the thread of every llama_decode (the self-test's and each step's)."""

    decoding_threads: set[str] = set()

    def _self_test(self) -> None:
        type(self).decoding_threads.add(threading.current_thread().name)
        super()._self_test()

    def _step(self, active) -> None:  # noqa: ANN001 - the engine's own list of jobs
        type(self).decoding_threads.add(threading.current_thread().name)
        super()._step(active)


class _FailingSelfTest(Engine):
    def _self_test(self) -> None:
        raise RuntimeError("injected: the kernels cannot decode a batch")


def test_every_decode_runs_on_the_engine_thread_and_a_failed_self_test_stops_the_start() -> None:
    """One OpenMP master: a decode on a second thread slows every later one (engine.py's comment)."""
    model = LlamaModel(EMBEDDED_GGUF)
    engine = _RecordingEngine(model, EngineConfig(ctx_size=256, parallel=1, threads=2))

    async def run() -> list[object]:
        generation = engine.submit(GenerationRequest([1, 2, 3, 4], 4), asyncio.get_running_loop())
        return [event async for event in generation.events()]

    try:
        assert isinstance(asyncio.run(asyncio.wait_for(run(), timeout=60))[-1], GenerationDone)
        assert _RecordingEngine.decoding_threads == {"edge-engine"}
        with pytest.raises(RuntimeError, match="injected"):
            _FailingSelfTest(model, EngineConfig(ctx_size=256, parallel=1, threads=2))
    finally:
        engine.close()
        model.close()
