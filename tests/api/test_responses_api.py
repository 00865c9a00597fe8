"""POST /v1/responses through the official openai SDK (`client.responses`), on a real server.

The model is a 135M one at temperature 0: these check the contract (shapes, event order, tool
calls that validate, JSON that parses), and that the surface shares chat's one request path (the
same conversation gives the same tokens and text)."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest
from support import API_KEY, MODEL, PRICE, PRICED_MODEL, leave_mid_stream_cancels

WEATHER = {"type": "function", "name": "get_weather", "description": "Current weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30},
                                                           "unit": {"enum": ["celsius", "fahrenheit"]}},
                          "required": ["city", "unit"], "additionalProperties": False},
           "strict": True}
TIME = {"type": "function", "name": "get_time", "description": "Current time in a timezone",
        "parameters": {"type": "object", "properties": {"timezone": {"type": "string", "maxLength": 30}},
                       "required": ["timezone"]}}
ASK = "What is the weather in Paris right now?"
PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 150}},
          "required": ["name", "age"], "additionalProperties": False}
STREAM_ORDER = ["response.created", "response.in_progress", "response.output_item.added",
                "response.content_part.added"]


def create(client: openai.OpenAI, **fields):
    return client.responses.create(model=MODEL, **{"temperature": 0, "max_output_tokens": 24, **fields})


def test_string_input_gives_a_message_and_usage(client):
    response = create(client, input="Name three colors.")
    assert response.object == "response" and response.id.startswith("resp_")
    assert response.status in ("completed", "incomplete")
    message = response.output[0]
    assert message.type == "message" and message.role == "assistant" and message.content[0].type == "output_text"
    assert response.output_text == message.content[0].text and response.output_text
    usage = response.usage
    assert usage.input_tokens > 0 and 0 < usage.output_tokens <= 24
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.model_extra["estimated_cost"] == 0  # the embedded card has no price


def test_max_output_tokens_makes_the_response_incomplete(client):
    response = create(client, input="Write a long story about the sea.", max_output_tokens=3)
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    assert response.usage.output_tokens == 3


def test_items_and_instructions_are_the_chat_conversation(client):
    """One request path: the same conversation through /v1/chat/completions gives the same prompt
    tokens and the same greedy text."""
    items = [{"role": "user", "content": [{"type": "input_text", "text": "Hi, I am Ada."}]},
             {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hello Ada!"}]},
             {"role": "user", "content": "What is my name?"}]
    response = create(client, input=items, instructions="Answer in one short sentence.")
    chat = client.chat.completions.create(model=MODEL, temperature=0, max_tokens=24, messages=[
        {"role": "system", "content": "Answer in one short sentence."}, {"role": "user", "content": "Hi, I am Ada."},
        {"role": "assistant", "content": "Hello Ada!"}, {"role": "user", "content": "What is my name?"}])
    assert response.usage.input_tokens == chat.usage.prompt_tokens
    assert response.output_text == chat.choices[0].message.content
    plain = create(client, input=items)
    assert plain.usage.input_tokens != response.usage.input_tokens  # the instructions are in the prompt


def test_stream_events_in_order_with_sequence_numbers(client):
    whole = create(client, input="Name three colors.")
    events = list(create(client, input="Name three colors.", stream=True))
    kinds = [event.type for event in events]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    assert kinds[:4] == STREAM_ORDER
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          f"response.{whole.status}"]
    assert set(kinds[4:-4]) == {"response.output_text.delta"}
    text = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    final = events[-1].response
    assert text == final.output_text == whole.output_text
    assert events[0].response.id == final.id and events[0].response.status == "in_progress"
    assert final.usage.output_tokens == whole.usage.output_tokens


def test_the_sdks_stream_helper_accepts_the_stream(client):
    fields = {"model": MODEL, "input": "Name three colors.", "temperature": 0, "max_output_tokens": 16}
    with client.responses.stream(**fields) as stream:
        deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == final.output_text


def valid_calls(response, names: set[str]) -> list:
    calls = [item for item in response.output if item.type == "function_call"]
    assert calls and response.status == "completed"
    schemas = {WEATHER["name"]: WEATHER["parameters"], TIME["name"]: TIME["parameters"]}
    for call in calls:
        assert call.name in names and call.call_id.startswith("call_") and call.id.startswith("fc_")
        jsonschema.validate(json.loads(call.arguments), schemas[call.name])
    return calls


def test_required_and_named_tool_choice_force_calls(client):
    valid_calls(create(client, input=ASK, tools=[WEATHER, TIME], tool_choice="required", parallel_tool_calls=False,
                       max_output_tokens=80), {"get_weather", "get_time"})
    named = create(client, input=ASK, tools=[WEATHER, TIME], tool_choice={"type": "function", "name": "get_time"},
                   max_output_tokens=80)
    assert [call.name for call in valid_calls(named, {"get_time"})] == ["get_time"]


def test_function_call_output_continues_the_conversation(client):
    first = create(client, input=ASK, tools=[WEATHER], tool_choice="required", parallel_tool_calls=False,
                   max_output_tokens=80)
    [call] = valid_calls(first, {"get_weather"})
    history = [{"role": "user", "content": ASK}, call.model_dump(exclude_none=True)]
    result = {"type": "function_call_output", "call_id": call.call_id, "output": "18 C and sunny"}
    second = create(client, input=[*history, result], tools=[WEATHER], tool_choice="none")
    assert second.status in ("completed", "incomplete") and second.output[0].type == "message" and second.output_text
    longer = create(client, input=[*history, {**result, "output": "18 C and sunny, light wind from the west"}],
                    tools=[WEATHER], tool_choice="none", max_output_tokens=1)
    assert longer.usage.input_tokens > second.usage.input_tokens  # the result is in the prompt
    with pytest.raises(openai.BadRequestError) as refused:  # a result for a call that was never made
        create(client, input=[{"role": "user", "content": ASK},
                              {"type": "function_call_output", "call_id": "call_none", "output": "x"}])
    assert refused.value.body["param"] == "input"


def test_streamed_function_call_events(client):
    events = list(create(client, input=ASK, tools=[WEATHER], tool_choice="required", parallel_tool_calls=False,
                         max_output_tokens=80, stream=True))
    kinds = [event.type for event in events]
    assert kinds == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.function_call_arguments.delta", "response.function_call_arguments.done",
                     "response.output_item.done", "response.completed"]
    done = events[4]
    assert done.arguments == events[3].delta and done.name == "get_weather"
    jsonschema.validate(json.loads(done.arguments), WEATHER["parameters"])
    assert events[-1].response.output[0].arguments == done.arguments


def test_json_schema_output_parses_and_validates(client):
    response = create(client, input="Invent a person.", max_output_tokens=60,
                      text={"format": {"type": "json_schema", "name": "person", "schema": PERSON, "strict": True}})
    assert response.status == "completed"
    jsonschema.validate(json.loads(response.output_text), PERSON)
    assert response.text.format.type == "json_schema"
    as_object = create(client, input="Describe a cat as JSON.", max_output_tokens=60,
                       text={"format": {"type": "json_object"}})
    if as_object.status == "completed":
        assert isinstance(json.loads(as_object.output_text), dict)


def test_store_and_metadata_are_accepted_and_metadata_echoed(client):
    response = create(client, input="Hi", store=True, metadata={"run": "7"}, user="u1", max_output_tokens=2)
    assert response.metadata == {"run": "7"}


@pytest.mark.parametrize(("fields", "param", "words"), [
    ({"previous_response_id": "resp_123"}, "previous_response_id", "stateless"),
    ({"conversation": "conv_1"}, "conversation", "stateless"),
    ({"reasoning": {"effort": "low"}}, "reasoning", "not supported"),
    ({"truncation": "auto"}, "truncation", "refused, not cut"),
    ({"background": True}, "background", "not supported"),
    ({"include": ["message.output_text.logprobs"]}, "include", "not supported"),
    ({"tools": [{"type": "web_search"}]}, "tools.0", "only function tools"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "http://x/y.png"}]}]},
     "input.0.content", "text only"),
    ({"input": [{"type": "reasoning", "summary": []}]}, "input.0", "not supported"),
    ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format", "needs a schema"),
])
def test_fields_we_cannot_honour_are_400(client, fields, param, words):
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model=MODEL, **{"input": "Hi", **fields})
    error = refused.value.body
    assert error["type"] == "invalid_request_error" and error["param"] == param and words in error["message"]


def test_unknown_fields_and_models_are_refused(http):
    response = http.post("/v1/responses", json={"model": MODEL, "input": "Hi", "frobnicate": 1})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "frobnicate"
    response = http.post("/v1/responses", json={"model": "gpt-9", "input": "Hi"})
    assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"


def test_estimated_cost_and_keys_on_a_priced_server(priced_server):
    client = openai.OpenAI(base_url=f"{priced_server.url}/v1", api_key=API_KEY, max_retries=0, timeout=300)
    response = client.responses.create(model=PRICED_MODEL, input="Hi", temperature=0, max_output_tokens=4)
    usage = response.usage
    assert usage.model_extra["estimated_cost"] == pytest.approx(usage.total_tokens * PRICE / 1e6)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{priced_server.url}/v1", api_key="wrong", max_retries=0).responses.create(
            model=PRICED_MODEL, input="Hi", max_output_tokens=1)


def test_a_client_that_leaves_mid_stream_cancels_the_generation(server):
    body = {"model": MODEL, "input": "Write a long story about the sea.", "max_output_tokens": 900, "stream": True}
    leave_mid_stream_cancels(server, "/v1/responses", body, "response.output_text.delta")
