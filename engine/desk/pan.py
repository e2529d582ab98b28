"""Card numbers never reach the desk's pages or tables.

The engine's ids are tokens, but a gateway can still send a card number by
mistake (as a card id, an attribute, a device id). `mask_pans` replaces
every run of 13 to 19 digits (spaces or dashes allowed between them) that
starts as card numbers do (2 to 6: Mastercard's 2-series, Amex, Diners,
JCB, Visa, Mastercard, Discover, UnionPay; ids made of clock readings
start with 1) and passes the Luhn check by `•••• ` and its last four digits; the projector
scrubs each record before it stores it, and every value a page renders
passes through it again (`engine.desk.web`, Jinja's `finalize`).
"""

from __future__ import annotations

import re
from typing import Any

from engine.privacy import luhn_ok

_CANDIDATE = re.compile(r"(?<![0-9])[2-6](?:[ -]?[0-9]){12,18}(?![0-9])")


def _mask(match: re.Match[str]) -> str:
    digits = re.sub(r"[ -]", "", match.group(0))
    if not luhn_ok(digits):
        return match.group(0)
    return "•••• " + digits[-4:]


def mask_pans(text: str) -> str:
    """The text with every Luhn-valid 13-19 digit number masked (see the module docstring)."""
    if len(text) < 13:
        return text
    return _CANDIDATE.sub(_mask, text)


def scrub(value: Any) -> Any:
    """`value` (JSON: dicts, lists, strings, numbers) with card numbers masked in every string, keys included."""
    if isinstance(value, str):
        return mask_pans(value)
    if isinstance(value, dict):
        return {scrub(k): scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub(v) for v in value]
    return value
