"""The serving layer: OpenAI requests -> engine requests, engine events -> choice updates.

Both response forms are built from the same stream of `ChoiceUpdate`s, so a streamed answer is
by construction the concatenation of the deltas of the non-streamed one.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from edge.api.errors import EdgeError
from edge.api.protocol import (
    AssistantMessage, ChatCompletionRequest, CompletionRequest, SamplingFields, SystemMessage,
    ToolMessage, content_text,
)
from edge.chat.template import ChatMessage, TemplateError
from edge.chat.grammar import UnsupportedSchema, json_grammar
from edge.chat.tools import (
    MAX_PARALLEL_CALLS, ToolCall, ToolCallReader, ToolSpec, call_text, result_text, tools_grammar, tools_prompt,
)
from edge.engine.jobs import (
    FAILURE_STATUS, ChoiceFinished, EngineRefusal, Generation, GenerationDone, GenerationFailed, GenerationRequest,
    TextDelta, TokenLogprob,
)
from edge.engine.sampling import SamplingParams
from edge.served import ServedModel

DEFAULT_MAX_TOKENS = {"chat": 512, "text": 16}  # the OpenAI API's defaults for each endpoint


@dataclass(frozen=True)
class Prepared:
    """A validated request, ready for the engine."""

    generation: GenerationRequest
    kind: str  # "chat" or "text"
    tools_enabled: bool = False
    include_usage: bool = False
    echo: str = ""  # /v1/completions with echo: the prompt, which the text starts with


@dataclass
class ChoiceUpdate:
    index: int
    content: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str | None = None
    logprobs: tuple[TokenLogprob, ...] = ()  # of the tokens behind this update (when asked for)


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    price_per_mtoken: float

    def as_dict(self) -> dict:
        total = self.prompt_tokens + self.completion_tokens
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": total, "estimated_cost": round(total * self.price_per_mtoken / 1e6, 10)}


def _failure(code: str, message: str, retry_after: int | None) -> EdgeError:
    """The HTTP error for an engine's refusal or failure: one status per code (jobs.FAILURE_STATUS),
    whichever engine reported it."""
    status = FAILURE_STATUS.get(code, 503)
    text = f"the server is busy: {message}" if code == "queue_full" else message
    return EdgeError(status, text, None, code, retry_after if status in (429, 503) else None)


class ServingLayer:
    def __init__(self, served: ServedModel) -> None:
        self.served = served

    def check_model(self, name: str) -> None:
        if name not in self.served.aliases:
            raise EdgeError(404, f"model {name!r} is not served here; this server serves {self.served.id!r}",
                            "model", "model_not_found")

    def prepare_chat(self, request: ChatCompletionRequest) -> Prepared:
        self.check_model(request.model)
        tools = [ToolSpec(t.function.name, t.function.description, t.function.parameters) for t in request.tools or []]
        mode = request.tool_mode
        extra_system, grammar = self._constraints(request, tools, mode)
        try:
            prompt = self.served.template.render(_chat_messages(request, extra_system))
        except TemplateError as error:
            raise EdgeError(400, f"messages: {error}", "messages", "invalid_conversation") from error
        limit = request.max_completion_tokens if request.max_completion_tokens is not None else request.max_tokens
        generation = self._generation(request, self.served.tokenize_prompt(prompt), limit, "chat", grammar)
        return Prepared(generation, "chat", mode != "none", _include_usage(request))

    def prepare_completion(self, request: CompletionRequest) -> Prepared:
        self.check_model(request.model)
        tokens = self.served.tokenize_prompt(request.prompt_text)
        if not tokens:
            raise EdgeError(400, "prompt: the prompt is empty", "prompt", "invalid_value")
        generation = self._generation(request, tokens, request.max_tokens, "text", None)
        return Prepared(generation, "text", False, _include_usage(request), request.prompt_text if request.echo else "")

    def _constraints(self, request: ChatCompletionRequest, tools: list[ToolSpec], mode: str) -> tuple[str, str | None]:
        """Extra system text and the grammar that the tool or JSON mode needs."""
        if mode != "none":
            forced = mode if mode not in ("auto", "required") else None
            chosen = [t for t in tools if t.name == forced] if forced else tools
            max_calls = MAX_PARALLEL_CALLS if request.parallel_tool_calls and not forced else 1
            try:
                grammar = tools_grammar(chosen, allow_answer=mode == "auto", max_calls=max_calls)
            except UnsupportedSchema as error:
                raise EdgeError(400, f"tools: {error}", "tools", "invalid_schema") from error
            return tools_prompt(chosen, forced, required=mode == "required"), grammar
        response_format = request.response_format
        if response_format is None or response_format.type == "text":
            return "", None
        if response_format.type == "json_object":
            return "Reply with a JSON object only.", json_grammar(None)
        schema = response_format.json_schema.schema_
        try:
            grammar = json_grammar(schema)
        except UnsupportedSchema as error:
            raise EdgeError(400, f"response_format: {error}", "response_format", "invalid_schema") from error
        return f"Reply with JSON only, matching this JSON schema: {_compact(schema)}", grammar

    def _generation(self, request: SamplingFields, tokens: list[int], limit: int | None, kind: str,
                    grammar: str | None) -> GenerationRequest:
        max_tokens = self._completion_budget(len(tokens), limit, request.max_tokens_is_null, DEFAULT_MAX_TOKENS[kind])
        sampling = SamplingParams(
            temperature=_default(request.temperature, 1.0), top_p=_default(request.top_p, 1.0),
            top_k=_default(request.top_k, 0), min_p=_default(request.min_p, 0.0),
            presence_penalty=_default(request.presence_penalty, 0.0),
            frequency_penalty=_default(request.frequency_penalty, 0.0),
            repetition_penalty=_default(request.repetition_penalty, 1.0),
            logit_bias=self._logit_bias(request),
        )
        # The end-of-sequence text is a stop too: a model may spell `</s>` out in plain characters
        # instead of emitting the token, and it must not reach the client either way.
        eos_text = self.served.template.eos_token
        stops = request.stop_strings + ((eos_text,) if eos_text and eos_text not in request.stop_strings else ())
        return GenerationRequest(tokens, max_tokens, sampling, request.n or 1, stops, request.seed, grammar,
                                 request.logprobs_top)

    def _logit_bias(self, request: SamplingFields) -> tuple[tuple[int, float], ...]:
        biases = request.logit_biases
        if not biases:
            return ()
        n_vocab = self.served.model.n_vocab
        unknown = [token for token, _ in biases if token >= n_vocab]
        if unknown:
            raise EdgeError(400, f"logit_bias: token {unknown[0]} is not in the vocabulary (ids 0 to {n_vocab - 1})",
                            "logit_bias", "invalid_value")
        return biases

    def _completion_budget(self, prompt_tokens: int, requested: int | None, is_null: bool, default: int) -> int:
        """max_tokens after applying the context: at most the room the prompt leaves in it.

        A larger max_tokens is a ceiling, not a demand (clients send the model's whole context,
        or 100000): generation then stops when the context is full, with finish_reason "length".
        Clamped, prompt plus max_tokens never exceeds the context, which is what the engine's
        check_fits and its slots count on (each sequence has a KV stream of ctx_size cells).
        Only a prompt that leaves no room for a single token is refused."""
        context = self.served.ctx_size
        room = context - prompt_tokens
        if room <= 0:
            raise EdgeError(400, f"the prompt is {prompt_tokens} tokens but the context holds only {context}",
                            "messages", "context_length_exceeded")
        if is_null:
            return room
        return min(default if requested is None else requested, room)

    def submit(self, prepared: Prepared, loop: asyncio.AbstractEventLoop) -> Generation:
        """Hand the request to the engine (blocking: call it from a worker thread); an EdgeError
        when the engine refuses it."""
        engine = self.served.engine
        try:
            return engine.submit(prepared.generation, loop)
        except EngineRefusal as error:
            raise _failure(error.code, error.message, error.retry_after or engine.retry_after()) from error

    async def wait_started(self, generation: Generation) -> None:
        """Wait until the request leaves the queue, so that a full queue, a queue timeout or a
        shutdown is still a plain HTTP error, streamed or not."""
        failure = await generation.started()
        if failure is not None:
            raise _failure(failure.code, failure.message, self.served.engine.retry_after())

    async def updates(self, prepared: Prepared, generation: Generation) -> AsyncIterator[ChoiceUpdate | Usage]:
        """Choice updates as the engine produces them, then the usage."""
        n = prepared.generation.n
        readers = [ToolCallReader(prepared.tools_enabled) for _ in range(n)]
        logprobs: list[tuple[TokenLogprob, ...]] = [()] * n  # of text a reader still holds back
        completion_tokens = 0
        try:
            async for event in generation.events():
                if isinstance(event, TextDelta):
                    text, calls = readers[event.index].feed(event.text)
                    logprobs[event.index] += event.logprobs
                    if text or calls:
                        yield ChoiceUpdate(event.index, text, calls, None, logprobs[event.index])
                        logprobs[event.index] = ()
                elif isinstance(event, ChoiceFinished):
                    completion_tokens += event.completion_tokens
                    reader = readers[event.index]
                    leftover = reader.finish()
                    reason = "tool_calls" if reader.calls and not leftover else event.reason
                    yield ChoiceUpdate(event.index, leftover, [], reason, logprobs[event.index])
                elif isinstance(event, GenerationFailed):
                    raise _failure(event.code, event.message, self.served.engine.retry_after())
                elif isinstance(event, GenerationDone):
                    yield Usage(event.prompt_tokens, completion_tokens, self.served.price_per_mtoken)
        finally:
            generation.cancel()  # a no-op when it finished; the request's owner cancels it too


def _chat_messages(request: ChatCompletionRequest, extra_system: str) -> list[ChatMessage]:
    """The conversation as plain-text messages, in order, tool calls and results written in our
    tool format; the template reduces them to the turns it can render (ChatTemplate.render).
    A message's `name` is not rendered: no template we serve has a place for it."""
    names = {call.id: call.function.name for m in request.messages if isinstance(m, AssistantMessage)
             for call in m.tool_calls or []}
    messages = []
    for message in request.messages:
        text = content_text(message.content)
        if isinstance(message, SystemMessage):
            messages.append(ChatMessage("system", text))
        elif isinstance(message, AssistantMessage):
            calls = "".join(call_text(c.function.name, c.function.arguments) for c in message.tool_calls or [])
            messages.append(ChatMessage("assistant", text + calls))
        elif isinstance(message, ToolMessage):
            messages.append(ChatMessage("user", result_text(names[message.tool_call_id], text)))
        else:
            messages.append(ChatMessage("user", text))
    if extra_system:
        # The tool or JSON instructions go right after the client's leading system messages (the
        # template merges them into one), so they lead the conversation with every template.
        leading = next((i for i, m in enumerate(messages) if m.role != "system"), len(messages))
        messages.insert(leading, ChatMessage("system", extra_system))
    return messages


def _default(value, default):
    return default if value is None else value


def _include_usage(request: SamplingFields) -> bool:
    return bool(request.stream_options and request.stream_options.include_usage)


def _compact(schema: dict) -> str:
    return json.dumps(schema, separators=(",", ":"))
