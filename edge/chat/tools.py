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

from edge.chat.grammar import add_schema, new_converter

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
        return ToolCall(f"call_{secrets.token_hex(12)}", name, json.dumps(arguments, ensure_ascii=False))


def call_text(name: str, arguments: str) -> str:
    """How an earlier call appears in the prompt: exactly the form the model is asked to write."""
    try:
        parsed = json.loads(arguments) if arguments else {}
    except json.JSONDecodeError:
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


_CALL_PATTERN = re.compile(re.escape(CALL_OPEN) + r"(.*?)" + re.escape(CALL_CLOSE), re.DOTALL)


class ToolCallReader:
    """Splits one choice's streamed text into answer text and completed tool calls.

    Until the text can no longer be the start of a call, nothing is released; after that the
    choice is either an answer (text passes straight through) or calls (each released once its
    closing tag arrives).
    """

    def __init__(self, enabled: bool) -> None:
        self._mode = "undecided" if enabled else "answer"
        self._buffer = ""
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
                released, self._buffer = self._buffer, ""
                return released, []
            else:
                return "", []
        return "", self._take_calls()

    def finish(self) -> str:
        """At the end: text that never became a call (an unfinished one) is returned as answer."""
        leftover, self._buffer = self._buffer, ""
        return leftover

    def _take_calls(self) -> list[ToolCall]:
        completed = []
        while (match := _CALL_PATTERN.search(self._buffer)) is not None:
            body = json.loads(match.group(1))  # the grammar guarantees it parses
            completed.append(ToolCall.new(body["name"], body["arguments"]))
            self._buffer = self._buffer[match.end():].lstrip("\n")
        self.calls.extend(completed)
        return completed
