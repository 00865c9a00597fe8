"""Many users at once on one server with 8 slots: batched output equals solo output, n=2 shares
its prompt, a conversation's next turn reuses the cached prefix, and /metrics tells the story."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support import MODEL, Server, metric

TOPICS = ["a cat who finds a hat", "a robot learning to paint", "the moon and the sea", "a lost key",
          "a dragon afraid of fire", "a clock that runs backwards", "a bakery at midnight", "two rival chess players"]
TOKENS = 32


@pytest.fixture(scope="module")
def wide(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("wide") / "serve.log"
    server = Server(["--parallel", "8", "--ctx-size", "512"], {}, log)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def wide_client(wide: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{wide.url}/v1", api_key="unused", max_retries=0, timeout=300)


def story(topic: str) -> list[dict]:
    return [{"role": "user", "content": f"Tell me a short story about {topic}."}]


def stream_pieces(client: openai.OpenAI, topic: str) -> list[str]:
    """The streamed deltas, one per generated token (no stop strings, so nothing is held back)."""
    chunks = client.chat.completions.create(model=MODEL, messages=story(topic), temperature=0, seed=1,
                                            max_tokens=TOKENS, stream=True)
    return [chunk.choices[0].delta.content for chunk in chunks if chunk.choices and chunk.choices[0].delta.content]


def test_eight_concurrent_streams_equal_each_run_alone(wide, wide_client):
    # Together first, on a fresh server: the 8 prompts are read in one batch, nothing is cached.
    with ThreadPoolExecutor(len(TOPICS)) as pool:
        together = list(pool.map(lambda topic: stream_pieces(wide_client, topic), TOPICS))
    alone = [stream_pieces(wide_client, topic) for topic in TOPICS]
    for solo, batched in zip(alone, together):
        assert len(solo) >= 16
        assert batched[:16] == solo[:16]
        # Beyond 16 tokens too: with a KV stream per sequence the batch does not change the
        # arithmetic (with one unified cache it did, from token 2 on: see edge/engine/engine.py).
        assert "".join(batched) == "".join(solo)
    assert metric(wide, "edge_busy_slots") == 0 and metric(wide, "edge_queue_depth") == 0


def test_n2_shares_the_cached_prompt_and_matches_the_n1_draws(wide_client):
    fields = dict(model=MODEL, messages=story("a painter and a poet"), temperature=1.0, max_tokens=24)
    alone = wide_client.chat.completions.create(seed=11, **fields)
    first = alone.choices[0].message.content
    second = wide_client.chat.completions.create(seed=12, **fields).choices[0].message.content
    # The prompt now sits in a slot: n=2 reuses it and copies it to its second sequence.
    both = wide_client.chat.completions.create(seed=11, n=2, **fields)
    assert [choice.index for choice in both.choices] == [0, 1]
    assert [choice.message.content for choice in both.choices] == [first, second]
    assert both.usage.prompt_tokens == alone.usage.prompt_tokens  # the prompt is counted (and read) once


def test_second_turn_reuses_the_first_turns_prefix(wide, wide_client):
    turn = [{"role": "user", "content": "Describe a lighthouse keeper's morning in a few sentences."}]
    first = wide_client.chat.completions.create(model=MODEL, messages=turn, temperature=0, max_tokens=30)
    before = metric(wide, "edge_prefix_cache_hit_tokens_total")
    history = [*turn, {"role": "assistant", "content": first.choices[0].message.content},
               {"role": "user", "content": "What happens in the afternoon?"}]
    second = wide_client.chat.completions.create(model=MODEL, messages=history, temperature=0, max_tokens=8)
    reused = metric(wide, "edge_prefix_cache_hit_tokens_total") - before
    # At least the whole first prompt comes from the cache, and at most all but the new turn.
    assert first.usage.prompt_tokens <= reused < second.usage.prompt_tokens


def test_metrics_parse_and_move(wide, wide_client):
    before = {name: metric(wide, name) for name in (
        "edge_prompt_tokens_total", "edge_completion_tokens_total", "edge_time_to_first_token_seconds_count")}
    completed = metric(wide, "edge_requests_total", {"status": "completed"})
    reply = wide_client.chat.completions.create(model=MODEL, messages=story("a quiet library"), temperature=0,
                                                max_tokens=12)
    assert metric(wide, "edge_requests_total", {"status": "completed"}) == completed + 1
    assert metric(wide, "edge_prompt_tokens_total") == before["edge_prompt_tokens_total"] + reply.usage.prompt_tokens
    assert metric(wide, "edge_completion_tokens_total") == (
        before["edge_completion_tokens_total"] + reply.usage.completion_tokens)
    assert metric(wide, "edge_time_to_first_token_seconds_count") == before["edge_time_to_first_token_seconds_count"] + 1
    text = httpx.get(f"{wide.url}/metrics").text
    families = {family.name: family.type for family in text_string_to_metric_families(text)}
    assert families["edge_requests"] == "counter" and families["edge_prefix_cache_hit_tokens"] == "counter"
    assert families["edge_queue_depth"] == "gauge" and families["edge_busy_slots"] == "gauge"
    assert families["edge_time_to_first_token_seconds"] == "histogram"
    assert families["edge_decode_tokens_per_second"] == "histogram"


def test_step_profile_counts_every_step_and_phase(wide, wide_client):
    """The edge_engine_step_* counters (edge/engine/step_profile.py) that `make bench` reads: one
    request alone, its prompt read in one step, samples one sequence per step."""
    names = ("edge_engine_steps_total", "edge_engine_step_sequences_total", "edge_engine_step_wait_seconds_total")
    before = {name: metric(wide, name) for name in names}
    phases = ("schedule", "decode", "sample", "text", "publish", "other")
    seconds = {phase: metric(wide, "edge_engine_step_seconds_total", {"phase": phase}) for phase in phases}
    reply = wide_client.chat.completions.create(model=MODEL, messages=story("a long river"), temperature=0,
                                                max_tokens=12)
    steps = metric(wide, "edge_engine_steps_total") - before["edge_engine_steps_total"]
    sampled = metric(wide, "edge_engine_step_sequences_total") - before["edge_engine_step_sequences_total"]
    assert steps == sampled and sampled - reply.usage.completion_tokens in (0, 1)  # +1: an end-of-sequence token
    grown = {phase: metric(wide, "edge_engine_step_seconds_total", {"phase": phase}) - seconds[phase]
             for phase in phases}
    assert all(value > 0 for value in grown.values()), grown
    assert grown["decode"] > grown["sample"]
    assert metric(wide, "edge_engine_step_wait_seconds_total") >= before["edge_engine_step_wait_seconds_total"]
