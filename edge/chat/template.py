"""Messages -> prompt text, through the model's Jinja chat template.

Templates differ in where they accept a system message: ChatML renders a system turn anywhere,
Vicuna's reads only one that comes first. So each template is probed once, by rendering, for
whether it renders system messages in place (`ChatTemplate.systems_in_place`), and messages are
reduced to the shape it accepts (`reduce_turns`): consecutive messages of one role merged and,
where system messages cannot stay in place, all system text merged into one leading system
message. A final assistant message is continued: the prompt ends inside that turn, after its
text (`ChatTemplate.render`). Tool calls and tool results become text in the tool-call format of
`edge.chat.tools`, which works for any model.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

# What the final assistant turn is rendered with, to find where its text starts. Letters, digits
# and underscores only, so that no template's filter (trim, escape) changes it.
_SENTINEL = "EDGE_CONTINUE_7d1f"


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
        self.systems_in_place = self._renders_systems_in_place()

    def render(self, messages: list[ChatMessage]) -> str:
        """The prompt for `messages`, ending where the assistant's reply starts.

        That is after a new generation prompt, unless the last message is the assistant's: then
        the reply continues its text (prefill) and the prompt ends right after it. An empty final
        assistant message asks for nothing to be continued, so it is left out."""
        turns = reduce_turns(messages, self.systems_in_place)
        if turns and turns[-1].role == "assistant":
            if turns[-1].content:
                return self._render_continued(turns)
            turns = turns[:-1]
        return self._render(turns, add_generation_prompt=True)

    def _render_continued(self, turns: list[ChatMessage]) -> str:
        """The conversation with its final (assistant) turn left open after its text.

        Templates close a turn each in their own way (`<|im_end|>\\n`, `</s>`), some with a
        generation prompt after it, so the turn is rendered with a sentinel for its text and the
        prompt cut where the sentinel starts: what the template writes before an assistant's text
        (its header) is kept, whatever it writes after it is not."""
        sentinel = _sentinel_for(turns)
        text = self._render([*turns[:-1], ChatMessage("assistant", sentinel)], add_generation_prompt=False)
        if text.count(sentinel) != 1:
            raise TemplateError("the chat template cannot continue a final assistant message: "
                                "it does not render the message's text as given")
        return text[: text.index(sentinel)] + turns[-1].content

    def _renders_systems_in_place(self) -> bool:
        """Whether system messages stay where they are, tested by rendering: a system message
        first, between two user turns, and last, each with text to find in the output.

        A template may refuse a system message that is not first (Vicuna's raises) or drop it
        without a word (one that reads only messages[0] as the system prompt); either way its
        system text has to be merged into a leading system message instead."""
        probe = [ChatMessage("system", "PROBE_SYSTEM_ONE"), ChatMessage("user", "PROBE_USER_ONE"),
                 ChatMessage("system", "PROBE_SYSTEM_TWO"), ChatMessage("user", "PROBE_USER_TWO"),
                 ChatMessage("assistant", "PROBE_ASSISTANT"), ChatMessage("system", "PROBE_SYSTEM_THREE")]
        try:
            text = self._render(probe, add_generation_prompt=True)
        except TemplateError:
            return False
        positions = [text.find(message.content) for message in probe]
        return -1 not in positions and positions == sorted(positions)

    def _render(self, turns: list[ChatMessage], add_generation_prompt: bool) -> str:
        context: dict[str, Any] = {
            "messages": [{"role": m.role, "content": m.content} for m in turns],
            "add_generation_prompt": add_generation_prompt,
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


def _sentinel_for(turns: list[ChatMessage]) -> str:
    """A sentinel that no message's text contains (a client could send the fixed one)."""
    sentinel = _SENTINEL
    while any(sentinel in turn.content for turn in turns):
        sentinel += "_"
    return sentinel


def _join(first: str, second: str) -> str:
    """Two texts as one, a blank line between them; an empty one adds nothing."""
    return f"{first}\n\n{second}" if first and second else first or second


def merge_neighbours(messages: list[ChatMessage]) -> list[ChatMessage]:
    """Consecutive messages of one role merged: templates that check that user and assistant
    alternate need it, and two system messages in a row say what one would."""
    merged: list[ChatMessage] = []
    for message in messages:
        if merged and merged[-1].role == message.role:
            merged[-1] = ChatMessage(message.role, _join(merged[-1].content, message.content))
        else:
            merged.append(message)
    return merged


def alternate_turns(messages: list[ChatMessage]) -> list[ChatMessage]:
    """All system text, in order, as one leading system message, then the other messages with
    consecutive same-role messages merged: the shape every template accepts.

    Why merge a later system message into the leading one rather than into the user turn after
    it: the system slot is where such a template's model reads instructions as instructions, the
    user's words stay exactly the user's, and a system message last has no user turn after it."""
    system = [m.content for m in messages if m.role == "system"]
    rest = merge_neighbours([m for m in messages if m.role != "system"])
    if not system:
        return rest
    return [ChatMessage("system", "\n\n".join(text for text in system if text)), *rest]


def reduce_turns(messages: list[ChatMessage], systems_in_place: bool) -> list[ChatMessage]:
    """The turns a template renders: system messages kept in place where it can render them
    there, else merged into one leading system message (`alternate_turns`)."""
    return merge_neighbours(messages) if systems_in_place else alternate_turns(messages)
