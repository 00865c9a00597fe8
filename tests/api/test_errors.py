"""Bad input gets OpenAI-shaped errors with the right status, never a 500."""

from __future__ import annotations

import json
import time

import pytest
from support import MODEL

USER = [{"role": "user", "content": "Hi"}]


def error_of(response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


@pytest.mark.parametrize(("field", "value"), [
    ("temperature", -0.1), ("temperature", 2.01), ("temperature", "hot"),
    ("top_p", 0), ("top_p", 1.5), ("top_k", -1), ("min_p", 1.5),
    ("max_tokens", -1), ("max_tokens", 100_001), ("max_completion_tokens", -5),
    ("n", 0), ("n", 3),
    ("presence_penalty", -2.5), ("presence_penalty", 2.5),
    ("frequency_penalty", -2.5), ("frequency_penalty", 2.5),
    ("repetition_penalty", 0), ("repetition_penalty", -1),
    ("stop", [f"s{i}" for i in range(17)]), ("stop", ""), ("stop", 5),
    ("seed", "abc"), ("stream", "sometimes"),
])
def test_out_of_range_values_are_400_naming_the_field(http, field, value):
    error = error_of(http.post("/v1/chat/completions", json={"model": MODEL, "messages": USER, field: value}), 400)
    assert error["param"].split(".")[0] == field and error["type"] == "invalid_request_error"


@pytest.mark.parametrize(("body", "param"), [
    ({"messages": USER, "n": 2, "stream": True}, "n"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages.0"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, "messages.0.content.0.type"),
    ({"messages": [*USER, {"role": "assistant", "content": "x", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]}, "messages"),
    ({"messages": [*USER, {"role": "tool", "content": "42", "tool_call_id": "call_x"}]}, "messages"),
    ({"messages": USER, "tool_choice": "required"}, "tool_choice"),
    ({"messages": USER, "tools": [{"type": "function", "function": {"name": "f"}}],
      "tool_choice": {"type": "function", "function": {"name": "g"}}}, "tool_choice"),
    ({"messages": USER, "tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools.0.function.name"),
    ({"messages": USER, "response_format": {"type": "json_schema"}}, "response_format"),
    ({"messages": USER, "response_format": {"type": "xml"}}, "response_format.type"),
])
def test_malformed_requests_are_400(http, body, param):
    error = error_of(http.post("/v1/chat/completions", json={"model": MODEL, **body}), 400)
    assert error["param"] == param


def test_missing_model_is_400(http):
    assert error_of(http.post("/v1/chat/completions", json={"messages": USER}), 400)["param"] == "model"


def test_body_that_is_not_json_is_400(http):
    response = http.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert error_of(response, 400)["code"] == "invalid_json"


@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", "text/plain"])
def test_a_json_body_sent_as_another_media_type_is_415_naming_the_header(http, content_type):
    """`curl -d '{...}'` without -H sends a form; the error says which header to send."""
    body = json.dumps({"model": MODEL, "messages": USER, "max_tokens": 2}).encode()
    error = error_of(http.post("/v1/chat/completions", content=body, headers={"content-type": content_type}), 415)
    assert error["code"] == "unsupported_media_type" and "Content-Type: application/json" in error["message"]
    assert content_type in error["message"]
    for declared in ("application/json; charset=utf-8", "application/vnd.api+json"):  # JSON by another name: read
        assert http.post("/v1/chat/completions", content=body, headers={"content-type": declared}).status_code == 200
    unlabelled = http.build_request("POST", "/v1/chat/completions", content=body)
    assert "content-type" not in unlabelled.headers
    assert "(this request's: none)" in error_of(http.send(unlabelled), 415)["message"]


def test_unknown_model_is_404(http):
    error = error_of(http.post("/v1/chat/completions", json={"model": "gpt-17", "messages": USER}), 404)
    assert error["param"] == "model" and error["code"] == "model_not_found"


@pytest.mark.parametrize(("method", "path"), [("GET", "/v1/nothing"), ("POST", "/v2/chat/completions"), ("GET", "/nothing")])
def test_unknown_route_is_404(http, method, path):
    assert error_of(http.request(method, path), 404)["code"] == "unknown_route"


def test_wrong_method_is_405_in_openai_shape(http):
    error_of(http.get("/v1/chat/completions"), 405)


def test_completions_validate_too(http):
    assert error_of(http.post("/v1/completions", json={"model": MODEL, "prompt": "x", "temperature": 9}), 400)["param"] == "temperature"
    assert error_of(http.post("/v1/completions", json={"model": MODEL, "prompt": ["a", "b"]}), 400)["param"] == "prompt"
    assert error_of(http.post("/v1/completions", json={"model": MODEL, "prompt": ""}), 400)["param"] == "prompt"


def test_the_openai_client_raises_its_typed_errors(client):
    import openai

    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=USER, temperature=5)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=USER)


def post_raw(http, body: dict, path: str = "/v1/chat/completions"):
    """The body as Python's json.dumps writes it: lone surrogates as \\ud800 escapes, Infinity and NaN bare."""
    return http.post(path, content=json.dumps({"model": MODEL, **body}), headers={"content-type": "application/json"})


@pytest.mark.parametrize(("body", "param", "path"), [
    ({"messages": [{"role": "user", "content": "a\ud800"}]}, "messages.0.content", "/v1/chat/completions"),
    ({"messages": [{"role": "system", "content": "\ud800"}, *USER]}, "messages.0.content", "/v1/chat/completions"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "\ud800"}]}]}, "messages.0.content.0.text",
     "/v1/chat/completions"),
    ({"messages": USER, "tools": [{"type": "function", "function": {"name": "f", "description": "\ud800"}}]},
     "tools.0.function.description", "/v1/chat/completions"),
    ({"prompt": "\ud800"}, "prompt", "/v1/completions"),
])
def test_a_lone_surrogate_is_400_naming_the_field(http, body, param, path):
    error = error_of(post_raw(http, body, path), 400)
    assert (error["param"], error["code"]) == (param, "invalid_value") and "lone surrogate" in error["message"]


@pytest.mark.parametrize(("field", "value"), [("repetition_penalty", float("inf")), ("temperature", float("nan")),
                                              ("top_p", float("-inf")), ("min_p", "NaN")])
def test_numbers_that_are_not_finite_are_400(http, field, value):
    error = error_of(post_raw(http, {"messages": USER, field: value}), 400)
    assert error["param"] == field and "finite" in error["message"]


def deep_schema(levels: int) -> dict:
    schema: dict = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}, "required": ["a"]}
    return schema


@pytest.mark.parametrize(("body", "param"), [
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": deep_schema(300)}}},
     "response_format.json_schema.schema"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": deep_schema(300)}}],
      "tool_choice": "required"}, "tools.0.function.parameters"),
])
def test_a_schema_nested_too_deep_is_400_at_once(http, body, param):
    started = time.monotonic()
    body = {"model": MODEL, "messages": USER, "max_tokens": 4, **body}
    error = error_of(http.post("/v1/chat/completions", json=body), 400)
    assert (error["param"], error["code"]) == (param, "invalid_schema") and "at most" in error["message"]
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("schema", [{"$ref": "#/$defs/a", "$defs": {"a": {"$ref": "#/$defs/a"}}},
                                    {"type": "string", "maxLength": 10**9}])
def test_a_schema_that_would_break_the_grammar_is_400(http, schema):
    body = {"model": MODEL, "messages": USER,
            "response_format": {"type": "json_schema", "json_schema": {"schema": schema}}}
    assert error_of(http.post("/v1/chat/completions", json=body), 400)["code"] == "invalid_schema"


@pytest.mark.parametrize(("field", "value"), [("seed", 2**64), ("top_k", 2**40), ("stop", "x" * 5000)])
def test_numbers_and_stops_beyond_what_the_engine_takes_are_400(http, field, value):
    assert error_of(http.post("/v1/chat/completions", json={"model": MODEL, "messages": USER, field: value}),
                    400)["param"] == field
