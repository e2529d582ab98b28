"""Named lists: block and allow lists that rules test membership in (`card_id in lists.blocked_cards`).

A list is declared under `lists:` in a rule file, with its values inline or
in a text file beside the rules (one value per line, `#` starts a comment),
and is reloaded with the rules. Kinds:

- `string`: any text (card tokens, device ids, users, merchants, MCCs);
- `number`: numbers;
- `country`: ISO 3166-1 alpha-2 codes, checked at load;
- `cidr`: IPv4 and IPv6 networks (`10.0.0.0/8`, `2001:db8::/32`, or a single
  address), matched against the transaction's `ip`.

CIDR lists are merged into sorted, disjoint integer ranges per address
family once at load, so a lookup is one binary search. IPv4-mapped IPv6
networks (`::ffff:10.0.0.0/104`) are stored as the IPv4 networks they are,
since addresses are compared in their canonical (IPv4) form. A list file is
parsed once per version of the file (path, size, modification time): a
reload that does not touch a million-entry list does not parse it again.
"""

from __future__ import annotations

import bisect
import ipaddress
import socket
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.iso import COUNTRIES, country_hint
from engine.privacy import WithPseudonyms, is_pseudonym

KINDS = ("string", "number", "country", "cidr")
MAX_LIST_SIZE = 1_000_000


class ListValueError(ValueError):
    """A bad list value: why, and what to write instead when known."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint


Span = tuple[int, int, int]  # address family (4 or 6), first address, last address


class CidrSet:
    """A set of IP networks, tested with `contains(addr)` in O(log n)."""

    __slots__ = ("_ends", "_starts", "size")

    def __init__(self, networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] | list[Span]) -> None:
        spans = [n if isinstance(n, tuple) else _span_of(n) for n in networks]
        self._starts: dict[int, list[int]] = {4: [], 6: []}
        self._ends: dict[int, list[int]] = {4: [], 6: []}
        self.size = len(spans)
        for version in (4, 6):
            merged: list[list[int]] = []
            for _, lo, hi in sorted(sp for sp in spans if sp[0] == version):
                if merged and lo <= merged[-1][1] + 1:
                    merged[-1][1] = max(merged[-1][1], hi)
                else:
                    merged.append([lo, hi])
            self._starts[version] = [lo for lo, _ in merged]
            self._ends[version] = [hi for _, hi in merged]

    def contains(self, addr: ipaddress.IPv4Address | ipaddress.IPv6Address | None) -> bool:
        if addr is None:
            return False
        value = int(addr)
        starts = self._starts[addr.version]
        i = bisect.bisect_right(starts, value) - 1
        return i >= 0 and value <= self._ends[addr.version][i]


_MAPPED = int(ipaddress.IPv6Address("::ffff:0:0"))


def _span_of(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> Span:
    lo, hi = int(net.network_address), int(net.broadcast_address)
    if net.version == 6 and net.prefixlen >= 96 and lo >> 32 == _MAPPED >> 32:
        return 4, lo & 0xFFFFFFFF, hi & 0xFFFFFFFF
    return net.version, lo, hi


def parse_network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """'10.0.0.0/8', '2001:db8::/32' or a single address; raise ListValueError with the reason."""
    try:
        return ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as exc:
        raise ListValueError(f"{text.strip()!r} is not an IP network: {exc}") from None


def parse_span(text: str) -> Span:
    """A network as a span, fast for the plain forms (a million-line list parses in about a second)."""
    addr, _, plen = text.partition("/")
    try:
        packed = socket.inet_pton(socket.AF_INET, addr)
        version, bits = 4, 32
        if ".".join(str(b) for b in packed) != addr:  # leading zeros and other odd spellings
            raise OSError
    except OSError:
        try:
            packed = socket.inet_pton(socket.AF_INET6, addr)
            version, bits = 6, 128
        except OSError:
            return _span_of(parse_network(text))
    if not plen:
        prefix = bits
    elif plen.isdigit() and plen.isascii() and int(plen) <= bits:
        prefix = int(plen)
    else:
        return _span_of(parse_network(text))  # raises with ipaddress's own message
    value = int.from_bytes(packed, "big")
    host = (1 << (bits - prefix)) - 1
    if value & host:
        return _span_of(parse_network(text))  # "has host bits set"
    if version == 6 and prefix >= 96 and value >> 32 == _MAPPED >> 32:
        return 4, value & 0xFFFFFFFF, (value | host) & 0xFFFFFFFF
    return version, value, value | host


def parse_value(kind: str, raw: Any) -> Any:
    """One list value of `kind`; raise ListValueError with the reason."""
    if kind == "number":
        if isinstance(raw, bool):
            raise ListValueError(f"{raw!r} is not a number")
        try:
            return float(raw)
        except (TypeError, ValueError):
            raise ListValueError(f"{raw!r} is not a number") from None
    if not isinstance(raw, str | int | float) or isinstance(raw, bool):
        raise ListValueError(f"list values must be plain strings or numbers, got {type(raw).__name__}")
    text = str(raw).strip()
    if not text:
        raise ListValueError("empty value")
    if kind == "country" and text not in COUNTRIES:
        raise ListValueError(f"{text!r} is not an ISO 3166-1 alpha-2 country code", country_hint(text))
    if kind == "cidr":
        return parse_span(text)
    return text


@dataclass(frozen=True, slots=True)
class NamedList:
    name: str
    kind: str
    values: frozenset[Any] | CidrSet
    source: str  # where it was declared, for messages

    @property
    def value_type(self) -> str:
        """The rule-language type of the list's items."""
        return "number" if self.kind == "number" else "string"

    def __len__(self) -> int:
        return self.values.size if isinstance(self.values, CidrSet) else len(self.values)


def read_list_file(text: str) -> list[tuple[int, int, str]]:
    """(line number, column, value) for each value line of a list file (1-based)."""
    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        value = line.split("#", 1)[0].strip()
        if value:
            out.append((number, len(line) - len(line.lstrip()) + 1, value))
    return out


Held = frozenset[Any] | CidrSet
#: A problem in a list file: line, column, message, hint.
Problem = tuple[int, int, str, str]
_CACHE: OrderedDict[tuple[str, int, int, str], tuple[Held, int, list[Problem]]] = OrderedDict()
_CACHE_SIZE = 32


def hold(kind: str, values: list[Any]) -> Held:
    """The lookup structure of a list's parsed values."""
    if kind == "cidr":
        return CidrSet(values)
    if kind == "string" and any(isinstance(v, str) and is_pseudonym(v) for v in values):
        return WithPseudonyms(values)  # entries blocked by pseudonym match the clear ids sent (engine.privacy)
    return frozenset(values)


def load_list_file(path: Path, kind: str) -> tuple[Held, int, list[Problem]]:
    """(lookup structure, line count, [(line, column, error, hint)]) of a list file, parsed once per version of it.

    Raises OSError when it cannot be read.
    """
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size, kind)
    hit = _CACHE.get(key)
    if hit is not None:
        _CACHE.move_to_end(key)
        return hit
    text = path.read_text(encoding="utf-8-sig")  # a byte-order mark is not part of the first value
    values: list[Any] = []
    errors: list[Problem] = []
    for line, column, raw in read_list_file(text):
        try:
            values.append(parse_value(kind, raw))
        except ListValueError as exc:
            errors.append((line, column, str(exc), exc.hint))
            if len(errors) >= 20:
                errors.append((line, column, "more errors not shown", ""))
                break
    result = (hold(kind, values), len(values), errors)
    if not errors:
        _CACHE[key] = result
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return result
