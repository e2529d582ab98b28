"""engine.enrich: `prepare` validates, spells the address one way, and gives the field map rules read."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.enrich import Enricher, Money, prepare
from engine.geo import GeoDB
from engine.transaction import Transaction
from engine.validation import InvalidTransaction, Limits
from tests.support.mmdb import write_mmdb

T0 = 1_767_268_800_000  # 2026-01-01T12:00:00Z


def txn(**overrides: object) -> Transaction:
    values: dict[str, object] = {
        "transaction_id": "t-1",
        "event_time_ms": T0,
        "amount_minor": 1250,
        "currency": "EUR",
        "card_id": "c-1",
        "ip": "::ffff:192.0.2.7",
        "attributes": (("plan", "gold"),),
    }
    values.update(overrides)
    return Transaction(**values)  # type: ignore[arg-type]


def test_prepare_spells_the_address_once_and_enriches() -> None:
    enricher = Enricher(Money("USD", {"EUR": 1.08}), "UTC")
    canonical, fields = prepare(enricher, txn(), Limits(), None)
    assert canonical.ip == "192.0.2.7"  # an IPv4-mapped IPv6 address is the IPv4 address
    assert fields["ip"] == "192.0.2.7" and fields["ip_version"] == 4
    assert fields["amount"] == pytest.approx(13.5) and fields["amount_original"] == 12.5
    assert fields["hour"] == 12 and fields["attributes"] == {"plan": "gold"}


def test_prepare_refuses_what_validation_refuses() -> None:
    enricher = Enricher(Money("USD", {"EUR": 1.08}), "UTC")
    with pytest.raises(InvalidTransaction, match="currency"):
        prepare(enricher, txn(currency="XXQ"), Limits(), None)
    with pytest.raises(InvalidTransaction, match="no exchange rate"):
        prepare(Enricher(Money("USD", {}), "UTC"), txn(), Limits(), None)


@pytest.mark.parametrize(
    ("base", "amount_minor", "currency", "rate", "amount_base"),
    [("USD", 1250, "EUR", 1.08, "13.50"), ("JPY", 1250, "EUR", 160.0, "2000"), ("KWD", 100, "KWD", 1.0, "0.100")],
)
def test_a_reviewer_reads_what_enrichment_found(
    tmp_path: Path, base: str, amount_minor: int, currency: str, rate: float, amount_base: str
) -> None:
    """The response's enrichment: the amount in the base currency, exactly (its minor units), and where the IP is
    (a City database with subdivisions, written for the test)."""
    city = {"81.2.69.0/24": {"country": {"iso_code": "GB"}, "subdivisions": [{"iso_code": "ENG"}]}}
    geo = GeoDB.open(write_mmdb(tmp_path / "city.mmdb", city, database_type="GeoIP2-City"))
    enricher = Enricher(Money(base, {currency: rate}), "UTC", geo)
    _, fields = prepare(enricher, txn(amount_minor=amount_minor, currency=currency, ip="81.2.69.160"), Limits(), None)
    assert enricher.describe(fields) == {
        "amount_base": amount_base,
        "base_currency": base,
        "ip_country": "GB",
        "ip_region": "ENG",
    }
    _, no_ip = prepare(enricher, txn(amount_minor=amount_minor, currency=currency, ip=""), Limits(), None)
    assert set(enricher.describe(no_ip)) == {"amount_base", "base_currency"}  # unknown: left out
