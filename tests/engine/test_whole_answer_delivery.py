"""A request that is not streamed has its events handed to its event loop when it ends, not once a
step: the loop is woken a couple of times in all, while a streamed request wakes it every step
(see Generation). Both get the same events, in the same order."""

from __future__ import annotations

import asyncio

from support import EMBEDDED_GGUF

from edge.engine.config import EngineConfig
from edge.engine.engine import Engine
from edge.engine.jobs import ChoiceFinished, GenerationDone, GenerationRequest, TextDelta
from edge.engine.llama_model import LlamaModel
from edge.engine.sampling import SamplingParams

TOKENS = 24


def _events_and_wakeups(engine: Engine, request: GenerationRequest) -> tuple[list, int]:
    """The request's events, and how many times the engine thread woke its event loop."""

    async def run() -> tuple[list, int]:
        loop = asyncio.get_running_loop()
        wakeups = 0
        wake = loop.call_soon_threadsafe

        def counting(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202 - asyncio's own signature
            nonlocal wakeups
            wakeups += 1
            return wake(*args, **kwargs)

        loop.call_soon_threadsafe = counting  # this loop only, for this test's one request
        generation = engine.submit(request, loop)
        events = [event async for event in generation.events()]
        return events, wakeups

    return asyncio.run(asyncio.wait_for(run(), timeout=120))


def test_a_whole_answer_wakes_its_event_loop_at_its_end_only_and_gets_the_same_events() -> None:
    model = LlamaModel(EMBEDDED_GGUF)
    engine = Engine(model, EngineConfig(ctx_size=256, parallel=2, threads=2))
    try:
        prompt = model.tokenize("Request 1: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10,")
        streamed = GenerationRequest(prompt, TOKENS, SamplingParams(temperature=0.0), n=2)
        streamed_events, streamed_wakeups = _events_and_wakeups(engine, streamed)
        whole_events, whole_wakeups = _events_and_wakeups(engine, GenerationRequest(
            prompt, TOKENS, SamplingParams(temperature=0.0), n=2, stream=False))
    finally:
        engine.close()
        model.close()
    finished = [event for event in whole_events if isinstance(event, ChoiceFinished)]
    assert [event.completion_tokens for event in finished] == [TOKENS, TOKENS], "the counting prompt runs to max_tokens"
    assert sum(isinstance(event, TextDelta) for event in streamed_events) >= TOKENS  # one per step and choice
    assert whole_events == streamed_events, "a whole answer gets the streamed events, in order"
    assert isinstance(whole_events[-1], GenerationDone)
    assert streamed_wakeups >= TOKENS, f"a stream wakes its loop every step; {streamed_wakeups} wakeups"
    # Started (the loop waits for it before reading on), then everything else when the request ends.
    assert whole_wakeups <= 2, f"a whole answer woke its event loop {whole_wakeups} times for {TOKENS} tokens"
