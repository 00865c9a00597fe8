"""Bad input through the real app, in process, over a stand-in model: always a 4xx in OpenAI's
error shape, never a 5xx. The stand-in tokenizes UTF-8 bytes and answers with fixed text."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest
from fastapi.testclient import TestClient

from edge.api.app import create_app
from edge.chat.grammar import MAX_SCHEMA_DEPTH
from edge.chat.template import ChatTemplate
from edge.chat.tools import call_text
from edge.engine.jobs import ChoiceFinished, Generation, GenerationDone, Started, TextDelta
from edge.served import FALLBACK_TEMPLATE

CHAT, TEXT = "/v1/chat/completions", "/v1/completions"
USER = [{"role": "user", "content": "Hi"}]
TOOL = {"type": "function", "function": {"name": "f", "parameters": {
    "type": "object", "properties": {"html": {"type": "string"}}, "required": ["html"]}}}


class ScriptedEngine:
    """Answers every request with the same pieces of text."""

    ready = True
    metrics = None

    def __init__(self, pieces: list[str]) -> None:
        self.pieces = pieces

    def submit(self, request, loop) -> Generation:
        generation = Generation(request, loop)
        events = [Started(0), *(TextDelta(0, piece) for piece in self.pieces),
                  ChoiceFinished(0, "stop", len(self.pieces)), GenerationDone(len(request.prompt_tokens))]
        for event in events:
            generation.publish(event)
        return generation

    def retry_after(self) -> int:
        return 1

    def close(self) -> None:
        pass


@dataclass
class StandIn:
    """What the serving layer reads of a ServedModel."""

    engine: ScriptedEngine
    id: str = "m"
    aliases: frozenset = frozenset({"m"})
    template: ChatTemplate = field(default_factory=lambda: ChatTemplate(FALLBACK_TEMPLATE, "<s>", "</s>"))
    ctx_size: int = 1 << 24
    price_per_mtoken: float = 0.0

    def tokenize_prompt(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))  # raises on a lone surrogate, as llama.cpp's tokenizing does


def app_for(pieces: list[str]) -> TestClient:
    return TestClient(create_app(StandIn(ScriptedEngine(pieces)), []), raise_server_exceptions=False)


@pytest.fixture(scope="module")
def http() -> TestClient:
    return app_for(["Hello"])


def post(http: TestClient, body: dict | bytes, path: str = CHAT):
    """POST a body as Python's json.dumps writes it (lone surrogates escaped, Infinity and NaN bare)."""
    raw = body if isinstance(body, bytes) else json.dumps({"model": "m", **body}).encode()
    return http.post(path, content=raw, headers={"content-type": "application/json"})


def error_of(response, status: int = 400) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


@pytest.mark.parametrize(("body", "param", "path"), [
    ({"messages": [{"role": "user", "content": "a\ud800b"}]}, "messages.0.content", CHAT),
    ({"messages": [{"role": "system", "content": "\udfff"}, *USER]}, "messages.0.content", CHAT),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "\ud800"}]}]},
     "messages.0.content.0.text", CHAT),
    ({"messages": USER, "tools": [{"type": "function", "function": {"name": "f", "description": "\ud800"}}]},
     "tools.0.function.description", CHAT),
    ({"messages": USER, "model": "\udc00"}, "model", CHAT),
    ({"prompt": "x\ud800"}, "prompt", TEXT),
])
def test_a_lone_surrogate_is_a_400_naming_the_field(http, body, param, path):
    error = error_of(post(http, body, path))
    assert (error["param"], error["code"]) == (param, "invalid_value")
    assert "lone surrogate" in error["message"] and "not valid Unicode" in error["message"]


def test_a_surrogate_pair_is_one_character_and_fine(http):
    assert post(http, {"messages": [{"role": "user", "content": "\ud83d\ude00"}]}).status_code == 200


@pytest.mark.parametrize(("field", "value"), [
    ("repetition_penalty", float("inf")), ("temperature", float("nan")), ("top_p", float("-inf")),
    ("presence_penalty", "inf"), ("frequency_penalty", "NaN"),
])
def test_numbers_that_are_not_finite_are_400(http, field, value):
    error = error_of(post(http, {"messages": USER, field: value}))
    assert (error["param"], error["code"]) == (field, "invalid_value") and "finite" in error["message"]


def test_infinity_inside_a_schema_is_400(http):
    schema = {"type": "integer", "minimum": 0, "maximum": float("inf")}
    error = error_of(post(http, {"messages": USER, "response_format": {"type": "json_schema",
                                                                        "json_schema": {"schema": schema}}}))
    assert error["param"] == "response_format.json_schema.schema.maximum"


def nested(levels: int) -> dict:
    schema: dict = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


@pytest.mark.parametrize(("body", "param"), [
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": nested(300)}}},
     "response_format.json_schema.schema"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": nested(300)}}]},
     "tools.0.function.parameters"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(3000)}}}}]},
     "tools.0.function.parameters"),
])
def test_schemas_too_deep_or_too_big_are_400_saying_the_limit(http, body, param):
    error = error_of(post(http, {"messages": USER, **body}))
    assert (error["param"], error["code"]) == (param, "invalid_schema") and "at most" in error["message"]


@pytest.mark.parametrize("schema", [
    {"type": "string", "maxLength": 10**7},
    {"$ref": "#/$defs/a", "$defs": {"a": {"$ref": "#/$defs/a"}}},
    {"$ref": "#/$defs/a", "$defs": {"a": {"anyOf": [{"type": "string"}, {"$ref": "#/$defs/a"}]}}},
])
def test_schemas_that_would_break_the_grammar_are_400(http, schema):
    error = error_of(post(http, {"messages": USER, "response_format": {"type": "json_schema",
                                                                        "json_schema": {"schema": schema}}}))
    assert error["code"] == "invalid_schema"


def test_the_depth_limit_is_what_the_message_says(http):
    fits = nested((MAX_SCHEMA_DEPTH - 1) // 2)
    body = {"messages": USER, "response_format": {"type": "json_schema", "json_schema": {"schema": fits}}}
    assert post(http, body).status_code == 200


ARGUMENTS = {"html": "<b>x</b></tool_call><tool_call>"}
CALL = call_text("f", json.dumps(ARGUMENTS))


@pytest.mark.parametrize("size", [1, 5, len(CALL)])
def test_a_closing_tag_inside_an_argument_is_read_whole(size):
    http = app_for([CALL[i:i + size] for i in range(0, len(CALL), size)])
    choice = post(http, {"messages": USER, "tools": [TOOL], "tool_choice": "required"}).json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert json.loads(choice["message"]["tool_calls"][0]["function"]["arguments"]) == ARGUMENTS


def test_a_closing_tag_inside_an_argument_streams_whole_to_done():
    http = app_for([CALL[i:i + 3] for i in range(0, len(CALL), 3)])
    response = post(http, {"messages": USER, "tools": [TOOL], "tool_choice": "required", "stream": True})
    events = [line.removeprefix("data: ") for line in response.text.splitlines() if line]
    assert events[-1] == "[DONE]"
    deltas = [json.loads(event)["choices"][0]["delta"] for event in events[:-1]]
    calls = [call for delta in deltas for call in delta.get("tool_calls", [])]
    assert [json.loads(call["function"]["arguments"]) for call in calls] == [ARGUMENTS]


MB = "x" * (1 << 20)


def deep(levels: int, leaf, wrap):
    for _ in range(levels):
        leaf = wrap(leaf)
    return leaf


@pytest.mark.parametrize("body", [
    {"messages": [{"role": "user", "content": deep(900, "x", lambda v: [v])}]},
    {"messages": [{"role": "user", "content": deep(400, "x", lambda v: [{"type": "text", "text": v}])}]},
    {"messages": USER, "logit_bias": deep(900, 1, lambda v: {"a": v})},
    {"messages": [{"role": "user", "content": MB}]},
    {"messages": USER, "stop": MB},
    {"messages": USER, "tools": [{"type": "function", "function": {"name": MB}}]},
    {"messages": USER, "response_format": {"type": "json_schema", "json_schema": {"schema": {"enum": [MB]}}}},
    {"messages": USER, "seed": 10**30}, {"messages": USER, "seed": -10**30}, {"messages": USER, "top_k": 10**30},
    {"messages": USER, "n": 10**30}, {"messages": USER, "max_tokens": 10**30}, {"messages": USER, "max_tokens": 1e300},
    {"messages": USER, "stop": ["a", ""]},
    {"messages": USER, "tools": [{"type": "function", "function": {"name": f"f{i}"}} for i in range(200)]},
    {"messages": USER, "tools": [{"type": "function", "function": {"name": "a b\n\"<"}}]},
    {"messages": USER, "tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "\"\n<"}}},
    *({"messages": [*USER, {"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f",
                                                                                          "arguments": arguments}}]},
                    {"role": "tool", "tool_call_id": "c", "content": "r"}]} for arguments in ("[" * 5000, "9" * 5000)),
    b"", b"[]", b"null", b'"\\ud800"', b'{"model": "m", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "seed": ' + b"9" * 5000 + b"}",
    b'{"model": "m", "messages": [{"role": "user", "content": "\xff"}]}',
])
def test_odd_input_is_never_a_5xx(http, body):
    response = post(http, body)
    assert response.status_code < 500, response.text
    if response.status_code != 200:
        error_of(response, response.status_code)
