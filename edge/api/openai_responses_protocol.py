"""Request models of OpenAI's Responses API (POST /v1/responses), and their neutral conversation.

Stateless: every request carries its whole conversation (`input` items and `instructions`).
`store` is accepted and ignored (nothing is kept), so `previous_response_id` and `conversation`
are refused: no earlier response exists here to continue from.
"""

from __future__ import annotations

from functools import cached_property
from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, field_validator, model_validator
from pydantic_core import PydanticCustomError

from edge.api.conversation import Conversation, Names, OutputFormat, PastCall, Sampling, Turn
from edge.api.protocol import MAX_TOOLS, _bounded_schema
from edge.api.strict_fields import Refusing, RefusingBody
from edge.chat.tools import ToolSpec

_STATELESS = ("this server is stateless and keeps no responses (store is ignored): "
              "send the whole conversation as input items")
_TEXT_ONLY = "the served model reads text only"


class TextPart(Refusing):
    """A text part of a message: input_text (any role) or output_text (an earlier answer's)."""

    ignored = frozenset({"annotations", "logprobs"})
    type: Literal["input_text", "output_text"]
    text: str


def _text_parts(value: Any) -> Any:
    """Checked before the parts' own fields, so that an image part is refused for being an image."""
    for part in value if isinstance(value, list) else []:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in ("input_text", "output_text"):
            raise ValueError(f"parts of type {kind!r} are not supported ({_TEXT_ONLY}): use input_text")
    return value


def _text(content: str | list[TextPart]) -> str:
    return content if isinstance(content, str) else "".join(part.text for part in content)


class MessageItem(Refusing):
    ignored = frozenset({"id", "status", "phase"})
    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer", "assistant"]
    content: str | list[TextPart]

    _parts = field_validator("content", mode="before")(_text_parts)


class FunctionCallItem(Refusing):
    ignored = frozenset({"id", "status"})
    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str


class FunctionCallOutputItem(Refusing):
    ignored = frozenset({"id", "status"})
    type: Literal["function_call_output"]
    call_id: str
    output: str | list[TextPart]

    _parts = field_validator("output", mode="before")(_text_parts)


_ITEM_TYPES = ("message", "function_call", "function_call_output")


def _item_type(value: Any) -> str:
    kind = _tag(value)
    if kind not in _ITEM_TYPES:
        reason = _STATELESS if kind == "item_reference" else "only message, function_call and function_call_output"
        raise ValueError(f"input items of type {kind!r} are not supported ({reason})")
    return kind


def _tag(value: Any) -> str:
    """The item's tag; a message may leave its type out (the API's "easy input message")."""
    return value.get("type", "message") if isinstance(value, dict) else getattr(value, "type", "message")


InputItem = Annotated[Annotated[MessageItem, Tag("message")] | Annotated[FunctionCallItem, Tag("function_call")]
                      | Annotated[FunctionCallOutputItem, Tag("function_call_output")], Discriminator(_tag)]


class FunctionTool(Refusing):
    type: Literal["function"]
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    # The grammar always enforces the schema, so strict or not, the arguments validate.
    strict: bool | None = None

    _bounded = field_validator("parameters")(lambda value: value if value is None else _bounded_schema(value))


class NamedFunction(Refusing):
    type: Literal["function"]
    name: str


class FormatSpec(Refusing):
    ignored = frozenset({"description", "strict"})  # strict: the grammar enforces the schema either way
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")

    _bounded = field_validator("schema_")(lambda value: value if value is None else _bounded_schema(value))

    @model_validator(mode="after")
    def _schema_given(self) -> FormatSpec:
        if self.type == "json_schema" and self.schema_ is None:
            raise ValueError("a format of type json_schema needs a schema")
        return self


class TextConfig(Refusing):
    defaults = {"verbosity": "medium"}
    reasons = {"verbosity": "the model's length is set by max_output_tokens"}
    format: FormatSpec | None = None


def _refusal(param: str, problem: str) -> PydanticCustomError:
    """A refusal that names its place (errors.from_validation reads the param from the context)."""
    return PydanticCustomError("unsupported_field", "{param}: {problem}", {"param": param, "problem": problem})


class ResponsesRequest(RefusingBody):
    # Accepted and ignored: hints that change nothing in the answer.
    ignored = frozenset({"store", "user", "safety_identifier", "prompt_cache_key", "service_tier", "stream_options",
                         "prompt_cache_retention"})
    defaults = {"truncation": "disabled", "background": False, "include": []}
    reasons = {"previous_response_id": _STATELESS, "conversation": _STATELESS,
               "background": "responses are answered while the request waits",
               "truncation": "a conversation that does not fit is refused, not cut",
               "reasoning": "the served model has no reasoning settings", "include": "nothing extra can be included",
               "top_logprobs": "logprobs are served on /v1/chat/completions",
               "prompt": "stored prompts are not kept here", "max_tool_calls": "use parallel_tool_calls"}

    model: str
    input: str | list[InputItem] = Field(min_length=1)
    instructions: str | None = None
    max_output_tokens: int | None = Field(None, ge=1, le=100_000)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    tools: list[FunctionTool] | None = Field(None, max_length=MAX_TOOLS)
    tool_choice: Literal["none", "auto", "required"] | NamedFunction | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    stream: bool = False
    metadata: dict[str, str] | None = Field(None, max_length=16)  # echoed back, otherwise unused

    @field_validator("input", mode="before")
    @classmethod
    def _known_items(cls, value: Any) -> Any:
        if isinstance(value, list):
            for index, item in enumerate(value):
                try:
                    _item_type(item)
                except ValueError as error:
                    raise _refusal(f"input.{index}", str(error)) from error
        return value

    @field_validator("tools", mode="before")
    @classmethod
    def _function_tools_only(cls, value: Any) -> Any:
        for index, tool in enumerate(value if isinstance(value, list) else []):
            kind = tool.get("type") if isinstance(tool, dict) else None
            if kind != "function":
                raise _refusal(f"tools.{index}", f"tools of type {kind!r} are not supported: only function tools "
                               "(the server runs no hosted tools)")
        return value

    @model_validator(mode="after")
    def _check_conversation(self) -> ResponsesRequest:
        self.conversation.check()
        return self

    @property
    def output_format(self) -> FormatSpec:
        return (self.text.format if self.text else None) or FormatSpec(type="text")

    @cached_property
    def conversation(self) -> Conversation:
        """The request in the neutral form the serving core takes."""
        choice = self.tool_choice
        output = self.output_format
        tools = tuple(ToolSpec(t.name, t.description or "", t.parameters or {}) for t in self.tools or [])
        return Conversation(
            self.model, self._turns(), Sampling(self.max_output_tokens, False, self.temperature, self.top_p),
            tools, choice.name if isinstance(choice, NamedFunction) else choice,
            self.parallel_tool_calls is not False, OutputFormat(output.type, output.schema_),
            Names(messages="input", output_format="text.format"))

    def _turns(self) -> tuple[Turn, ...]:
        turns = [Turn("system", self.instructions)] if self.instructions else []
        if isinstance(self.input, str):
            return (*turns, Turn("user", self.input))
        for item in self.input:
            if isinstance(item, MessageItem):
                turns.append(Turn("system" if item.role == "developer" else item.role, _text(item.content)))
            elif isinstance(item, FunctionCallItem):
                call = PastCall(item.call_id, item.name, item.arguments)
                # An answer's text and its calls (parallel ones come as separate items) are one turn.
                if turns and turns[-1].role == "assistant":
                    last = turns.pop()
                    turns.append(Turn("assistant", last.text, (*last.calls, call)))
                else:
                    turns.append(Turn("assistant", "", (call,)))
            else:
                turns.append(Turn("tool", _text(item.output), call_id=item.call_id))
        return tuple(turns)
