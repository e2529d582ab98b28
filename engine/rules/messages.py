"""Rule messages with values: `{name}` placeholders, checked at load and formatted with their units.

A rule's message may name any field, window, feature, the score or a
gateway attribute in braces:

    message: "{card_count_10m} payments on this card in 10 minutes, this one {amount}"

Each name is checked at load like a name in a condition (an unknown one is an
error at its file, line and column, with the nearest names); `{{` and `}}`
are literal braces. When the rule fires, each value is written with its unit:
amounts in the base currency as money (`1,234.50 EUR`), the amount as sent in
its own currency, counts as whole numbers, first-seen and since-previous
windows as durations (`25 s`, `3 h 5 min`), the score with two decimals,
true/false as yes/no; a value that could not be computed (a window the store
did not answer, a first-seen window of an entity not sent) reads `unknown`.
Only the rules that fired are formatted.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from engine.iso import CURRENCY_EXPONENTS

#: How a value is written: its unit.
MONEY, MONEY_AS_SENT, COUNT, SECONDS, NUMBER, SCORE, TEXT, YES_NO = (
    "money",
    "money_as_sent",
    "count",
    "seconds",
    "number",
    "score",
    "text",
    "yes_no",
)
UNKNOWN = "unknown"
ATTRIBUTES = "attributes."

Format = Callable[[Mapping[str, Any]], str]


class MessageError(Exception):
    """A problem at character `offset` of a message."""

    def __init__(self, offset: int, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.offset = offset
        self.message = message
        self.hint = hint


@dataclass(frozen=True, slots=True)
class Template:
    """A message with placeholders: literal parts and value formatters, in order."""

    parts: tuple[str | Format, ...]
    names: frozenset[str]

    def render(self, fields: Mapping[str, Any]) -> str:
        return "".join(p if isinstance(p, str) else p(fields) for p in self.parts)


def duration_text(seconds: float) -> str:
    """'0 s', '2.5 s', '29.9 s', '4 min 10 s', '3 h 5 min', '2 d 3 h': rounded down, never up, so that a
    value under a rule's threshold never reads as the threshold (29.999 s is '29.9 s', not '30 s')."""
    if seconds < 60:
        tenths = math.floor(seconds * 10)
        return f"{tenths // 10} s" if tenths % 10 == 0 else f"{tenths / 10:.1f} s"
    if seconds < 3600:
        minutes, rest = divmod(math.floor(seconds), 60)
        return f"{minutes} min {rest} s" if rest else f"{minutes} min"
    if seconds < 86400:
        hours, rest = divmod(math.floor(seconds / 60), 60)
        return f"{hours} h {rest} min" if rest else f"{hours} h"
    days, rest = divmod(math.floor(seconds / 3600), 24)
    return f"{days} d {rest} h" if rest else f"{days} d"


def _number_text(value: float) -> str:
    if value == int(value) and abs(value) < 1e15:
        return f"{int(value):,}"
    return f"{value:,.2f}".rstrip("0").rstrip(".")


def formatter(name: str, unit: str, base: str) -> Format:
    """The function that writes the value of `name` (a field map key, or attributes.KEY) with its unit."""
    if name.startswith(ATTRIBUTES):
        key = name[len(ATTRIBUTES) :]
        return lambda f: str(f["attributes"].get(key, "")) or UNKNOWN
    digits = CURRENCY_EXPONENTS[base]

    def text(f: Mapping[str, Any]) -> str:
        value = f.get(name)
        if isinstance(value, bool):
            return "yes" if value else "no"
        if isinstance(value, str):
            return value or UNKNOWN
        if not isinstance(value, int | float) or math.isnan(value) or math.isinf(value):
            return UNKNOWN
        if unit == MONEY:
            return f"{value:,.{digits}f} {base}"
        if unit == MONEY_AS_SENT:
            currency = f.get("currency", base)
            return f"{value:,.{CURRENCY_EXPONENTS.get(currency, 2)}f} {currency}"
        if unit == COUNT:
            return f"{round(value):,}"
        if unit == SECONDS:
            return duration_text(value)
        if unit == SCORE:
            return f"{value:.2f}"
        return _number_text(value)

    return text


def _nearest(word: str, options: Any) -> str:
    close = [f"'{{{c}}}'" for c in difflib.get_close_matches(word, list(options), n=3)]
    if not close:
        return "run `risk-engine rules fields PATH` for the names a message can read"
    return f"did you mean {close[0]}?" if len(close) == 1 else f"did you mean {', '.join(close[:-1])} or {close[-1]}?"


def compile_message(text: str, units: Mapping[str, str], base: str) -> tuple[Template | None, list[MessageError]]:
    """(the template, None when the message has no placeholder; every problem found in it)."""
    parts: list[str | Format] = []
    names: set[str] = set()
    errors: list[MessageError] = []
    literal: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch in "{}" and text[i + 1 : i + 2] == ch:  # '{{' or '}}': a literal brace
            literal.append(ch)
            i += 2
            continue
        if ch == "}":
            errors.append(MessageError(i, "a '}' without its '{'", "write '}}' for a literal brace"))
            i += 1
            continue
        if ch != "{":
            literal.append(ch)
            i += 1
            continue
        end = text.find("}", i + 1)
        if end < 0:
            errors.append(MessageError(i, "a '{' without its '}'", "close it, or write '{{' for a literal brace"))
            break
        name = text[i + 1 : end].strip()
        if not name:
            errors.append(MessageError(i, "an empty '{}' in the message", "put a field or window name inside"))
        elif name.startswith(ATTRIBUTES) and name[len(ATTRIBUTES) :].isidentifier():
            names.add("attributes")
        elif name not in units:
            errors.append(MessageError(i + 1, f"unknown field '{name}' in the message", _nearest(name, units)))
        else:
            names.add(name)
        if literal:
            parts.append("".join(literal))
            literal = []
        if name and (name in units or name.startswith(ATTRIBUTES)):
            parts.append(formatter(name, units.get(name, TEXT), base))
        i = end + 1
    if literal:
        parts.append("".join(literal))
    if errors or not names:
        return None, errors
    return Template(tuple(parts), frozenset(names)), []


__all__ = ["MessageError", "Template", "compile_message", "duration_text", "formatter"]
