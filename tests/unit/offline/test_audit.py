"""The parity audit's comparison (engine/offline/audit.py) and its command's errors; the audit of a live
server's log on both engines is in tests/parity/test_spark.py."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from engine.cli import main
from engine.offline.audit import compare, render


def _record(tid: str, decision: str = "allow", score: float | None = 0.2, **features: float | None) -> dict[str, Any]:
    return {
        "transaction": {"transaction_id": tid},
        "decision": decision,
        "score": score,
        "degraded": False,
        "reasons": [],
        "features": {"card_count_1d": 1.0, "amount": 10.0, **features},
        "ruleset_version": "r1",
        "model_version": "m1",
    }


def _table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(
        [
            {
                "transaction_id": r["transaction_id"],
                "decision": r.get("decision", "allow"),
                "score": r.get("score", 0.2),
                "reason_codes": r.get("reasons", []),
                "f_card_count_1d": r.get("card_count_1d", 1.0),
                "f_amount": r.get("amount", 10.0),
            }
            for r in rows
        ]
    )


def test_equal_answers_and_missing_values_on_both_sides_are_no_difference() -> None:
    served = [_record("a"), _record("b", score=None, amount=None)]
    again = _table([{"transaction_id": "a"}, {"transaction_id": "b", "score": math.nan, "amount": math.nan}])
    result = compare(served, again)
    assert result.mismatched == 0 and result.clean
    assert all(item.compared == 2 and item.differ == 0 for item in result.items)


def test_each_difference_is_counted_per_item_with_examples() -> None:
    served = [_record("a"), _record("b", decision="deny"), _record("c", card_count_1d=3.0), _record("d")]
    again = _table(
        [
            {"transaction_id": "a", "reasons": ["CARD_BURST"]},
            {"transaction_id": "b"},
            {"transaction_id": "c", "card_count_1d": 2.0},
        ]
    )
    result = compare(served, again, examples=1)
    differ = {item.name: item for item in result.items if item.differ}
    assert set(differ) == {"reasons", "decision", "card_count_1d"}
    assert differ["decision"].examples == [
        {"transaction_id": "b", "served": "deny", "recomputed": "allow", "degraded": False}
    ]
    assert differ["card_count_1d"].share == pytest.approx(1 / 3)
    assert result.mismatched == 3
    assert result.not_replayed == ["d"] and not result.clean  # served, but the replay rejected it
    text = render(result)
    assert "decision" in text and "served 'deny', recomputed 'allow'" in text


def test_audit_refuses_a_missing_or_empty_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "--log", str(tmp_path / "nowhere"), "--no-model"]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert main(["audit", "--log", str(tmp_path), "--no-model"]) == 2
    assert "no decision records" in capsys.readouterr().err
    assert main(["audit", "--log", str(tmp_path), "--spark-master", "local[2]"]) == 2
    assert "need --engine spark" in capsys.readouterr().err
