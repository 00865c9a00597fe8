"""Speculative decoding, verified in the batch: drafts from the request's own context (--speculative
ngram) and from a draft model (--draft-model: the embedded model drafting for itself, and its first
24 blocks). Every answer here equals the same request's answer from a server without speculation,
token for token, and each test checks that drafts were decoded and kept while it ran (else it would
prove nothing).

llama.cpp's CPU arithmetic for a token depends a little on how many tokens of its sequence share
its batch (README, "Speculative decoding"), so a near-tie could in principle go the other way; these
prompts have none, with flash attention on (the default here) or off.
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


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(ARGS, {}, tmp_path_factory.mktemp("plain") / "serve.log")
    yield server
    server.stop()


# The policy is "always": these tests are about verification, and the cost model (policy auto,
# tests/unit/test_speculative_drafts.py) could leave a step undrafted on a busy machine.
DRAFTING = ["--draft-max", "8", "--draft-policy", "always"]


@pytest.fixture(scope="module", params=["ngram", "self-draft"])
def speculative(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    drafter = ["--speculative", "ngram"] if request.param == "ngram" else ["--draft-model", str(EMBEDDED_GGUF)]
    server = Server([*ARGS, *drafter, *DRAFTING], {}, tmp_path_factory.mktemp("speculative") / "serve.log")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def often_rejected(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Drafting by the embedded model's first 24 of 30 blocks, whose drafts are often rejected
    (43% kept on the edit prompt), so that rejection runs in the draft model's streams."""
    draft = first_blocks(EMBEDDED_GGUF, tmp_path_factory.mktemp("draft") / "first-24.gguf", 24)
    server = Server([*ARGS, "--draft-model", str(draft), *DRAFTING], {},
                    tmp_path_factory.mktemp("often-rejected") / "serve.log")
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


def test_seeded_n2_draws_equal_them_without(plain, speculative, request):
    if request.node.callspec.params["speculative"] != "ngram":
        # Measured (CI, AMD EPYC): at temperature 0.7 the draft model's greedy drafts are rejected
        # often, kept tokens come out of batches of other shapes than without speculation, and a
        # seeded draw near a boundary follows llama.cpp's per-batch arithmetic (README).
        pytest.skip("seeded draws equal only where drafts are mostly kept (ngram on a repeat): a draft model's "
                    "rejections put tokens in other batches, and llama.cpp's per-batch arithmetic moves the draw")
    # Each kept token is sampled once, as without speculation: the seeded draws line up.
    reference, answer = both(plain, speculative, messages=REPEAT, temperature=0.7, seed=5, n=2, max_tokens=60)
    assert [c.message.content for c in answer.choices] == [c.message.content for c in reference.choices]


def test_four_concurrent_streams_each_equal_it_alone_without(plain, speculative, request):
    prompts = [[{"role": "user", "content": f"Repeat this text exactly, {times}:\n{TEXT}"}]
               for times in ("once", "twice", "three times", "word by word")]

    def streamed(server: Server, messages: list[dict]) -> tuple[str, list]:
        chunks = client(server).chat.completions.create(model=MODEL, messages=messages, temperature=0,
                                                        max_tokens=80, stream=True, logprobs=True, top_logprobs=2)
        text, entries = "", []
        for chunk in chunks:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                entries += chunk.choices[0].logprobs.content if chunk.choices[0].logprobs else []
        return text, entries

    expected = [streamed(plain, messages) for messages in prompts]
    with Drafts(speculative), ThreadPoolExecutor(len(prompts)) as pool:
        together = list(pool.map(lambda messages: streamed(speculative, messages), prompts))
    if request.node.callspec.params["speculative"] == "ngram":
        assert [text for text, _ in together] == [text for text, _ in expected]
    else:
        # The draft model stops drafting where it is unsure, so how the four streams' tokens share
        # batches varies from run to run (measured: one run in four left plain output at a near-tie).
        for (_, got), (_, reference) in zip(together, expected):
            assert_equal_but_for_a_near_tie(reference, [entry.token for entry in got])
    assert metric(speculative, "edge_busy_slots") == 0


def test_the_next_request_reuses_the_cache_that_rejected_drafts_left(plain, speculative):
    # Rejected drafts' cells are removed: the slot's cache is the prompt plus the kept tokens, so
    # the same request again reuses its prompt and answers the same.
    first = client(speculative).chat.completions.create(model=MODEL, messages=REPEAT, temperature=0, max_tokens=50)
    hits = metric(speculative, "edge_prefix_cache_hit_tokens_total")
    again = client(speculative).chat.completions.create(model=MODEL, messages=REPEAT, temperature=0, max_tokens=50)
    assert metric(speculative, "edge_prefix_cache_hit_tokens_total") - hits == first.usage.prompt_tokens - 1
    assert again.choices[0].message.content == first.choices[0].message.content
    assert metric(speculative, "edge_speculative_acceptance_rate_count") > 0


def test_often_rejected_drafts_leave_greedy_output_but_for_near_ties(plain, often_rejected):
    """Rejected drafts shape the batches a sequence's tokens are decoded in, and llama.cpp's CPU
    arithmetic moves logits by up to 0.4-0.8 with the batch (README): with drafts rejected this
    often, greedy output equals the plain server's, or leaves it first where the plain server's
    two best tokens were that close. A wrong token in the KV cache would leave it anywhere."""
    fields = {"messages": REPEAT, "temperature": 0, "max_tokens": 120, "logprobs": True, "top_logprobs": 2}
    reference = client(plain).chat.completions.create(model=MODEL, **fields)
    with Drafts(often_rejected) as drafts:
        answer = client(often_rejected).chat.completions.create(model=MODEL, **fields)
    assert drafts.accepted < drafts.drafted, f"{drafts.accepted} of {drafts.drafted} drafts kept: rejection did not run"
    assert_equal_but_for_a_near_tie(reference.choices[0].logprobs.content,
                                    [entry.token for entry in answer.choices[0].logprobs.content])


def assert_equal_but_for_a_near_tie(reference: list, got: list[str]) -> None:
    """`got` (tokens) equals the plain server's greedy tokens, or leaves them first where the plain
    server's two best tokens were within 1.0 of each other (llama.cpp's per-batch arithmetic moves
    logits by up to 0.4-0.8: README)."""
    expected = [entry.token for entry in reference]
    differ = next((i for i, (a, b) in enumerate(zip(expected, got)) if a != b), None)
    if differ is None:
        assert len(got) == len(expected)
        return
    best, second = reference[differ].top_logprobs[:2]
    assert best.logprob - second.logprob < 1.0, (
        f"token {differ} differs ({got[differ]!r} for {expected[differ]!r}) where the plain server was sure: "
        f"{best.logprob:.2f} vs {second.logprob:.2f}")
