"""The serving core: neutral conversations (edge/api/conversation.py, whichever API a client speaks)
-> engine requests, engine events -> choice updates that each surface shapes its own way.

Both response forms are built from the same stream of `ChoiceUpdate`s, so a streamed answer is
by construction the concatenation of the deltas of the non-streamed one.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace

from edge.api.errors import EdgeError
from edge.api.conversation import Conversation, Names, Sampling
from edge.api.protocol import ChatCompletionRequest, CompletionRequest, SamplingFields
from edge.chat.template import ChatMessage, TemplateError
from edge.chat.grammar import UnsupportedSchema, json_grammar
from edge.chat.tools import (
    MAX_PARALLEL_CALLS, ToolCall, ToolCallReader, call_text, result_text, tools_grammar, tools_prompt,
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
    client_stops: tuple[str, ...] = ()  # the request's own stop strings (the engine's add end-of-sequence text)


@dataclass
class ChoiceUpdate:
    index: int
    content: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str | None = None
    logprobs: tuple[TokenLogprob, ...] = ()  # of the tokens behind this update (when asked for)
    stop: str | None = None  # the client's stop string that ended the choice (with finish_reason "stop")


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    price_per_mtoken: float

    def as_dict(self) -> dict:
        total = self.prompt_tokens + self.completion_tokens
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": total, "estimated_cost": round(total * self.price_per_mtoken / 1e6, 10)}


@dataclass
class Outcome:
    """A one-choice answer, whole: what the Responses and Anthropic surfaces shape."""

    text: str = ""
    calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str = "stop"
    stop: str | None = None
    usage: Usage | None = None

    def add(self, update: ChoiceUpdate | Usage) -> None:
        if isinstance(update, Usage):
            self.usage = update
            return
        self.text += update.content
        self.calls.extend(update.tool_calls)
        if update.finish_reason:
            self.finish_reason, self.stop = update.finish_reason, update.stop


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
        return replace(self.prepare(request.conversation), include_usage=_include_usage(request))

    def prepare(self, conversation: Conversation) -> Prepared:
        """The engine request for a conversation, whichever surface it came from (blocking: it
        renders, tokenizes and builds grammars; call it from a worker thread)."""
        self.check_model(conversation.model)
        tokens, grammar = self._prompt(conversation)
        generation = self._generation(conversation.sampling, tokens, "chat", grammar, conversation.names)
        return Prepared(generation, "chat", conversation.tool_mode != "none",
                        client_stops=conversation.sampling.stop)

    def count_tokens(self, conversation: Conversation) -> int:
        """The prompt tokens the conversation (with its tool and JSON instructions) would take."""
        self.check_model(conversation.model)
        return len(self._prompt(conversation)[0])

    def prepare_completion(self, request: CompletionRequest) -> Prepared:
        self.check_model(request.model)
        tokens = self.served.tokenize_prompt(request.prompt_text)
        if not tokens:
            raise EdgeError(400, "prompt: the prompt is empty", "prompt", "invalid_value")
        generation = self._generation(request.sampling(), tokens, "text", None, Names(messages="prompt"))
        return Prepared(generation, "text", False, _include_usage(request), request.prompt_text if request.echo else "")

    def _prompt(self, conversation: Conversation) -> tuple[list[int], str | None]:
        """The prompt's tokens and the grammar that the tool or JSON mode needs."""
        extra_system, grammar = self._constraints(conversation)
        try:
            prompt = self.served.template.render(_chat_messages(conversation, extra_system))
        except TemplateError as error:
            field_name = conversation.names.messages
            raise EdgeError(400, f"{field_name}: {error}", field_name, "invalid_conversation") from error
        return self.served.tokenize_prompt(prompt), grammar

    def _constraints(self, conversation: Conversation) -> tuple[str, str | None]:
        """Extra system text and the grammar that the tool or JSON mode needs."""
        mode = conversation.tool_mode
        if mode != "none":
            forced = mode if mode not in ("auto", "required") else None
            chosen = [t for t in conversation.tools if t.name == forced] if forced else list(conversation.tools)
            max_calls = MAX_PARALLEL_CALLS if conversation.parallel_tool_calls and not forced else 1
            try:
                grammar = tools_grammar(chosen, allow_answer=mode == "auto", max_calls=max_calls)
            except UnsupportedSchema as error:
                raise EdgeError(400, f"tools: {error}", "tools", "invalid_schema") from error
            return tools_prompt(chosen, forced, required=mode == "required"), grammar
        output = conversation.output
        if output.type == "text":
            return "", None
        if output.type == "json_object":
            return "Reply with a JSON object only.", json_grammar(None)
        try:
            grammar = json_grammar(output.schema)
        except UnsupportedSchema as error:
            field_name = conversation.names.output_format
            raise EdgeError(400, f"{field_name}: {error}", field_name, "invalid_schema") from error
        return f"Reply with JSON only, matching this JSON schema: {_compact(output.schema)}", grammar

    def _generation(self, sampling: Sampling, tokens: list[int], kind: str, grammar: str | None,
                    names: Names) -> GenerationRequest:
        max_tokens = self._completion_budget(len(tokens), sampling.max_tokens, sampling.max_tokens_is_null,
                                             DEFAULT_MAX_TOKENS[kind], names.messages)
        params = SamplingParams(
            temperature=_default(sampling.temperature, 1.0), top_p=_default(sampling.top_p, 1.0),
            top_k=_default(sampling.top_k, 0), min_p=_default(sampling.min_p, 0.0),
            presence_penalty=_default(sampling.presence_penalty, 0.0),
            frequency_penalty=_default(sampling.frequency_penalty, 0.0),
            repetition_penalty=_default(sampling.repetition_penalty, 1.0),
            logit_bias=self._logit_bias(sampling.logit_bias),
        )
        # The end-of-sequence text is a stop too: a model may spell `</s>` out in plain characters
        # instead of emitting the token, and it must not reach the client either way.
        eos_text = self.served.template.eos_token
        stops = sampling.stop + ((eos_text,) if eos_text and eos_text not in sampling.stop else ())
        return GenerationRequest(tokens, max_tokens, params, sampling.n, stops, sampling.seed, grammar,
                                 sampling.logprobs)

    def _logit_bias(self, biases: tuple[tuple[int, float], ...]) -> tuple[tuple[int, float], ...]:
        if not biases:
            return ()
        n_vocab = self.served.model.n_vocab
        unknown = [token for token, _ in biases if token >= n_vocab]
        if unknown:
            raise EdgeError(400, f"logit_bias: token {unknown[0]} is not in the vocabulary (ids 0 to {n_vocab - 1})",
                            "logit_bias", "invalid_value")
        return biases

    def _completion_budget(self, prompt_tokens: int, requested: int | None, is_null: bool, default: int,
                           field_name: str) -> int:
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
                            field_name, "context_length_exceeded")
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

    async def outcome(self, prepared: Prepared, generation: Generation) -> Outcome:
        """The whole answer of a one-choice request."""
        outcome = Outcome()
        async for update in self.updates(prepared, generation):
            outcome.add(update)
        return outcome

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
                    stop = event.stop if event.stop in prepared.client_stops else None
                    yield ChoiceUpdate(event.index, leftover, [], reason, logprobs[event.index], stop)
                elif isinstance(event, GenerationFailed):
                    raise _failure(event.code, event.message, self.served.engine.retry_after())
                elif isinstance(event, GenerationDone):
                    yield Usage(event.prompt_tokens, completion_tokens, self.served.price_per_mtoken)
        finally:
            generation.cancel()  # a no-op when it finished; the request's owner cancels it too


def _chat_messages(conversation: Conversation, extra_system: str) -> list[ChatMessage]:
    """The conversation as plain-text messages, in order, tool calls and results written in our
    tool format; the template reduces them to the turns it can render (ChatTemplate.render)."""
    names = conversation.call_names()
    messages = []
    for turn in conversation.turns:
        if turn.role == "assistant":
            calls = "".join(call_text(call.name, call.arguments) for call in turn.calls)
            messages.append(ChatMessage("assistant", turn.text + calls))
        elif turn.role == "tool":
            # Our tool format has no failure flag: a failed call says so in its result's text.
            text = f"Error: {turn.text}" if turn.is_error else turn.text
            messages.append(ChatMessage("user", result_text(names[turn.call_id], text)))
        else:
            messages.append(ChatMessage(turn.role, turn.text))
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
