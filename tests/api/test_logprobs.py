"""logprobs (chat and the legacy completions shape), echo and logit_bias, end to end: the real
server on the embedded model, the real openai client."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from support import MODEL

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Name a color."}], "max_tokens": 8, "temperature": 0}
PROMPT = "1, 2, 3, 4,"


def chat_entries(client: openai.OpenAI, **extra) -> list:
    reply = client.chat.completions.create(**{**CHAT, **extra})
    return reply.choices[0].logprobs.content


def test_chat_logprobs_spell_the_answer_and_rank_its_alternatives(client):
    reply = client.chat.completions.create(**CHAT, logprobs=True, top_logprobs=3)
    choice = reply.choices[0]
    entries = choice.logprobs.content
    assert len(entries) == reply.usage.completion_tokens
    assert "".join(entry.token for entry in entries) == choice.message.content
    for entry in entries:
        assert bytes(entry.bytes).decode() == entry.token
        assert len(entry.top_logprobs) == 3
        ranked = [alternative.logprob for alternative in entry.top_logprobs]
        assert ranked == sorted(ranked, reverse=True) and ranked[0] <= 0
        assert sum(math.exp(logprob) for logprob in ranked) <= 1 + 1e-6
        # Greedy: the chosen token is the most likely one.
        assert entry.top_logprobs[0].token == entry.token and entry.logprob == pytest.approx(ranked[0])


def test_no_logprobs_unless_asked(client):
    assert client.chat.completions.create(**CHAT).choices[0].logprobs is None
    assert chat_entries(client, logprobs=True)[0].top_logprobs == []


def test_streamed_logprobs_are_the_whole_responses(client):
    whole = chat_entries(client, logprobs=True, top_logprobs=2)
    streamed = []
    for chunk in client.chat.completions.create(**CHAT, logprobs=True, top_logprobs=2, stream=True):
        if chunk.choices and chunk.choices[0].logprobs:
            streamed += chunk.choices[0].logprobs.content
    assert [e.token for e in streamed] == [e.token for e in whole]
    assert [e.logprob for e in streamed] == pytest.approx([e.logprob for e in whole], abs=1e-4)


def test_logprobs_with_n_2_and_in_a_batch(client):
    alone = chat_entries(client, logprobs=True)
    both = client.chat.completions.create(**CHAT, logprobs=True, n=2)
    assert [len(c.logprobs.content) for c in both.choices] == [len(alone)] * 2
    with ThreadPoolExecutor(2) as pool:
        batched = list(pool.map(lambda _: chat_entries(client, logprobs=True), range(2)))
    for entries in batched:
        assert [e.token for e in entries] == [e.token for e in alone]
        assert [e.logprob for e in entries] == pytest.approx([e.logprob for e in alone], abs=0.05)


@pytest.mark.parametrize("fields", [{"top_logprobs": 2}, {"logprobs": True, "top_logprobs": 21}])
def test_bad_logprobs_fields_are_refused(client, fields):
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(**CHAT, **fields)


def test_completions_logprobs_in_the_legacy_shape(client):
    reply = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=6, temperature=0, logprobs=2)
    choice = reply.choices[0]
    logprobs = choice.logprobs
    assert "".join(logprobs.tokens) == choice.text
    assert len(logprobs.token_logprobs) == len(logprobs.tokens) == reply.usage.completion_tokens
    assert all(len(top) <= 2 and max(top.values()) == pytest.approx(lp, abs=1e-6)
               for top, lp in zip(logprobs.top_logprobs, logprobs.token_logprobs))
    starts = [0]
    for token in logprobs.tokens[:-1]:
        starts.append(starts[-1] + len(token))
    assert logprobs.text_offset == starts


def test_echo_puts_the_prompt_first_streamed_or_not(client):
    whole = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, temperature=0, echo=True)
    plain = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, temperature=0)
    assert whole.choices[0].text == PROMPT + plain.choices[0].text
    chunks = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, temperature=0, echo=True, stream=True)
    assert "".join(chunk.choices[0].text for chunk in chunks if chunk.choices) == whole.choices[0].text
    with pytest.raises(openai.BadRequestError, match="echo"):
        client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, echo=True, logprobs=1)


def _first_token(client: openai.OpenAI, **extra):
    return chat_entries(client, logprobs=True, max_tokens=1, **extra)[0]


def test_logit_bias_bans_and_forces_tokens_and_logprobs_stay_the_models(client):
    greedy = _first_token(client, top_logprobs=5)
    banned_id = client_token_id(client, greedy)
    banned = _first_token(client, logit_bias={str(banned_id): -100})
    assert banned.token != greedy.token
    runner_up = greedy.top_logprobs[1]
    forced_id = client_token_id(client, runner_up)
    forced = _first_token(client, logit_bias={str(forced_id): 100})
    assert forced.token == runner_up.token
    # What is reported is the model's own distribution, before the bias.
    assert forced.logprob == pytest.approx(runner_up.logprob, abs=1e-3)


def client_token_id(client: openai.OpenAI, entry) -> int:
    """The id of the token whose bytes the server reported, from a vocabulary-only load of the same GGUF."""
    from edge.engine.llama_model import LlamaModel, LoadOptions
    from support import EMBEDDED_GGUF

    model = LlamaModel(EMBEDDED_GGUF, LoadOptions(vocab_only=True))
    try:
        ids = [t for t in range(model.n_vocab) if model.piece(t) == bytes(entry.bytes)]
    finally:
        model.close()
    assert ids, f"no token spells {entry.token!r}"
    return ids[0]


@pytest.mark.parametrize("bias, message", [
    ({"49152": 1}, "not in the vocabulary"), ({"10": 101}, r"\[-100, 100\]"), ({"ten": 1}, "token ids"),
])
def test_bad_logit_bias_is_refused(client, bias, message):
    with pytest.raises(openai.BadRequestError, match=message):
        client.chat.completions.create(**CHAT, logit_bias=bias)
