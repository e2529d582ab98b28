"""The decision: which action wins when several rules (and the model) ask for different ones.

Precedence, strongest first:

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

from collections.abc import Sequence

from engine.transaction import Action, Reason, ReasonSource


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
