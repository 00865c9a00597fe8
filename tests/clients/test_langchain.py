"""LangChain's ChatOpenAI against a real `edge serve`: what a LangChain user's code does with it.

The model is a 135M one at temperature 0, so the tests assert the contract (types, shapes, the
call that tool_choice forces, output that validates), not the quality of its answers.
LangChain's own standard test suite runs on top of this with `make test-clients`
(tests/clients/langchain_standard.py)."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import BaseModel, Field
from support import MODEL

langchain_openai = pytest.importorskip("langchain_openai")
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, SystemMessage, ToolMessage  # noqa: E402
from langchain_core.tools import tool  # noqa: E402

ASK = [SystemMessage("You are a helpful assistant."), SystemMessage("Answer briefly."),
       HumanMessage("What is the capital of France?")]


class Capital(BaseModel):
    """A country's capital city."""

    country: str = Field(description="the country")
    city: str = Field(description="its capital")
    population_millions: int = Field(ge=0, le=100, description="people living there, in millions")


@tool
def multiply(a: int, b: int) -> int:
    """Multiply two integers."""
    return a * b


@tool
def weather(city: str) -> str:
    """The weather in a city."""
    return "sunny"


def chat_model(server, max_tokens: int) -> "langchain_openai.ChatOpenAI":
    return langchain_openai.ChatOpenAI(model=MODEL, base_url=f"{server.url}/v1", api_key="unused", temperature=0,
                                       seed=1, max_tokens=max_tokens, max_retries=0, timeout=300, stream_usage=True)


@pytest.fixture(scope="module")
def chat(server) -> "langchain_openai.ChatOpenAI":
    return chat_model(server, 24)


@pytest.fixture(scope="module")
def roomy_chat(server) -> "langchain_openai.ChatOpenAI":
    """Room for a whole tool call or JSON object."""
    return chat_model(server, 128)


def test_invoke_answers_with_usage_metadata(chat):
    message = chat.invoke(ASK)
    assert isinstance(message, AIMessage) and message.content
    usage = message.usage_metadata
    assert usage["input_tokens"] > 0 and 0 < usage["output_tokens"] <= 24
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert message.response_metadata["finish_reason"] in ("stop", "length")


def test_stream_gives_chunks_that_add_up_to_the_invoked_answer(chat):
    chunks = list(chat.stream(ASK))
    assert len(chunks) > 2 and all(isinstance(chunk, AIMessageChunk) for chunk in chunks)
    whole = sum(chunks[1:], chunks[0])
    assert whole.content == chat.invoke(ASK).content
    assert whole.usage_metadata["output_tokens"] > 0  # stream_usage: the final chunk carries it


def test_astream_and_batch(chat):
    async def collect() -> str:
        return "".join([chunk.content async for chunk in chat.astream(ASK)])

    streamed = asyncio.run(collect())
    answers = chat.batch([ASK, [HumanMessage("Say hello.")]])
    assert streamed == answers[0].content
    assert all(isinstance(answer, AIMessage) and answer.content for answer in answers)


@pytest.mark.parametrize("choice", ["any", "multiply"])
def test_bind_tools_with_a_forcing_tool_choice_calls_a_tool(roomy_chat, choice):
    chat = roomy_chat
    bound = chat.bind_tools([multiply, weather], tool_choice=choice)
    message = bound.invoke([HumanMessage("What is 6 times 7?")])
    assert message.tool_calls, message
    call = message.tool_calls[0]
    assert call["name"] in ("multiply", "weather") if choice == "any" else call["name"] == "multiply"
    if call["name"] == "multiply":
        assert isinstance(call["args"]["a"], int) and isinstance(call["args"]["b"], int)
    # The tool's answer goes back and the conversation goes on to a text reply.
    answer = chat.bind_tools([multiply, weather]).invoke(
        [HumanMessage("What is 6 times 7?"), message, ToolMessage("42", tool_call_id=call["id"])])
    assert isinstance(answer, AIMessage) and (answer.content or answer.tool_calls)


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_with_structured_output_validates(roomy_chat, method):
    structured = roomy_chat.with_structured_output(Capital, method=method, include_raw=True)
    result = structured.invoke([HumanMessage("What is the capital of France, and how many people live there?")])
    assert result["parsing_error"] is None, result["raw"]
    capital = result["parsed"]
    assert isinstance(capital, Capital) and 0 <= capital.population_millions <= 100


def test_json_mode_answers_json(roomy_chat):
    structured = roomy_chat.with_structured_output(method="json_mode")
    parsed = structured.invoke([HumanMessage("Give France's capital as JSON with the keys country and city.")])
    assert isinstance(parsed, dict)
