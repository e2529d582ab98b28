"""The safe functions of the condition language (`FUNCTIONS`): their argument and result types and what they do.

Missing (NaN) stays missing through them where that has a meaning (`min`, `max`), so that it falsifies only
its own comparison (`engine.rules.expr`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from engine.enrich import BOOL, NUMBER, STRING


@dataclass(frozen=True, slots=True)
class Function:
    params: tuple[str, ...]  # types; a trailing "*" repeats the last one
    returns: str
    impl: Callable[..., Any]
    doc: str


def divide(a: float, b: float) -> float:
    """a / b, missing (NaN) for a zero divisor: it falsifies only its own comparison."""
    return a / b if b else math.nan


def _nan_min(*xs: float) -> float:
    return math.nan if any(x != x for x in xs) else min(xs)


def _nan_max(*xs: float) -> float:
    return math.nan if any(x != x for x in xs) else max(xs)


@functools.lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r}") from None


def _parse_time(text: str, fmt: str, zone: str) -> float:
    """Epoch milliseconds of `text` read with strptime's `fmt`, in time zone `zone` unless the text gives an offset."""
    when = datetime.strptime(text, fmt)
    if when.tzinfo is None:
        when = when.replace(tzinfo=_zone(zone))
    return when.timestamp() * 1000.0


def _text(x: float) -> str:
    """A number as text: whole numbers without a decimal point, missing as ''."""
    if x != x:
        return ""
    return str(int(x)) if float(x).is_integer() else repr(float(x))


#: The safe functions of the language, by name.
FUNCTIONS: dict[str, Function] = {
    "abs": Function((NUMBER,), NUMBER, abs, "absolute value"),
    "min": Function((NUMBER, NUMBER, "*"), NUMBER, _nan_min, "smallest argument (missing if any is)"),
    "max": Function((NUMBER, NUMBER, "*"), NUMBER, _nan_max, "largest argument (missing if any is)"),
    "if_missing": Function(
        (NUMBER, NUMBER), NUMBER, lambda x, d: d if x != x else x, "the first argument, or the second when missing"
    ),
    "lower": Function((STRING,), STRING, str.lower, "lower-case text"),
    "upper": Function((STRING,), STRING, str.upper, "upper-case text"),
    "length": Function((STRING,), NUMBER, len, "number of characters"),
    "starts_with": Function((STRING, STRING), BOOL, str.startswith, "text begins with a prefix"),
    "ends_with": Function((STRING, STRING), BOOL, str.endswith, "text ends with a suffix"),
    "contains": Function((STRING, STRING), BOOL, lambda s, t: t in s, "text contains a substring"),
    "replace": Function((STRING, STRING, STRING), STRING, str.replace, "text with every `old` replaced by `new`"),
    "concat": Function((STRING, STRING, "*"), STRING, lambda *xs: "".join(xs), "the texts joined end to end"),
    "text": Function((NUMBER,), STRING, _text, "a number as text (whole numbers without '.0'; missing: '')"),
    "parse_time": Function(
        (STRING, STRING, STRING), NUMBER, _parse_time, "epoch ms of text in a strptime format and an IANA time zone"
    ),
    "in_cidr": Function(("ip", STRING, "*"), BOOL, lambda a, c: c.contains(a), "ip lies in one of the networks"),
}
