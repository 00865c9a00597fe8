"""Anthropic Messages API shapes (POST /v1/messages): the message, whole or as its event stream.

Made from the serving core's updates, like every surface. Content is a text block (when there is
text) and one tool_use block per call. `stop_reason`: tool_use when the answer is calls, max_tokens
when the length ran out, stop_sequence (with `stop_sequence` set) when one of the request's
stop_sequences ended it, end_turn otherwise. Streamed: message_start, a ping, then per block
content_block_start / _delta (text_delta or input_json_delta) / _stop, then message_delta (stop
reason and usage) and message_stop; a ping goes out whenever nothing else has for PING_SECONDS
(a long prompt being read), so that proxies keep the connection.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import AsyncIterator

from edge.api.errors import EdgeError
from edge.api.serving import ChoiceUpdate, Outcome, Prepared, ServingLayer, Usage
from edge.chat.tools import ToolCall
from edge.engine.jobs import Generation

log = logging.getLogger("edge.api")
PING_SECONDS = 10.0
_STOP_REASONS = {"tool_calls": "tool_use", "length": "max_tokens"}


def stop_reason(outcome: Outcome) -> str:
    if outcome.finish_reason == "stop" and outcome.stop is not None:
        return "stop_sequence"
    return _STOP_REASONS.get(outcome.finish_reason, "end_turn")


def _usage(prompt_tokens: int, usage: Usage | None) -> dict:
    output = usage.completion_tokens if usage else 0
    return {"input_tokens": prompt_tokens, "output_tokens": output, "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0}


def _tool_use(call: ToolCall, with_input: bool = True) -> dict:
    # Anthropic's ids look like toolu_...; any id works, since the core maps ids to names itself.
    return {"type": "tool_use", "id": "toolu_" + call.id.removeprefix("call_"), "name": call.name,
            "input": json.loads(call.arguments) if with_input else {}}


def _message(layer: ServingLayer, prepared: Prepared, message_id: str, content: list[dict],
             outcome: Outcome | None) -> dict:
    done = outcome is not None
    return {"id": message_id, "type": "message", "role": "assistant", "model": layer.served.id, "content": content,
            "stop_reason": stop_reason(outcome) if done else None, "stop_sequence": outcome.stop if done else None,
            "usage": _usage(len(prepared.generation.prompt_tokens), outcome.usage if done else None)}


def _new_id() -> str:
    return f"msg_{secrets.token_hex(12)}"


async def whole(layer: ServingLayer, prepared: Prepared, generation: Generation) -> dict:
    outcome = await layer.outcome(prepared, generation)
    content = ([{"type": "text", "text": outcome.text}] if outcome.text else []) + [_tool_use(c) for c in outcome.calls]
    return _message(layer, prepared, _new_id(), content, outcome)


def _event(kind: str, **fields) -> str:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **fields}, ensure_ascii=False)}\n\n"


def error_event(error: EdgeError) -> str:
    return f"event: error\ndata: {json.dumps(error.anthropic_body(), ensure_ascii=False)}\n\n"


class _Blocks:
    """The content blocks of one streamed message: the open text block, and how many so far."""

    def __init__(self) -> None:
        self.count = 0
        self._text_open = False

    def text(self, text: str) -> list[str]:
        events = []
        if not self._text_open:
            events.append(_event("content_block_start", index=self.count, content_block={"type": "text", "text": ""}))
            self._text_open = True
        delta = {"type": "text_delta", "text": text}
        return [*events, _event("content_block_delta", index=self.count, delta=delta)]

    def close_text(self) -> list[str]:
        if not self._text_open:
            return []
        self._text_open = False
        self.count += 1
        return [_event("content_block_stop", index=self.count - 1)]

    def call(self, call: ToolCall) -> list[str]:
        index = self.count
        self.count += 1
        delta = {"type": "input_json_delta", "partial_json": call.arguments}
        return [*self.close_text(),
                _event("content_block_start", index=index, content_block=_tool_use(call, with_input=False)),
                _event("content_block_delta", index=index, delta=delta), _event("content_block_stop", index=index)]

    def update(self, update: ChoiceUpdate) -> list[str]:
        events = self.text(update.content) if update.content else []
        for call in update.tool_calls:
            events += self.call(call)
        return events


async def _with_pings(updates: AsyncIterator, seconds: float) -> AsyncIterator:
    """The updates, with None whenever `seconds` pass without one. The pending read is kept, not
    cancelled, across a ping (cancelling it would close the updates' generator)."""
    pending: asyncio.Task | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(updates))
            done, _ = await asyncio.wait({pending}, timeout=seconds)
            if not done:
                yield None
                continue
            try:
                item = pending.result()
            except StopAsyncIteration:
                return
            pending = None
            yield item
    finally:
        if pending is not None:
            pending.cancel()
            await asyncio.gather(pending, return_exceptions=True)
        await updates.aclose()


async def stream(layer: ServingLayer, prepared: Prepared, generation: Generation) -> AsyncIterator[str]:
    message_id = _new_id()
    yield _event("message_start", message=_message(layer, prepared, message_id, [], None))
    yield _event("ping")
    blocks, outcome = _Blocks(), Outcome()
    try:
        async for update in _with_pings(layer.updates(prepared, generation), PING_SECONDS):
            if update is None:
                yield _event("ping")
                continue
            outcome.add(update)
            if isinstance(update, ChoiceUpdate):
                for line in blocks.update(update):
                    yield line
        for line in blocks.close_text():
            yield line
        usage = _usage(len(prepared.generation.prompt_tokens), outcome.usage)
        yield _event("message_delta", delta={"stop_reason": stop_reason(outcome), "stop_sequence": outcome.stop},
                     usage=usage)
        yield _event("message_stop")
    except EdgeError as error:
        yield error_event(error)
    except Exception as error:  # noqa: BLE001 - a stream must still end with an error event
        log.exception("messages stream failed")
        yield error_event(EdgeError(500, f"internal error: {type(error).__name__}"))
