"""Schema -> grammar: bounds become rules, unenforceable keywords are refused."""

import pytest

from edge.chat.grammar import UnsupportedSchema, json_grammar


def test_small_integer_range_is_enumerated():
    grammar = json_grammar({"type": "integer", "minimum": 2, "exclusiveMaximum": 5})
    assert 'root ::= ("2" | "3" | "4") space' in grammar


def test_non_negative_bounds_drop_the_sign():
    assert 'root ::= ("0" | [1-9] [0-9]{0,15}) space' in json_grammar({"type": "integer", "minimum": 0})
    assert '"-"' not in json_grammar({"type": "number", "minimum": 0}).split("root ::=")[1].split("\n")[0]


@pytest.mark.parametrize("schema", [
    {"type": "integer", "minimum": 0, "maximum": 10**6},
    {"type": "number", "maximum": 1},
    {"type": "number", "exclusiveMinimum": 0},
    {"type": "array", "uniqueItems": True},
    {"type": "object", "properties": {"a": {"type": "string", "contentEncoding": "base64"}}},
])
def test_unenforceable_schemas_are_refused(schema):
    with pytest.raises(UnsupportedSchema):
        json_grammar(schema)


def test_annotations_and_property_names_are_not_keywords():
    grammar = json_grammar({"title": "T", "type": "object", "properties": {"not": {"type": "string",
                                                                                   "description": "d"}}})
    assert "root ::=" in grammar
