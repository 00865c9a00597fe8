"""Messages -> prompt text, through the model's Jinja chat template.

Templates differ in which roles they know and whether they allow two user turns in a row, so
messages are first reduced to the shape every template accepts: an optional system message
first, then user and assistant turns that alternate. Tool calls and tool results become text in
the tool-call format of `edge.chat.tools`, which works for any model.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment


class TemplateError(ValueError):
    """The template refused the conversation (or is broken)."""


@dataclass(frozen=True)
class ChatMessage:
    """A message reduced to plain text: role is system, user or assistant."""

    role: str
    content: str


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


class ChatTemplate:
    """A compiled chat template with the special tokens it refers to."""

    def __init__(self, source: str, bos_token: str, eos_token: str) -> None:
        # trim_blocks and lstrip_blocks are what Hugging Face renders templates with.
        environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        environment.globals["raise_exception"] = _raise_exception
        environment.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        try:
            self._template = environment.from_string(source)
        except jinja2.TemplateError as error:
            raise TemplateError(f"the chat template does not compile: {error}") from error
        self.bos_token = bos_token
        self.eos_token = eos_token

    def render(self, messages: list[ChatMessage]) -> str:
        """The prompt for `messages`, ending where the assistant's reply starts."""
        context: dict[str, Any] = {
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "add_generation_prompt": True,
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
        }
        try:
            return self._template.render(**context)
        except TemplateError:
            raise
        except Exception as error:
            # A template is data that runs on the conversation: whatever it raises on these
            # messages (jinja2's errors, or a TypeError, IndexError, ... from its expressions)
            # is a conversation it cannot render, not a fault of the server.
            raise TemplateError(f"the chat template failed: {type(error).__name__}: {error}") from error


def alternate_turns(messages: list[ChatMessage]) -> list[ChatMessage]:
    """System message first, then turns with consecutive same-role messages merged."""
    system = [m for m in messages if m.role == "system"]
    merged: list[ChatMessage] = []
    for message in (m for m in messages if m.role != "system"):
        if merged and merged[-1].role == message.role:
            merged[-1] = ChatMessage(message.role, merged[-1].content + "\n\n" + message.content)
        else:
            merged.append(message)
    return system + merged
