"""Tool calls and JSON output, enforced by grammar, on a model with no native tool format."""

from __future__ import annotations

import json

import jsonschema
import pytest
from support import MODEL

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30},
                                                    "unit": {"enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"]}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "Current time in a timezone",
    "parameters": {"type": "object", "properties": {"timezone": {"type": "string", "maxLength": 30}},
                   "required": ["timezone"]}}}
PING = {"type": "function", "function": {"name": "ping", "description": "Checks the network"}}
TOOLS = [WEATHER, TIME, PING]
SCHEMAS = {t["function"]["name"]: t["function"].get("parameters", {"type": "object"}) for t in TOOLS}
ASK = [{"role": "user", "content": "What is the weather in Paris right now?"}]


def call(client, messages=ASK, **fields):
    fields = {"max_tokens": 160, **fields}
    return client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS, temperature=0, seed=1, **fields)


def assert_valid_calls(message) -> None:
    assert message.tool_calls
    for tool_call in message.tool_calls:
        assert tool_call.type == "function" and tool_call.id.startswith("call_")
        jsonschema.validate(json.loads(tool_call.function.arguments), SCHEMAS[tool_call.function.name])


def test_required_gives_valid_calls(client):
    choice = call(client, tool_choice="required").choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert_valid_calls(choice.message)


def test_named_tool_is_the_one_called(client):
    choice = call(client, tool_choice={"type": "function", "function": {"name": "get_time"}}).choices[0]
    assert_valid_calls(choice.message)
    assert [c.function.name for c in choice.message.tool_calls] == ["get_time"]


def test_parallel_tool_calls_false_gives_exactly_one(client):
    choice = call(client, tool_choice="required", parallel_tool_calls=False).choices[0]
    assert len(choice.message.tool_calls) == 1


def test_tool_without_parameters_gets_an_empty_object(client):
    choice = call(client, tool_choice={"type": "function", "function": {"name": "ping"}}).choices[0]
    assert json.loads(choice.message.tool_calls[0].function.arguments) == {}


@pytest.mark.parametrize("question", ["What is the weather in Paris right now?", "Write a haiku about the sea."])
def test_auto_gives_an_answer_or_valid_calls(client, question):
    choice = call(client, [{"role": "user", "content": question}]).choices[0]
    if choice.message.tool_calls:
        assert choice.finish_reason == "tool_calls"
        assert_valid_calls(choice.message)
    else:
        assert choice.message.content and not choice.message.content.startswith("<tool_call>")


def test_none_never_calls(client):
    choice = call(client, tool_choice="none").choices[0]
    assert choice.message.tool_calls is None and choice.message.content


def test_tool_calls_stream_as_deltas(client):
    whole = call(client, tool_choice="required").choices[0].message
    chunks = list(call(client, tool_choice="required", stream=True))
    streamed = [tc for chunk in chunks for tc in (chunk.choices[0].delta.tool_calls or [])]
    assert [tc.index for tc in streamed] == list(range(len(whole.tool_calls)))
    assert [(tc.function.name, tc.function.arguments) for tc in streamed] == \
        [(tc.function.name, tc.function.arguments) for tc in whole.tool_calls]
    assert all(tc.id and tc.type == "function" for tc in streamed)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert not any(chunk.choices[0].delta.content for chunk in chunks)


def test_full_round_trip(client):
    first = call(client, tool_choice="required", parallel_tool_calls=False)
    tool_call = first.choices[0].message.tool_calls[0]
    result = "Sunny, 21 degrees, light wind from the west."
    conversation = [*ASK, first.choices[0].message.model_dump(exclude_none=True),
                    {"role": "tool", "tool_call_id": tool_call.id, "content": result}]
    second = call(client, conversation, tool_choice="none")
    assert second.choices[0].message.content and second.choices[0].finish_reason in ("stop", "length")
    # The call and its result reached the prompt: it outgrew the question alone by more than the result.
    alone = call(client, tool_choice="none", max_tokens=1)
    assert second.usage.prompt_tokens > alone.usage.prompt_tokens + len(result.split())
    again = call(client, conversation)  # auto after a result: an answer or more valid calls
    if again.choices[0].message.tool_calls:
        assert_valid_calls(again.choices[0].message)


def test_json_object_parses(client):
    response = client.chat.completions.create(model=MODEL, temperature=0, max_tokens=200,
                                              messages=[{"role": "user", "content": "Return a JSON object with the keys name and color for a cat."}],
                                              response_format={"type": "json_object"})
    assert response.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(response.choices[0].message.content), dict)


PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 150},
                                           "pets": {"type": "array", "items": {"enum": ["cat", "dog"]}, "maxItems": 3}},
          "required": ["name", "age", "pets"], "additionalProperties": False}


@pytest.mark.parametrize("stream", [False, True])
def test_json_schema_validates(client, stream):
    fields = dict(model=MODEL, temperature=0, max_tokens=200,
                  messages=[{"role": "user", "content": "Invent a person."}],
                  response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}})
    if stream:
        text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(stream=True, **fields))
    else:
        text = client.chat.completions.create(**fields).choices[0].message.content
    jsonschema.validate(json.loads(text), PERSON)


def test_json_schema_with_sampling_still_validates(client):
    for seed in (1, 2, 3):
        response = client.chat.completions.create(
            model=MODEL, temperature=1.0, seed=seed, max_tokens=200,
            messages=[{"role": "user", "content": "Invent a person."}],
            response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}})
        jsonschema.validate(json.loads(response.choices[0].message.content), PERSON)


@pytest.mark.parametrize("schema", [
    {"type": "object", "properties": {"x": {"type": "number", "multipleOf": 3}}},
    {"type": "object", "properties": {"x": {"type": "integer", "multipleOf": 7}}},
    {"type": "object", "properties": {"x": {"type": "string", "pattern": "(?=a)ab"}}},
    {"type": "object", "not": {"required": ["x"]}},
])
def test_schema_keywords_the_grammar_cannot_enforce_are_refused(http, schema):
    for body in ({"response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}},
                 {"tools": [{"type": "function", "function": {"name": "f", "parameters": schema}}]}):
        response = http.post("/v1/chat/completions", json={"model": MODEL, "messages": ASK, **body})
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "invalid_schema"


# A closing tag the grammar makes the model write inside a string argument.
TAG = {"type": "function", "function": {
    "name": "tag", "description": "Records a tag",
    "parameters": {"type": "object", "properties": {"tag": {"const": "</tool_call>"}}, "required": ["tag"]}}}


@pytest.mark.parametrize("stream", [False, True])
def test_a_closing_tag_inside_an_argument_does_not_cut_the_call(client, stream):
    fields = dict(model=MODEL, messages=ASK, tools=[TAG], temperature=0, max_tokens=60,
                  tool_choice={"type": "function", "function": {"name": "tag"}})
    if stream:  # a stream cut short (an exception in the server) raises in the client
        calls = [tc for chunk in client.chat.completions.create(stream=True, **fields)
                 for tc in (chunk.choices[0].delta.tool_calls or [])]
    else:
        calls = client.chat.completions.create(**fields).choices[0].message.tool_calls
    assert [json.loads(c.function.arguments) for c in calls] == [{"tag": "</tool_call>"}]
