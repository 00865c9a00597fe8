"""Request models of Anthropic's Messages API (POST /v1/messages, /v1/messages/count_tokens), and
their neutral conversation. Text, tool_use and tool_result blocks; no images, documents or
thinking (the served model reads and writes text), no server tools (nothing runs tools here)."""

from __future__ import annotations

import json
from functools import cached_property
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from edge.api.conversation import Conversation, Names, PastCall, Sampling, Turn
from edge.api.protocol import MAX_STOP_CHARS, MAX_STOP_STRINGS, MAX_TOOLS, _bounded_schema
from edge.api.strict_fields import Refusing, RefusingBody
from edge.chat.tools import ToolSpec

_HINTS = frozenset({"cache_control", "citations"})  # prompt caching hints, citations we never make
_BLOCK_TYPES = ("text", "tool_use", "tool_result")
_CHOICES = {"auto": "auto", "any": "required", "none": "none"}  # Anthropic's tool_choice -> ours ("tool": its name)


class TextBlock(Refusing):
    ignored = _HINTS
    type: Literal["text"]
    text: str


class ToolUseBlock(Refusing):
    ignored = _HINTS | {"caller"}
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]


class ToolResultBlock(Refusing):
    ignored = _HINTS
    type: Literal["tool_result"]
    tool_use_id: str
    content: str | list[TextBlock] = ""
    is_error: bool = False


def _block_type(value: Any) -> Any:
    kind = value.get("type") if isinstance(value, dict) else None
    if isinstance(value, dict) and kind not in _BLOCK_TYPES:
        raise ValueError(f"content blocks of type {kind!r} are not supported: only text, tool_use and tool_result "
                         "(the served model reads and writes text)")
    return value


Block = Annotated[TextBlock | ToolUseBlock | ToolResultBlock, Field(discriminator="type")]


def _text(content: str | list[TextBlock]) -> str:
    return content if isinstance(content, str) else "".join(block.text for block in content)


class MessageIn(Refusing):
    role: Literal["user", "assistant"]
    content: str | list[Block]

    @field_validator("content", mode="before")
    @classmethod
    def _known_blocks(cls, value: Any) -> Any:
        for block in value if isinstance(value, list) else []:
            _block_type(block)
        return value

    def turns(self) -> list[Turn]:
        """The message as neutral turns: an assistant's text and calls are one turn, a user's
        tool results one turn each (in order with its text)."""
        if isinstance(self.content, str):
            return [Turn(self.role, self.content)]
        if self.role == "assistant":
            text = "".join(b.text for b in self.content if isinstance(b, TextBlock))
            calls = tuple(PastCall(b.id, b.name, json.dumps(b.input, ensure_ascii=False))
                          for b in self.content if isinstance(b, ToolUseBlock))
            return [Turn("assistant", text, calls)]
        turns: list[Turn] = []
        for block in self.content:
            if isinstance(block, ToolResultBlock):
                turns.append(Turn("tool", _text(block.content), call_id=block.tool_use_id, is_error=block.is_error))
            elif isinstance(block, TextBlock):
                turns.append(Turn("user", block.text))
            else:
                raise ValueError("messages: tool_use blocks belong in assistant messages")
        return turns


class ToolIn(Refusing):
    ignored = _HINTS | {"strict", "eager_input_streaming"}  # strict: the grammar enforces the schema anyway
    type: Literal["custom"] | None = None
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str = ""
    input_schema: dict[str, Any]

    _bounded = field_validator("input_schema")(_bounded_schema)


class ToolChoiceIn(Refusing):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool = False

    @model_validator(mode="after")
    def _named(self) -> ToolChoiceIn:
        if (self.type == "tool") != (self.name is not None):
            raise ValueError("a tool_choice names a tool exactly when its type is tool")
        return self


class ConversationBody(RefusingBody):
    """What /v1/messages and /v1/messages/count_tokens share."""

    reasons = {"thinking": "the served model has no extended thinking",
               "output_config": "use a tool with an input_schema for structured output",
               "mcp_servers": "the server runs no tools", "container": "the server runs no tools"}
    defaults = {"thinking": {"type": "disabled"}}
    model: str
    messages: list[MessageIn] = Field(min_length=1)
    system: str | list[TextBlock] | None = None
    tools: list[ToolIn] | None = Field(None, max_length=MAX_TOOLS)
    tool_choice: ToolChoiceIn | None = None

    @field_validator("tools", mode="before")
    @classmethod
    def _custom_tools_only(cls, value: Any) -> Any:
        for index, tool in enumerate(value if isinstance(value, list) else []):
            kind = tool.get("type") if isinstance(tool, dict) else None
            if kind not in (None, "custom"):
                raise ValueError(f"tools.{index}: server tools ({kind!r}) are not supported: the server runs no tools")
        return value

    @model_validator(mode="after")
    def _check_conversation(self) -> ConversationBody:
        self.conversation.check()
        return self

    def sampling(self) -> Sampling:
        return Sampling()

    @cached_property
    def conversation(self) -> Conversation:
        """The request in the neutral form the serving core takes."""
        system = [Turn("system", _text(self.system))] if self.system else []
        turns = [turn for message in self.messages for turn in message.turns()]
        choice = self.tool_choice
        mode = None if choice is None else _CHOICES.get(choice.type, choice.name)
        tools = tuple(ToolSpec(t.name, t.description, t.input_schema) for t in self.tools or [])
        parallel = not (choice and choice.disable_parallel_tool_use)
        return Conversation(self.model, tuple(system + turns), self.sampling(), tools, mode, parallel,
                            names=Names(output_format="output_config"))


class CountTokensRequest(ConversationBody):
    pass


class MessagesRequest(ConversationBody):
    # Hints for Anthropic's own accounting, scheduling and caching: nothing in the answer depends on them.
    ignored = frozenset({"metadata", "service_tier", "inference_geo", "cache_control", "user_profile_id",
                         "workspace_id"})
    defaults = {**ConversationBody.defaults, "speed": "standard"}
    max_tokens: int = Field(ge=1, le=100_000)
    stop_sequences: list[str] | None = Field(None, max_length=MAX_STOP_STRINGS)
    temperature: float | None = Field(None, ge=0, le=1)  # Anthropic's range
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0, le=2**31 - 1)
    stream: bool = False

    @field_validator("stop_sequences")
    @classmethod
    def _stops(cls, value: list[str] | None) -> list[str] | None:
        if any(not stop or len(stop) > MAX_STOP_CHARS for stop in value or []):
            raise ValueError(f"each stop sequence must have 1 to {MAX_STOP_CHARS} characters")
        return value

    def sampling(self) -> Sampling:
        return Sampling(self.max_tokens, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                        stop=tuple(self.stop_sequences or ()))
