"""Card data and pseudonyms: what the engine never keeps, and the keyed hash that stands for an id in stored state.

Card data (the rules of PCI DSS: a card number is never readable where it
is stored; CVV/CVC, PIN and track data are never stored at all):
`looks_like_card_number` says whether a value is a Luhn-valid number of 12
to 19 digits, spaces or dashes allowed between the digits (how card numbers
are written); `names_card_secret` whether an attribute key names card
security data (CVV/CVC, PIN, track). Validation refuses both
(`engine.validation`), or masks them when the operator chose to.

Pseudonyms: `Pseudonyms.of(value)` is `p:` and 32 hex digits of the
HMAC-SHA256 of the value under the operator's secret. The same value always
gives the same pseudonym, so windows and distinct counts group exactly as
they did on the clear values; without the secret the value cannot be
recovered or confirmed by hashing guesses. A value that already is a
pseudonym stays as it is: a transaction read back from the decision log
(feedback the review desk sends) lands on the same windows as the original. Stores and the decision log keep
the pseudonym, never the value (see README "Data protection").
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import re
import secrets
import time
from collections.abc import Callable
from pathlib import Path

CARD_NUMBER_REASON = "looks like a card number: send a token"
CARD_SECRET_REASON = "names card security data (CVV/CVC, PIN or track data): never send it"  # noqa: S105 - a message, not a password

_SEPARATORS = re.compile(r"[ -]")
#: Attribute key words that name card security data (compared lower-case, per `_`-separated word and whole).
_SECRET_WORDS = frozenset(
    {
        "cvv",
        "cvv2",
        "cvc",
        "cvc2",
        "cid",
        "cav2",
        "cvn",
        "cvn2",
        "csc",
        "icvv",
        "pin",
        "pinblock",
        "track",
        "track1",
        "track2",
        "trackdata",
        "magstripe",
        "securitycode",
        "cardsecuritycode",
        "cardverificationvalue",
        "cardverificationcode",
    }
)


def luhn_ok(digits: str) -> bool:
    """The Luhn (mod 10) check of a string of ASCII digits."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def looks_like_card_number(value: str) -> bool:
    """A Luhn-valid number of 12 to 19 ASCII digits, spaces or dashes allowed between them."""
    if len(value) < 12 or not value[0].isdigit():  # cheap exits for the common case
        return False
    digits = _SEPARATORS.sub("", value) if ("-" in value or " " in value) else value
    return 12 <= len(digits) <= 19 and digits.isascii() and digits.isdigit() and luhn_ok(digits)


_EMBEDDED = re.compile(r"(?<![0-9])[0-9](?:[ -]?[0-9]){11,18}(?![0-9])")


def contains_card_number(text: str) -> bool:
    """Whether a text holds a card number anywhere (`note: "card 4111 1111 1111 1111 exp 12/27"`)."""
    if len(text) < 12:
        return False
    return any(looks_like_card_number(m.group(0)) for m in _EMBEDDED.finditer(text))


def replace_card_numbers(text: str, by: Callable[[str], str]) -> str:
    """The text with each card number in it replaced by `by(its digits)`."""

    def one(m: re.Match[str]) -> str:
        return by(card_digits(m.group(0))) if looks_like_card_number(m.group(0)) else m.group(0)

    return _EMBEDDED.sub(one, text)


def card_digits(value: str) -> str:
    """A card number without its spaces and dashes: one spelling per card."""
    return _SEPARATORS.sub("", value)


def names_card_secret(key: str) -> bool:
    """Whether an attribute key names card security data: `cvv`, `card_cvc2`, `pin_block`, `track2`, `CVV`..."""
    low = key.lower()
    if low.replace("_", "") in _SECRET_WORDS:
        return True
    return any(word in _SECRET_WORDS for word in low.split("_"))


PSEUDONYM_PREFIX = "p:"
_PSEUDONYM = re.compile(r"p:[0-9a-f]{32}")


def is_pseudonym(value: str) -> bool:
    """Whether a value has the form of a pseudonym (`p:` and 32 lower-case hex digits)."""
    return len(value) == 34 and _PSEUDONYM.fullmatch(value) is not None


class Pseudonyms:
    """The keyed hash of ids (module docstring). The key is at least 16 bytes."""

    __slots__ = ("_cache", "_key", "_once")

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("a pseudonym key has at least 16 bytes (32 hex digits)")
        self._key = key
        self._cache: dict[str, str] = {}
        self._once: dict[str, str] = {}

    def of(self, value: str) -> str:
        """The pseudonym of a non-empty value ('' stays '': an absent id)."""
        found = self._cache.get(value)
        if found is not None:
            return found
        if not value or is_pseudonym(value):
            return value  # already one (a transaction read back from the decision log, as the desk sends feedback)
        out = self._digest(value)
        if len(self._cache) >= 100_000:
            self._cache.clear()  # bounded: a cache of recent ids, not of every id ever seen
        self._cache[value] = out
        return out

    def of_once(self, value: str) -> str:
        """`of` for a value seen about once, a transaction id: kept in a small cache of its own (the call's
        record finds it), so that ids never seen again do not push the entities out of `of`'s cache."""
        found = self._once.get(value)
        if found is not None:
            return found
        if not value or is_pseudonym(value):
            return value
        out = self._digest(value)
        if len(self._once) >= 4_096:
            self._once.clear()
        self._once[value] = out
        return out

    def _digest(self, value: str) -> str:
        return PSEUDONYM_PREFIX + hmac.digest(self._key, value.encode(), "sha256")[:16].hex()  # the one-shot C path

    def fingerprint(self) -> str:
        """Names the key without revealing it (to tell two servers' keys apart in a log line)."""
        return hmac.new(self._key, b"risk-engine key fingerprint", hashlib.sha256).hexdigest()[:12]


def parse_key(text: str) -> bytes:
    """A key as written in a file or variable: hex (at least 32 digits) or any text of at least 32 characters."""
    text = text.strip()
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raw = b""
    if len(raw) >= 16:
        return raw
    if len(text) >= 32:
        return text.encode()
    raise ValueError("a pseudonym key needs at least 32 hex digits (16 bytes) or 32 characters")


def load_or_create_key(path: Path) -> tuple[bytes, bool]:
    """The key in `path`; created (0600, 32 random bytes in hex) when there is none. Returns (key, created)."""
    try:
        return parse_key(path.read_text()), False
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it meanwhile: wait (briefly) for it to be written
        for _ in range(50):
            text = path.read_text()
            if text.endswith("\n"):
                break
            time.sleep(0.02)
        return parse_key(text), False
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return parse_key(path.read_text()), True


def truncate_ip(text: str) -> str:
    """An IP address cut to its network: IPv4 /24, IPv6 /48 (the host part zero); '' stays ''.

    Enough to locate it (country, region) and to group by network; not
    enough to name a household.
    """
    if not text:
        return text
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return ""
    bits = 24 if addr.version == 4 else 48
    return str(ipaddress.ip_network(f"{addr}/{bits}", strict=False).network_address)


#: The pseudonym key of this process (set by the server at start; None offline): lists whose entries are
#: pseudonyms (a card the review desk blocked from a pseudonymous decision log) match the clear value through it.
_ACTIVE: list[Pseudonyms | None] = [None]


def set_active(keys: Pseudonyms | None) -> None:
    _ACTIVE[0] = keys


def active() -> Pseudonyms | None:
    return _ACTIVE[0]


class WithPseudonyms(frozenset):  # type: ignore[type-arg]
    """The values of a string list some of which are pseudonyms: a clear value is in it when its pseudonym is."""

    def __contains__(self, value: object) -> bool:
        if frozenset.__contains__(self, value):
            return True
        keys = _ACTIVE[0]
        return keys is not None and isinstance(value, str) and frozenset.__contains__(self, keys.of(value))
