"""Enrichment: the derived fields computed from a transaction before windows, model and rules.

`Enricher` is built once per rule set (currency table, time zone) and turns a
`Transaction` into the flat field map that windows, the model and rules read.
The catalog of these fields, with types and meanings, is `FIELDS`. `prepare`
is the first step of scoring (and of a rule test): validation, the address in
its canonical spelling, then enrichment.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from engine.iso import CURRENCY_EXPONENTS
from engine.transaction import Transaction
from engine.validation import InvalidTransaction, IPAddress, Limits, mask_card_data, parse_ip, validate

NUMBER, STRING, BOOL = "number", "string", "bool"

#: Every field of the enriched transaction: name -> (type, meaning).
FIELDS: dict[str, tuple[str, str]] = {
    "amount": (NUMBER, "amount in major units of the base currency (e.g. 12.5 USD)"),
    "amount_original": (NUMBER, "amount in major units of the transaction currency"),
    "amount_minor": (NUMBER, "amount in minor units of the transaction currency, as sent"),
    "amount_base_minor": (NUMBER, "amount in minor units of the base currency, rounded"),
    "currency": (STRING, "ISO 4217 code, e.g. 'CNY'"),
    "user_id": (STRING, "user or account id ('' when not sent)"),
    "card_id": (STRING, "card token ('' when not sent)"),
    "device_id": (STRING, "device fingerprint ('' when not sent)"),
    "ip": (STRING, "IP address as sent ('' when not sent)"),
    "country": (STRING, "ISO 3166-1 alpha-2 country of the card or account ('' when not sent)"),
    "merchant_id": (STRING, "merchant id ('' when not sent)"),
    "merchant_category": (STRING, "ISO 18245 merchant category code, e.g. '5411' ('' when not sent)"),
    "channel": (STRING, "'app', 'web', 'qr_code', 'mini_program' or 'unspecified'"),
    "hour": (NUMBER, "hour of day 0-23 in the rule set's time zone"),
    "day_of_week": (NUMBER, "0 Monday ... 6 Sunday, in the rule set's time zone"),
    "is_night": (BOOL, "hour <= 6"),
    "is_weekend": (BOOL, "Saturday or Sunday"),
    "ip_version": (NUMBER, "4, 6, or 0 when no IP was sent"),
    "ip_is_private": (BOOL, "private, loopback, link-local or reserved address"),
    "ip_country": (STRING, "ISO 3166-1 alpha-2 country of the IP address ('' when unknown or no IP)"),
    "ip_region": (STRING, "ISO 3166-2 subdivision of the IP address, where the database has it ('' otherwise)"),
    "ip_country_mismatch": (BOOL, "the IP's country and the card's country are both known and differ"),
    "has_device": (BOOL, "a device fingerprint was sent"),
    "has_ip": (BOOL, "an IP address was sent"),
}


@dataclass(frozen=True, slots=True)
class Money:
    """Conversion of amounts to the base currency.

    `rates[code]` is the value of one major unit of `code` in major units of
    `base` (e.g. base USD, rates {"EUR": 1.08}).
    """

    base: str
    rates: dict[str, float]

    def to_base_minor(self, amount_minor: int, currency: str) -> int:
        if currency == self.base:
            return amount_minor
        rate = self.rates.get(currency)
        if rate is None:
            raise InvalidTransaction("currency", f"no exchange rate to {self.base} is configured for {currency!r}")
        shift = CURRENCY_EXPONENTS[self.base] - CURRENCY_EXPONENTS[currency]
        return round(amount_minor * rate * 10.0**shift)


class IPLocation(Protocol):
    """Where an address is, as a `GeoLookup` answers (engine.geo.Location)."""

    @property
    def country(self) -> str: ...

    @property
    def region(self) -> str: ...


class GeoLookup(Protocol):
    """Maps an IP address to where it is (see engine.geo)."""

    def lookup(self, addr: IPAddress) -> IPLocation: ...


_HOUR_MS = 3_600_000
_HOUR_US = 3_600_000_000
_DAY_US = 86_400_000_000
_MICROSECOND = timedelta(microseconds=1)
_UNKNOWN: Any = object()
_MAX_CACHED_HOURS = 100_000  # about 11 years of distinct hours

#: The field that carries the parsed IP address to the compiled rules (not in the catalog).
ADDRESS_FIELD = "_addr"


class Enricher:
    """Computes the enriched field map of a transaction."""

    def __init__(self, money: Money, timezone: str = "UTC", geo: GeoLookup | None = None) -> None:
        self.money = money
        self.timezone = ZoneInfo(timezone)
        self.geo = geo
        # Divide by 10^exponent (exact powers of ten) rather than multiply by 10^-exponent
        # (not representable): 1999 / 100 is 19.99, 1999 * 0.01 is 19.990000000000002.
        self._base_divisor = 10 ** CURRENCY_EXPONENTS[money.base]
        self._base_digits = CURRENCY_EXPONENTS[money.base]
        self._minor_divisor = {code: 10**exponent for code, exponent in CURRENCY_EXPONENTS.items()}
        # UTC hour -> the zone's UTC offset in microseconds throughout that hour, or
        # None when it changes within the hour (see `local_hour_and_weekday`).
        self._offsets: dict[int, int | None] = {}

    def local_hour_and_weekday(self, event_time_ms: int) -> tuple[int, int]:
        """Hour (0-23) and weekday (0 Monday) of an instant in the rule set's time zone.

        The same as `datetime.fromtimestamp(ms / 1000, zone)`, without building
        a datetime per transaction: the zone's offset is looked up once per UTC
        hour and cached, and hours in which it changes (the offset at the
        hour's first and last millisecond differ) take the datetime path.
        Time zone data has no hour with two changes that cancel out.
        """
        hour_key = event_time_ms // _HOUR_MS
        offset = self._offsets.get(hour_key, _UNKNOWN)
        if offset is _UNKNOWN:
            first = datetime.fromtimestamp(hour_key * 3600, self.timezone).utcoffset()
            last = datetime.fromtimestamp(((hour_key + 1) * _HOUR_MS - 1) / 1000.0, self.timezone).utcoffset()
            offset = first // _MICROSECOND if first is not None and first == last else None
            if len(self._offsets) >= _MAX_CACHED_HOURS:
                self._offsets.clear()
            self._offsets[hour_key] = offset
        if offset is None:
            local = datetime.fromtimestamp(event_time_ms / 1000.0, self.timezone)
            return local.hour, local.weekday()
        local_us = event_time_ms * 1000 + offset
        # 1970-01-01 was a Thursday (weekday 3).
        return local_us // _HOUR_US % 24, (local_us // _DAY_US + 3) % 7

    def describe(self, fields: dict[str, Any]) -> dict[str, str]:
        """What enrichment found, as text for a reviewer (`ScoreResult.enrichment`), built once per answer:
        the IP's country and region (left out when unknown), the amount in the base currency (exact,
        from its minor units) and the base currency's code."""
        minor = fields["amount_base_minor"]
        digits = self._base_digits
        whole, part = divmod(abs(minor), self._base_divisor)
        amount = f"{'-' if minor < 0 else ''}{whole}.{part:0{digits}d}" if digits else f"{minor}"
        out = {"amount_base": amount, "base_currency": self.money.base}
        if fields["ip_country"]:
            out["ip_country"] = fields["ip_country"]
        if fields["ip_region"]:
            out["ip_region"] = fields["ip_region"]
        return out

    def enrich(self, txn: Transaction) -> dict[str, Any]:
        """The field map of a (validated) transaction; its IP comes from `parse_ip`'s cache, canonical."""
        base_minor = self.money.to_base_minor(txn.amount_minor, txn.currency)
        hour, dow = self.local_hour_and_weekday(txn.event_time_ms)
        ip_version = 0
        ip_private = False
        addr: IPAddress | None = None
        if txn.ip:
            addr, _, ip_private = parse_ip(txn.ip)
        ip_country = ip_region = ""
        if addr is not None:
            ip_version = addr.version
            if self.geo is not None and not ip_private:
                where = self.geo.lookup(addr)
                ip_country, ip_region = where.country, where.region
        return {
            "amount": base_minor / self._base_divisor,
            "amount_original": txn.amount_minor / self._minor_divisor[txn.currency],
            "amount_minor": txn.amount_minor,
            "amount_base_minor": base_minor,
            "currency": txn.currency,
            "user_id": txn.user_id,
            "card_id": txn.card_id,
            "device_id": txn.device_id,
            "ip": txn.ip,
            "country": txn.country,
            "merchant_id": txn.merchant_id,
            "merchant_category": txn.merchant_category,
            "channel": txn.channel.value,
            "hour": hour,
            "day_of_week": dow,
            "is_night": hour <= 6,
            "is_weekend": dow >= 5,
            "ip_version": ip_version,
            "ip_is_private": ip_private,
            "ip_country": ip_country,
            "ip_region": ip_region,
            "ip_country_mismatch": bool(ip_country and txn.country and ip_country != txn.country),
            "has_device": bool(txn.device_id),
            "has_ip": bool(txn.ip),
            ADDRESS_FIELD: addr,
        }


def prepare(
    enricher: Enricher, txn: Transaction, limits: Limits, now_ms: int | None
) -> tuple[Transaction, dict[str, Any]]:
    """Validation and enrichment: the transaction in its canonical spelling and its field map.

    Raises InvalidTransaction. Shared by scoring and by the rule tests.
    """
    if limits.card_mask is not None:
        txn = mask_card_data(txn, limits.card_mask)
    validate(txn, limits, now_ms)
    if txn.ip and (ip := parse_ip(txn.ip)[1]) != txn.ip:
        txn = replace(txn, ip=ip)  # one spelling per address, for windows and retries
    fields = enricher.enrich(txn)
    fields["attributes"] = dict(txn.attributes)
    return txn, fields
