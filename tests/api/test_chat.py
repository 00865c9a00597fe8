"""POST /v1/chat/completions on the embedded model: fields, defaults, streaming, stops, n."""

from __future__ import annotations

import json

import pytest
from support import MODEL, TEST_CTX

HELLO = [{"role": "user", "content": "Hello!"}]
STORY = [{"role": "user", "content": "Tell me a short story about a cat who finds a hat."}]


def greedy(client, messages=STORY, **fields):
    return client.chat.completions.create(model=MODEL, messages=messages, temperature=0, seed=1, **fields)


def streamed(client, messages=STORY, **fields):
    return list(client.chat.completions.create(model=MODEL, messages=messages, temperature=0, seed=1, stream=True, **fields))


def stream_text(chunks) -> str:
    return "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)


def test_reference_curl_answers(http):
    response = http.post("/v1/chat/completions", json={"model": MODEL, "messages": HELLO})
    assert response.status_code == 200
    body = response.json()
    assert body["id"].startswith("chatcmpl-") and body["object"] == "chat.completion"
    assert body["model"] == MODEL and isinstance(body["created"], int)
    [choice] = body["choices"]
    assert choice["index"] == 0 and choice["message"]["role"] == "assistant"
    assert choice["message"]["content"].strip() and choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["estimated_cost"] == 0.0  # the embedded card's price is 0


def test_list_of_text_parts_is_the_same_as_a_string(client):
    parts = [{"role": "user", "content": [{"type": "text", "text": "Tell me a short story "},
                                          {"type": "text", "text": "about a cat who finds a hat."}]}]
    assert greedy(client, parts, max_tokens=20).choices[0].message.content == greedy(client, max_tokens=20).choices[0].message.content


def test_stream_equals_non_stream_for_the_same_seed(client):
    whole = client.chat.completions.create(model=MODEL, messages=STORY, seed=7, max_tokens=40)
    chunks = list(client.chat.completions.create(model=MODEL, messages=STORY, seed=7, max_tokens=40, stream=True))
    assert stream_text(chunks) == whole.choices[0].message.content
    assert len({chunk.id for chunk in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks][:-1] == [None] * (len(chunks) - 1)
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_stream_ends_with_done(http):
    with http.stream("POST", "/v1/chat/completions", json={"model": MODEL, "messages": HELLO, "stream": True, "max_tokens": 8}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    json.loads(lines[-2][len("data: "):])  # every event before [DONE] is JSON


def test_include_usage_adds_a_final_usage_chunk(client):
    whole = greedy(client, max_tokens=12)
    chunks = streamed(client, max_tokens=12, stream_options={"include_usage": True})
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == whole.usage.model_dump()
    assert all(chunk.usage is None for chunk in chunks[:-1])


def test_stop_string_from_the_greedy_output_is_never_emitted(client):
    text = greedy(client, max_tokens=60).choices[0].message.content
    words = text.split()
    stop = " " + words[len(words) // 2]  # a string that really occurs, mid-answer
    expected = text[: text.index(stop)]
    cut = greedy(client, max_tokens=60, stop=stop).choices[0]
    assert cut.message.content == expected and cut.finish_reason == "stop"
    chunks = streamed(client, max_tokens=60, stop=[stop, "never-occurs-xyz"])
    assert stream_text(chunks) == expected  # not even a partial prefix of the stop was sent
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_max_tokens_bounds_the_completion(client):
    response = greedy(client, max_tokens=5)
    assert response.usage.completion_tokens == 5 and response.choices[0].finish_reason == "length"


def test_max_tokens_zero_gives_an_empty_completion(client):
    response = greedy(client, max_tokens=0)
    assert response.choices[0].message.content == "" and response.usage.completion_tokens == 0
    assert response.choices[0].finish_reason == "length"


def test_default_max_tokens_is_512(http):
    long_task = [{"role": "user", "content": "Count from 1 to 1000, one number per line."}]
    body = http.post("/v1/chat/completions", json={"model": MODEL, "messages": long_task, "temperature": 0,
                                                   "repetition_penalty": 1.0}).json()
    assert body["usage"]["completion_tokens"] <= 512
    if body["choices"][0]["finish_reason"] == "length":
        assert body["usage"]["completion_tokens"] == 512


def test_null_max_tokens_means_the_rest_of_the_context(http):
    # Counting never reaches an end-of-sequence token within the test context.
    body = http.post("/v1/completions", json={"model": MODEL, "prompt": "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,",
                                              "max_tokens": None, "temperature": 0}).json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["total_tokens"] == TEST_CTX


def test_prompt_plus_max_tokens_beyond_the_context_is_clamped_to_the_context(http):
    # max_tokens is a ceiling: past the room the prompt leaves, generation stops when the context is full.
    response = http.post("/v1/chat/completions", json={"model": MODEL, "messages": HELLO, "max_tokens": TEST_CTX})
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["total_tokens"] <= TEST_CTX


def test_prompt_longer_than_the_context_is_rejected(http):
    huge = [{"role": "user", "content": "word " * (TEST_CTX + 50)}]
    response = http.post("/v1/chat/completions", json={"model": MODEL, "messages": huge})
    assert response.status_code == 400
    assert str(TEST_CTX) in response.json()["error"]["message"]
    assert response.json()["error"]["code"] == "context_length_exceeded"


def test_n2_returns_two_choices_that_share_the_prompt(client):
    response = client.chat.completions.create(model=MODEL, messages=STORY, n=2, seed=5, max_tokens=30, temperature=1.0)
    assert [choice.index for choice in response.choices] == [0, 1]
    first, second = (choice.message.content for choice in response.choices)
    assert first and second and first != second  # different seeds per choice
    assert response.usage.completion_tokens <= 60


def test_n2_at_temperature_zero_gives_the_greedy_answer_twice(client):
    response = greedy(client, n=2, max_tokens=20)
    single = greedy(client, max_tokens=20).choices[0].message.content
    assert [c.message.content for c in response.choices] == [single, single]
    assert response.usage.completion_tokens == 2 * greedy(client, max_tokens=20).usage.completion_tokens


def test_seed_makes_sampling_reproducible(client):
    def sample(seed):
        return client.chat.completions.create(model=MODEL, messages=STORY, seed=seed, max_tokens=30,
                                              temperature=1.0).choices[0].message.content
    assert sample(11) == sample(11)
    assert sample(11) != sample(12)


@pytest.mark.parametrize("fields", [{"top_p": 1e-6}, {"extra_body": {"top_k": 1}}, {"extra_body": {"min_p": 1.0}}])
def test_truncation_to_one_token_is_greedy(client, fields):
    sampled = client.chat.completions.create(model=MODEL, messages=STORY, temperature=1.5, seed=3, max_tokens=25, **fields)
    assert sampled.choices[0].message.content == greedy(client, max_tokens=25).choices[0].message.content


@pytest.mark.parametrize("fields", [{"frequency_penalty": 2.0}, {"presence_penalty": 2.0},
                                    {"repetition_penalty": 1.8}, {"frequency_penalty": -2.0}])
def test_penalties_change_greedy_output(client, fields):
    plain = greedy(client, max_tokens=80).choices[0].message.content
    extra = {"repetition_penalty": fields.pop("repetition_penalty")} if "repetition_penalty" in fields else None
    penalized = greedy(client, max_tokens=80, extra_body=extra, **fields).choices[0].message.content
    assert penalized != plain


def test_eos_text_never_appears_in_content(client):
    for response in (greedy(client, HELLO), greedy(client, n=2, max_tokens=150)):
        for choice in response.choices:
            assert "<|im_end|>" not in choice.message.content and "<|endoftext|>" not in choice.message.content
    assert "<|im_end|>" not in stream_text(streamed(client, HELLO))


def test_system_message_anywhere_and_multi_turn(client):
    messages = [{"role": "user", "content": "My name is Ada."},
                {"role": "assistant", "content": "Nice to meet you, Ada."},
                {"role": "system", "content": "You are a terse assistant."},
                {"role": "user", "content": "What is my name?"}]
    assert greedy(client, messages, max_tokens=20).choices[0].message.content
