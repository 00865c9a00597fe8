"""Chat rendering and tool-call reading: pure parts, no model needed."""

import json
from dataclasses import dataclass

import gguf
import pytest
from support import EMBEDDED_GGUF

from edge.api.errors import EdgeError
from edge.api.protocol import ChatCompletionRequest, CompletionRequest
from edge.api.serving import ServingLayer
from edge.cards import DEFAULT_MODELS_DIR, load_cards
from edge.chat.template import ChatMessage, ChatTemplate, TemplateError, alternate_turns
from edge.chat.tools import ToolCallReader, call_text

VICUNA = load_cards(DEFAULT_MODELS_DIR)["wizardlm-2-8x22b"].chat_template
# Plain ChatML, as most ChatML models ship it (no default system prompt of its own).
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
# The embedded SmolLM2 GGUF's own template (ChatML that adds a default system prompt).
GGUF_OWN = gguf.GGUFReader(str(EMBEDDED_GGUF)).fields["tokenizer.chat_template"].contents()
DEFAULT_SMOLLM_SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
VICUNA_DEFAULT = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives "
                  "helpful, detailed, and polite answers to the user's questions.")


def chatml(role: str, text: str) -> str:
    return f"<|im_start|>{role}\n{text}<|im_end|>\n"


def S(text: str) -> ChatMessage:  # noqa: N802 - one letter per role keeps the conversations readable
    return ChatMessage("system", text)


def U(text: str) -> ChatMessage:  # noqa: N802
    return ChatMessage("user", text)


def A(text: str) -> ChatMessage:  # noqa: N802
    return ChatMessage("assistant", text)


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


def test_alternate_turns_merges_every_system_message_into_one_leading_one():
    turns = alternate_turns([S("a"), U("u"), S("b"), A("x"), S(""), S("c")])
    assert turns == [S("a\n\nb\n\nc"), U("u"), A("x")]


def test_which_templates_render_system_messages_in_place():
    silent = "{% if messages[0].role == 'system' %}{{ messages[0].content }}{% endif %}" \
             "{% for m in messages if m.role != 'system' %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
    assert ChatTemplate(CHATML, "", "<|im_end|>").systems_in_place
    assert ChatTemplate(GGUF_OWN, "", "<|im_end|>").systems_in_place
    assert not ChatTemplate(VICUNA, "<s>", "</s>").systems_in_place  # it raises on a second one
    assert not ChatTemplate(silent, "", "").systems_in_place  # it drops them without a word


@pytest.mark.parametrize("source", [CHATML, GGUF_OWN])
def test_chatml_renders_system_messages_where_they_are(source):
    prompt = ChatTemplate(source, "", "<|im_end|>").render(
        [S("a"), S("b"), U("u1"), A("a1"), S("mid"), U("u2"), S("last")])
    assert prompt == (chatml("system", "a\n\nb") + chatml("user", "u1") + chatml("assistant", "a1")
                      + chatml("system", "mid") + chatml("user", "u2") + chatml("system", "last")
                      + "<|im_start|>assistant\n")


def test_the_ggufs_own_template_keeps_its_default_system_prompt_before_a_later_system_message():
    prompt = ChatTemplate(GGUF_OWN, "", "<|im_end|>").render([U("u"), S("s")])
    assert prompt == DEFAULT_SMOLLM_SYSTEM + chatml("user", "u") + chatml("system", "s") + "<|im_start|>assistant\n"


def test_vicuna_merges_system_messages_from_anywhere_into_its_leading_system_text():
    template = ChatTemplate(VICUNA, "<s>", "</s>")
    prompt = template.render([S("a"), S("b"), U("u1"), A("a1"), S("mid"), U("u2"), S("last")])
    assert prompt == "a\n\nb\n\nmid\n\nlast USER: u1 ASSISTANT: a1</s>USER: u2 ASSISTANT:"
    assert template.render([U("q"), S("last")]) == "last USER: q ASSISTANT:"


@pytest.mark.parametrize(("source", "start"), [
    (CHATML, chatml("user", "Q") + "<|im_start|>assistant\n"),
    (GGUF_OWN, DEFAULT_SMOLLM_SYSTEM + chatml("user", "Q") + "<|im_start|>assistant\n"),
    (VICUNA, VICUNA_DEFAULT + " USER: Q ASSISTANT: "),
])
def test_a_final_assistant_message_is_left_open_for_the_reply_to_continue(source, start):
    template = ChatTemplate(source, "<s>", "</s>")
    assert template.render([U("Q"), A("The capital of France is")]) == start + "The capital of France is"
    # Consecutive assistant messages are one turn; a later system message is not a prefill.
    assert template.render([U("Q"), A("The capital"), A("of France is")]) == start + "The capital\n\nof France is"


def test_prefill_is_cut_at_the_end_of_the_text_even_when_the_text_looks_like_the_sentinel():
    # A template that writes something after every turn and a generation prompt regardless.
    source = "{% for m in messages %}[{{ m.role }}]{{ m.content }}[/{{ m.role }}]{% endfor %}[assistant]"
    text = "EDGE_CONTINUE_7d1f and more"
    assert ChatTemplate(source, "", "").render([U("q"), A(text)]) == f"[user]q[/user][assistant]{text}"


def test_an_empty_final_assistant_message_is_an_ordinary_generation_prompt():
    template = ChatTemplate(CHATML, "", "<|im_end|>")
    assert template.render([U("Q"), A("")]) == template.render([U("Q")])


def test_a_template_that_does_not_render_the_final_assistant_text_cannot_continue_it():
    source = "{% for m in messages %}{{ m.role }}: {% if m.role == 'user' %}{{ m.content }}{% endif %}\n{% endfor %}"
    with pytest.raises(TemplateError, match="cannot continue"):
        ChatTemplate(source, "", "").render([U("q"), A("prefix")])


# --- the serving layer over a stand-in model: prompts and the completion budget -----------------

@dataclass(frozen=True)
class ByteVocabulary:
    n_vocab: int = 256


@dataclass
class StandIn:
    """What the serving layer reads of a ServedModel; one token per UTF-8 byte."""

    template: ChatTemplate
    ctx_size: int = 1024
    id: str = "m"
    aliases: frozenset = frozenset({"m"})
    price_per_mtoken: float = 0.0
    model: ByteVocabulary = ByteVocabulary()

    def tokenize_prompt(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))


def chat(source: str, ctx_size: int = 1024, **body) -> tuple[str, int]:
    """(prompt text, max_tokens) that prepare_chat makes of a request."""
    layer = ServingLayer(StandIn(ChatTemplate(source, "<s>", "</s>"), ctx_size))
    generation = layer.prepare_chat(ChatCompletionRequest.model_validate({"model": "m", **body})).generation
    return bytes(generation.prompt_tokens).decode(), generation.max_tokens


def test_json_mode_instructions_join_the_leading_system_text_with_systems_elsewhere():
    body = {"messages": [{"role": "developer", "content": "d"}, {"role": "user", "content": "q"},
                         {"role": "system", "content": "later"}], "response_format": {"type": "json_object"}}
    prompt, _ = chat(CHATML, **body)
    assert prompt == (chatml("system", "d\n\nReply with a JSON object only.") + chatml("user", "q")
                      + chatml("system", "later") + "<|im_start|>assistant\n")
    prompt, _ = chat(VICUNA, **body)
    assert prompt == "d\n\nReply with a JSON object only.\n\nlater USER: q ASSISTANT:"


def test_a_user_messages_name_is_accepted_and_not_rendered():
    named, _ = chat(CHATML, messages=[{"role": "user", "content": "q", "name": "ada"}])
    assert named == chat(CHATML, messages=[{"role": "user", "content": "q"}])[0]


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_max_tokens_beyond_the_context_is_clamped_to_the_room_left(field):
    from edge.engine.config import EngineConfig, check_fits

    layer = ServingLayer(StandIn(ChatTemplate(CHATML, "", ""), 1024))
    request = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "q"}], field: 100_000})
    generation = layer.prepare_chat(request).generation
    assert len(generation.prompt_tokens) + generation.max_tokens == 1024
    check_fits(generation, EngineConfig(ctx_size=1024))  # the engine takes it: its KV cells fit a sequence
    text = layer.prepare_completion(CompletionRequest(model="m", prompt="1, 2,", max_tokens=100_000)).generation
    assert text.prompt_tokens and len(text.prompt_tokens) + text.max_tokens == 1024


def test_max_tokens_within_the_context_is_kept_and_a_prompt_without_room_is_refused():
    assert chat(CHATML, messages=[{"role": "user", "content": "q"}], max_tokens=7)[1] == 7
    with pytest.raises(EdgeError) as refused:
        chat(CHATML, 64, messages=[{"role": "user", "content": "word " * 20}], max_tokens=1)
    assert refused.value.status == 400 and refused.value.code == "context_length_exceeded"


def test_a_final_assistant_message_with_tool_calls_is_refused():
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    with pytest.raises(ValueError, match="final assistant message cannot have tool_calls"):
        ChatCompletionRequest.model_validate({"model": "m", "messages": [
            {"role": "user", "content": "q"}, {"role": "assistant", "content": "x", "tool_calls": [call]}]})


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
