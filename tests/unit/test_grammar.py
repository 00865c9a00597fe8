"""Schema -> grammar: bounds become rules, unenforceable keywords are refused. What a grammar
accepts is asked of llama.cpp's own grammar engine (GrammarCheck), value by value."""

from __future__ import annotations

import ctypes
import json
import math
import random
import re
from decimal import Decimal

import jsonschema
import llama_cpp
import pytest
from support import EMBEDDED_GGUF

from edge.chat.grammar import (
    MAX_GRAMMAR_CHARS, MAX_REPETITIONS, MAX_SCHEMA_CHARS, MAX_SCHEMA_DEPTH, UnsupportedSchema, add_schema, json_depth,
    json_grammar, new_converter,
)
from edge.chat.tools import ToolSpec, tools_grammar
from edge.engine.llama_model import LlamaModel, LoadOptions


class GrammarCheck:
    """A grammar compiled by llama.cpp; `accepts(text)` feeds text byte by byte through its sampler."""

    def __init__(self, vocab: "Vocabulary", grammar: str) -> None:
        self.vocab, self.grammar = vocab, grammar
        self.sampler = llama_cpp.llama_sampler_init_grammar(vocab.model.vocab, grammar.encode(), b"root")
        assert self.sampler, f"llama.cpp rejected the grammar:\n{grammar}"

    def accepts(self, text: str) -> bool:
        llama_cpp.llama_sampler_reset(self.sampler)
        for token in self.vocab.tokens(text):
            if not self._allows(token):
                return False
            llama_cpp.llama_sampler_accept(self.sampler, token)
        return self._allows(self.vocab.model.eos_id)  # the grammar is complete here

    def _allows(self, token: int) -> bool:
        """Asked, never accepted blindly: llama.cpp throws when it accepts a token the grammar forbids."""
        data = (llama_cpp.llama_token_data * 1)(llama_cpp.llama_token_data(token, 0.0, 0.0))
        llama_cpp.llama_sampler_apply(self.sampler, ctypes.byref(llama_cpp.llama_token_data_array(data, 1, -1, False)))
        return data[0].logit != -math.inf

    def close(self) -> None:
        llama_cpp.llama_sampler_free(self.sampler)


class Vocabulary:
    """SmolLM2's vocabulary: a token for each byte, so that any text can be fed one byte at a time."""

    def __init__(self) -> None:
        self.model = LlamaModel(EMBEDDED_GGUF, LoadOptions(vocab_only=True))
        self.byte_tokens: dict[int, int] = {}
        for token in range(self.model.n_vocab):
            piece = self.model.piece(token)
            if len(piece) == 1 and not self.model.is_eog(token):
                self.byte_tokens.setdefault(piece[0], token)

    def tokens(self, text: str) -> list[int]:
        tokens = []
        for char in text:
            data = char.encode()
            if all(byte in self.byte_tokens for byte in data):
                tokens += [self.byte_tokens[byte] for byte in data]
            else:  # a few control bytes have no token of their own
                tokens += self.model.tokenize(char, add_special=False)
        return tokens

    def check(self, schema: dict) -> GrammarCheck:
        return GrammarCheck(self, json_grammar(schema))


@pytest.fixture(scope="module")
def vocab():
    loaded = Vocabulary()
    yield loaded
    loaded.model.close()


def accepted(vocab: Vocabulary, schema: dict, texts: list[str]) -> dict[str, bool]:
    check = vocab.check(schema)
    try:
        return {text: check.accepts(text) for text in texts}
    finally:
        check.close()


def test_an_integer_range_is_digit_ranges_not_a_list(vocab):
    grammar = json_grammar({"type": "integer", "minimum": -999, "maximum": 999})
    assert len(grammar) < 200 and '"17"' not in grammar
    result = accepted(vocab, {"type": "integer", "minimum": 2, "exclusiveMaximum": 5}, ["1", "2", "3", "4", "5"])
    assert result == {"1": False, "2": True, "3": True, "4": True, "5": False}


def test_non_negative_bounds_drop_the_sign(vocab):
    texts = ["0", "-0", "-1", "7", "00", "07", "1234567890123456"]
    assert accepted(vocab, {"type": "integer", "minimum": 0}, texts) == {
        "0": True, "-0": False, "-1": False, "7": True, "00": False, "07": False, "1234567890123456": True}
    assert '"-"' not in json_grammar({"type": "number", "minimum": 0}).split("root ::=")[1].split("\n")[0]


@pytest.mark.parametrize("schema", [
    {"type": "integer", "multipleOf": 3},
    {"type": "integer", "multipleOf": 7, "minimum": 0, "maximum": 10**6},
    {"type": "number", "multipleOf": 0.01},
    {"type": "string", "pattern": "a(?=b)"},
    {"type": "string", "pattern": "(a)\\1"},
    {"type": "string", "pattern": "(?i)abc"},
    {"type": "string", "pattern": "^\\w+$", "maxLength": 8},
    {"type": "integer", "minimum": True},
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


def test_fractional_bounds_of_an_integer_range_round_inwards(vocab):
    result = accepted(vocab, {"type": "integer", "minimum": 2.5, "maximum": 4.5}, ["2", "3", "4", "5"])
    assert result == {"2": False, "3": True, "4": True, "5": False}


# Bounds, multipleOf and patterns, checked value by value against llama.cpp's grammar engine and
# jsonschema: every value a grammar accepts validates, and every value in the grammar's own form
# (canonical digits, no exponent, at most 15 significant digits for numbers) that validates is accepted.

def validator(schema: dict) -> jsonschema.protocols.Validator:
    draft4 = any(isinstance(schema.get(key), bool) for key in ("exclusiveMinimum", "exclusiveMaximum"))
    return (jsonschema.Draft4Validator if draft4 else jsonschema.Draft202012Validator)(schema)


def assert_agrees(vocab: Vocabulary, schema: dict, exact: list[str], others: list[str] = ()) -> None:
    """`exact` texts: accepted exactly when valid; `others` (forms the grammar need not write): only
    accepted when valid."""
    valid = validator(schema)
    result = accepted(vocab, schema, [*exact, *others])
    wrong = [(text, result[text]) for text in exact if result[text] != valid.is_valid(json.loads(text))]
    wrong += [(text, True) for text in others if result[text] and not valid.is_valid(json.loads(text))]
    assert not wrong, f"{schema}: (text, accepted) that disagree with jsonschema: {wrong}"


MALFORMED_INTEGERS = ["-0", "00", "01", "-01", "1.0", "1e2", "+1"]  # valid JSON, not the grammar's form


def integer_texts(schema: dict, rng: random.Random) -> list[str]:
    """Integers next to each bound and to zero, and a few inside."""
    bounds = [math.floor(schema[key]) for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
              if type(schema.get(key)) in (int, float)]
    values = {value + step for value in [0, *bounds] for step in range(-3, 4)}
    if len(bounds) >= 2:
        values |= {rng.randint(min(bounds), max(bounds)) for _ in range(5)}
    digits = max([16] + [len(str(abs(bound))) for bound in bounds])  # what a side without a bound may write
    return [str(value) for value in sorted(values) if len(str(abs(value))) <= digits]


@pytest.mark.parametrize("bounds", [
    {"minimum": -999, "maximum": 999},  # LangChain's standard test tool
    {"minimum": 0, "maximum": 0},
    {"minimum": -1000, "maximum": -10},
    {"minimum": 99, "maximum": 101},
    {"minimum": 1},
    {"maximum": -5},
    {"exclusiveMinimum": -1, "exclusiveMaximum": 1},
    {"exclusiveMinimum": 9.5, "maximum": 1e3},
    {"minimum": 10**20, "maximum": 10**20 + 5},
    {"minimum": -9007199254740991, "maximum": 9007199254740991},  # Zod's int()
    {"minimum": 3, "exclusiveMinimum": 3},
    {"minimum": 5, "exclusiveMinimum": 7, "maximum": 20, "exclusiveMaximum": 30},
    {"minimum": 5, "exclusiveMinimum": True, "maximum": 10, "exclusiveMaximum": True},  # draft 4
    {"minimum": 5, "exclusiveMinimum": False},
])
def test_integer_bounds_accept_exactly_the_values_in_range(vocab, bounds):
    schema = {"type": "integer", **bounds}
    window = [str(value) for value in range(-1100, 1100)] if len(json.dumps(bounds)) < 40 else []
    assert_agrees(vocab, schema, integer_texts(schema, random.Random(0)) + window, MALFORMED_INTEGERS)


def random_bound(rng: random.Random) -> int:
    return rng.randint(-10 ** rng.randint(0, 18), 10 ** rng.randint(0, 18))


def test_random_integer_ranges_agree_with_python(vocab):
    rng = random.Random(1234)
    for _ in range(200):
        low, high = sorted((random_bound(rng), random_bound(rng)))
        bounds = {rng.choice(["minimum", "exclusiveMinimum"]): low, rng.choice(["maximum", "exclusiveMaximum"]): high}
        if rng.random() < 0.2:
            bounds.pop(rng.choice(list(bounds)))
        schema = {"type": "integer", **bounds}
        try:
            assert_agrees(vocab, schema, integer_texts(schema, rng), MALFORMED_INTEGERS)
        except UnsupportedSchema:  # only when no integer fits
            assert low + 1 >= high and not any(validator(schema).is_valid(v) for v in range(low - 1, high + 2))


@pytest.mark.parametrize("multiple", [2, 5, 10, 20, 50, 100, 1000, 3, 7])
def test_integer_multiple_of_by_last_digits_or_listed(vocab, multiple):
    rng = random.Random(multiple)
    for _ in range(15):
        low = rng.randint(-3000, 3000)
        high = low + rng.randint(0, 300 if multiple < 10 else 30000)
        schema = {"type": "integer", "multipleOf": multiple, "minimum": low, "maximum": high}
        texts = [str(value) for value in {*range(low - 12, low + 12), *range(high - 12, high + 12),
                                          *(rng.randint(low, high) for _ in range(20))}]
        if any(int(text) % multiple == 0 for text in texts if low <= int(text) <= high):
            assert_agrees(vocab, schema, texts, MALFORMED_INTEGERS)
    assert_agrees(vocab, {"type": "number", "multipleOf": 5, "exclusiveMinimum": -12.5},
                  [str(value) for value in range(-30, 30)], ["5.0", "2.5"])


def decimal_texts(schema: dict, places: tuple[int, ...] = tuple(range(15))) -> tuple[list[str], list[str]]:
    """(numbers in the grammar's form, other spellings) next to each bound and to zero: the bound,
    and the bound plus and minus 10^-k for each k of `places`."""
    points = [Decimal(repr(schema[key])) for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
              if type(schema.get(key)) in (int, float)] + [Decimal(0)]
    values = {point + sign * Decimal(10) ** -k for point in points for k in places for sign in (-1, 1)}
    texts = {format(value, "f") for value in values | set(points)}
    texts |= {text + (".0" if "." not in text else "0") for text in list(texts)}  # trailing zeros

    def writable(text: str) -> bool:
        return len(text.lstrip("-").replace(".", "")) <= 15 and not (text.startswith("-") and float(text) == 0)

    return sorted(filter(writable, texts)), sorted(text for text in texts if not writable(text)) + ["1e-3", "2E2"]


@pytest.mark.parametrize("bounds", [
    {"minimum": 0, "maximum": 1},
    {"exclusiveMinimum": 0},
    {"exclusiveMinimum": 0, "exclusiveMaximum": 1},
    {"minimum": -1.5, "maximum": 2.25},
    {"exclusiveMaximum": -0.5},
    {"minimum": 0.1, "exclusiveMaximum": 0.30000000000000004},
    {"maximum": 99.99},
    {"minimum": -273.15},
    {"exclusiveMinimum": 1e-5, "maximum": 1e5},
    {"minimum": 0.25, "maximum": 0.25},
    {"minimum": 123456.789, "exclusiveMaximum": 123456.8},
    {"minimum": 1, "exclusiveMinimum": True},  # draft 4
])
def test_number_bounds_accept_exactly_the_values_in_range(vocab, bounds):
    schema = {"type": "number", **bounds}
    writable, others = decimal_texts(schema)
    assert_agrees(vocab, schema, writable, others)


def test_random_number_ranges_agree_with_python(vocab):
    rng = random.Random(99)
    for _ in range(200):
        values = sorted(round(rng.uniform(-10 ** rng.randint(0, 6), 10 ** rng.randint(0, 6)), rng.randint(0, 4))
                        for _ in range(2))
        bounds = {rng.choice(["minimum", "exclusiveMinimum"]): values[0],
                  rng.choice(["maximum", "exclusiveMaximum"]): values[1]}
        if rng.random() < 0.2:
            bounds.pop(rng.choice(list(bounds)))
        schema = {"type": "number", **bounds}
        if values[0] == values[1] and ("exclusiveMinimum" in bounds or "exclusiveMaximum" in bounds):
            continue  # no number fits: refused (test_refusals_say_what_is_refused)
        writable, others = decimal_texts(schema, (0, 1, 2, rng.randint(3, 13), 14))
        assert_agrees(vocab, schema, writable, others)


@pytest.mark.parametrize("schema, rule_chars", [
    ({"type": "integer", "minimum": -10**15, "maximum": 10**15}, 300),
    ({"type": "integer", "minimum": 123456789, "maximum": 987654321987}, 700),
    ({"type": "number", "minimum": -1.5, "maximum": 1e6}, 1500),
])
def test_range_rules_stay_compact(schema, rule_chars):
    assert len(json_grammar(schema)) < rule_chars


ALPHABET = ["a", "b", "c", "x", "1", " ", ".", '"', "\\", "\n", "\t", "é", "😀"]
EXACT_PATTERNS = ["abc", "^abc", "abc$", "^abc$", "", "^$", "a|^b$|c$", "^a.c$", "x[^a]", "^[a-c]+$", "(ab)+",
                  "^(a|bc){2,3}$", '"', "\\\\", "^\\n", "é.", '^[^"\\\\]*$', "^a*?b", "\\.", "^(x|)1$", "😀",
                  "^\\d+$", "\\s", "\\Ac\\Z", "[\\t-\\n]"]
SOUND_PATTERNS = ["\\w+", "\\S", "\\D", "[^\\d\\s]", "^\\W$"]  # Python's classes are Unicode: ASCII is written


def random_strings(rng: random.Random, count: int) -> list[str]:
    return ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 5))) for _ in range(count)]


@pytest.mark.parametrize("pattern", EXACT_PATTERNS + SOUND_PATTERNS)
def test_patterns_match_as_json_schema_searches(vocab, pattern):
    rng = random.Random(pattern)
    strings = random_strings(rng, 150) + ["abc", "xxabcyy", "ab", "bc", "a", "b", "c", "x1", "1", "xa", "xb", "é😀"]
    # Python's $ also matches before a final newline (ECMA's does not): the grammar writes no such newline.
    texts = {json.dumps(string, ensure_ascii=False): string for string in strings}
    exact = [text for text, string in texts.items() if pattern in EXACT_PATTERNS and not string.endswith("\n")]
    others = [text for text in texts if text not in exact]
    assert_agrees(vocab, {"type": "string", "pattern": pattern}, exact, others)


@pytest.mark.parametrize("pattern", [".", "^.{3}$", "[^a]", "\\D", "\\S{2}"])
def test_pattern_characters_stay_valid_json(vocab, pattern):
    broken = ['"""', '"\\"', '"a\nb"', '"\x01"', '"\\x"', '"a"b"']  # raw quote, lone backslash, raw control
    result = accepted(vocab, {"type": "string", "pattern": pattern}, broken)
    assert not any(result.values()), result
    assert accepted(vocab, {"type": "string", "pattern": "^.{3}$"}, ['"\\"\\\\\\t"']) == {'"\\"\\\\\\t"': True}


def test_plain_strings_write_control_characters_escaped(vocab):
    assert accepted(vocab, {"type": "string"}, ['"a\nb"', '"a\\nb"', '"\x01"']) == {
        '"a\nb"': False, '"a\\nb"': True, '"\x01"': False}


def test_bounds_survive_a_list_of_types(vocab):
    schema = {"type": ["integer", "null"], "minimum": 3}
    assert accepted(vocab, schema, ["2", "3", "null"]) == {"2": False, "3": True, "null": True}


def test_tool_parameters_with_bounds_compile(vocab):
    parameters = {"type": "object", "properties": {
        "a": {"type": "integer", "minimum": -999, "maximum": 999}, "b": {"type": "number", "exclusiveMinimum": 0},
        "c": {"type": "string", "pattern": "^[a-z]+$"}}, "required": ["a", "b", "c"]}
    grammar = tools_grammar([ToolSpec("f", "", parameters)], allow_answer=False, max_calls=1)
    GrammarCheck(vocab, grammar).close()


@pytest.mark.parametrize("schema, reason", [
    ({"type": "integer", "multipleOf": 3}, "multipleOf 3 is enforced only when"),
    ({"type": "number", "multipleOf": 0.1}, "floating point"),
    ({"type": "number", "exclusiveMinimum": 2, "maximum": 2}, "no number satisfies"),
    ({"type": "integer", "minimum": float("inf")}, "finite number"),
    ({"type": "string", "pattern": "^(a?)*$"}, "may match nothing"),
    ({"type": "string", "pattern": "a\\b"}, "anchor inside the pattern"),
    ({"type": "string", "pattern": "(?<=a)b"}, "lookaround"),
    ({"type": "string", "pattern": "[a-"}, "not a regular expression"),
    ({"type": "string", "pattern": "abc", "maxLength": 10}, "anchored"),
])
def test_refusals_say_what_is_refused(schema, reason):
    with pytest.raises(UnsupportedSchema, match=re.escape(reason)):
        json_grammar(schema)
    assert json_grammar({"type": "string", "pattern": "^[A-Z]{2,3}$", "minLength": 2, "maxLength": 3})
