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
family once at load, so a lookup is one binary search.
"""

from __future__ import annotations

import bisect
import ipaddress
from dataclasses import dataclass
from typing import Any

from engine.iso import COUNTRIES

KINDS = ("string", "number", "country", "cidr")
MAX_LIST_SIZE = 1_000_000


class ListValueError(ValueError):
    pass


class CidrSet:
    """A set of IP networks, tested with `contains(addr)` in O(log n)."""

    __slots__ = ("_ends", "_starts", "size")

    def __init__(self, networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> None:
        self._starts: dict[int, list[int]] = {4: [], 6: []}
        self._ends: dict[int, list[int]] = {4: [], 6: []}
        self.size = len(networks)
        for version in (4, 6):
            spans = sorted((int(n.network_address), int(n.broadcast_address)) for n in networks if n.version == version)
            merged: list[list[int]] = []
            for lo, hi in spans:
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


def parse_network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """'10.0.0.0/8', '2001:db8::/32' or a single address; raise ListValueError with the reason."""
    try:
        return ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as exc:
        raise ListValueError(f"{text.strip()!r} is not an IP network: {exc}") from None


def parse_value(kind: str, raw: Any) -> Any:
    """One list value of `kind`; raise ListValueError with the reason."""
    if kind == "number":
        if isinstance(raw, bool):
            raise ListValueError(f"{raw!r} is not a number")
        try:
            return float(raw)
        except (TypeError, ValueError):
            raise ListValueError(f"{raw!r} is not a number") from None
    text = str(raw).strip()
    if not text:
        raise ListValueError("empty value")
    if kind == "country" and text not in COUNTRIES:
        raise ListValueError(f"{text!r} is not an ISO 3166-1 alpha-2 country code")
    if kind == "cidr":
        return parse_network(text)
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


def read_list_file(text: str) -> list[tuple[int, str]]:
    """(line number, value) for each value line of a list file."""
    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        value = line.split("#", 1)[0].strip()
        if value:
            out.append((number, value))
    return out
