"""OpenAI Responses API shapes (POST /v1/responses): the response object, whole or as its stream.

Both forms are made from the serving core's updates. The output is a `message` item (its text as
one `output_text` part) and/or one `function_call` item per call, in the order the model wrote
them; an answer with neither still has a message item, with empty text, so that `output_text`
is always there to read. Streamed, each item is announced (`output_item.added`), filled (text or
argument deltas) and closed (`.done` events) before the next starts, and every event carries a
`sequence_number` counting from 0. A response cut by `max_output_tokens` has status "incomplete"
and ends with `response.incomplete`, as OpenAI's does; otherwise the last event is
`response.completed`.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from edge.api.errors import EdgeError
from edge.api.openai_responses_protocol import NamedFunction, ResponsesRequest
from edge.api.serving import ChoiceUpdate, Outcome, Prepared, ServingLayer, Usage
from edge.chat.tools import ToolCall
from edge.engine.jobs import Generation

log = logging.getLogger("edge.api")


def _usage(usage: Usage | None) -> dict | None:
    if usage is None:
        return None
    counted = usage.as_dict()
    return {"input_tokens": usage.prompt_tokens, "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": usage.completion_tokens, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": counted["total_tokens"], "estimated_cost": counted["estimated_cost"]}


def _message_item(item_id: str, text: str | None, status: str) -> dict:
    content = [] if text is None else [_text_part(text)]
    return {"id": item_id, "type": "message", "role": "assistant", "status": status, "content": content}


def _text_part(text: str) -> dict:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _call_item(item_id: str, call: ToolCall, status: str, arguments: str | None = None) -> dict:
    return {"id": item_id, "type": "function_call", "status": status, "call_id": call.id, "name": call.name,
            "arguments": call.arguments if arguments is None else arguments}


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


@dataclass
class _Response:
    """The fields of one response that do not change while it is produced."""

    layer: ServingLayer
    body: ResponsesRequest
    id: str = field(default_factory=lambda: _new_id("resp"))
    created: int = field(default_factory=lambda: int(time.time()))

    def object(self, status: str, output: list[dict], usage: Usage | None = None, error: dict | None = None) -> dict:
        body = self.body
        incomplete = {"reason": "max_output_tokens"} if status == "incomplete" else None
        done = status in ("completed", "incomplete")
        return {
            "id": self.id, "object": "response", "created_at": self.created, "status": status,
            "completed_at": int(time.time()) if done else None, "error": error, "incomplete_details": incomplete,
            "model": self.layer.served.id, "output": output, "usage": _usage(usage),
            "instructions": body.instructions, "metadata": body.metadata or {},
            "max_output_tokens": body.max_output_tokens, "temperature": body.temperature, "top_p": body.top_p,
            "parallel_tool_calls": body.parallel_tool_calls is not False,
            "tool_choice": _choice_json(body),
            "tools": [{"type": "function", "name": t.name, "description": t.description, "parameters": t.parameters,
                       "strict": t.strict} for t in body.tools or []],
            "text": {"format": _format_json(body)}, "previous_response_id": None, "truncation": "disabled",
            "background": False, "store": False,
        }


def _choice_json(body: ResponsesRequest) -> str | dict:
    choice = body.tool_choice
    return choice.model_dump() if isinstance(choice, NamedFunction) else choice or "auto"


def _format_json(body: ResponsesRequest) -> dict:
    spec = body.output_format
    shaped: dict = {"type": spec.type}
    if spec.type == "json_schema":
        shaped.update(name=spec.name or "response", schema=spec.schema_, strict=True)
    return shaped


def _status(outcome: Outcome) -> str:
    return "incomplete" if outcome.finish_reason == "length" else "completed"


async def whole(layer: ServingLayer, prepared: Prepared, generation: Generation, body: ResponsesRequest) -> dict:
    """The whole response, once the answer is complete."""
    outcome = await layer.outcome(prepared, generation)
    output = [_call_item(_new_id("fc"), call, "completed") for call in outcome.calls]
    if outcome.text or not outcome.calls:
        output.insert(0, _message_item(_new_id("msg"), outcome.text, "completed"))
    return _Response(layer, body).object(_status(outcome), output, outcome.usage)


class _Events:
    """Writes one stream's events: each with its type and the next sequence number, and keeps
    the output items so far (the final response carries them)."""

    def __init__(self, response: _Response) -> None:
        self.response = response
        self.sequence = 0
        self.output: list[dict] = []
        self._message: dict | None = None  # the open message item
        self._text = ""

    def event(self, kind: str, **fields) -> str:
        payload = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return f"event: {kind}\ndata: {json.dumps(payload, ensure_ascii=False)}\n\n"

    def start(self) -> list[str]:
        opened = self.response.object("in_progress", [])
        return [self.event("response.created", response=opened), self.event("response.in_progress", response=opened)]

    def text(self, delta: str) -> list[str]:
        events = [] if self._message is not None else self._open_message()
        self._text += delta
        where = {"item_id": self._message["id"], "output_index": len(self.output), "content_index": 0}
        return [*events, self.event("response.output_text.delta", **where, delta=delta, logprobs=[])]

    def _open_message(self) -> list[str]:
        self._message, self._text = _message_item(_new_id("msg"), None, "in_progress"), ""
        index = len(self.output)
        return [self.event("response.output_item.added", output_index=index, item=self._message),
                self.event("response.content_part.added", item_id=self._message["id"], output_index=index,
                           content_index=0, part=_text_part(""))]

    def close_message(self) -> list[str]:
        if self._message is None:
            return []
        index, item_id, text = len(self.output), self._message["id"], self._text
        done = _message_item(item_id, text, "completed")
        self._message = None
        self.output.append(done)
        where = {"item_id": item_id, "output_index": index, "content_index": 0}
        return [self.event("response.output_text.done", **where, text=text, logprobs=[]),
                self.event("response.content_part.done", **where, part=_text_part(text)),
                self.event("response.output_item.done", output_index=index, item=done)]

    def call(self, call: ToolCall) -> list[str]:
        events = self.close_message()
        index, item_id = len(self.output), _new_id("fc")
        done = _call_item(item_id, call, "completed")
        self.output.append(done)
        where = {"item_id": item_id, "output_index": index}
        return [*events,
                self.event("response.output_item.added", output_index=index,
                           item=_call_item(item_id, call, "in_progress", "")),
                self.event("response.function_call_arguments.delta", **where, delta=call.arguments),
                self.event("response.function_call_arguments.done", **where, name=call.name,
                           arguments=call.arguments),
                self.event("response.output_item.done", output_index=index, item=done)]

    def update(self, update: ChoiceUpdate) -> list[str]:
        events = self.text(update.content) if update.content else []
        for call in update.tool_calls:
            events += self.call(call)
        return events

    def finish(self, outcome: Outcome) -> list[str]:
        # Like the whole response: no output at all still gives an (empty) message item.
        events = self._open_message() if not self.output and self._message is None else []
        events += self.close_message()
        status = _status(outcome)
        final = self.response.object(status, self.output, outcome.usage)
        return [*events, self.event(f"response.{status}", response=final)]

    def failed(self, error: EdgeError) -> list[str]:
        failure = {"code": error.code or "server_error", "message": error.message}
        return [self.event("error", code=failure["code"], message=error.message, param=error.param),
                self.event("response.failed", response=self.response.object("failed", self.output, error=failure))]


async def stream(layer: ServingLayer, prepared: Prepared, generation: Generation,
                 body: ResponsesRequest) -> AsyncIterator[str]:
    """Server-sent events, `event:` and `data:` lines, in the order the module's docstring gives."""
    events = _Events(_Response(layer, body))
    for line in events.start():
        yield line
    outcome = Outcome()
    try:
        async for update in layer.updates(prepared, generation):
            outcome.add(update)
            if isinstance(update, ChoiceUpdate):
                for line in events.update(update):
                    yield line
        for line in events.finish(outcome):
            yield line
    except EdgeError as error:
        for line in events.failed(error):
            yield line
    except Exception as error:  # noqa: BLE001 - a stream must still end with an error event
        log.exception("responses stream failed")
        for line in events.failed(EdgeError(500, f"internal error: {type(error).__name__}")):
            yield line
