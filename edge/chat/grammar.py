"""JSON schemas -> GBNF grammars that llama.cpp enforces token by token.

llama-cpp-python's schema converter does the bulk of the work but silently ignores numeric
bounds and several other keywords, which would let output through that fails validation. So
every keyword is checked first: bounds we can express are turned into grammar rules here, and
anything that cannot be enforced is refused with a clear error instead of being ignored.
"""

from __future__ import annotations

from typing import Any

from llama_cpp.llama_grammar import SchemaConverter

_ANNOTATIONS = {"title", "description", "default", "examples", "$schema", "$id", "$comment", "deprecated",
                "readOnly", "writeOnly", "strict"}
_ENFORCED = {"type", "properties", "required", "additionalProperties", "items", "prefixItems", "minItems",
             "maxItems", "enum", "const", "anyOf", "oneOf", "allOf", "$ref", "$defs", "definitions", "pattern",
             "format", "minLength", "maxLength", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"}
_SCHEMA_MAPS = {"properties", "$defs", "definitions"}  # name -> schema
_DATA = {"enum", "const", "default", "examples"}  # values, not schemas
_MAX_ENUMERATED_RANGE = 1000
_NON_NEGATIVE_INTEGER = '("0" | [1-9] [0-9]{0,15})'
_NON_NEGATIVE_NUMBER = _NON_NEGATIVE_INTEGER + ' ("." [0-9]{1,16})? ([eE] [-+]? [0-9]{1,4})?'


class UnsupportedSchema(ValueError):
    """The schema asks for something the grammar cannot guarantee."""


class _Converter(SchemaConverter):
    """The library's converter, plus numeric bounds."""

    def visit(self, schema: Any, name: str) -> str:
        if isinstance(schema, dict) and schema.get("type") in ("integer", "number") and _bounds(schema) != (None, None):
            return self._add_rule(name or "root", f"{_bounded_rule(schema)} space")
        return super().visit(schema, name)


def new_converter(prop_order: dict[str, int] | None = None) -> SchemaConverter:
    return _Converter(prop_order=prop_order or {}, allow_fetch=False, dotall=False, raw_pattern=False)


def add_schema(converter: SchemaConverter, schema: dict[str, Any], rule_name: str) -> str:
    """Add rules for JSON valid against `schema`; returns the rule's name."""
    _check_keywords(schema)
    try:
        return converter.visit(converter.resolve_refs(schema, ""), rule_name)
    except UnsupportedSchema:
        raise
    except Exception as error:  # the converter raises assorted errors on schemas it cannot read
        raise UnsupportedSchema(f"cannot build a grammar from the schema ({error})") from error


def json_grammar(schema: dict[str, Any] | None) -> str:
    """GBNF for any JSON object (`schema` None) or for JSON valid against `schema`."""
    converter = new_converter()
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
    for key, value in schema.items():
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            _check_keywords(list(value.values()))
        elif key not in _DATA and key not in _ANNOTATIONS:
            _check_keywords(value)


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
            return "(" + " | ".join(f'"{value}"' for value in range(int(low), int(high) + 1)) + ")"
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
