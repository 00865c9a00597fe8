"""Ranges as GBNF: bounded integers of any size, bounded decimal numbers, integer multipleOf by last
digits, and sets of characters (code point ranges) written as JSON string characters.

A value is written digit by digit, so a range of values becomes, for each number of digits, a
range of digit strings: the strings from `lo` to `hi` of one length are, for each first digit,
that digit followed by a narrower range of the remaining digits (free digits once the first digit
is strictly inside). The rules grow with the number of digits of the bounds, never with the width
of the range. Strings have no leading zeros, and "-" is only written before a value below zero,
so "-0" never appears.

Numbers are split into a sign, an integer part and a fraction. A whole part strictly between the
bounds' whole parts takes any fraction; a whole part equal to a bound's takes the fractions on the
right side of the bound's fraction digits, found the same way digit by digit. Numbers have no
exponent and at most FLOAT_DIGITS significant digits (integer digits plus fraction digits): two
different decimals of 15 significant digits are always two different doubles, so a number the
grammar keeps strictly below a bound still compares below it once a validator has parsed it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

DIGITS = "0123456789"
MAX_FREE_DIGITS = 16  # digits of an integer part with no upper bound, as the library's own integers
FLOAT_DIGITS = 15  # significant digits of a bounded number (see the module docstring)
MAX_BOUND_DIGITS = 310  # digits of a bound's integer part (any double fits); each is a level of recursion
MAX_ENUMERATED_MULTIPLES = 100  # multipleOf that last digits cannot express: values listed one by one
NUMERIC_KEYWORDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")


@dataclass(frozen=True)
class Bound:
    """One side of a range: its value, and whether the value itself is excluded."""

    value: Decimal
    open: bool = False


def numeric_rule(schema: dict[str, Any]) -> str:
    """The rule for an integer or number schema with bounds or multipleOf; ValueError, with the reason,
    for what cannot be enforced."""
    kind, multiple = schema["type"], schema.get("multipleOf")
    if multiple is not None:
        _number(schema, "multipleOf")
        if multiple <= 0:
            raise ValueError(f"multipleOf must be above 0, got {multiple!r}")
        if multiple != int(multiple):
            raise ValueError(f"multipleOf {multiple!r} on {kind} cannot be enforced by the grammar "
                             "(validators compute it in floating point)")
        kind = "integer"  # a number that is a multiple of an integer is an integer
    low, high = _bound(schema, "minimum", "exclusiveMinimum", max), _bound(schema, "maximum", "exclusiveMaximum", min)
    try:
        if kind == "integer":
            return integer_rule(None if low is None else math.floor(low[0]) + 1 if low[1] else math.ceil(low[0]),
                                None if high is None else math.ceil(high[0]) - 1 if high[1] else math.floor(high[0]),
                                int(multiple or 1))
        return number_rule(*(None if bound is None else Bound(_decimal(bound[0]), bound[1]) for bound in (low, high)))
    except ValueError as error:
        bounds = {key: schema[key] for key in NUMERIC_KEYWORDS if key in schema}
        raise ValueError(f"{error}: {kind} with {json.dumps(bounds)} cannot be enforced by the grammar") from None


def _bound(schema: dict[str, Any], inclusive: str, exclusive: str, tighter: Any) -> tuple[int | float, bool] | None:
    """(value, excluded?) of one side: the tighter of the inclusive and exclusive keywords, where
    draft 4's boolean exclusive keyword makes the inclusive one exclusive."""
    flag = schema.get(exclusive)
    if isinstance(flag, bool):
        return None if inclusive not in schema else (_number(schema, inclusive), flag)
    sides = [(_number(schema, key), key == exclusive) for key in (inclusive, exclusive) if key in schema]
    if len(sides) == 2 and sides[0][0] == sides[1][0]:
        return sides[0][0], True
    return tighter(sides, key=lambda side: side[0]) if sides else None


def _number(schema: dict[str, Any], key: str) -> int | float:
    """schema[key], which must be a finite JSON number."""
    value = schema[key]
    if type(value) not in (int, float) or type(value) is float and not math.isfinite(value):
        raise ValueError(f"{key} must be a finite number, got {value!r}")
    return value


def _decimal(value: int | float) -> Decimal:
    """A bound as a decimal: a float is the shortest decimal that reads back as it (what a validator
    compares a parsed number with), an integral float its exact integer (what integers compare with)."""
    return Decimal(int(value)) if isinstance(value, int) or value.is_integer() else Decimal(repr(value))


def integer_rule(low: int | None, high: int | None, multiple_of: int = 1) -> str:
    """GBNF for the canonical decimal strings of the integers from `low` to `high` (None: no bound)
    that are multiples of `multiple_of`. ValueError when no integer fits or it cannot be expressed."""
    for bound in (low, high):
        _check_size(bound)
    if multiple_of < 1:
        raise ValueError(f"multipleOf must be a positive integer, got {multiple_of}")
    last = _last_digits(multiple_of)
    if last is None:
        return _enumerated_multiples(low, high, multiple_of)
    alternatives = []
    if high is None or high >= 0:
        alternatives += [rule for _, _, rule in _naturals(max(low or 0, 0), high, last, 2)]
    if low is None or low < 0:
        magnitudes = _naturals(1 if high is None else max(-high, 1), None if low is None else -low, last, 2)
        if magnitudes:
            alternatives.append(_join('"-"', _alternatives([rule for _, _, rule in magnitudes])))
    if not alternatives:
        raise ValueError(_no_integer(low, high, multiple_of))
    return _alternatives(alternatives)


def number_rule(low: Bound | None, high: Bound | None) -> str:
    """GBNF for decimal numbers between `low` and `high` (None: no bound). ValueError when none fits."""
    for bound in (low, high):
        _check_size(None if bound is None else int(bound.value))
    zero = Decimal(0)
    alternatives = []
    if high is None or high.value > zero or (high.value == zero and not high.open):  # values >= 0, unsigned
        alternatives += _magnitudes(low if low is not None and low.value >= zero else Bound(zero), high)
    if low is None or low.value < zero:  # values < 0: "-" and a magnitude above 0
        start = Bound(-high.value, high.open) if high is not None and high.value < zero else Bound(zero, True)
        negative = _magnitudes(start, None if low is None else Bound(-low.value, low.open))
        if negative:
            alternatives.append(_join('"-"', _alternatives(negative)))
    if not alternatives:
        raise ValueError("no number satisfies the bounds")
    return _alternatives(alternatives)


def _no_integer(low: int | None, high: int | None, multiple_of: int) -> str:
    return f"no integer from {low} to {high}" + (f" is a multiple of {multiple_of}" if multiple_of != 1 else " exists")


def _check_size(bound: int | None) -> None:
    if bound is not None and len(str(abs(bound))) > MAX_BOUND_DIGITS:
        raise ValueError(f"bounds of more than {MAX_BOUND_DIGITS} digits are not supported")


def _last_digits(multiple_of: int) -> tuple[str, ...] | None:
    """The digits allowed in each last position (the rightmost last) of a multiple of `multiple_of`,
    when that alone decides: 1, 2 or 5 times a power of ten. None for any other multipleOf."""
    zeros = 0
    while multiple_of % 10 == 0:
        multiple_of, zeros = multiple_of // 10, zeros + 1
    lead = {1: (), 2: ("02468",), 5: ("05",)}.get(multiple_of)
    return None if lead is None else lead + ("0",) * zeros


def _enumerated_multiples(low: int | None, high: int | None, multiple_of: int) -> str:
    """A multipleOf that last digits cannot decide: the few multiples within the bounds, listed."""
    if low is None or high is None or (high // multiple_of) - (-(-low // multiple_of)) >= MAX_ENUMERATED_MULTIPLES:
        raise ValueError(f"multipleOf {multiple_of} is enforced only when it is 1, 2 or 5 times a power of ten, "
                         f"or when minimum and maximum leave at most {MAX_ENUMERATED_MULTIPLES} multiples")
    values = range(-(-low // multiple_of) * multiple_of, high + 1, multiple_of)
    if not values:
        raise ValueError(_no_integer(low, high, multiple_of))
    return _alternatives([f'"{value}"' for value in values])


def _naturals(low: int, high: int | None, last: tuple[str, ...], merge_from: int) -> list[tuple[int, int, str]]:
    """(shortest, longest, rule) groups that together spell low..high without leading zeros; with no
    `high`, up to MAX_FREE_DIGITS digits (or low's own). Whole lengths of at least `merge_from` digits
    share one group."""
    if high is not None and low > high:
        return []
    top = len(str(high)) if high is not None else max(len(str(low)), MAX_FREE_DIGITS)
    groups: list[tuple[int, int, str | None]] = []
    for length in range(len(str(low)), top + 1):
        smallest = "0" if length == 1 else "1" + "0" * (length - 1)
        lo = str(low) if length == len(str(low)) else smallest
        hi = str(high) if high is not None and length == top else "9" * length
        if lo == smallest and hi == "9" * length and length >= max(merge_from, len(last) + 1, 2):
            if groups and groups[-1][2] is None and groups[-1][1] == length - 1:
                groups[-1] = (groups[-1][0], length, None)
            else:
                groups.append((length, length, None))
        elif (rule := _digit_strings(lo, hi, last)) is not None:
            groups.append((length, length, rule))
    return [(shortest, longest, rule or _whole_lengths(shortest, longest, last)) for shortest, longest, rule in groups]


def _whole_lengths(shortest: int, longest: int, last: tuple[str, ...]) -> str:
    """Every number of `shortest` to `longest` digits (more than len(last)) ending in `last`."""
    free = (shortest - 1 - len(last), longest - 1 - len(last))
    middle = "" if free == (0, 0) else f"[0-9]{{{free[0]}}}" if free[0] == free[1] else f"[0-9]{{{free[0]},{free[1]}}}"
    return _join("[1-9]", middle, _classes(list(last)))


def _digit_strings(lo: str, hi: str, last: tuple[str, ...]) -> str | None:
    """The strings of len(lo) digits from `lo` to `hi`, compared digit by digit, whose last digits
    come from `last`; None when there are none."""
    length = len(lo)
    if length == 0:
        return ""
    if lo == "0" * length and hi == "9" * length:
        return _classes([DIGITS] * max(0, length - len(last)) + list(last[-length:]))
    allowed = last[-length] if length <= len(last) else DIGITS
    groups: dict[tuple[str, str], str] = {}  # the rest's range -> the first digits that lead to it
    for digit in allowed:
        if lo[0] <= digit <= hi[0]:
            rest = (lo[1:] if digit == lo[0] else "0" * (length - 1), hi[1:] if digit == hi[0] else "9" * (length - 1))
            groups[rest] = groups.get(rest, "") + digit
    alternatives = []
    for (rest_lo, rest_hi), digits in groups.items():
        rest = _digit_strings(rest_lo, rest_hi, last)
        if rest is not None:
            alternatives.append(_join(_class(digits), rest))
    return _alternatives(alternatives) if alternatives else None


def _magnitudes(low: Bound, high: Bound | None) -> list[str]:
    """Alternatives spelling the non-negative decimals from `low` to `high` (None: no bound)."""
    if high is not None and (low.value > high.value or (low.value == high.value and (low.open or high.open))):
        return []
    whole_lo, fraction_lo = _split(low.value)
    whole_hi, fraction_hi = _split(high.value) if high is not None else (None, "")
    if whole_lo == whole_hi:
        fraction = _fraction(whole_lo, (fraction_lo, low.open), (fraction_hi, high.open))
        return [] if fraction is None else [_join(f'"{whole_lo}"', fraction)]
    alternatives = []
    first_free = whole_lo
    if fraction_lo or low.open:  # at the bound's own whole part, only the fractions above it
        first_free += 1
        if (fraction := _fraction(whole_lo, (fraction_lo, low.open), None)) is not None:
            alternatives.append(_join(f'"{whole_lo}"', fraction))
    for shortest, longest, rule in _naturals(first_free, None if whole_hi is None else whole_hi - 1, (), FLOAT_DIGITS):
        places = FLOAT_DIGITS - longest  # merged groups start at FLOAT_DIGITS: no fraction
        alternatives.append(_join(rule, f'("." [0-9]{{1,{places}}})?' if places > 0 else ""))
    if whole_hi is not None and (fraction := _fraction(whole_hi, None, (fraction_hi, high.open))) is not None:
        alternatives.append(_join(f'"{whole_hi}"', fraction))
    return alternatives


def _split(value: Decimal) -> tuple[int, str]:
    """A non-negative decimal's whole part and its fraction digits without trailing zeros."""
    whole, _, fraction = format(value, "f").partition(".")
    return int(whole), fraction.rstrip("0")


def _fraction(whole: int, lo: tuple[str, bool] | None, hi: tuple[str, bool] | None) -> str | None:
    """What may follow `whole`: nothing and/or "." and digits, whose value 0.digits lies beyond
    `lo` and below `hi` (fraction digits, excluded?); None when nothing may."""
    places = max(0, FLOAT_DIGITS - len(str(whole)))
    digits, bare = _fraction_digits(places, lo or ("", False), hi)
    if digits is None:
        return "" if bare else None
    return f'("." {digits})?' if bare else f'"." {digits}'


def _fraction_digits(places: int, lo: tuple[str, bool], hi: tuple[str, bool] | None) -> tuple[str | None, bool]:
    """(rule for 1..places digits, whether no digits at all is allowed) for the digit strings d whose
    value 0.d is above lo and below hi, each given by its remaining digits and whether it is excluded."""
    bare = lo == ("", False) and (hi is None or hi[0] != "" or not hi[1])  # 0.000... against both
    if places == 0:
        return None, bare
    if hi is None and lo == ("", False):
        return _repeat("[0-9]", 1, places), True
    if hi is None and lo == ("", True):  # anything but zeros
        return _nonzero_digits(places), False
    if hi is not None and hi[0] == "":  # zeros only, and only when both bounds include zero
        return (_repeat('"0"', 1, places), True) if bare else (None, False)
    first_lo, first_hi = lo[0][:1] or "0", hi[0][0] if hi is not None else "9"
    groups: dict[tuple[tuple[str, bool], tuple[str, bool] | None], str] = {}
    for digit in DIGITS[int(first_lo):int(first_hi) + 1]:
        rest_lo = (lo[0][1:], lo[1]) if digit == first_lo else ("", False)
        rest_hi = (hi[0][1:], hi[1]) if hi is not None and digit == first_hi else None
        groups[(rest_lo, rest_hi)] = groups.get((rest_lo, rest_hi), "") + digit
    alternatives = []
    for (rest_lo, rest_hi), digits in groups.items():
        rest, rest_bare = _fraction_digits(places - 1, rest_lo, rest_hi)
        if rest is not None:
            alternatives.append(_join(_class(digits), f"({rest})?" if rest_bare else rest))
        elif rest_bare:
            alternatives.append(_class(digits))
    return (_alternatives(alternatives) if alternatives else None), bare


def _nonzero_digits(places: int) -> str:
    """1..places digits, not all zeros: a nonzero digit and any digits after it, or a 0 and the same
    one place shorter (nested, so that the places are counted exactly)."""
    rule = "[1-9]"
    for count in range(2, places + 1):
        rule = f'([1-9] {_repeat("[0-9]", 0, count - 1)} | "0" {rule})'
    return rule


def _repeat(item: str, least: int, most: int) -> str:
    """`item` repeated least..most times, in GBNF."""
    if most == 0:
        return ""
    if least == most:
        return item if least == 1 else f"{item}{{{least}}}"
    return f"{item}?" if (least, most) == (0, 1) else f"{item}{{{least},{most}}}"


def _classes(classes: list[str]) -> str:
    """One digit from each of `classes` in turn; runs of one class are a single repetition."""
    parts: list[str] = []
    run: list[str] = []
    for digits in classes + [""]:
        if run and digits != run[0]:
            single = len(run[0]) == 1
            parts.append(f'"{run[0] * len(run)}"' if single else _repeat(_class(run[0]), len(run), len(run)))
            run = []
        run.append(digits)
    return _join(*parts)


def _class(digits: str) -> str:
    """A GBNF character class (or literal) for a set of decimal digits in ascending order."""
    if len(digits) == 1:
        return f'"{digits}"'
    if digits == DIGITS[int(digits[0]):int(digits[-1]) + 1]:
        return f"[{digits[0]}-{digits[-1]}]"
    return f"[{digits}]"


def _join(*parts: str) -> str:
    return " ".join(part for part in parts if part)


def _alternatives(alternatives: list[str]) -> str:
    return alternatives[0] if len(alternatives) == 1 else "(" + " | ".join(alternatives) + ")"


# Character ranges. Sets of characters are sorted lists of inclusive (first, last) code point ranges.
CharRanges = list[tuple[int, int]]
ASCII: CharRanges = [(0, 0x7F)]
UNICODE: CharRanges = [(0, 0xD7FF), (0xE000, 0x10FFFF)]  # no surrogates: they are not characters in UTF-8
JSON_ESCAPES = {0x22: '\\"', 0x5C: "\\\\", 0x08: "\\b", 0x0C: "\\f", 0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"}
# Python's classes on ASCII (\s also holds \x1c-\x1f); beyond ASCII they are Unicode's, so only their
# ASCII members are written, and their complements only ASCII characters.
CATEGORIES: dict[str, CharRanges] = {"DIGIT": [(0x30, 0x39)], "SPACE": [(0x09, 0x0D), (0x1C, 0x20)],
                                   "WORD": [(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)]}


def category_sets(name: str) -> tuple[CharRanges, CharRanges]:
    """(what the grammar writes for, a superset of what Python matches with) a regex class DIGIT,
    NOT_DIGIT, SPACE, NOT_SPACE, WORD or NOT_WORD."""
    ascii_part = CATEGORIES[name.removeprefix("NOT_")]
    if name.startswith("NOT_"):
        return complement(ascii_part + complement(ASCII)), complement(ascii_part)
    return ascii_part, ascii_part + complement(ASCII)


def json_chars(chars: CharRanges) -> str | None:
    """GBNF writing one character of `chars` as JSON: raw, or escaped when JSON requires it (only the
    short escapes: other control characters are left out); None when no character can be written."""
    raw = complement(union(complement(chars) + [(0, 0x1F), (0x22, 0x22), (0x5C, 0x5C)]))
    alternatives = [gbnf_literal(escape) for code, escape in JSON_ESCAPES.items()
                    if any(first <= code <= last for first, last in chars)]
    if raw:
        alternatives.insert(0, "[" + "".join(class_char(first) + ("" if first == last else "-" + class_char(last))
                                             for first, last in raw) + "]")
    return _alternatives(alternatives) if alternatives else None


def json_text(code: int) -> str:
    """One character as it appears inside a JSON string."""
    if code in JSON_ESCAPES:
        return JSON_ESCAPES[code]
    return f"\\u{code:04x}" if code < 0x20 or 0xD800 <= code <= 0xDFFF else chr(code)


def gbnf_literal(text: str) -> str:
    return '"' + "".join(c if c.isascii() and c.isalnum() or c in " !#$%&'()*+,-./:;<=>?@[]^_`{|}~" else
                         "\\" + c if c in '"\\' else class_char(ord(c)) for c in text) + '"'


def class_char(code: int) -> str:
    """A code point as GBNF writes it in a class or literal."""
    if code < 0x80 and chr(code).isalnum():
        return chr(code)
    return f"\\x{code:02X}" if code <= 0xFF else f"\\u{code:04X}" if code <= 0xFFFF else f"\\U{code:08X}"


def union(ranges: CharRanges) -> CharRanges:
    merged: CharRanges = []
    for first, last in sorted(ranges):
        if merged and first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    return merged


def complement(ranges: CharRanges) -> CharRanges:
    """Unicode's characters outside `ranges`."""
    gaps: CharRanges = []
    for first, last in UNICODE:
        cursor = first
        for low, high in union(ranges):
            if high >= cursor and low <= last:
                if low > cursor:
                    gaps.append((cursor, low - 1))
                cursor = max(cursor, high + 1)
        if cursor <= last:
            gaps.append((cursor, last))
    return gaps
