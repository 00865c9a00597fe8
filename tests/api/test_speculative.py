"""Speculative decoding, verified in the batch: drafts from the request's own context (--speculative
ngram) and from a draft model (--draft-model: the embedded model drafting for itself, and its first
24 blocks). Every answer here equals the same request's answer from a server without speculation,
token for token, and each test checks that drafts were decoded and kept while it ran (else it would
prove nothing).

llama.cpp's CPU arithmetic for a token depends on how its sequence's tokens were batched, but
only off its flash-attention kernel's one-row path (README, "Speculative decoding"): a piece of 64
or more of one sequence's tokens in a batch, or one token alone with more than 256 cells in its
stream. Where timing decides the batches (4 concurrent streams, often-rejected drafts), the tests
run on servers that only ever read short prompts (SHORT), so their tokens must be equal whatever
the timing. The single-request tests send the same requests in the same order to both servers, so
their prompts are read in the same pieces.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
from support import EMBEDDED_GGUF, MODEL, WEATHER_TOOL, Server, metric

from convert.gguf_edit import first_blocks

ARGS = ["--parallel", "4", "--ctx-size", "1024"]
TEXT = ("The quick brown fox jumps over the lazy dog near the river bank, while the farmer counts his sheep "
        "and the baker opens the shop at dawn. Every morning the town wakes slowly and the bells ring twice.")
REPEAT = [{"role": "user", "content": f"Repeat this text exactly, twice:\n{TEXT}"}]
PERSON = {"name": "Ada Lovelace", "age": 36, "city": "London", "languages": ["English", "French"]}
PERSON_SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 24}, "age": {"type": "integer"}, "city": {"type": "string", "maxLength": 16},
    "languages": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3}},
    "required": ["name", "age", "city", "languages"], "additionalProperties": False}


def start(tmp_path_factory: pytest.TempPathFactory, name: str, *args: str) -> Server:
    return Server([*ARGS, *args], {}, tmp_path_factory.mktemp(name) / "serve.log")


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start(tmp_path_factory, "plain")
    yield server
    server.stop()


# The policy is "always": these tests are about verification, and the cost model (policy auto,
# tests/unit/test_speculative_drafts.py) could leave a step undrafted on a busy machine.
DRAFTING = ["--draft-max", "8", "--draft-policy", "always"]
DRAFTERS = {"ngram": ["--speculative", "ngram"], "self-draft": ["--draft-model", str(EMBEDDED_GGUF)]}


@pytest.fixture(scope="module", params=list(DRAFTERS))
def speculative(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start(tmp_path_factory, "speculative", *DRAFTERS[request.param], *DRAFTING)
    yield server
    server.stop()


# Servers that only ever read SHORT prompts (below). llama.cpp's CPU arithmetic for a token does
# not depend on how its sequence was batched while it stays on flash attention's one-row path: no
# piece of 64 or more of one sequence's tokens in a batch, no lone token past 256 cells (measured:
# bit-identical logits; README, "Speculative decoding"). Every cell these servers cache, and so
# every prefix they reuse, was computed that way, so whatever the timing, their greedy output must
# equal token for token: no near-tie can move. (The CI once saw a 0.17 near-tie flip on a 79-token
# prompt: read in one piece on one server, in smaller ones on the other.)
SHORT = [f"Count from 1 to 40, {times}." for times in ("once", "twice")] + [
    "Write this line word by word: the fox jumps over the dog and the bells ring twice.",
    "Repeat this text exactly, twice:\nThe fox jumps over the dog, the farmer counts his sheep and the bells ring twice."]
ONE_ROW_PIECE, ONE_ROW_CELLS = 64, 256


@pytest.fixture(scope="module")
def plain_short(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start(tmp_path_factory, "plain-short")
    yield server
    server.stop()


@pytest.fixture(scope="module", params=list(DRAFTERS))
def speculative_short(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start(tmp_path_factory, "speculative-short", *DRAFTERS[request.param], *DRAFTING)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def often_rejected_short(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Drafting by the embedded model's first 24 of 30 blocks, whose drafts are often rejected
    (43% kept on the edit prompt), so that rejection runs in the draft model's streams."""
    draft = first_blocks(EMBEDDED_GGUF, tmp_path_factory.mktemp("draft") / "first-24.gguf", 24)
    server = start(tmp_path_factory, "often-rejected", "--draft-model", str(draft), *DRAFTING)
    yield server
    server.stop()


def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=300)


class Drafts:
    """The speculative server's draft counters around a block: drafted and kept must both move.
    After the block, `drafted` and `accepted` hold how much they moved."""

    def __init__(self, server: Server) -> None:
        self.server = server

    def __enter__(self) -> Drafts:
        self.drafted = metric(self.server, "edge_speculative_drafted_tokens_total")
        self.accepted = metric(self.server, "edge_speculative_accepted_tokens_total")
        return self

    def __exit__(self, *exc_info) -> None:
        if exc_info[0] is None:
            self.drafted = metric(self.server, "edge_speculative_drafted_tokens_total") - self.drafted
            self.accepted = metric(self.server, "edge_speculative_accepted_tokens_total") - self.accepted
            assert self.drafted > 0 and self.accepted > 0, (
                f"speculation did not happen: {self.drafted} drafted, {self.accepted} kept")


def both(plain: Server, speculative: Server, **fields):
    """The same request to both servers: (without speculation, with it)."""
    reference = client(plain).chat.completions.create(model=MODEL, **fields)
    with Drafts(speculative):
        answer = client(speculative).chat.completions.create(model=MODEL, **fields)
    return reference, answer


def test_greedy_chat_equals_it_without_speculation(plain, speculative):
    reference, answer = both(plain, speculative, messages=REPEAT, temperature=0, max_tokens=120)
    assert reference.usage.completion_tokens > 40
    assert answer.choices[0].message.content == reference.choices[0].message.content
    assert answer.usage == reference.usage
    assert answer.choices[0].finish_reason == reference.choices[0].finish_reason


def test_a_stop_string_inside_drafted_text_cuts_as_without(plain, speculative):
    reference, answer = both(plain, speculative, messages=REPEAT, temperature=0, max_tokens=120, stop=["bells"])
    assert reference.choices[0].finish_reason == "stop" and "bells" not in reference.choices[0].message.content
    assert answer.choices[0].message.content == reference.choices[0].message.content
    assert answer.usage.completion_tokens == reference.usage.completion_tokens


def test_json_schema_output_equals_it_without(plain, speculative):
    messages = [{"role": "user", "content": f"Return this person as JSON, unchanged: {json.dumps(PERSON)}"}]
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON_SCHEMA}}
    reference, answer = both(plain, speculative, messages=messages, temperature=0, max_tokens=80, response_format=fmt)
    assert set(json.loads(reference.choices[0].message.content)) == set(PERSON)
    assert answer.choices[0].message.content == reference.choices[0].message.content


def test_a_forced_tool_call_equals_it_without(plain, speculative):
    messages = [{"role": "user", "content": "What is the weather in Paris? Call get_weather with city Paris."}]
    reference, answer = both(plain, speculative, messages=messages, temperature=0, max_tokens=60,
                             tools=[WEATHER_TOOL], tool_choice="required")
    expected = reference.choices[0].message.tool_calls[0].function
    got = answer.choices[0].message.tool_calls[0].function
    assert (got.name, got.arguments) == (expected.name, expected.arguments)
    assert answer.choices[0].finish_reason == reference.choices[0].finish_reason == "tool_calls"


def test_penalties_and_logprobs_advance_by_kept_tokens_only(plain, speculative):
    reference, answer = both(plain, speculative, messages=REPEAT, temperature=0, max_tokens=80,
                             frequency_penalty=0.3, presence_penalty=0.2, logprobs=True, top_logprobs=2)
    assert answer.choices[0].message.content == reference.choices[0].message.content
    # The kept tokens and their logprobs; not the runners-up, whose order near a tie follows the
    # batch's arithmetic (a token decoded with drafts after it adds up differently).
    got, expected = answer.choices[0].logprobs.content, reference.choices[0].logprobs.content
    assert [entry.token for entry in got] == [entry.token for entry in expected]
    assert all(len(entry.top_logprobs) == 2 for entry in got)
    assert max(abs(a.logprob - b.logprob) for a, b in zip(got, expected)) < 0.25


def test_greedy_n2_equals_it_without(plain, speculative):
    reference, answer = both(plain, speculative, messages=REPEAT, temperature=0, n=2, max_tokens=60)
    assert [c.message.content for c in answer.choices] == [c.message.content for c in reference.choices]
    assert answer.usage == reference.usage


def test_seeded_n2_draws_equal_them_without(plain_short, speculative_short):
    # Each kept token is sampled once, as without speculation: the seeded draws line up. Rejected
    # drafts (often, at temperature 0.7) change how the kept tokens share batches, so this runs on
    # the short-prompt servers, where that cannot move llama.cpp's arithmetic.
    fields = dict(messages=[{"role": "user", "content": SHORT[3]}], temperature=0.7, seed=5, n=2, max_tokens=60)
    reference, answer = both(plain_short, speculative_short, **fields)
    assert reference.usage.total_tokens <= ONE_ROW_CELLS
    assert [c.message.content for c in answer.choices] == [c.message.content for c in reference.choices]


def test_four_concurrent_streams_each_equal_it_alone_without(plain_short, speculative_short):
    def streamed(server: Server, prompt: str) -> tuple[str, list, openai.types.CompletionUsage]:
        chunks = client(server).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": prompt}], temperature=0, max_tokens=80, stream=True,
            logprobs=True, top_logprobs=2, stream_options={"include_usage": True})
        text, entries, usage = "", [], None
        for chunk in chunks:
            usage = chunk.usage or usage
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                entries += chunk.choices[0].logprobs.content if chunk.choices[0].logprobs else []
        return text, entries, usage

    expected = [streamed(plain_short, prompt) for prompt in SHORT]
    for _, _, usage in expected:
        assert usage.prompt_tokens < ONE_ROW_PIECE and usage.total_tokens <= ONE_ROW_CELLS
    assert sum(usage.completion_tokens for _, _, usage in expected) > 150
    with Drafts(speculative_short), ThreadPoolExecutor(len(SHORT)) as pool:
        together = list(pool.map(lambda prompt: streamed(speculative_short, prompt), SHORT))
    # Drafts from either source reach the target as tokens, not as arithmetic: equal both ways,
    # logprobs too (the same logits, bit for bit).
    assert [text for text, _, _ in together] == [text for text, _, _ in expected]
    assert [entries for _, entries, _ in together] == [entries for _, entries, _ in expected]
    assert metric(speculative_short, "edge_busy_slots") == 0


def test_the_next_request_reuses_the_cache_that_rejected_drafts_left(plain, speculative):
    # Rejected drafts' cells are removed: the slot's cache is the prompt plus the kept tokens, so
    # the same request again reuses its prompt and answers the same.
    first = client(speculative).chat.completions.create(model=MODEL, messages=REPEAT, temperature=0, max_tokens=50)
    hits = metric(speculative, "edge_prefix_cache_hit_tokens_total")
    again = client(speculative).chat.completions.create(model=MODEL, messages=REPEAT, temperature=0, max_tokens=50)
    assert metric(speculative, "edge_prefix_cache_hit_tokens_total") - hits == first.usage.prompt_tokens - 1
    assert again.choices[0].message.content == first.choices[0].message.content
    assert metric(speculative, "edge_speculative_acceptance_rate_count") > 0


def test_often_rejected_drafts_leave_greedy_output_as_it_is(plain_short, often_rejected_short):
    """Drafts rejected this often decide how a sequence's tokens share batches, step by step; on
    short prompts (SHORT) that cannot move llama.cpp's arithmetic, so each answer equals the
    plain server's, token for token. A wrong token or a stale cell left in the KV cache by a
    rejection would change it."""
    drafts = Drafts(often_rejected_short)
    with drafts:
        for prompt in SHORT[:2]:
            fields = {"messages": [{"role": "user", "content": prompt}], "temperature": 0, "max_tokens": 80}
            reference = client(plain_short).chat.completions.create(model=MODEL, **fields)
            answer = client(often_rejected_short).chat.completions.create(model=MODEL, **fields)
            assert answer.choices[0].message.content == reference.choices[0].message.content
            assert answer.usage == reference.usage
    assert drafts.accepted < drafts.drafted, f"{drafts.accepted} of {drafts.drafted} drafts kept: rejection did not run"
