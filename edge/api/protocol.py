"""Request models of the OpenAI contract. Validation here is what turns bad values into 400s."""

from __future__ import annotations

import math
import re
from functools import cached_property
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from edge.api.conversation import Conversation, OutputFormat, PastCall, Sampling, Turn
from edge.chat.grammar import UnsupportedSchema, check_schema_bounds
from edge.chat.tools import ToolSpec
from edge.engine.logprobs import MAX_TOP_LOGPROBS
from edge.engine.sampling import MAX_LOGIT_BIAS

MAX_STOP_STRINGS = 16
# The engine scans for each stop string at every token: a long one costs every step.
MAX_STOP_CHARS = 1024
MAX_TOOLS = 128  # OpenAI's own limit
MAX_COMPLETION_LOGPROBS = 5  # /v1/completions' `logprobs`, as OpenAI documents it
MAX_LOGIT_BIAS_TOKENS = 1024  # each is a sampler entry that every step applies
INT32_MAX = 2**31 - 1  # llama.cpp's top_k is an int32_t
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # seeds: what OpenAI's clients send
_SURROGATE = re.compile(r"[\ud800-\udfff]")


class _Lenient(BaseModel):
    # Clients send fields we do not use (user, logit_bias: null, ...): ignore them, as OpenAI does.
    # No field takes an infinity or a NaN (nor their spellings as strings, "inf", "NaN").
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


def invalid_value(value: Any) -> tuple[str, str] | None:
    """(path, problem) for the first value anywhere in `value` that no request may hold: a string
    with a lone surrogate (JSON's "\\ud800" escape; not Unicode, so it cannot be encoded as UTF-8)
    or a number that is not finite (Python's JSON reader takes Infinity and NaN). None if there is
    none. Iterative, so any nesting is safe; dict keys count as strings of their object."""
    pending: list[tuple[tuple, Any]] = [((), value)]
    while pending:
        path, item = pending.pop()
        if isinstance(item, str):
            if (found := _SURROGATE.search(item)) is not None:
                code_point = f"\\u{ord(found.group()):04x}"
                return _path(path), f"contains a lone surrogate ({code_point}), which is not valid Unicode"
        elif isinstance(item, float):
            if not math.isfinite(item):
                return _path(path), f"must be a finite number, got {item}"
        elif isinstance(item, dict):
            if any(isinstance(key, str) and _SURROGATE.search(key) for key in item):
                return _path(path), "has a key with a lone surrogate, which is not valid Unicode"
            pending.extend(((*path, key), child) for key, child in reversed(item.items()))
        elif isinstance(item, list):
            pending.extend(((*path, index), child) for index, child in reversed(list(enumerate(item))))
    return None


def _path(parts: tuple) -> str:
    return ".".join(str(part) for part in parts)


class _Body(_Lenient):
    """A whole request body. Before any field is read, the raw body is checked once for values
    no field type catches on its own (see `invalid_value`): they would fail later, as 500s."""

    @model_validator(mode="before")
    @classmethod
    def _encodable(cls, data: Any) -> Any:
        problem = invalid_value(data)
        if problem is not None:
            path, message = problem
            # errors.from_validation takes the param from the context: the path is not a field's.
            raise PydanticCustomError("invalid_value", "{param}: {problem}" if path else "{problem}",
                                      {"param": path or None, "problem": message})
        return data


def _bounded_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A JSON schema within the grammar's limits on nesting and size (grammar.check_schema_bounds)."""
    try:
        check_schema_bounds(schema)
    except UnsupportedSchema as error:
        raise PydanticCustomError("invalid_schema", "{problem}", {"problem": str(error)}) from error
    return schema


class TextPart(_Lenient):
    type: Literal["text"]
    text: str


Content = str | list[TextPart]


def content_text(content: Content | None) -> str:
    """The text of a message's content, whichever of the two forms it came in."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.text for part in content)


# Any number of system (or developer) messages, anywhere: the chat template renders them in place
# or merges them into its leading system text (edge.chat.template). `name` (OpenAI: tells
# participants of one role apart) is accepted and not rendered: our templates have no slot for it.
class SystemMessage(_Lenient):
    role: Literal["system", "developer"]
    content: Content
    name: str | None = None


class UserMessage(_Lenient):
    role: Literal["user"]
    content: Content
    name: str | None = None


class FunctionCall(_Lenient):
    name: str
    arguments: str


class ToolCallIn(_Lenient):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class AssistantMessage(_Lenient):
    """As the last message: the reply continues its text (prefill)."""

    role: Literal["assistant"]
    content: Content | None = None
    tool_calls: list[ToolCallIn] | None = None
    name: str | None = None


class ToolMessage(_Lenient):
    role: Literal["tool"]
    content: Content
    tool_call_id: str


Message = Annotated[SystemMessage | UserMessage | AssistantMessage | ToolMessage, Field(discriminator="role")]


class FunctionSpec(_Lenient):
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=dict)

    _bounded = field_validator("parameters")(_bounded_schema)


class ToolSpecIn(_Lenient):
    type: Literal["function"]
    function: FunctionSpec


class NamedFunction(_Lenient):
    name: str


class NamedToolChoice(_Lenient):
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaSpec(_Lenient):
    name: str = "response"
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None

    _bounded = field_validator("schema_")(_bounded_schema)


class ResponseFormat(_Lenient):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("response_format of type json_schema needs a json_schema")
        return self


class StreamOptions(_Lenient):
    include_usage: bool = False


class SamplingFields(_Body):
    """Fields shared by /v1/chat/completions and /v1/completions. None means the default."""

    model: str
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0, le=INT32_MAX)
    min_p: float | None = Field(None, ge=0, le=1)
    seed: int | None = Field(None, ge=INT64_MIN, le=INT64_MAX)
    max_tokens: int | None = Field(None, ge=0, le=100_000)
    stop: str | list[str] | None = None
    n: int | None = Field(None, ge=1, le=2)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    repetition_penalty: float | None = Field(None, gt=0)
    # Token id (as a string: JSON keys are) -> -100..100, added to its logit before sampling.
    logit_bias: dict[str, float] | None = Field(None, max_length=MAX_LOGIT_BIAS_TOKENS)

    @model_validator(mode="after")
    def _check_combinations(self) -> SamplingFields:
        if isinstance(self.stop, list) and len(self.stop) > MAX_STOP_STRINGS:
            raise ValueError(f"stop: at most {MAX_STOP_STRINGS} strings, got {len(self.stop)}")
        if self.stop is not None and any(s == "" for s in self.stop_strings):
            raise ValueError("stop: stop strings must not be empty")
        if any(len(s) > MAX_STOP_CHARS for s in self.stop_strings):
            raise ValueError(f"stop: a stop string may have at most {MAX_STOP_CHARS} characters")
        if self.stream and (self.n or 1) != 1:
            raise ValueError("n: streaming supports only n=1")
        for key, bias in (self.logit_bias or {}).items():
            if not key.isdigit():
                raise ValueError(f"logit_bias: keys are token ids, got {key!r}")
            if not -MAX_LOGIT_BIAS <= bias <= MAX_LOGIT_BIAS:
                raise ValueError(f"logit_bias: the bias of token {key} must be in [-{MAX_LOGIT_BIAS:g}, {MAX_LOGIT_BIAS:g}], got {bias}")
        return self

    @property
    def logit_biases(self) -> tuple[tuple[int, float], ...]:
        return tuple((int(key), bias) for key, bias in (self.logit_bias or {}).items())

    @property
    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    @property
    def max_tokens_is_null(self) -> bool:
        """An explicit `"max_tokens": null` asks for everything the context has room for."""
        return "max_tokens" in self.model_fields_set and self.max_tokens is None

    def sampling(self, max_tokens: int | None = None) -> Sampling:
        """The neutral sampling fields; `max_tokens` (max_completion_tokens) overrides `max_tokens`."""
        return Sampling(
            max_tokens if max_tokens is not None else self.max_tokens, self.max_tokens_is_null, self.temperature,
            self.top_p, self.top_k, self.min_p, self.presence_penalty, self.frequency_penalty,
            self.repetition_penalty, self.logit_biases, self.stop_strings, self.seed, self.n or 1,
            self.logprobs_top)


class ChatCompletionRequest(SamplingFields):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=0, le=100_000)
    tools: list[ToolSpecIn] | None = Field(None, max_length=MAX_TOOLS)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)

    @model_validator(mode="after")
    def _check_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs: needs logprobs set to true")
        return self

    @property
    def logprobs_top(self) -> int | None:
        """None: no logprobs; else the alternatives to give per token."""
        return (self.top_logprobs or 0) if self.logprobs else None

    @model_validator(mode="after")
    def _check_conversation(self) -> ChatCompletionRequest:
        self.conversation.check()  # the checks every surface shares (conversation.Conversation.check)
        return self

    @cached_property
    def conversation(self) -> Conversation:
        """The request in the neutral form the serving core takes."""
        choice = self.tool_choice
        output = OutputFormat()
        if self.response_format is not None and self.response_format.type != "text":
            schema = self.response_format.json_schema.schema_ if self.response_format.json_schema else None
            output = OutputFormat(self.response_format.type, schema)
        return Conversation(
            self.model, chat_turns(self.messages), self.sampling(self.max_completion_tokens),
            tuple(ToolSpec(t.function.name, t.function.description, t.function.parameters) for t in self.tools or []),
            choice.function.name if isinstance(choice, NamedToolChoice) else choice, self.parallel_tool_calls, output)


def chat_turns(messages: list[Message]) -> tuple[Turn, ...]:
    """Chat messages as neutral turns. A message's `name` is not kept: no template we serve has a
    place for it."""
    turns = []
    for message in messages:
        text = content_text(message.content)
        if isinstance(message, SystemMessage):
            turns.append(Turn("system", text))
        elif isinstance(message, AssistantMessage):
            calls = tuple(PastCall(c.id, c.function.name, c.function.arguments) for c in message.tool_calls or [])
            turns.append(Turn("assistant", text, calls))
        elif isinstance(message, ToolMessage):
            turns.append(Turn("tool", text, call_id=message.tool_call_id))
        else:
            turns.append(Turn("user", text))
    return tuple(turns)


class CompletionRequest(SamplingFields):
    prompt: str | list[str]
    logprobs: int | None = Field(None, ge=0, le=MAX_COMPLETION_LOGPROBS)  # the legacy API's top count
    echo: bool = False

    @model_validator(mode="after")
    def _check_echo(self) -> CompletionRequest:
        if self.echo and self.logprobs is not None:
            # The prompt's own logprobs would need logits at every prompt position and no prefix
            # reuse; the engine does not compute them, so the combination is refused, not faked.
            raise ValueError("echo: cannot be combined with logprobs (the prompt's logprobs are not computed)")
        return self

    @property
    def logprobs_top(self) -> int | None:
        return self.logprobs

    @model_validator(mode="after")
    def _one_prompt(self) -> CompletionRequest:
        if isinstance(self.prompt, list) and len(self.prompt) != 1:
            raise ValueError("prompt: exactly one prompt per request is supported")
        return self

    @property
    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]
