"""OpenAI chat/completions response shapes, whole or as server-sent events, built from choice updates."""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import AsyncIterator

from edge.api.errors import EdgeError
from edge.api.logprobs import LogprobWriter
from edge.api.serving import Prepared, ServingLayer, Usage
from edge.chat.tools import ToolCall
from edge.engine.jobs import Generation

log = logging.getLogger("edge.api")

_OBJECTS = {"chat": ("chat.completion", "chat.completion.chunk", "chatcmpl-"),
            "text": ("text_completion", "text_completion", "cmpl-")}


def _tool_call_json(call: ToolCall, index: int | None = None) -> dict:
    body = {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
    return body if index is None else {"index": index, **body}


async def complete(layer: ServingLayer, prepared: Prepared, generation: Generation) -> dict:
    """The whole response, once every choice has finished."""
    n = prepared.generation.n
    texts, calls, reasons = [prepared.echo] * n, [[] for _ in range(n)], ["stop"] * n
    logprobs: list[tuple] = [()] * n
    usage = None
    async for update in layer.updates(prepared, generation):
        if isinstance(update, Usage):
            usage = update
            continue
        texts[update.index] += update.content
        calls[update.index].extend(update.tool_calls)
        logprobs[update.index] += update.logprobs
        reasons[update.index] = update.finish_reason or reasons[update.index]
    object_name, _, id_prefix = _OBJECTS[prepared.kind]
    writer = _logprob_writer(layer, prepared)
    choices = []
    for index in range(n):
        if prepared.kind == "text":
            spelled = writer.legacy(index, logprobs[index]) if writer else None
            choices.append({"index": index, "text": texts[index], "logprobs": spelled, "finish_reason": reasons[index]})
            continue
        message = {"role": "assistant", "content": texts[index] if texts[index] or not calls[index] else None}
        if calls[index]:
            message["tool_calls"] = [_tool_call_json(call) for call in calls[index]]
        spelled = writer.chat(logprobs[index]) if writer else None
        choices.append({"index": index, "message": message, "logprobs": spelled, "finish_reason": reasons[index]})
    return {"id": id_prefix + secrets.token_hex(12), "object": object_name, "created": int(time.time()),
            "model": layer.served.id, "choices": choices, "usage": usage.as_dict() if usage else None}


def _logprob_writer(layer: ServingLayer, prepared: Prepared) -> LogprobWriter | None:
    """None unless the request asked for logprobs."""
    if prepared.generation.logprobs is None:
        return None
    return LogprobWriter(layer.served.model, prepared.generation.n, len(prepared.echo))


async def stream(layer: ServingLayer, prepared: Prepared, generation: Generation) -> AsyncIterator[str]:
    """Server-sent events: one id for the whole stream, the role first, then deltas, then [DONE]."""
    _, object_name, id_prefix = _OBJECTS[prepared.kind]
    base = {"id": id_prefix + secrets.token_hex(12), "object": object_name, "created": int(time.time()),
            "model": layer.served.id}
    if prepared.include_usage:
        base["usage"] = None

    def event(choices: list[dict], **extra) -> str:
        return f"data: {json.dumps({**base, 'choices': choices, **extra}, ensure_ascii=False)}\n\n"

    if prepared.kind == "chat":
        yield event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}])
    elif prepared.echo:
        yield event([{"index": 0, "text": prepared.echo, "logprobs": None, "finish_reason": None}])
    writer = _logprob_writer(layer, prepared)
    calls_sent = 0
    try:
        async for update in layer.updates(prepared, generation):
            if isinstance(update, Usage):
                if prepared.include_usage:
                    yield event([], usage=update.as_dict())
                continue
            if prepared.kind == "text":
                spelled = writer.legacy(update.index, update.logprobs) if writer else None
                yield event([{"index": update.index, "text": update.content, "logprobs": spelled,
                              "finish_reason": update.finish_reason}])
                continue
            delta: dict = {"content": update.content} if update.content else {}
            if update.tool_calls:
                delta["tool_calls"] = [_tool_call_json(c, calls_sent + i) for i, c in enumerate(update.tool_calls)]
                calls_sent += len(update.tool_calls)
            spelled = writer.chat(update.logprobs) if writer else None
            yield event([{"index": update.index, "delta": delta, "logprobs": spelled,
                          "finish_reason": update.finish_reason}])
    except EdgeError as error:
        yield f"data: {json.dumps(error.body())}\n\n"
    except Exception as error:  # noqa: BLE001 - a stream must still end with an error event and [DONE]
        log.exception("stream failed")
        yield f"data: {json.dumps(EdgeError(500, f'internal error: {type(error).__name__}').body())}\n\n"
    yield "data: [DONE]\n\n"
