"""Input validation: every malformed transaction is refused with the field and the reason.

Nothing that fails here reaches the window store. The limits are
configurable (`Limits`); the defaults suit a card gateway.
"""

from __future__ import annotations

import bisect
import functools
import ipaddress
from dataclasses import dataclass, replace

from engine.iso import COUNTRIES, CURRENCY_EXPONENTS
from engine.privacy import (
    CARD_NUMBER_REASON,
    CARD_SECRET_REASON,
    Pseudonyms,
    card_digits,
    contains_card_number,
    looks_like_card_number,
    names_card_secret,
    replace_card_numbers,
)
from engine.transaction import Transaction


class InvalidTransaction(ValueError):
    """A field of the transaction is malformed. `field` names it as in the proto."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Limits:
    max_id_length: int = 128
    max_attributes: int = 32
    max_attribute_key_length: int = 64
    max_attribute_value_length: int = 256
    #: Amounts above this many minor units are refused as absurd.
    max_amount_minor: int = 10**13
    #: How far the event time may lie behind / ahead of the server clock.
    max_event_age_s: float = 86400.0
    max_event_lead_s: float = 300.0
    #: Card data (`RISK_CARD_DATA`): None refuses a card number in any id or attribute value, and an
    #: attribute that names CVV/CVC, PIN or track data; set, `mask_card_data` replaces such a number by
    #: its pseudonym under this key and drops such an attribute before validation sees them.
    card_mask: Pseudonyms | None = None


def _check_id(field: str, value: str, limits: Limits, required: bool = False) -> None:
    """An id as real systems send it: any printable Unicode, inner spaces included (merchant names are ids).

    Refused: values longer than `max_id_length` characters; control and
    other non-printable characters (line breaks, tabs, NUL, format
    characters such as zero-width joiners or direction marks, which make two
    ids that look alike differ, and space characters other than U+0020);
    leading or trailing spaces (`"shop "` and `"shop"` would be two entities).
    """
    if not value:
        if required:
            raise InvalidTransaction(field, "is required")
        return
    if len(value) > limits.max_id_length:
        raise InvalidTransaction(field, f"is {len(value)} characters long, the limit is {limits.max_id_length}")
    if not value.isprintable():  # str.isprintable: U+0020 is the one space character it accepts
        raise InvalidTransaction(field, "must be printable text (no control, format or non-U+0020 space characters)")
    if value[0] == " " or value[-1] == " ":
        raise InvalidTransaction(field, "must not start or end with a space")


def _plain_id(value: str, longest: int) -> bool:
    """What `_check_id` accepts, in one expression for the common case (absent or a plain token)."""
    return len(value) <= longest and value.isprintable() and value[0] != " " and value[-1] != " "


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def canonical(addr: IPAddress) -> IPAddress:
    """One address per spelling: IPv4-mapped IPv6 (`::ffff:1.2.3.4`) becomes IPv4.

    `str()` of the result is the canonical text (lower-case, compressed), so
    `2001:DB8:0::1` and `2001:db8::1` are one entity for the windows, and a
    retry that spells the address differently is the same transaction.
    """
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _not_public(addr: IPAddress) -> bool:
    """Private, loopback, link-local or reserved, as the `ipaddress` module defines each."""
    return addr.is_private or addr.is_loopback or addr.is_link_local or addr.is_reserved


def _ipv4_not_public_table() -> tuple[list[int], list[bool]]:
    """`_not_public` for every IPv4 address, as sorted range starts and the answer from each start on.

    The answer only changes at the edges of the networks `ipaddress` checks (its private,
    reserved, link-local and loopback networks, and any exceptions to them), so it is asked
    once at each edge, of `ipaddress` itself: the table answers what the module would.
    """
    constants = ipaddress.IPv4Address._constants  # type: ignore[attr-defined]
    networks: list[ipaddress.IPv4Network] = []
    for value in vars(constants).values():
        for net in value if isinstance(value, list | tuple) else (value,):
            if isinstance(net, ipaddress.IPv4Network):
                networks.append(net)
    edges = sorted({0} | {int(n.network_address) for n in networks} | {int(n.broadcast_address) + 1 for n in networks})
    starts = [e for e in edges if e <= 0xFFFFFFFF]
    return starts, [_not_public(ipaddress.IPv4Address(e)) for e in starts]


_V4_STARTS, _V4_NOT_PUBLIC = _ipv4_not_public_table()


def _canonical_ipv4(text: str) -> int | None:
    """The address of a dotted quad already in canonical form ("1.2.3.4": ASCII digits, no leading zero), else None."""
    parts = text.split(".")
    if len(parts) != 4:
        return None
    value = 0
    for part in parts:
        if not (0 < len(part) <= 3 and part.isascii() and part.isdigit()) or (part[0] == "0" and len(part) > 1):
            return None
        octet = int(part)
        if octet > 255:
            return None
        value = value << 8 | octet
    return value


@functools.lru_cache(maxsize=65_536)
def parse_ip(text: str) -> tuple[IPAddress, str, bool]:
    """An IP address as sent -> the address (`canonical`), its canonical text, and whether it is private.

    Private: private, loopback, link-local or reserved. Raises ValueError for
    a malformed address. Cached (bounded): a gateway sends the same addresses
    again and again, and parsing one costs several microseconds. A canonical
    dotted quad, the usual case, is read directly and looked up in a table of
    `ipaddress`'s own answers (a few times faster on a miss); any other text
    goes through `ipaddress`.
    """
    v4 = _canonical_ipv4(text)
    if v4 is not None:
        return ipaddress.IPv4Address(v4), text, _V4_NOT_PUBLIC[bisect.bisect_right(_V4_STARTS, v4) - 1]
    addr = canonical(ipaddress.ip_address(text))
    return addr, str(addr), _not_public(addr)


def validate(txn: Transaction, limits: Limits, now_ms: int | None) -> IPAddress | None:
    """Raise InvalidTransaction for the first malformed field; return the parsed IP, if any.

    `now_ms` is the server clock; None skips the clock check (replay of
    history). The IP is returned canonical (see `canonical`) so that it is
    parsed once per transaction.
    """
    _check_id("transaction_id", txn.transaction_id, limits, required=True)
    if looks_like_card_number(txn.transaction_id):
        raise InvalidTransaction("transaction_id", CARD_NUMBER_REASON)
    if txn.event_time_ms <= 0:
        raise InvalidTransaction("event_time", "is required")
    if now_ms is not None:
        age_s = (now_ms - txn.event_time_ms) / 1000.0
        if age_s > limits.max_event_age_s:
            raise InvalidTransaction(
                "event_time", f"is {age_s:.0f} s in the past, more than the allowed {limits.max_event_age_s:.0f} s"
            )
        if -age_s > limits.max_event_lead_s:
            raise InvalidTransaction(
                "event_time", f"is {-age_s:.0f} s in the future, more than the allowed {limits.max_event_lead_s:.0f} s"
            )
    if txn.amount_minor < 0:
        raise InvalidTransaction("amount_minor", "must not be negative")
    if txn.amount_minor > limits.max_amount_minor:
        raise InvalidTransaction("amount_minor", f"exceeds the limit of {limits.max_amount_minor} minor units")
    if not txn.currency:
        raise InvalidTransaction("currency", "is required")
    if txn.currency not in CURRENCY_EXPONENTS:
        raise InvalidTransaction("currency", f"{txn.currency[:8]!r} is not an ISO 4217 currency code")
    longest = limits.max_id_length
    for name, value in (
        ("user_id", txn.user_id),
        ("card_id", txn.card_id),
        ("device_id", txn.device_id),
        ("merchant_id", txn.merchant_id),
    ):
        # The common case (absent, or a plain token) without a call; anything else gets its reason.
        if value and not _plain_id(value, longest):
            _check_id(name, value, limits)
        if looks_like_card_number(value):
            raise InvalidTransaction(name, CARD_NUMBER_REASON)
    if not (txn.user_id or txn.card_id):
        raise InvalidTransaction("card_id", "card_id or user_id is required")
    if txn.merchant_category and (
        len(txn.merchant_category) != 4 or not (txn.merchant_category.isascii() and txn.merchant_category.isdigit())
    ):
        raise InvalidTransaction(
            "merchant_category", f"{txn.merchant_category[:8]!r} is not a four-digit ISO 18245 merchant category code"
        )
    if txn.country and txn.country not in COUNTRIES:
        raise InvalidTransaction("country", f"{txn.country[:8]!r} is not an ISO 3166-1 alpha-2 code")
    if txn.ip:
        if len(txn.ip) > 64:
            raise InvalidTransaction("ip", "is too long for an IP address")
        if "%" in txn.ip or not txn.ip.isascii() or not txn.ip.isprintable():
            raise InvalidTransaction("ip", "must be a plain IPv4 or IPv6 address (no zone id, no control characters)")
        try:
            addr: IPAddress | None = parse_ip(txn.ip)[0]
        except ValueError:
            raise InvalidTransaction("ip", f"{txn.ip[:64]!r} is not an IPv4 or IPv6 address") from None
    else:
        addr = None
    if len(txn.attributes) > limits.max_attributes:
        raise InvalidTransaction(
            "attributes", f"has {len(txn.attributes)} entries, the limit is {limits.max_attributes}"
        )
    for key, value in txn.attributes:
        if not key or len(key) > limits.max_attribute_key_length or not key.isidentifier() or not key.isascii():
            raise InvalidTransaction(
                "attributes",
                f"key {key[:64]!r} must be an ASCII identifier of at most {limits.max_attribute_key_length} characters",
            )
        if len(value) > limits.max_attribute_value_length:
            raise InvalidTransaction(
                f"attributes[{key}]", f"is longer than {limits.max_attribute_value_length} characters"
            )
        if names_card_secret(key):
            raise InvalidTransaction(f"attributes[{key}]", CARD_SECRET_REASON)
        if contains_card_number(value):
            raise InvalidTransaction(f"attributes[{key}]", CARD_NUMBER_REASON)
    return addr


_CARD_FIELDS = ("transaction_id", "user_id", "card_id", "device_id", "merchant_id")


def mask_card_data(txn: Transaction, pseudonyms: Pseudonyms) -> Transaction:
    """The transaction with card data masked instead of refused (`RISK_CARD_DATA=mask`).

    A card number in an id or attribute value becomes the pseudonym of its
    digits (the same card, however spaced, the same pseudonym: its windows
    still add up); an attribute that
    names card security data is dropped. Unchanged (the same object) when
    there is nothing to mask, the common case.
    """
    changes: dict[str, object] = {}
    for name in _CARD_FIELDS:
        value = getattr(txn, name)
        if looks_like_card_number(value):
            changes[name] = pseudonyms.of(card_digits(value))
    if any(names_card_secret(k) or contains_card_number(v) for k, v in txn.attributes):
        changes["attributes"] = tuple(
            (k, replace_card_numbers(v, pseudonyms.of)) for k, v in txn.attributes if not names_card_secret(k)
        )
    return replace(txn, **changes) if changes else txn  # type: ignore[arg-type]
