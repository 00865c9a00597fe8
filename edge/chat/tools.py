"""Tool calling for any model: tools described in the prompt, calls enforced by a grammar.

The model is told to answer either normally or with calls written as
`<tool_call>{"name": ..., "arguments": {...}}</tool_call>`. A GBNF grammar built from the tools'
JSON schemas makes any other shape of call impossible, so every call parses and its arguments
validate against the tool's schema. With tool_choice "auto" an answer may not start with "<",
which is what lets a reader tell the two apart from the first character.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from typing import Any

from edge.chat.grammar import add_schema, check_schema_bounds, new_converter

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
MAX_PARALLEL_CALLS = 4
# A function declared without parameters takes none: its arguments are exactly {}.
NO_ARGUMENTS = {"type": "object", "properties": {}, "additionalProperties": False}


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    parameters: dict[str, Any]


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as the OpenAI API carries it

    @staticmethod
    def new(name: str, arguments: Any) -> ToolCall:
        """A call with a fresh id; `arguments` as JSON text."""
        text = json.dumps(arguments, ensure_ascii=False)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # the model wrote a lone \ud800 escape: keep it escaped, as valid UTF-8
            text = json.dumps(arguments)
        return ToolCall(f"call_{secrets.token_hex(12)}", name, text)


def call_text(name: str, arguments: str) -> str:
    """How an earlier call appears in the prompt: exactly the form the model is asked to write."""
    try:
        parsed = json.loads(arguments) if arguments else {}
    except (ValueError, RecursionError):  # not JSON, too deep, or digits beyond Python's limit: as given
        parsed = arguments
    return CALL_OPEN + json.dumps({"name": name, "arguments": parsed}, ensure_ascii=False) + CALL_CLOSE


def result_text(name: str, content: str) -> str:
    """How a tool's result appears in the prompt."""
    return f"<tool_response name={json.dumps(name)}>\n{content}\n</tool_response>"


def tools_prompt(tools: list[ToolSpec], forced: str | None, required: bool) -> str:
    """Text for the system message that teaches the model the tools and the call format."""
    listing = "\n".join(
        json.dumps({"name": t.name, "description": t.description, "parameters": t.parameters}, ensure_ascii=False)
        for t in tools
    )
    if forced:
        rule = f"Reply with a call to the tool {forced}."
    elif required:
        rule = "Reply with one or more tool calls."
    else:
        rule = "Call tools when they help; otherwise answer the user directly."
    return (
        f"You can call these tools:\n{listing}\n"
        f'To call a tool, write {CALL_OPEN}{{"name": <tool name>, "arguments": <arguments object>}}{CALL_CLOSE} '
        f"and nothing else. Tool results come back in <tool_response> blocks. {rule}"
    )


def tools_grammar(tools: list[ToolSpec], allow_answer: bool, max_calls: int) -> str:
    """GBNF: one to `max_calls` well-formed calls, or (when `allow_answer`) a plain answer."""
    for tool in tools:  # each schema on its own: together they nest deeper than any one
        check_schema_bounds(tool.parameters)
    converter = new_converter({"name": 0, "arguments": 1})
    calls_schema = {
        "anyOf": [
            {
                "type": "object",
                "properties": {"name": {"const": t.name}, "arguments": t.parameters or NO_ARGUMENTS},
                "required": ["name", "arguments"],
            }
            for t in tools
        ]
    }
    add_schema(converter, calls_schema, "call-json")
    rules = [
        f'calls ::= call ("\\n"? call){{0,{max_calls - 1}}}',
        f'call ::= "{CALL_OPEN}" call-json "{CALL_CLOSE}"',
        'answer ::= ([^<] [^\\x00]*)?',
        "root ::= calls | answer" if allow_answer else "root ::= calls",
    ]
    return converter.format_grammar() + "\n" + "\n".join(rules) + "\n"


class ToolCallReader:
    """Splits one choice's streamed text into answer text and completed tool calls.

    Until the text can no longer be the start of a call, nothing is released; after that the
    choice is either an answer (text passes straight through) or calls (each released once its
    closing tag arrives).

    A call is read as JSON from the character after `<tool_call>`, so a string argument that
    contains `</tool_call>` is read whole. The grammar makes every call readable; should one not
    be anyway, the reader never raises. Its fallback: text that cannot be a call (something
    other than a call where one must start, JSON that is not a call object, or no closing tag
    after the JSON) ends the calls, and it and everything after it is answer text; JSON that
    never completes is held, and `finish` returns it as answer text.
    """

    def __init__(self, enabled: bool) -> None:
        self._mode = "undecided" if enabled else "answer"
        self._buffer = ""
        self._search_from = 0  # where the next closing tag may start: earlier ones did not end a call
        self.calls: list[ToolCall] = []

    def feed(self, text: str) -> tuple[str, list[ToolCall]]:
        """Answer text to release now, and calls completed by `text`."""
        if self._mode == "answer":
            return text, []
        self._buffer += text
        if self._mode == "undecided":
            if self._buffer.startswith(CALL_OPEN):
                self._mode = "calls"
            elif not CALL_OPEN.startswith(self._buffer):
                self._mode = "answer"
                return self._release(), []
            else:
                return "", []
        completed = self._take_calls()
        return (self._release() if self._mode == "answer" else ""), completed

    def finish(self) -> str:
        """At the end: text that never became a call (an unfinished one) is returned as answer."""
        return self._release()

    def _release(self) -> str:
        released, self._buffer, self._search_from = self._buffer, "", 0
        return released

    def _take_calls(self) -> list[ToolCall]:
        completed = []
        while self._mode == "calls":
            stripped = self._buffer.lstrip("\n")  # calls may be separated by newlines
            if stripped != self._buffer:
                self._buffer, self._search_from = stripped, 0
            if not (self._buffer.startswith(CALL_OPEN) or CALL_OPEN.startswith(self._buffer)):
                self._mode = "answer"  # not a call: the fallback above
                break
            close = self._buffer.find(CALL_CLOSE, max(self._search_from, len(CALL_OPEN)))
            if close < 0:  # a tag may straddle two pieces: search its possible start again
                self._search_from = max(len(self._buffer) - len(CALL_CLOSE) + 1, 0)
                break
            outcome, call, end = read_call(self._buffer)
            if outcome == "more":  # that closing tag was inside the JSON: wait for the next one
                self._search_from = close + 1
            elif outcome == "invalid":
                self._mode = "answer"
            else:
                completed.append(call)
                self._buffer, self._search_from = self._buffer[end:], 0
        self.calls.extend(completed)
        return completed


def _not_json(constant: str) -> None:
    raise ValueError(f"{constant} is not JSON")


_DECODER = json.JSONDecoder(parse_constant=_not_json)  # NaN and Infinity would make arguments that are not JSON
_WHITESPACE = re.compile(r"\s*")


def read_call(text: str) -> tuple[str, ToolCall | None, int]:
    """Read the call that `text` starts with (`<tool_call>` JSON `</tool_call>`).

    Returns ("call", the call, where it ends), ("more", None, 0) when more text could still
    complete it, or ("invalid", None, 0) when no text can.
    """
    if not text.startswith(CALL_OPEN):
        return ("more", None, 0) if CALL_OPEN.startswith(text) else ("invalid", None, 0)
    start = _WHITESPACE.match(text, len(CALL_OPEN)).end()
    try:
        body, end = _DECODER.raw_decode(text, start)
    except (ValueError, RecursionError):  # unfinished JSON (or too deep, or digits beyond Python's limit)
        return "more", None, 0
    close = _WHITESPACE.match(text, end).end()
    if not text.startswith(CALL_CLOSE, close):
        return ("more", None, 0) if CALL_CLOSE.startswith(text[close:]) else ("invalid", None, 0)
    if not (isinstance(body, dict) and isinstance(body.get("name"), str) and isinstance(body.get("arguments"), dict)):
        return "invalid", None, 0
    try:
        call = ToolCall.new(body["name"], body["arguments"])
    except (ValueError, RecursionError):  # arguments that read but do not write back (too deep)
        return "invalid", None, 0
    return "call", call, close + len(CALL_CLOSE)
