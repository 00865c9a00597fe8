"""Reading tool calls out of streamed text: JSON read whole, whatever the pieces, and never an exception."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.chat.tools import CALL_CLOSE, CALL_OPEN, ToolCallReader, call_text, read_call

# String arguments the grammar allows that a regex up to the first closing tag would cut.
TRICKY = {"html": "</tool_call>", "open": "<tool_call>x", "both": '</tool_call>\n<tool_call>{"name": "g"}',
          "braces": "}}{{", "quote": '"\\', "unicode": "é€😀"}
TWO_CALLS = call_text("f", json.dumps(TRICKY)) + "\n" + call_text("g", json.dumps({"s": CALL_CLOSE * 2}))
EXPECTED = [("f", TRICKY), ("g", {"s": CALL_CLOSE * 2})]


def read(pieces: list[str]) -> tuple[str, list[tuple[str, object]]]:
    """All answer text and all (name, arguments) calls from feeding `pieces`, then finishing."""
    reader = ToolCallReader(enabled=True)
    text, calls = "", []
    for piece in pieces:
        released, completed = reader.feed(piece)
        text += released
        calls += [(call.name, json.loads(call.arguments)) for call in completed]
    return text + reader.finish(), calls


def chunks(text: str, cuts: list[int]) -> list[str]:
    bounds = [0, *sorted(set(cuts)), len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:])]


def test_a_closing_tag_inside_a_string_argument_does_not_end_the_call():
    assert read([TWO_CALLS]) == ("", EXPECTED)


@pytest.mark.parametrize("cut", range(1, len(TWO_CALLS)))
def test_calls_split_at_any_position_read_the_same(cut):
    assert read(chunks(TWO_CALLS, [cut])) == ("", EXPECTED)


@pytest.mark.parametrize("size", [1, 2, 3, 5, 11, 12, 13])
def test_calls_fed_in_small_pieces_read_the_same(size):
    assert read([TWO_CALLS[i:i + size] for i in range(0, len(TWO_CALLS), size)]) == ("", EXPECTED)


def test_each_call_is_released_as_soon_as_it_closes():
    reader = ToolCallReader(enabled=True)
    first = call_text("f", json.dumps(TRICKY))
    released = [reader.feed(char)[1] for char in first]
    assert [len(batch) for batch in released] == [0] * (len(first) - 1) + [1]


def test_read_call_says_whether_more_text_could_complete_a_call():
    whole = call_text("f", '{"a": "</tool_call>"}')
    assert read_call(whole)[0] == "call" and read_call(whole)[2] == len(whole)
    assert all(read_call(whole[:end])[0] == "more" for end in range(len(whole)))
    assert read_call('<tool_call>{"name": "f", "arguments": {}} junk')[0] == "invalid"
    assert read_call('<tool_call>["f", {}]</tool_call>')[0] == "invalid"
    assert read_call('<tool_call>{"name": 1, "arguments": {}}</tool_call>')[0] == "invalid"
    assert read_call("<tool_cal!")[0] == "invalid"


@pytest.mark.parametrize("text", [
    '<tool_call>{"name": "f", "arguments": {}} junk after the JSON',
    '<tool_call>{"name": "f", "arguments": "not an object"}</tool_call>',
    call_text("f", "{}") + "then prose",
    call_text("f", "{}") + " <tool_call>",
])
def test_text_that_cannot_be_a_call_becomes_answer_text(text):
    answer, calls = read([text])
    assert answer == text[len(call_text("f", "{}")):].lstrip("\n") if calls else answer == text
    assert all(read([text[:cut], text[cut:]]) == (answer, calls) for cut in range(len(text)))


@pytest.mark.parametrize("text", [
    "<tool_call>{not json}</tool_call>",
    '<tool_call>{"name": "f", "arguments": {"x": NaN}}</tool_call>',
    "<tool_call>" + "[" * 5000 + "</tool_call>",
    '<tool_call>{"name": "f", "arguments": {"x": ' + "9" * 5000 + "}}</tool_call>",
])
def test_json_that_never_completes_is_answer_text_at_the_end(text):
    reader = ToolCallReader(enabled=True)
    assert reader.feed(text) == ("", [])
    assert reader.finish() == text and reader.calls == []


def test_a_lone_surrogate_escape_in_arguments_stays_escaped():
    (call,) = ToolCallReader(enabled=True).feed(call_text("f", '{"s": "\\ud800"}'))[1]
    assert call.arguments.encode("utf-8") and json.loads(call.arguments) == {"s": "\ud800"}


FRAGMENTS = [CALL_OPEN, CALL_CLOSE, '{"name": "f", "arguments": ', "{", "}", '"', "\\", "\n", " ", "x", "<", ":", ","]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=30), st.lists(st.integers(0, 400), max_size=8))
def test_any_text_in_any_pieces_reads_as_it_does_whole(parts, cuts):
    text = "".join(parts)
    whole = read([text])
    assert read(chunks(text, [cut for cut in cuts if cut < len(text)])) == whole
    assert len(whole[0]) <= len(text)
