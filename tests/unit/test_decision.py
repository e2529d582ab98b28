"""engine.decision: which thresholds apply, the reason a score adds, and which action wins."""

from __future__ import annotations

import math

from engine.decision import NO_THRESHOLDS, Threshold, decide, model_reasons, thresholds
from engine.transaction import Action, Reason, ReasonSource


def rule(code: str, action: Action) -> Reason:
    return Reason(code, ReasonSource.RULE, code.lower(), action, code.lower())


def system(code: str, action: Action) -> Reason:
    return Reason(code, ReasonSource.SYSTEM, code.lower(), action)


def test_nothing_fired_allows_with_no_reason() -> None:
    assert decide([]) == (Action.ALLOW, ())


def test_deny_beats_an_allow_rule_and_reviews() -> None:
    review, allow, deny = rule("R", Action.REVIEW), rule("A", Action.ALLOW), rule("D", Action.DENY)
    decision, ordered = decide([review, allow, deny])
    assert decision is Action.DENY
    assert ordered == (deny, review, allow)  # the winners first, then the others in rule order


def test_an_allow_rule_spares_a_review_but_a_system_allow_only_informs() -> None:
    review = rule("R", Action.REVIEW)
    assert decide([review, rule("A", Action.ALLOW)])[0] is Action.ALLOW
    assert decide([review, system("WINDOWS_UNAVAILABLE", Action.ALLOW)])[0] is Action.REVIEW


def test_each_threshold_is_the_rule_sets_when_it_sets_it_else_the_models() -> None:
    got = thresholds((None, 0.8), (0.2, 0.7))
    assert got.review_at == Threshold(0.2, "model") and got.deny_at == Threshold(0.8, "rule set")
    assert thresholds((None, None)) == NO_THRESHOLDS


def test_a_score_adds_the_reason_of_the_highest_threshold_it_reaches() -> None:
    applicable = thresholds((0.5, 0.9))
    [deny] = model_reasons(applicable, 0.93)
    assert deny.code == "MODEL_SCORE_HIGH" and deny.action is Action.DENY
    assert deny.message == "model score 0.930 >= deny threshold 0.9 (rule set)"
    [review] = model_reasons(applicable, 0.5)
    assert review.code == "MODEL_SCORE_ELEVATED" and review.action is Action.REVIEW
    assert model_reasons(applicable, 0.49) == []
    assert model_reasons(applicable, math.nan) == []  # no score, no reason
    assert model_reasons(NO_THRESHOLDS, 0.99) == []
