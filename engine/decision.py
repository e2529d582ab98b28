"""The decision policy: the score thresholds that apply, the reasons they add, and which action wins.

Plain values in, plain values out: the pipeline, the rule tests and the
challenger's would-be decision all decide through this module, which knows
nothing of rule sets, models or stores.

Thresholds (`thresholds`): a threshold the rule set's `model:` section sets
(an analyst's explicit override) wins; otherwise the model's own (chosen at
training); otherwise none. `model_reasons` turns a score into the reason its
thresholds add (none for NaN or a low score).

Precedence (`decide`), strongest first:

1. `deny`   — any rule, the model's `deny_at` threshold or the degraded
              policy asking to deny denies. Nothing overrides a deny.
2. `allow`  — an allow *rule* that fires overrides reviews (an allowlist
              spares known-good traffic from manual review, never a deny).
              System reasons with action allow (e.g. "windows unavailable,
              amount below the fallback bound") only inform.
3. `review` — any rule, the model's `review_at` threshold or the degraded
              policy asking for review.
4. default  — allow, with no reason.

Reasons list the sources of the winning action first, in rule order, then
every other source that fired, so an analyst sees the whole picture.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from engine.transaction import Action, Reason, ReasonSource


@dataclass(frozen=True, slots=True)
class Threshold:
    """One score threshold and where it comes from: "rule set" or "model"."""

    value: float
    source: str


@dataclass(frozen=True, slots=True)
class Thresholds:
    """The score thresholds that apply (None: that threshold is not set anywhere)."""

    review_at: Threshold | None
    deny_at: Threshold | None


NO_THRESHOLDS = Thresholds(None, None)


def thresholds(
    rule_set: tuple[float | None, float | None], model: tuple[float | None, float | None] = (None, None)
) -> Thresholds:
    """The thresholds that apply: each (review_at, deny_at) the rule set's when it sets it, else the model's."""
    chosen: list[Threshold | None] = []
    for from_rules, from_model in zip(rule_set, model, strict=True):
        if from_rules is not None:
            chosen.append(Threshold(from_rules, "rule set"))
        elif from_model is not None:
            chosen.append(Threshold(from_model, "model"))
        else:
            chosen.append(None)
    return Thresholds(chosen[0], chosen[1])


def model_reasons(applicable: Thresholds, score: float) -> list[Reason]:
    """The reason the thresholds add for a score (none for NaN or a low score); the message says whose threshold."""
    if math.isnan(score):
        return []
    deny, review = applicable.deny_at, applicable.review_at
    if deny is not None and score >= deny.value:
        return [
            Reason(
                "MODEL_SCORE_HIGH",
                ReasonSource.MODEL,
                f"model score {score:.3f} >= deny threshold {deny.value} ({deny.source})",
                Action.DENY,
            )
        ]
    if review is not None and score >= review.value:
        return [
            Reason(
                "MODEL_SCORE_ELEVATED",
                ReasonSource.MODEL,
                f"model score {score:.3f} >= review threshold {review.value} ({review.source})",
                Action.REVIEW,
            )
        ]
    return []


def decide(reasons: Sequence[Reason]) -> tuple[Action, tuple[Reason, ...]]:
    """Combine the reasons that fired into the decision and the ordered reasons."""
    if not reasons:
        return Action.ALLOW, ()  # most transactions: nothing fired
    actions = {r.action for r in reasons}
    if Action.DENY in actions:
        decision = Action.DENY
    elif any(r.action is Action.ALLOW and r.source is ReasonSource.RULE for r in reasons):
        decision = Action.ALLOW
    elif Action.REVIEW in actions:
        decision = Action.REVIEW
    else:
        decision = Action.ALLOW
    winners = tuple(r for r in reasons if r.action is decision)
    others = tuple(r for r in reasons if r.action is not decision)
    return decision, winners + others
