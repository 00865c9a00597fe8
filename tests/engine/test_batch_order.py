"""Every decode's batch lists its sequences in slot order, also when requests land in cached slots
out of their admission order (llama.cpp decodes an out-of-order batch about a third slower; see
edge/engine/step_batch.py), and requests that run together sit in consecutive slots, with the
prefix another slot cached copied to them (edge/engine/slots.py)."""

from __future__ import annotations

import asyncio

import llama_cpp
from support import EMBEDDED_GGUF

from edge.engine.config import EngineConfig
from edge.engine.engine import Engine
from edge.engine.jobs import GenerationDone, GenerationRequest, TextDelta
from edge.engine.llama_model import LlamaModel
from edge.engine.sampling import SamplingParams

SLOTS = 4
GREEDY = SamplingParams(temperature=0.0)


class _RecordingEngine(Engine):
    """The real engine; each step also records the sequence ids of the batch it decodes."""

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003 - Engine's own
        self.batches: list[list[int]] = []
        super().__init__(*args, **kwargs)

    def _step(self, active) -> None:  # noqa: ANN001 - the engine's own list of jobs
        real_decode = llama_cpp.llama_decode

        def recording_decode(ctx, batch):  # noqa: ANN001, ANN202 - llama.cpp's own types
            self.batches.append([batch.seq_id[i][0] for i in range(batch.n_tokens)])
            return real_decode(ctx, batch)

        llama_cpp.llama_decode = recording_decode  # only the engine thread decodes
        try:
            super()._step(active)
        finally:
            llama_cpp.llama_decode = real_decode


def _run_together(engine: Engine, prompts: list[list[int]]) -> list[str]:
    """Each prompt's text, all submitted at once."""
    async def one(prompt: list[int]) -> str:
        generation = engine.submit(GenerationRequest(prompt, 12, GREEDY), asyncio.get_running_loop())
        events = [event async for event in generation.events()]
        assert isinstance(events[-1], GenerationDone)
        return "".join(event.text for event in events if isinstance(event, TextDelta))

    async def all_of_them() -> list[str]:
        return await asyncio.gather(*(one(prompt) for prompt in prompts))

    return asyncio.run(asyncio.wait_for(all_of_them(), timeout=120))


def _reused(engine: Engine) -> float:
    """Prompt tokens found in a slot's cache so far, as GET /metrics reports them."""
    return engine.metrics.registry.get_sample_value("edge_prefix_cache_hit_tokens_total")


def test_sequences_go_into_each_batch_in_slot_order_when_cached_slots_are_reused_out_of_order() -> None:
    model = LlamaModel(EMBEDDED_GGUF)
    engine = _RecordingEngine(model, EngineConfig(ctx_size=256, parallel=SLOTS, threads=2))
    try:
        prompts = [model.tokenize(f"Story number {k}: once upon a time there was a") for k in range(SLOTS)]
        _run_together(engine, prompts)  # slot k now holds prompt k
        # Each prompt again, admitted in reverse.
        engine.batches.clear()
        _run_together(engine, prompts[::-1])
        # Each prompt went back to the slot that held it: slot k holds prompt k, admitted last.
        for slot, prompt in zip(engine._slots.slots, prompts):
            assert slot.tokens[:len(prompt)] == prompt
        together = [ids for ids in engine.batches if len(set(ids)) > 1]
        assert together, "no step decoded two sequences at once"
        for ids in together:
            assert ids == sorted(ids), f"a batch in the order {ids}"
    finally:
        engine.close()
        model.close()


def test_requests_that_run_together_get_consecutive_slots_and_keep_their_cached_prefix() -> None:
    """Prompts cached in slots 0 and 2 come back together: they run in two neighbouring slots (one
    run of sequence ids, one micro-batch a step), each reusing its whole cached prefix, one of them
    copied from the slot that held it, and they generate what they generated before."""
    model = LlamaModel(EMBEDDED_GGUF)
    engine = _RecordingEngine(model, EngineConfig(ctx_size=256, parallel=SLOTS, threads=2))
    try:
        keepers = ["Ada", "Brigid", "Cormac", "Dara"]  # no two prompts share a first token
        prompts = [model.tokenize(f"{keeper} the lighthouse keeper wrote the name of every ship that passed, its "
                                  "flag and the weather, and read the last page to the cat") for keeper in keepers]
        first = [_run_together(engine, [prompt])[0] for prompt in prompts]  # one at a time, each in an empty slot
        held = {k: next(slot.seq_id for slot in engine._slots.slots if slot.tokens[:len(prompts[k])] == prompts[k])
                for k in (0, 2)}
        assert abs(held[0] - held[2]) > 1, f"the setup needs the two prompts in slots apart: {held}"
        engine.batches.clear()
        reused_before = _reused(engine)
        assert _run_together(engine, [prompts[0], prompts[2]]) == [first[0], first[2]]
        assert _reused(engine) - reused_before == len(prompts[0]) - 1 + len(prompts[2]) - 1
        together = [sorted(set(ids)) for ids in engine.batches if len(set(ids)) > 1]
        assert together, "no step decoded the two sequences at once"
        for ids in together:
            assert ids[1] == ids[0] + 1, f"a step decoded sequences {ids}: not neighbours"
    finally:
        engine.close()
        model.close()
