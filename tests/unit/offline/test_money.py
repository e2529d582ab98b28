"""The money view's threshold sweep on a small case computed by hand, and the decision policy it tabulates."""

from __future__ import annotations

import math

import numpy as np

from engine.offline.money import (
    MODEL_DENY,
    MODEL_NONE,
    MODEL_REVIEW,
    SIG_ALLOW,
    SIG_DENY,
    SIG_REVIEW,
    SweepInput,
    decision_table,
    money_view,
    reproduces,
    sweep,
)
from engine.rules.ruleset import Costs
from engine.transaction import Action

COSTS = Costs(review=5.0, chargeback_factor=1.0, false_decline_margin=0.1)
NAN = math.nan

# score, rule signature, fraud, amount, day. r6 has no score and a deny rule fired on it.
ROWS = [
    (0.9, 0, True, 100.0, 0),
    (0.8, 0, False, 50.0, 0),
    (0.6, 0, True, 40.0, 0),
    (0.3, 0, False, 200.0, 1),
    (0.1, 0, False, 10.0, 1),
    (NAN, SIG_DENY, True, 70.0, 1),
]


def data() -> SweepInput:
    fraud = np.array([r[2] for r in ROWS])
    return SweepInput(
        score=np.array([r[0] for r in ROWS]),
        signature=np.array([r[1] for r in ROWS], dtype=np.int8),
        fraud=fraud,
        genuine=~fraud,
        amount=np.array([r[3] for r in ROWS]),
        day=np.array([r[4] for r in ROWS], dtype=np.int64),
    )


THRESHOLDS = [0.3, 0.6, 0.8, 0.9]


def pairs(result: dict) -> dict[tuple[float, float | None], dict]:
    return {(row["review_at"], row["deny_at"]): row for row in result["curve"]}


def test_the_policy_table_is_the_decision_module() -> None:
    table = decision_table()
    assert table[0, MODEL_NONE] == Action.ALLOW
    assert table[0, MODEL_REVIEW] == Action.REVIEW
    assert table[0, MODEL_DENY] == Action.DENY
    assert table[SIG_ALLOW, MODEL_REVIEW] == Action.ALLOW  # an allow rule spares a review...
    assert table[SIG_ALLOW, MODEL_DENY] == Action.DENY  # ...never a deny
    assert table[SIG_REVIEW, MODEL_NONE] == Action.REVIEW
    assert table[SIG_DENY | SIG_ALLOW, MODEL_NONE] == Action.DENY
    assert table[SIG_REVIEW | SIG_ALLOW, MODEL_DENY] == Action.DENY


def test_sweep_without_a_budget_picks_the_hand_computed_best() -> None:
    # Net value without r6 (a fraud denied by its rule whatever the thresholds: +70 in every pair):
    # deny r1 r2 r3 at 0.6: 100 - 0.1 * 50 + 40 = 135, the best; + 70 = 205.
    result = sweep(data(), COSTS, (0.6, 0.9), thresholds=THRESHOLDS)
    best = result["recommended"]
    assert (best["review_at"], best["deny_at"]) == (0.6, 0.6)
    assert best["net_value"] == 205.0
    assert (best["reviews"], best["declines"]) == (0, 4)
    assert math.isclose(best["decline_rate"], 4 / 6, rel_tol=1e-5)
    assert result["pairs_tried"] == 4 + 3 + 2 + 1 + 4  # review_at <= deny_at, and deny off
    # The current pair (0.6, 0.9): deny r1 (+100), review r2 (-5) and r3 (+40 - 5): 130 + 70.
    now = result["current"]
    assert (now["net_value"], now["reviews"], now["reviews_per_day"], now["recall"]) == (200.0, 2, 1.0, 1.0)


def test_sweep_under_a_decline_cap_and_a_review_capacity() -> None:
    # At most 40 % declined (2 of 6; r6 is always one): the model may deny r1 alone.
    capped = sweep(data(), COSTS, (0.6, 0.9), max_decline_rate=0.4, thresholds=THRESHOLDS)
    best = capped["recommended"]
    assert (best["review_at"], best["deny_at"], best["net_value"]) == (0.6, 0.9, 200.0)
    assert capped["queue"] == {"mean_per_day": 1.0, "p95_per_day": 1.9, "max_per_day": 2}
    curve = pairs(capped)  # the recommended deny threshold, each review threshold
    assert set(curve) == {(0.3, 0.9), (0.6, 0.9), (0.8, 0.9), (0.9, 0.9)}
    assert curve[(0.3, 0.9)]["net_value"] == 125.0 + 70  # r4 reviewed too: -5
    assert curve[(0.8, 0.9)]["net_value"] == 95.0 + 70
    # And half a review a day (1 in 2 days): r2 and r3 cannot both be reviewed; denying r1 alone is best.
    both = sweep(data(), COSTS, (0.6, 0.9), max_decline_rate=0.4, review_capacity=0.5, thresholds=THRESHOLDS)
    best = both["recommended"]
    assert (best["review_at"], best["deny_at"], best["net_value"], best["reviews"]) == (0.9, 0.9, 170.0, 0)
    assert not pairs(both)[(0.6, 0.9)]["fits"]
    # Nothing fits a decline cap below the rule's own denies.
    assert sweep(data(), COSTS, (0.6, 0.9), max_decline_rate=0.1, thresholds=THRESHOLDS)["recommended"] is None


def test_sweep_values_are_those_of_the_money_view() -> None:
    d = data()
    result = sweep(d, COSTS, (0.6, 0.9), thresholds=THRESHOLDS)
    table = decision_table()
    for row in result["curve"]:
        part = np.zeros(len(d.score), dtype=np.int64)
        with np.errstate(invalid="ignore"):
            part[d.score >= row["review_at"]] = MODEL_REVIEW
            if row["deny_at"] is not None:
                part[d.score >= row["deny_at"]] = MODEL_DENY
        decisions = table[d.signature.astype(np.int64), part]
        view = money_view(decisions, d.fraud, d.genuine, d.amount, np.ones(len(d.score), dtype=bool), 2, COSTS)
        assert view["net_value"] == row["net_value"]
        assert view["reviews"] == row["reviews"]


def test_reproduces_counts_rows_decided_as_given() -> None:
    d = data()
    replayed = np.array([Action.DENY, Action.REVIEW, Action.REVIEW, Action.ALLOW, Action.ALLOW, Action.DENY])
    assert reproduces(d, replayed, (0.6, 0.9)) == 6
    replayed[3] = Action.REVIEW
    assert reproduces(d, replayed, (0.6, 0.9)) == 5


def test_money_view_by_hand() -> None:
    d = data()
    decisions = np.array([Action.DENY, Action.DENY, Action.REVIEW, Action.ALLOW, Action.ALLOW, Action.DENY])
    view = money_view(decisions, d.fraud, d.genuine, d.amount, np.ones(6, dtype=bool), 2, COSTS)
    assert view == {
        "fraud_loss_avoided": 210.0,  # r1 r3 r6
        "missed_fraud_loss": 0.0,
        "false_decline_cost": 5.0,  # r2: 10 % of 50
        "review_cost": 5.0,
        "reviews": 1,
        "reviews_per_day": 0.5,
        "declines": 3,
        "decline_rate": 0.5,
        "net_value": 200.0,
    }
