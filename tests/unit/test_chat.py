"""Chat rendering and tool-call reading: pure parts, no model needed."""

import json

import pytest

from edge.cards import DEFAULT_MODELS_DIR, load_cards
from edge.chat.template import ChatMessage, ChatTemplate, TemplateError, alternate_turns
from edge.chat.tools import ToolCallReader, call_text

VICUNA = load_cards(DEFAULT_MODELS_DIR)["wizardlm-2-8x22b"].chat_template


def test_vicuna_card_renders_the_model_cards_own_example():
    template = ChatTemplate(VICUNA, "<s>", "</s>")
    prompt = template.render([ChatMessage("user", "Hi"), ChatMessage("assistant", "Hello."),
                              ChatMessage("user", "Who are you?")])
    assert prompt == ("A chat between a curious user and an artificial intelligence assistant. The assistant gives "
                      "helpful, detailed, and polite answers to the user's questions. USER: Hi ASSISTANT: Hello.</s>"
                      "USER: Who are you? ASSISTANT:")


def test_vicuna_uses_a_given_system_message_instead_of_the_default():
    prompt = ChatTemplate(VICUNA, "<s>", "</s>").render([ChatMessage("system", "Be brief."), ChatMessage("user", "Hi")])
    assert prompt == "Be brief. USER: Hi ASSISTANT:"


def test_template_exceptions_become_template_errors():
    with pytest.raises(TemplateError, match="no role"):
        ChatTemplate(VICUNA, "<s>", "</s>").render([ChatMessage("tool", "x")])
    with pytest.raises(TemplateError):
        ChatTemplate("{% if %}", "", "")


@pytest.mark.parametrize("source", ["{{ messages[0].content + 1 }}", "{{ 1 / (messages | length - 1) }}",
                                    "{{ messages[7].content.upper() }}", "{{ strftime_now(messages) }}"])
def test_any_error_a_template_raises_on_a_conversation_is_a_template_error(source):
    with pytest.raises(TemplateError, match="the chat template failed"):
        ChatTemplate(source, "", "").render([ChatMessage("user", "Hi")])


def test_alternate_turns_moves_system_first_and_merges_neighbours():
    turns = alternate_turns([ChatMessage("user", "a"), ChatMessage("system", "s"), ChatMessage("user", "b"),
                             ChatMessage("assistant", "c")])
    assert turns == [ChatMessage("system", "s"), ChatMessage("user", "a\n\nb"), ChatMessage("assistant", "c")]


def test_reader_passes_answers_through_once_they_cannot_be_calls():
    reader = ToolCallReader(enabled=True)
    assert reader.feed("<") == ("", [])
    assert reader.feed("b>bold") == ("<b>bold", [])
    assert reader.feed(" text") == (" text", []) and reader.calls == []


def test_reader_releases_each_call_when_it_closes():
    reader = ToolCallReader(enabled=True)
    text = call_text("f", '{"x": 1}') + "\n" + call_text("g", "{}")
    released = [reader.feed(text[i:i + 7]) for i in range(0, len(text), 7)]
    calls = [call for _, batch in released for call in batch]
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("f", {"x": 1}), ("g", {})]
    assert all(content == "" for content, _ in released) and reader.finish() == ""


def test_reader_returns_an_unfinished_call_as_text():
    reader = ToolCallReader(enabled=True)
    reader.feed('<tool_call>{"name": "f", "argu')
    assert reader.finish() == '<tool_call>{"name": "f", "argu' and reader.calls == []


def test_disabled_reader_never_parses():
    assert ToolCallReader(enabled=False).feed(call_text("f", "{}")) == (call_text("f", "{}"), [])
