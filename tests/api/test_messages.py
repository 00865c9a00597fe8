"""What real clients send, through a real `edge serve` and the official openai client: system
messages anywhere, a final assistant message to continue, names, and max_tokens past the context."""

from __future__ import annotations

import openai
import pytest
from support import MODEL, TEST_CTX

QUESTION = {"role": "user", "content": "What is the capital of France?"}
PREFIX = "The capital of France is"
# Counting never reaches an end-of-sequence token: what stops it is the context. 1..200 is about
# 890 tokens, so only about a hundred are left to generate in the test context.
COUNTING = ", ".join(str(i) for i in range(1, 201)) + ","
# The embedded SmolLM2 template's default system turn (it adds one when the first message is not a system one).
SMOLLM_SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"


def greedy(client: openai.OpenAI, messages: list[dict], **fields):
    return client.chat.completions.create(model=MODEL, messages=messages, temperature=0, seed=1, **fields)


def test_two_system_messages_as_langchain_sends_them(client):
    messages = [{"role": "system", "content": "You are a helpful assistant."},
                {"role": "developer", "content": "Answer in one short sentence."}, QUESTION]
    response = greedy(client, messages, max_tokens=16)
    assert isinstance(response.choices[0].message.content, str) and response.usage.completion_tokens > 0


def test_a_system_message_last(client):
    messages = [QUESTION, {"role": "assistant", "content": "Paris."},
                {"role": "system", "content": "From now on, answer in French."},
                {"role": "user", "content": "And of Italy?"}, {"role": "system", "content": "Be brief."}]
    response = greedy(client, messages, max_tokens=16)
    assert response.choices[0].finish_reason in ("stop", "length")


def test_a_final_assistant_message_is_continued_not_repeated(client):
    response = greedy(client, [QUESTION, {"role": "assistant", "content": PREFIX}], max_tokens=12)
    content = response.choices[0].message.content
    assert content.strip() and not content.lstrip().startswith(PREFIX)


def test_a_continued_message_is_the_raw_continuation_of_its_open_turn(client):
    # The chat prompt ends right after the assistant's text: no end of turn, no new assistant header.
    chat = greedy(client, [QUESTION, {"role": "assistant", "content": PREFIX}], max_tokens=12)
    prompt = f"{SMOLLM_SYSTEM}<|im_start|>user\n{QUESTION['content']}<|im_end|>\n<|im_start|>assistant\n{PREFIX}"
    text = client.completions.create(model=MODEL, prompt=prompt, temperature=0, seed=1, max_tokens=12)
    assert chat.choices[0].message.content == text.choices[0].text
    assert chat.usage.prompt_tokens == text.usage.prompt_tokens


def test_a_name_on_a_user_message_is_accepted_and_ignored(client):
    named = greedy(client, [{**QUESTION, "name": "ada"}], max_tokens=12)
    plain = greedy(client, [QUESTION], max_tokens=12)
    assert named.choices[0].message.content == plain.choices[0].message.content


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_max_tokens_past_the_context_runs_until_the_context_is_full(client, field):
    messages = [{"role": "user", "content": "Count from 1 to 1000."}, {"role": "assistant", "content": COUNTING}]
    response = greedy(client, messages, **{field: 100_000})
    assert response.choices[0].finish_reason == "length"
    assert response.usage.prompt_tokens + response.usage.completion_tokens == TEST_CTX


def test_completions_max_tokens_past_the_context_runs_until_the_context_is_full(client):
    response = client.completions.create(model=MODEL, prompt=COUNTING, temperature=0, max_tokens=100_000)
    assert response.choices[0].finish_reason == "length"
    assert response.usage.prompt_tokens + response.usage.completion_tokens == TEST_CTX


def test_a_prompt_larger_than_the_context_is_still_refused(client):
    with pytest.raises(openai.BadRequestError) as refused:
        greedy(client, [{"role": "user", "content": "word " * (TEST_CTX + 50)}], max_tokens=1)
    assert refused.value.code == "context_length_exceeded" and str(TEST_CTX) in refused.value.message
