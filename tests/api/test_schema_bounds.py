"""Schemas as real clients send them (numeric bounds of any size, exclusive bounds, number bounds,
unanchored patterns), through a real `edge serve` and the openai client: enforced, not refused."""

from __future__ import annotations

import json

import jsonschema
import pytest
from support import MODEL

BOUNDED = {"type": "object", "properties": {
    "count": {"type": "integer", "minimum": -999, "maximum": 999},  # LangChain's standard test tool
    "id": {"type": "integer", "exclusiveMinimum": 0},
    "ratio": {"type": "number", "minimum": 0, "maximum": 1},
    "price": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 100},
    "code": {"type": "string", "pattern": "[0-9]{3}"},  # anywhere in the string, as JSON Schema means it
}, "required": ["count", "id", "ratio", "price", "code"], "additionalProperties": False}
ASK = [{"role": "user", "content": "Invent a product: a count, an id, a ratio, a price and a code."}]
TOOL = {"type": "function", "function": {
    "name": "magic_function", "description": "Applies a magic function to an input.",
    "parameters": {"type": "object", "properties": {
        "input": {"type": "integer", "minimum": -999, "maximum": 999},
        "scale": {"type": "number", "exclusiveMaximum": -0.5},
        "label": {"type": "string", "pattern": "^x-[a-z]{2,8}$", "maxLength": 10}},  # the pattern implies it
        "required": ["input", "scale", "label"]}}}


def test_bounded_json_schema_answers_valid_json(client):
    # The unanchored pattern lets `code` run on: a sampled answer may spend its whole budget inside
    # that string (which draw does depends on the CPU's arithmetic). Every answer that ends is valid
    # JSON of the schema, and most answers end.
    finished = []
    for temperature, seed in [(0, 1), (1.0, 2), (1.0, 3), (1.0, 4), (1.0, 5)]:
        response = client.chat.completions.create(
            model=MODEL, messages=ASK, temperature=temperature, seed=seed, max_tokens=256,
            response_format={"type": "json_schema", "json_schema": {"name": "product", "schema": BOUNDED}})
        choice = response.choices[0]
        assert choice.finish_reason in ("stop", "length"), choice.finish_reason
        if choice.finish_reason == "stop":
            jsonschema.validate(json.loads(choice.message.content), BOUNDED)
            finished.append(seed)
        else:
            assert choice.message.content.startswith("{"), choice.message.content
    assert len(finished) >= 3, f"only seeds {finished} ended within 256 tokens"


@pytest.mark.parametrize("seed", [1, 2])
def test_bounded_tool_parameters_give_valid_arguments(client, seed):
    response = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "What is the magic function of 3?"}], tools=[TOOL],
        tool_choice="required", temperature=0 if seed == 1 else 1.0, seed=seed, max_tokens=200)
    calls = response.choices[0].message.tool_calls
    assert calls and response.choices[0].finish_reason == "tool_calls"
    for call in calls:
        jsonschema.validate(json.loads(call.function.arguments), TOOL["function"]["parameters"])


def test_what_stays_refused_is_a_400_that_says_why(http):
    schema = {"type": "object", "properties": {"n": {"type": "integer", "multipleOf": 3}}}
    response = http.post("/v1/chat/completions", json={
        "model": MODEL, "messages": ASK, "response_format": {"type": "json_schema",
                                                              "json_schema": {"name": "s", "schema": schema}}})
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_schema"
    assert "multipleOf 3" in response.json()["error"]["message"]
