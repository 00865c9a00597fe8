"""Schema -> grammar: bounds become rules, unenforceable keywords are refused."""

import pytest

from edge.chat.grammar import (
    MAX_GRAMMAR_CHARS, MAX_REPETITIONS, MAX_SCHEMA_CHARS, MAX_SCHEMA_DEPTH, UnsupportedSchema, add_schema, json_depth,
    json_grammar, new_converter,
)
from edge.chat.tools import ToolSpec, tools_grammar


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


def nested(levels: int) -> dict:
    """An object schema with `levels` objects inside one another (two JSON levels each)."""
    schema: dict = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}, "required": ["a"]}
    return schema


def test_nesting_is_bounded_and_the_error_says_the_limit():
    assert json_depth(nested(15)) <= MAX_SCHEMA_DEPTH and "root ::=" in json_grammar(nested(15))
    with pytest.raises(UnsupportedSchema, match=f"601 levels deep; at most {MAX_SCHEMA_DEPTH}"):
        json_grammar(nested(300))
    with pytest.raises(UnsupportedSchema, match="levels deep"):
        tools_grammar([ToolSpec("f", "", nested(300))], allow_answer=False, max_calls=1)


def test_size_is_bounded_and_the_error_says_the_limit():
    big = {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(2000)}}
    with pytest.raises(UnsupportedSchema, match=f"at most {MAX_SCHEMA_CHARS}"):
        json_grammar(big)


def test_grammar_building_never_recurses_without_bound():
    converter = new_converter()
    with pytest.raises(UnsupportedSchema):  # past the checks, straight into the converter
        add_schema(converter, nested(5000), "")


@pytest.mark.parametrize("schema", [
    {"type": "string", "maxLength": 10**9},
    {"type": "array", "minItems": MAX_REPETITIONS + 1},
    {"type": "string", "minLength": 5, "maxLength": 2},
    {"type": "string", "maxLength": "5"},
    {"type": "string", "pattern": "^a{100000000}$"},
    {"type": "string", "pattern": "^(ab){2,99999}$"},
])
def test_repetitions_the_grammar_would_spell_out_are_bounded(schema):
    with pytest.raises(UnsupportedSchema, match="maxLength|minItems|minLength|pattern"):
        json_grammar(schema)


def test_a_small_schema_cannot_ask_for_a_huge_grammar():
    # Rule names repeat the property path: long names and long repetitions multiply.
    schema = {"type": "object", "properties": {"k" * 9000: {"type": "object", "properties": {
        f"p{i}": {"type": "array", "items": {"type": "string"}, "minItems": MAX_REPETITIONS} for i in range(100)}}}}
    with pytest.raises(UnsupportedSchema, match=f"exceed {MAX_GRAMMAR_CHARS}"):
        json_grammar(schema)


@pytest.mark.parametrize("schema", [
    {"$ref": "#/$defs/a", "$defs": {"a": {"$ref": "#/$defs/a"}}},
    {"$ref": "#/$defs/a",
     "$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"anyOf": [{"type": "null"}, {"$ref": "#/$defs/a"}]}}},
    {"type": "object", "properties": {"x": {"$ref": "#/$defs/a"}}, "$defs": {"a": {"oneOf": [{"$ref": "#/$defs/a"}]}}},
    {"$ref": "#"},
])
def test_a_ref_that_reaches_itself_before_any_json_is_refused(schema):
    with pytest.raises(UnsupportedSchema, match="refers to itself"):
        json_grammar(schema)


def test_recursion_inside_objects_and_arrays_is_supported():
    tree = {"$ref": "#/$defs/node", "$defs": {"node": {"type": "object", "properties": {
        "children": {"type": "array", "items": {"$ref": "#/$defs/node"}}}}}}
    assert "node ::=" in json_grammar(tree)


@pytest.mark.parametrize("schema", [{"anyOf": []}, {"enum": []}, {"type": []},
                                    {"type": "integer", "minimum": 2.5, "maximum": 2.7}])
def test_schemas_no_value_satisfies_are_refused(schema):
    with pytest.raises(UnsupportedSchema):
        json_grammar(schema)


def test_fractional_bounds_of_an_integer_range_round_inwards():
    assert 'root ::= ("3" | "4") space' in json_grammar({"type": "integer", "minimum": 2.5, "maximum": 4.5})
