"""Rejected rows: grouped by field and reason with the file's row numbers; the threshold and its argument."""

from __future__ import annotations

import numpy as np
import pytest

from engine.offline.rejections import Rejections, TooManyRejected, check_rejections, find_rejections, parse_share
from engine.rules.loader import load_ruleset
from engine.transaction import Transaction
from tests.support import RULES

T0 = 1_767_225_600_000


def txn(i: int, **fields: object) -> Transaction:
    base: dict[str, object] = {
        "transaction_id": f"t{i}",
        "event_time_ms": T0 + i,
        "amount_minor": 100,
        "currency": "EUR",
        "card_id": "c1",
    }
    return Transaction(**{**base, **fields})  # type: ignore[arg-type]


def test_reasons_are_grouped_with_quoted_values_folded_and_file_rows_given() -> None:
    transactions = [
        txn(0),
        txn(1, country="XX"),
        txn(2, country="ZZ"),
        txn(3, currency="ABC"),
        txn(4, country="QQ"),
        txn(5),
    ]
    valid = np.array([True, False, False, False, False, True])
    file_rows = np.array([5, 4, 3, 2, 1, 0])  # the file was in reverse order
    got = find_rejections(transactions, valid, load_ruleset(RULES), file_rows)
    assert (got.rows, got.rejected, round(got.share, 4)) == (6, 4, 0.6667)
    assert got.to_json()["by_reason"] == [
        {
            "field": "country",
            "reason": "'…' is not an ISO 3166-1 alpha-2 code",
            "count": 3,
            "examples": [
                {"row": 5, "id": "t1", "value": "XX"},
                {"row": 4, "id": "t2", "value": "ZZ"},
                {"row": 2, "id": "t4", "value": "QQ"},
            ],
        },
        {
            "field": "currency",
            "reason": "'…' is not an ISO 4217 currency code",
            "count": 1,
            "examples": [{"row": 3, "id": "t3", "value": "ABC"}],
        },
    ]
    assert Rejections.from_json(got.to_json()) == got
    assert got.lines() == [
        "rejected by validation: 4 of 6 rows (66.67%)",
        "  country: '…' is not an ISO 3166-1 alpha-2 code: 3 rows, e.g. row 5 ('XX'), row 4 ('ZZ'), row 2 ('QQ')",
        "  currency: '…' is not an ISO 4217 currency code: 1 rows, e.g. row 3 ('ABC')",
    ]


def test_the_threshold_is_a_share_of_the_rows() -> None:
    some = Rejections(rows=1000, rejected=10)
    check_rejections(some, 0.01)  # exactly 1 %: allowed
    with pytest.raises(TooManyRejected, match=r"1.10% of the rows were rejected, more than the allowed 1.00%"):
        check_rejections(Rejections(rows=1000, rejected=11), 0.01)
    check_rejections(Rejections(rows=0), 0.0)
    assert Rejections(rows=5).lines() == ["rejected by validation: none of 5 rows"]


@pytest.mark.parametrize(("text", "share"), [("1%", 0.01), ("2.5 %", 0.025), ("0.05", 0.05), ("0", 0.0), ("100%", 1.0)])
def test_max_rejected_takes_a_percentage_or_a_fraction(text: str, share: float) -> None:
    assert parse_share(text) == pytest.approx(share)


@pytest.mark.parametrize("text", ["5x", "", "150%", "-1", "2"])
def test_max_rejected_refuses_what_is_not_a_share(text: str) -> None:
    with pytest.raises(ValueError):
        parse_share(text)
