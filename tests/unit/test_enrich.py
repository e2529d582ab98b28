"""engine.enrich: `prepare` validates, spells the address one way, and gives the field map rules read."""

from __future__ import annotations

import pytest

from engine.enrich import Enricher, Money, prepare
from engine.transaction import Transaction
from engine.validation import InvalidTransaction, Limits

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
