"""Request models that refuse what they cannot honour, for the Responses and Anthropic surfaces.

Chat completions ignore unknown fields, as OpenAI's own endpoint does for its many optional ones
(protocol._Lenient). The newer surfaces carry fields that change what a client gets (stateful
conversations, reasoning, hosted tools, images): silently dropping one would answer a different
question than the one asked. So a field that is not modelled is a 400 that names it, unless it is
null, holds the value that means "off" (`defaults`), or is one of the documented hints that do
not change the answer (`ignored`: store, metadata, user, cache_control, ...).
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import model_validator
from pydantic_core import PydanticCustomError

from edge.api.protocol import _Body, _Lenient


def _refuse_unknown(cls: type[_Lenient], data: Any, top_level: bool) -> Any:
    if not isinstance(data, dict):
        return data
    known = {field.alias or name for name, field in cls.model_fields.items()}
    for key, value in data.items():
        if key in known or key in cls.ignored or value is None or cls.defaults.get(key, ...) == value:
            continue
        why = cls.reasons.get(key, "")
        reason = f" ({why})" if why else ""
        if top_level:  # errors.from_validation reads the param from the message's first word
            raise PydanticCustomError("unsupported_field", "{key}: not supported by this server{why}",
                                      {"key": key, "why": reason})
        raise PydanticCustomError("unsupported_field", "field {key!r} is not supported by this server{why}",
                                  {"key": key, "why": reason})
    return data


class Refusing(_Lenient):
    """A nested object whose unknown fields are refused (see the module's docstring)."""

    ignored: ClassVar[frozenset[str]] = frozenset()
    defaults: ClassVar[dict[str, Any]] = {}  # field -> the value that asks for nothing we lack
    reasons: ClassVar[dict[str, str]] = {}  # field -> why it is refused

    @model_validator(mode="before")
    @classmethod
    def _known_fields_only(cls, data: Any) -> Any:
        return _refuse_unknown(cls, data, top_level=False)


class RefusingBody(_Body):
    """A whole request body whose unknown fields are refused, each with the reason."""

    ignored: ClassVar[frozenset[str]] = frozenset()
    defaults: ClassVar[dict[str, Any]] = {}
    reasons: ClassVar[dict[str, str]] = {}

    @model_validator(mode="before")
    @classmethod
    def _known_fields_only(cls, data: Any) -> Any:
        return _refuse_unknown(cls, data, top_level=True)
