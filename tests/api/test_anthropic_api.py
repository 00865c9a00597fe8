"""POST /v1/messages and /v1/messages/count_tokens through the official anthropic SDK, on a real
server. A 135M model at temperature 0: the contract (shapes, event order, stop reasons, tool
calls that validate, Anthropic's error shape), not the answers."""

from __future__ import annotations

import json
from collections.abc import Iterator

import anthropic
import httpx
import jsonschema
import pytest
from support import API_KEY, MODEL, PRICED_MODEL, leave_mid_stream_cancels

WEATHER = {"name": "get_weather", "description": "Current weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30},
                                                             "unit": {"enum": ["celsius", "fahrenheit"]}},
                            "required": ["city", "unit"]}}
TIME = {"name": "get_time", "description": "Current time in a timezone",
        "input_schema": {"type": "object", "properties": {"timezone": {"type": "string", "maxLength": 30}},
                         "required": ["timezone"]}}
ASK = [{"role": "user", "content": "What is the weather in Paris right now?"}]
COLORS = [{"role": "user", "content": "Name three colors."}]


@pytest.fixture(scope="module")
def claude(server) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0, timeout=300) as client:
        yield client


def create(client: anthropic.Anthropic, messages=COLORS, **fields):
    # This SDK version has no sampling parameters; older ones (and other clients) send them in the body.
    return client.messages.create(model=MODEL, messages=messages, extra_body={"temperature": 0},
                                  **{"max_tokens": 24, **fields})


def test_create_gives_a_text_message_and_usage(claude):
    message = create(claude, system="Answer briefly.")
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    assert message.content[0].type == "text" and message.content[0].text
    assert message.stop_reason in ("end_turn", "max_tokens") and message.stop_sequence is None
    assert message.usage.input_tokens > 0 and 0 < message.usage.output_tokens <= 24
    assert create(claude, max_tokens=2).stop_reason == "max_tokens"


def test_system_blocks_are_the_system_string(claude):
    as_text = create(claude, system="Answer briefly.")
    blocks = [{"type": "text", "text": "Answer briefly.", "cache_control": {"type": "ephemeral"}}]
    as_blocks = create(claude, system=blocks)
    assert as_blocks.usage.input_tokens == as_text.usage.input_tokens and as_blocks.content == as_text.content


def test_stream_events_in_order(claude):
    whole = create(claude)
    events = list(create(claude, stream=True))
    kinds = [event.type for event in events]
    assert kinds[:2] == ["message_start", "content_block_start"]
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(kinds[2:-3]) == {"content_block_delta"}
    assert all(event.delta.type == "text_delta" for event in events[2:-3])
    text = "".join(event.delta.text for event in events[2:-3])
    assert [text] == [block.text for block in whole.content]
    assert events[0].message.usage.input_tokens == whole.usage.input_tokens
    assert events[-2].delta.stop_reason == whole.stop_reason
    assert events[-2].usage.output_tokens == whole.usage.output_tokens
    with claude.messages.stream(model=MODEL, messages=COLORS, max_tokens=24, extra_body={"temperature": 0}) as stream:
        final = stream.get_final_message()
    assert [block.text for block in final.content] == [block.text for block in whole.content]
    assert final.stop_reason == whole.stop_reason


def test_stream_starts_with_a_ping(server):
    body = {"model": MODEL, "messages": COLORS, "max_tokens": 4, "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/messages", json=body, timeout=300) as response:
        names = [line[7:] for line in response.iter_lines() if line.startswith("event: ")]
    assert names[:3] == ["message_start", "ping", "content_block_start"] and names[-1] == "message_stop"


def valid_tool_uses(message, names: set[str]) -> list:
    uses = [block for block in message.content if block.type == "tool_use"]
    assert uses and message.stop_reason == "tool_use"
    schemas = {WEATHER["name"]: WEATHER["input_schema"], TIME["name"]: TIME["input_schema"]}
    for use in uses:
        assert use.name in names and use.id.startswith("toolu_")
        jsonschema.validate(use.input, schemas[use.name])
    return uses


def test_tool_choice_any_and_tool_force_calls(claude):
    valid_tool_uses(create(claude, ASK, tools=[WEATHER, TIME], max_tokens=120,
                           tool_choice={"type": "any", "disable_parallel_tool_use": True}), {"get_weather", "get_time"})
    named = create(claude, ASK, tools=[WEATHER, TIME], max_tokens=120, tool_choice={"type": "tool", "name": "get_time"})
    assert [use.name for use in valid_tool_uses(named, {"get_time"})] == ["get_time"]


@pytest.mark.parametrize("is_error", [False, True])
def test_tool_result_continues_the_conversation(claude, is_error):
    first = create(claude, ASK, tools=[WEATHER], max_tokens=120,
                   tool_choice={"type": "any", "disable_parallel_tool_use": True})
    [use] = valid_tool_uses(first, {"get_weather"})
    result = {"type": "tool_result", "tool_use_id": use.id, "content": "18 C and sunny", "is_error": is_error}
    history = [*ASK, {"role": "assistant", "content": [block.model_dump() for block in first.content]},
               {"role": "user", "content": [result]}]
    second = create(claude, history, tools=[WEATHER], tool_choice={"type": "none"})
    assert second.stop_reason in ("end_turn", "max_tokens") and second.content[0].type == "text"
    ok = claude.messages.count_tokens(model=MODEL, messages=[*history[:2], {"role": "user", "content": [
        {**result, "is_error": False}]}])
    assert (ok.input_tokens < second.usage.input_tokens) == is_error  # a failure says so in the prompt


def test_streamed_tool_use(claude):
    events = list(create(claude, ASK, tools=[WEATHER], max_tokens=120, stream=True,
                         tool_choice={"type": "any", "disable_parallel_tool_use": True}))
    kinds = [event.type for event in events]
    assert kinds == ["message_start", "content_block_start", "content_block_delta", "content_block_stop",
                     "message_delta", "message_stop"]
    assert events[1].content_block.type == "tool_use" and events[2].delta.type == "input_json_delta"
    jsonschema.validate(json.loads(events[2].delta.partial_json), WEATHER["input_schema"])
    assert events[4].delta.stop_reason == "tool_use"


def test_stop_sequence_ends_the_text_and_is_reported(claude):
    free = create(claude, max_tokens=40).content[0].text
    words = free.split()
    assert len(words) > 2, free
    stop = words[2]
    stopped = create(claude, max_tokens=40, stop_sequences=["NEVER-WRITTEN", stop])
    assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == stop
    assert stopped.content[0].text == free[:free.index(stop)]
    events = list(create(claude, max_tokens=40, stop_sequences=[stop], stream=True))
    assert events[-2].delta.stop_reason == "stop_sequence" and events[-2].delta.stop_sequence == stop


def test_count_tokens_is_the_prompt_of_messages_create(claude):
    fields = {"system": "Answer briefly.", "tools": [WEATHER]}
    counted = claude.messages.count_tokens(model=MODEL, messages=ASK, **fields)
    answered = create(claude, ASK, max_tokens=1, **fields)
    assert counted.input_tokens == answered.usage.input_tokens > 0


def anthropic_error(response: httpx.Response, status: int, kind: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["type"] == "error" and set(body["error"]) == {"type", "message"} and body["error"]["type"] == kind
    return body["error"]["message"]


def test_errors_have_anthropics_shape(server, claude):
    post = lambda path, body: httpx.post(f"{server.url}{path}", json=body, timeout=60)  # noqa: E731
    assert "max_tokens" in anthropic_error(post("/v1/messages", {"model": MODEL, "messages": COLORS}), 400,
                                           "invalid_request_error")
    anthropic_error(post("/v1/messages", {"model": MODEL, "max_tokens": 5, "messages": []}), 400,
                    "invalid_request_error")
    anthropic_error(post("/v1/messages/count_tokens", {"model": "claude-9", "messages": COLORS}), 404,
                    "not_found_error")
    anthropic_error(httpx.post(f"{server.url}/v1/messages", content=b"{not json",
                               headers={"content-type": "application/json"}, timeout=60), 400, "invalid_request_error")
    anthropic_error(httpx.post(f"{server.url}/v1/messages", content=b"{}", timeout=60), 415,  # no content type
                    "invalid_request_error")
    with pytest.raises(anthropic.NotFoundError) as missing:
        claude.messages.create(model="claude-9", max_tokens=5, messages=COLORS)
    assert missing.value.body["error"]["type"] == "not_found_error"


@pytest.mark.parametrize(("fields", "words"), [
    ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, "thinking"),
    ({"frobnicate": 1}, "frobnicate"),
    ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "server tools"),
    ({"messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}}]}]}, "image"),
    ({"temperature": 1.5}, "temperature"),
    ({"tool_choice": {"type": "any"}}, "needs tools"),
])
def test_fields_we_cannot_honour_are_400(server, fields, words):
    body = {"model": MODEL, "max_tokens": 5, "messages": COLORS, **fields}
    message = anthropic_error(httpx.post(f"{server.url}/v1/messages", json=body, timeout=60), 400,
                              "invalid_request_error")
    assert words in message


def test_hints_are_accepted(claude):
    message = create(claude, max_tokens=2, metadata={"user_id": "u1"}, service_tier="auto",
                     messages=[{"role": "user", "content": [{"type": "text", "text": "Hi",
                                                             "cache_control": {"type": "ephemeral"}}]}])
    assert message.usage.output_tokens <= 2


def test_x_api_key_and_bearer_on_a_server_with_keys(priced_server):
    url = f"{priced_server.url}/v1/messages/count_tokens"
    body = {"model": PRICED_MODEL, "messages": COLORS}
    headers = {"anthropic-version": "2023-06-01"}
    assert httpx.post(url, json=body, headers={**headers, "x-api-key": API_KEY}, timeout=60).status_code == 200
    assert httpx.post(url, json=body, headers={"authorization": f"Bearer {API_KEY}"}, timeout=60).status_code == 200
    anthropic_error(httpx.post(url, json=body, headers=headers, timeout=60), 401, "authentication_error")
    anthropic_error(httpx.post(url, json=body, headers={"x-api-key": "wrong"}, timeout=60), 401,
                    "authentication_error")
    models = httpx.get(f"{priced_server.url}/v1/models", headers={"x-api-key": API_KEY}, timeout=60)
    assert models.status_code == 200  # x-api-key works on every /v1 route
    with anthropic.Anthropic(base_url=priced_server.url, api_key=API_KEY, max_retries=0) as client:
        reply = client.messages.create(model=PRICED_MODEL, max_tokens=2, messages=COLORS)
    assert reply.usage.output_tokens <= 2


def test_a_client_that_leaves_mid_stream_cancels_the_generation(server):
    body = {"model": MODEL, "max_tokens": 900, "stream": True,
            "messages": [{"role": "user", "content": "Write a long story about the sea."}]}
    leave_mid_stream_cancels(server, "/v1/messages", body, "text_delta")


def test_the_stop_matcher_reports_the_stop_that_ended_the_text():
    """What stop_reason "stop_sequence" reads (pure: no server)."""
    from edge.engine.stops import StopMatcher

    matcher = StopMatcher(("lo", "hel"))
    assert matcher.feed("say he") == "say " and matcher.matched is None
    assert matcher.feed("llo") == "" and matcher.stopped and matcher.matched == "hel"
