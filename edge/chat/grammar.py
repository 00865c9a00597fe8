"""JSON schemas -> GBNF grammars that llama.cpp enforces token by token.

llama-cpp-python's schema converter does the bulk of the work but silently ignores numeric
bounds and several other keywords, which would let output through that fails validation. So
every keyword is checked first: bounds we can express are turned into grammar rules here, and
anything that cannot be enforced is refused with a clear error instead of being ignored.

The converter also spells repetitions out (`maxLength: 1000` becomes 1000 nested optional
characters) and names rules after their path in the schema, so a small schema can ask for a
huge grammar. What a schema may ask for is therefore bounded: its nesting and size, each
repetition count, and the grammar that comes out.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from llama_cpp.llama_grammar import SchemaConverter

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
             "format", "minLength", "maxLength", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"}
_SCHEMA_MAPS = {"properties", "$defs", "definitions"}  # name -> schema
_DATA = {"enum", "const", "default", "examples"}  # values, not schemas
_COUNTS = (("minLength", "maxLength"), ("minItems", "maxItems"))
_NON_EMPTY = ("anyOf", "oneOf", "allOf", "enum", "type")  # an empty list would make an empty rule
_QUANTIFIER = re.compile(r"\{\s*(\d*)\s*(?:,\s*(\d*)\s*)?\}")
_MAX_ENUMERATED_RANGE = 1000
_NON_NEGATIVE_INTEGER = '("0" | [1-9] [0-9]{0,15})'
_NON_NEGATIVE_NUMBER = _NON_NEGATIVE_INTEGER + ' ("." [0-9]{1,16})? ([eE] [-+]? [0-9]{1,4})?'


class UnsupportedSchema(ValueError):
    """The schema asks for something the grammar cannot guarantee."""


class _Converter(SchemaConverter):
    """The library's converter, plus numeric bounds and a bound on the grammar's size."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._grammar_chars = 0

    def visit(self, schema: Any, name: str) -> str:
        if isinstance(schema, dict) and schema.get("type") in ("integer", "number") and _bounds(schema) != (None, None):
            return self._add_rule(name or "root", f"{_bounded_rule(schema)} space")
        return super().visit(schema, name)

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


def _bounds(schema: dict[str, Any]) -> tuple[float | None, float | None]:
    """Inclusive (low, high); exclusive integer bounds are moved one step in."""
    step = 1 if schema.get("type") == "integer" else 0
    low, high = schema.get("minimum"), schema.get("maximum")
    if "exclusiveMinimum" in schema:
        low = schema["exclusiveMinimum"] + step if step else _refuse(schema, "exclusiveMinimum on numbers")
    if "exclusiveMaximum" in schema:
        high = schema["exclusiveMaximum"] - step if step else _refuse(schema, "exclusiveMaximum on numbers")
    return low, high


def _bounded_rule(schema: dict[str, Any]) -> str:
    low, high = _bounds(schema)
    if schema["type"] == "integer":
        if low is not None and high is not None and 0 <= high - low <= _MAX_ENUMERATED_RANGE:
            values = range(math.ceil(low), math.floor(high) + 1)  # a bound may be fractional
            if values:  # else no integer fits: refused below
                return "(" + " | ".join(f'"{value}"' for value in values) + ")"
        if high is None and low == 0:
            return _NON_NEGATIVE_INTEGER
        if high is None and low == 1:
            return '[1-9] [0-9]{0,15}'
    elif high is None and low == 0:
        return _NON_NEGATIVE_NUMBER
    return _refuse(schema, f"bounds minimum={low} maximum={high}")


def _refuse(schema: dict[str, Any], what: str):
    raise UnsupportedSchema(
        f"{what} for {schema.get('type')} cannot be enforced by the grammar (supported: integer ranges of up to "
        f"{_MAX_ENUMERATED_RANGE} values, and minimum 0 or 1 without a maximum)"
    )
