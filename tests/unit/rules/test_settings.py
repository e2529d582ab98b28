"""The `costs:` setting: parsed into the rule set, every bad value reported with its line and column."""

from __future__ import annotations

from pathlib import Path

from engine.rules import load_ruleset
from engine.rules.ruleset import Costs
from tests.unit.rules.test_loader import HEADER, errors_of


def test_costs_are_read_into_the_rule_set(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text(
        HEADER + "costs:\n  review: 4\n  chargeback_factor: 1.5\n  review_capacity: 200\n  max_decline_rate: 0.01\n"
    )
    costs = load_ruleset(tmp_path).costs
    assert costs == Costs(
        review=4.0,
        chargeback_factor=1.5,
        false_decline_margin=0.1,  # the default
        review_capacity=200.0,
        max_decline_rate=0.01,
        given=("review", "chargeback_factor", "review_capacity", "max_decline_rate"),
    )
    (tmp_path / "r.yaml").write_text(HEADER)
    assert load_ruleset(tmp_path).costs == Costs()


def test_bad_costs_are_line_numbered_errors_all_at_once(tmp_path: Path) -> None:
    text = HEADER + (
        "costs:\n"  # line 4
        "  review: -1\n"
        "  chargeback_factor: lots\n"
        "  false_decline_margin: 2\n"
        "  max_decline_rate: true\n"
        "  review_capcity: 10\n"  # line 9
    )
    assert errors_of(tmp_path, text) == [
        "9:3: unknown key 'review_capcity' in 'costs' (did you mean 'review_capacity'?)",
        "5:11: 'costs.review' (the cost of one manual review, in the base currency) must be a number 0 or more, got -1",
        "6:22: 'costs.chargeback_factor' (a missed fraud costs its amount times this) must be a number 0 or more,"
        " got 'lots'",
        "7:25: 'costs.false_decline_margin' (the share of a declined genuine payment's amount lost (margin)) must be"
        " a number from 0 to 1, got 2",
        "8:21: 'costs.max_decline_rate' (the largest share of transactions that may be declined) must be a number"
        " from 0 to 1, got True",
    ]
    assert errors_of(tmp_path, HEADER + "costs: 5\n") == [
        "4:8: 'costs' must be a mapping, e.g. {review: 5, chargeback_factor: 1.5, false_decline_margin: 0.1}"
    ]
