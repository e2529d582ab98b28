"""engine.pipeline: one transaction through validation, windows, rules and decision, with the in-process store.

A store that cannot answer degrades the answer (the degraded policy decides,
never a silent allow); a retry is answered from the record.
"""

from __future__ import annotations

import pytest

from engine.pipeline import InvalidTransaction, Pipeline
from engine.rules import load_ruleset
from engine.transaction import Action, Recorded, Transaction
from engine.windows.memory import MemoryStore
from engine.windows.records import RecordWriter
from engine.windows.spec import BoundWindows, WindowPlan
from engine.windows.store import StoreUnavailable, WindowsOutcome
from tests.support import RULES

T0 = 1_767_268_800_000


class DownStore:
    """A store that is down: it declares the contract like any store, and every call fails."""

    name = "down"
    budget_s = 0.0
    uses_fingerprints = True
    reads_groups = True
    records: RecordWriter | None = None

    def apply(self, plan: WindowPlan, bound: BoundWindows, fingerprint: str) -> WindowsOutcome:
        raise StoreUnavailable("connection refused", "connection")

    def remember(self, transaction_id: str, fingerprint: str, response: Recorded) -> None:
        raise StoreUnavailable("connection refused", "connection")

    def warm_up(self, plan: WindowPlan | None = None) -> bool:
        return False

    def close(self) -> None:
        pass


def txn(tid: str, amount_minor: int = 1250) -> Transaction:
    return Transaction(tid, T0, amount_minor, "USD", user_id="u-1", card_id="c-1", device_id="d-1", ip="85.214.132.117")


def test_a_transaction_is_scored_and_its_retry_answered_from_the_record() -> None:
    pipeline = Pipeline(load_ruleset(RULES), None, MemoryStore(), check_clock=False)
    first = pipeline.score(txn("t-1"))
    assert not first.replayed and not first.result.degraded
    assert first.fields["card_count_10m"] == 1  # the transaction counts in its own windows
    again = pipeline.score(txn("t-1"))
    assert again.replayed and again.result.to_json() == first.result.to_json()  # (the score is NaN: no model)
    assert pipeline.score(txn("t-2")).fields["card_count_10m"] == 2


def test_a_store_that_is_down_degrades_the_answer_and_says_why() -> None:
    seen: list[tuple[str, str, str]] = []
    pipeline = Pipeline(
        load_ruleset(RULES), None, DownStore(), check_clock=False, on_degraded=lambda *a: seen.append(a)
    )
    result = pipeline.score(txn("t-1")).result
    assert result.degraded
    assert [r.code for r in result.reasons if r.code == "WINDOWS_UNAVAILABLE"] == ["WINDOWS_UNAVAILABLE"]
    assert ("windows", "connection refused", "connection") in seen
    big = pipeline.score(txn("t-2", amount_minor=5_000_000)).result  # the degraded policy on a large amount
    assert big.decision is not Action.ALLOW


def test_bad_input_is_refused_with_the_field() -> None:
    pipeline = Pipeline(load_ruleset(RULES), None, MemoryStore(), check_clock=False)
    with pytest.raises(InvalidTransaction, match="currency"):
        pipeline.score(Transaction("t-1", T0, 100, "XXQ", card_id="c-1"))
