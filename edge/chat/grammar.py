r"""JSON schemas -> GBNF grammars that llama.cpp enforces token by token.

llama-cpp-python's schema converter does the bulk of the work but silently ignores numeric
bounds and several other keywords, which would let output through that fails validation. So
every keyword is checked first: bounds we can express are turned into grammar rules here, and
anything that cannot be enforced is refused with a clear error instead of being ignored.

The converter also spells repetitions out (`maxLength: 1000` becomes 1000 nested optional
characters) and names rules after their path in the schema, so a small schema can ask for a
huge grammar. What a schema may ask for is therefore bounded: its nesting and size, each
repetition count, and the grammar that comes out.

What is enforced exactly (every output validates, and every valid value can be written, in the
output's own form: canonical digits, no exponent, no escapes beyond JSON's short ones):
- integer minimum, maximum, exclusiveMinimum, exclusiveMaximum of any size and sign (bounds up to
  310 digits), draft 4's boolean exclusiveMinimum/exclusiveMaximum too, as digit-range rules
  (edge/chat/ranges.py), never as a list of values; a side without a bound allows up to 16 digits.
- integer multipleOf 1, 2 or 5 times a power of ten (decided by the last digits), with any bounds;
  any other multipleOf when minimum and maximum leave at most 100 multiples (listed). A number with
  an integer multipleOf is written as an integer.
- number bounds of any decimal value (a float is read as its shortest decimal), with at most 15
  significant digits written: two such decimals are two different doubles, so a value kept
  below an exclusive bound is still below it once a validator parsed it.
- pattern with JSON Schema's search semantics (re.search, as jsonschema does): without ^ or \A
  anything may come before the match, without $ or \Z anything after. Python's own regex parser
  reads the pattern; every character is written as JSON allows (quote, backslash and control
  characters escaped; other control characters only where the pattern names them). \d, \w, \s
  write only their ASCII members, and \D, \W, \S and negated classes holding them only ASCII
  characters (Python's classes are Unicode's); $ never writes the final newline Python's allows.
- pattern with minLength/maxLength when the pattern is anchored at both ends and the lengths of
  its matches already lie within them.
Refused, each with its reason: multipleOf on numbers (validators compute it in floating point),
other integer multipleOf with more than 100 multiples within the bounds; in patterns lookarounds,
backreferences, \b, inline flags, possessive and atomic repetitions, anchors inside the pattern,
and unbounded repetition of what may match nothing (llama.cpp rejects the left recursion it makes).
"""

from __future__ import annotations

import json
import re
from re import _parser as regex_parser  # Python's own: jsonschema matches patterns with re.search
from typing import Any

from llama_cpp.llama_grammar import SchemaConverter

from edge.chat.ranges import (
    NUMERIC_KEYWORDS, CharRanges, category_sets, complement, gbnf_literal, json_chars, json_text, numeric_rule, union,
)

# Levels of JSON nesting (objects and arrays; the schema itself is level 1), so 15 objects inside
# one another. A schema 300 objects deep made a prompt of 3k tokens and a grammar of 377k
# characters, and 4 tokens of answer took 9 to 49 s.
MAX_SCHEMA_DEPTH = 32
MAX_SCHEMA_CHARS = 32 * 1024  # of compact JSON: the schema is copied into the prompt as that
# minLength, maxLength, minItems, maxItems and {m,n} in patterns: each is written out in the grammar.
MAX_REPETITIONS = 1000
MAX_GRAMMAR_CHARS = 1 << 20  # a 32k-character schema of ordinary objects makes about 270k

_ANNOTATIONS = {"title", "description", "default", "examples", "$schema", "$id", "$comment", "deprecated",
                "readOnly", "writeOnly", "strict"}
_ENFORCED = {"type", "properties", "required", "additionalProperties", "items", "prefixItems", "minItems",
             "maxItems", "enum", "const", "anyOf", "oneOf", "allOf", "$ref", "$defs", "definitions", "pattern",
             "format", "minLength", "maxLength", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
             "multipleOf"}
_SCHEMA_MAPS = {"properties", "$defs", "definitions"}  # name -> schema
_DATA = {"enum", "const", "default", "examples"}  # values, not schemas
_COUNTS = (("minLength", "maxLength"), ("minItems", "maxItems"))
_NON_EMPTY = ("anyOf", "oneOf", "allOf", "enum", "type")  # an empty list would make an empty rule
_QUANTIFIER = re.compile(r"\{\s*(\d*)\s*(?:,\s*(\d*)\s*)?\}")
# A JSON string's character, raw or escaped: the library's lets raw control characters through.
_JSON_CHAR = r'[^"\\\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4})'


class UnsupportedSchema(ValueError):
    """The schema asks for something the grammar cannot guarantee."""


class _Converter(SchemaConverter):
    """The library's converter, plus numeric bounds, patterns as JSON Schema means them, JSON-valid
    string characters, and a bound on the grammar's size."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._grammar_chars = 0

    def visit(self, schema: Any, name: str) -> str:
        if not isinstance(schema, dict) or any(key in schema for key in ("$ref", "oneOf", "anyOf")):
            return super().visit(schema, name)
        kind = schema.get("type")
        if isinstance(kind, list) and ("const" in schema or "enum" in schema):  # the values say it all
            return super().visit({key: value for key, value in schema.items() if key != "type"}, name)
        if isinstance(kind, list):  # the library would visit bare {"type": t}, dropping every other keyword
            alternatives = [{**schema, "type": each} for each in kind]
            return self._add_rule(name or "root", self._generate_union_rule(name, alternatives))
        if "const" in schema or "enum" in schema:
            return super().visit(schema, name)
        if kind in ("integer", "number") and any(key in schema for key in NUMERIC_KEYWORDS):
            try:
                rule = numeric_rule(schema)
            except ValueError as error:
                raise UnsupportedSchema(str(error)) from None
            return self._add_rule(name or "root", f"{rule} space")
        if kind in (None, "string") and "pattern" in schema and ("minLength" in schema or "maxLength" in schema):
            _check_pattern_lengths(schema)
        return super().visit(schema, name)

    def _visit_pattern(self, pattern: str, name: str) -> str:
        char = self._add_rule("char", _JSON_CHAR)
        return self._add_rule(name, f'"\\"" {_pattern_body(pattern, char)} "\\"" space')

    def _add_primitive(self, name: str, rule: Any) -> str:
        if name == "char":  # strings: raw control characters are not JSON
            return self._add_rule("char", _JSON_CHAR)
        return super()._add_primitive(name, rule)

    def _add_rule(self, name: str, rule: str) -> str:
        count = len(self._rules)
        key = super()._add_rule(name, rule)
        if len(self._rules) > count:  # a new rule, not one already there
            self._grammar_chars += len(key) + len(rule) + 5
            if self._grammar_chars > MAX_GRAMMAR_CHARS:
                raise UnsupportedSchema(f"the grammar for the schema would exceed {MAX_GRAMMAR_CHARS} characters")
        return key


def new_converter(prop_order: dict[str, int] | None = None) -> SchemaConverter:
    return _Converter(prop_order=prop_order or {}, allow_fetch=False, dotall=False, raw_pattern=False)


def check_schema_bounds(schema: Any) -> None:
    """Refuse a schema nested deeper than MAX_SCHEMA_DEPTH or longer than MAX_SCHEMA_CHARS."""
    depth = json_depth(schema)
    if depth > MAX_SCHEMA_DEPTH:
        raise UnsupportedSchema(f"the schema nests objects and arrays {depth} levels deep; at most {MAX_SCHEMA_DEPTH} "
                                "are accepted")
    size = len(json.dumps(schema, separators=(",", ":"), ensure_ascii=False))
    if size > MAX_SCHEMA_CHARS:
        raise UnsupportedSchema(f"the schema is {size} characters of compact JSON; at most {MAX_SCHEMA_CHARS} "
                                "are accepted")


def json_depth(value: Any) -> int:
    """Levels of nested objects and arrays in `value` (0 for a scalar); iterative, so any depth is safe."""
    deepest, pending = 0, [(value, 1)]
    while pending:
        item, level = pending.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is not None:
            deepest = max(deepest, level)
            pending.extend((child, level + 1) for child in children)
    return deepest


def add_schema(converter: SchemaConverter, schema: dict[str, Any], rule_name: str) -> str:
    """Add rules for JSON valid against `schema`; returns the rule's name. Whatever fails, a
    RecursionError on a schema nested past the checks included, is an UnsupportedSchema."""
    try:
        _check_keywords(schema)
        _check_refs(schema)
        return converter.visit(converter.resolve_refs(schema, ""), rule_name)
    except UnsupportedSchema:
        raise
    except Exception as error:  # the converter raises assorted errors on schemas it cannot read
        raise UnsupportedSchema(f"cannot build a grammar from the schema ({type(error).__name__}: {error})") from error


def json_grammar(schema: dict[str, Any] | None) -> str:
    """GBNF for any JSON object (`schema` None) or for JSON valid against `schema`."""
    converter = new_converter()
    if schema is not None:
        check_schema_bounds(schema)
    add_schema(converter, schema if schema is not None else {"type": "object"}, "")
    return converter.format_grammar()


def _check_keywords(schema: Any) -> None:
    if isinstance(schema, list):
        for item in schema:
            _check_keywords(item)
        return
    if not isinstance(schema, dict):
        return
    unknown = set(schema) - _ENFORCED - _ANNOTATIONS
    if unknown:
        raise UnsupportedSchema(f"JSON schema keyword(s) {', '.join(sorted(unknown))} cannot be enforced by the grammar")
    _check_counts(schema)
    for key, value in schema.items():
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            _check_keywords(list(value.values()))
        elif key not in _DATA and key not in _ANNOTATIONS:
            _check_keywords(value)


def _check_counts(schema: dict[str, Any]) -> None:
    """Repetition counts the grammar can spell out, and no empty alternatives."""
    for low_key, high_key in _COUNTS:
        low, high = schema.get(low_key, 0), schema.get(high_key)
        for key, value in ((low_key, low), (high_key, high)):
            if value is not None and (type(value) is not int or not 0 <= value <= MAX_REPETITIONS):
                raise UnsupportedSchema(f"{key} must be an integer from 0 to {MAX_REPETITIONS}, got {value!r}")
        if high is not None and low > high:
            raise UnsupportedSchema(f"{low_key} {low} is above {high_key} {high}")
    pattern = schema.get("pattern")
    if isinstance(pattern, str):
        for match in _QUANTIFIER.finditer(pattern):
            if any(number and int(number) > MAX_REPETITIONS for number in match.groups()):
                raise UnsupportedSchema(f"pattern repetition {match.group()} is above {MAX_REPETITIONS}")
    for key in _NON_EMPTY:
        if schema.get(key) == []:
            raise UnsupportedSchema(f"{key} must not be empty")


def _check_refs(schema: dict[str, Any]) -> None:
    """Refuse a $ref that reaches itself before any JSON is written (`a ::= a`, or through anyOf):
    llama.cpp rejects left-recursive grammars. Recursion inside an object or array is fine."""
    state: dict[str, str] = {}  # ref -> "open" while the refs it starts with are explored, then "done"
    for start in _all_refs(schema):
        if start in state:
            continue
        state[start] = "open"
        stack = [(start, iter(_head_refs(_target(schema, start))))]
        while stack:  # depth first, without recursion: a chain of refs may be long
            ref, heads = stack[-1]
            following = next(heads, None)
            if following is None:
                state[ref] = "done"
                stack.pop()
            elif state.get(following) == "open":
                raise UnsupportedSchema(f"$ref {following} refers to itself before any JSON value starts")
            elif following not in state:
                state[following] = "open"
                stack.append((following, iter(_head_refs(_target(schema, following)))))


def _all_refs(schema: Any) -> list[str]:
    """Every $ref string anywhere in `schema`."""
    refs, pending = [], [schema]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            if isinstance(item.get("$ref"), str):
                refs.append(item["$ref"])
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return refs


def _head_refs(schema: Any) -> list[str]:
    """The $refs the converter's rule for `schema` starts with: its own, or its alternatives'."""
    if not isinstance(schema, dict):
        return []
    if isinstance(schema.get("$ref"), str):
        return [schema["$ref"]]
    alternatives = schema.get("oneOf") or schema.get("anyOf")
    if not isinstance(alternatives, list):
        return []
    return [ref for alternative in alternatives for ref in _head_refs(alternative)]


def _target(schema: dict[str, Any], ref: str) -> Any:
    """What a local `#/a/b` ref points at, read as the converter reads it; None when it does not resolve."""
    target: Any = schema
    for part in ref.split("#")[-1].split("/")[1:]:
        if not isinstance(target, dict) or part not in target:
            return None
        target = target[part]
    return target


def _pattern_body(pattern: str, char: str) -> str:
    """GBNF for the inside of a JSON string in which re.search(pattern) finds a match: unanchored
    ends may hold any characters (`char`, a rule for one JSON string character)."""
    parsed = _parse_pattern(pattern)
    items = list(parsed)
    branches = items[0][1][1] if len(items) == 1 and items[0][0] is regex_parser.BRANCH else [items]
    alternatives = []
    for branch in branches:
        branch = list(branch)
        start = bool(branch) and _is_anchor(branch[0], _STARTS)
        end = len(branch) > start and _is_anchor(branch[-1], _ENDS)
        body = _regex_sequence(branch[int(start):len(branch) - int(end)], pattern)
        alternatives.append(" ".join(part for part in ("" if start else f"{char}*", body, "" if end else f"{char}*")
                                     if part) or '""')
    return alternatives[0] if len(alternatives) == 1 else "(" + " | ".join(alternatives) + ")"


_STARTS = (regex_parser.AT_BEGINNING, regex_parser.AT_BEGINNING_STRING)  # ^ and \A
_ENDS = (regex_parser.AT_END, regex_parser.AT_END_STRING)  # $ and \Z


def _is_anchor(item: tuple[Any, Any], kinds: tuple[Any, ...]) -> bool:
    return item[0] is regex_parser.AT and item[1] in kinds


def _parse_pattern(pattern: str) -> Any:
    try:
        parsed = regex_parser.parse(pattern)
    except (re.error, RecursionError, OverflowError) as error:
        raise UnsupportedSchema(f"pattern {pattern!r} is not a regular expression Python can read ({error})") from None
    if parsed.state.flags & ~regex_parser.SRE_FLAG_UNICODE:
        raise UnsupportedSchema(f"pattern {pattern!r}: inline flags cannot be enforced by the grammar")
    return parsed


def _regex_sequence(items: list[Any], pattern: str) -> str:
    """GBNF for a parsed regex sequence; runs of literal characters become one literal."""
    parts: list[str] = []
    literal = ""
    for op, argument in items:
        if op is regex_parser.LITERAL:
            literal += json_text(argument)
            continue
        if literal:
            parts.append(gbnf_literal(literal))
            literal = ""
        parts.append(_regex_item(op, argument, pattern))
    if literal:
        parts.append(gbnf_literal(literal))
    return " ".join(part for part in parts if part) or '""'


def _regex_item(op: Any, argument: Any, pattern: str) -> str:
    """GBNF for one parsed regex item other than a literal character."""
    p = regex_parser
    if op in (p.ANY, p.NOT_LITERAL, p.IN):
        chars = (complement([(0x0A, 0x0A)]) if op is p.ANY else complement([(argument, argument)])
                 if op is p.NOT_LITERAL else _class_sets(argument)[0])
        if (written := json_chars(chars)) is None:
            raise UnsupportedSchema(f"pattern {pattern!r} has a class no JSON character can be written for")
        return written
    if op in (p.MAX_REPEAT, p.MIN_REPEAT):  # lazy or greedy: the same strings match
        least, most, sub = argument
        if most is p.MAXREPEAT and sub.getwidth()[0] == 0:
            raise UnsupportedSchema(f"pattern {pattern!r}: repeating what may match nothing without bound "
                                    "cannot be enforced by the grammar")
        inner = f"({_regex_sequence(list(sub), pattern)})"
        if most is p.MAXREPEAT:
            return inner + {0: "*", 1: "+"}.get(least, f"{{{least},}}")
        return "" if most == 0 else inner + ("?" if (least, most) == (0, 1) else f"{{{least},{most}}}"
                                             if least != most else f"{{{least}}}")
    if op is p.SUBPATTERN and not argument[1] and not argument[2]:
        return f"({_regex_sequence(list(argument[3]), pattern)})"
    if op is p.BRANCH:
        return "(" + " | ".join(_regex_sequence(list(branch), pattern) for branch in argument[1]) + ")"
    what = _UNSUPPORTED_REGEX.get(str(op), str(op))
    raise UnsupportedSchema(f"pattern {pattern!r}: {what} cannot be enforced by the grammar")


_UNSUPPORTED_REGEX = {"ASSERT": "a lookaround", "ASSERT_NOT": "a lookaround", "GROUPREF": "a backreference",
                      "GROUPREF_EXISTS": "a conditional group", "AT": "an anchor inside the pattern or \\b/\\B",
                      "SUBPATTERN": "a group with inline flags", "POSSESSIVE_REPEAT": "a possessive repetition",
                      "ATOMIC_GROUP": "an atomic group"}


def _class_sets(items: list[tuple[Any, Any]]) -> tuple[CharRanges, CharRanges]:
    """(characters the grammar may write, characters Python's class may match: a superset) of a class."""
    p = regex_parser
    written: CharRanges = []
    matched: CharRanges = []
    for op, argument in items:
        if op is p.LITERAL or op is p.RANGE:
            exact = [(argument, argument)] if op is p.LITERAL else [argument]
            written, matched = written + exact, matched + exact
        elif op is p.CATEGORY:
            category_written, category_matched = category_sets(str(argument).removeprefix("CATEGORY_"))
            written, matched = written + category_written, matched + category_matched
    if items and items[0][0] is p.NEGATE:
        return complement(matched), complement(written)
    return union(written), union(matched)


def _check_pattern_lengths(schema: dict[str, Any]) -> None:
    """minLength/maxLength beside a pattern: enforced only when the pattern implies them."""
    low, high, pattern = schema.get("minLength", 0), schema.get("maxLength"), schema["pattern"]
    parsed = _parse_pattern(pattern) if isinstance(pattern, str) else None
    items = list(parsed) if parsed is not None else []
    anchored = len(items) >= 2 and _is_anchor(items[0], _STARTS) and _is_anchor(items[-1], _ENDS)
    if not (anchored and parsed.getwidth()[0] >= low and (high is None or parsed.getwidth()[1] <= high)):
        raise UnsupportedSchema(f"pattern {pattern!r} with minLength/maxLength cannot be enforced by the grammar "
                                "unless the pattern is anchored (^...$) and its matches already have those lengths")
