"""The neutral request form under every surface: a conversation, sampling, tools, an output format.

OpenAI chat completions (protocol.py), OpenAI Responses (openai_responses_protocol.py) and
Anthropic Messages (anthropic_messages_protocol.py) each convert their request into a `Conversation`;
the serving core (serving.py) turns it into the engine request. So the tool prompt and grammar,
the JSON grammar, the sampling defaults and the context budget exist once, whichever API a
client speaks. The checks that hold for any surface live here too (`Conversation.check`), and
raise ValueError with the surface's own field names, so that each protocol model reports them
as its validation errors (a 400 in that surface's shape).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edge.chat.tools import ToolSpec


@dataclass(frozen=True)
class PastCall:
    """A tool call made earlier in the conversation (an assistant turn's)."""

    id: str
    name: str
    arguments: str  # JSON text


@dataclass(frozen=True)
class Turn:
    """One message: role system, user or assistant, or "tool" for a call's result."""

    role: str
    text: str = ""
    calls: tuple[PastCall, ...] = ()
    call_id: str = ""  # role tool: the call it answers
    is_error: bool = False  # role tool: the call failed (Anthropic's tool_result.is_error)


@dataclass(frozen=True)
class OutputFormat:
    type: str = "text"  # text, json_object or json_schema
    schema: dict[str, Any] | None = None


@dataclass(frozen=True)
class Sampling:
    """Sampling and length; None means the default (the serving core applies them)."""

    max_tokens: int | None = None
    max_tokens_is_null: bool = False  # an explicit null: all the room the context has left
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    logit_bias: tuple[tuple[int, float], ...] = ()
    stop: tuple[str, ...] = ()
    seed: int | None = None
    n: int = 1
    logprobs: int | None = None  # None: none; else the alternatives per token


@dataclass(frozen=True)
class Names:
    """What the surface calls the fields that errors name."""

    messages: str = "messages"
    output_format: str = "response_format"
    tool_choice: str = "tool_choice"


@dataclass(frozen=True)
class Conversation:
    model: str
    turns: tuple[Turn, ...]
    sampling: Sampling = field(default_factory=Sampling)
    tools: tuple[ToolSpec, ...] = ()
    # None (the default: auto with tools), "none", "auto", "required", or the one tool to call.
    tool_choice: str | None = None
    parallel_tool_calls: bool = True
    output: OutputFormat = field(default_factory=OutputFormat)
    names: Names = field(default_factory=Names)

    @property
    def tool_mode(self) -> str:
        """none, auto, required, or the name of the one function the model must call."""
        if not self.tools or self.tool_choice == "none":
            return "none"
        return self.tool_choice or "auto"

    def check(self) -> Conversation:
        """Itself, if any engine request can be made of it; else a ValueError "field: problem"."""
        names = self.names
        last = self.turns[-1] if self.turns else None
        if last is not None and last.role == "assistant" and last.calls:
            # A final assistant message is continued, and text after a call is not a call's answer.
            raise ValueError(f"{names.messages}: a final assistant message cannot have tool_calls: its text is "
                             "continued; send the calls' results after it, or leave the calls out")
        called: set[str] = set()
        for turn in self.turns:
            called.update(call.id for call in turn.calls)
            if turn.role == "tool" and turn.call_id not in called:
                raise ValueError(f"{names.messages}: a tool result answers unknown tool call id {turn.call_id!r}")
        tool_names = [tool.name for tool in self.tools]
        if self.tool_choice not in (None, "none") and not tool_names:
            raise ValueError(f"{names.tool_choice}: needs tools")
        if self.tool_choice not in (None, "none", "auto", "required") and self.tool_choice not in tool_names:
            raise ValueError(f"{names.tool_choice}: no tool named {self.tool_choice!r}")
        if self.tools and self.output.type != "text":
            raise ValueError(f"{names.output_format}: JSON output cannot be combined with tools")
        return self

    def call_names(self) -> dict[str, str]:
        """Call id -> tool name, for every call made in the conversation."""
        return {call.id: call.name for turn in self.turns for call in turn.calls}
