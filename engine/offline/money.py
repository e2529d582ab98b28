"""The backtest's money view, and the model thresholds that earn most under a review budget.

Costs come from the rule set's `costs:` section (`engine.rules.ruleset.Costs`)
or the command line. With them, for a run's decisions over labeled rows:

- fraud loss avoided = chargeback factor x the amount of frauds flagged
  (review or deny: a reviewed fraud is assumed stopped by the reviewer);
- missed fraud loss = chargeback factor x the amount of frauds allowed;
- false-decline cost = false-decline margin x the amount of genuine
  payments denied (a reviewed genuine payment is assumed approved: it costs
  its review only);
- review cost = review cost x the number of reviews (labeled or not);
- reviews per day = reviews / days of the period (UTC days with a scored row);
- net value = fraud loss avoided - false-decline cost - review cost.

`sweep` tries pairs of the model's review and deny thresholds on the
backtest's own rows. Every decision comes from the scoring pipeline's
policy: the rules that fired in the replay (their actions) and the model's
reason for a threshold are combined by `engine.decision.decide` itself, once
per combination (`decision_table`); at the thresholds the replay used, the
sweep reproduces the replay's decisions (`reproduces`, checked). It
recommends the pair with the highest net value whose reviews a day fit the
review capacity and whose decline rate fits the cap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.decision import decide
from engine.rules.ruleset import Costs
from engine.transaction import Action, Reason, ReasonSource

DAY_MS = 86_400_000


def _r(value: float, digits: int = 2) -> float:
    return round(float(value), digits)


def money_view(
    decision: np.ndarray,
    fraud: np.ndarray,
    genuine: np.ndarray,
    amount: np.ndarray,
    valid: np.ndarray,
    days: int,
    costs: Costs,
) -> dict[str, Any]:
    """The money view of one run's decisions (see the module docstring); `amount` in major units."""
    review = valid & (decision == int(Action.REVIEW))
    deny = valid & (decision == int(Action.DENY))
    flagged = review | deny
    avoided = costs.chargeback_factor * float(amount[fraud & flagged].sum())
    missed = costs.chargeback_factor * float(amount[fraud & ~flagged & valid].sum())
    false_decline = costs.false_decline_margin * float(amount[genuine & deny].sum())
    reviews = int(review.sum())
    review_cost = costs.review * reviews
    scored = int(valid.sum())
    return {
        "fraud_loss_avoided": _r(avoided),
        "missed_fraud_loss": _r(missed),
        "false_decline_cost": _r(false_decline),
        "review_cost": _r(review_cost),
        "reviews": reviews,
        "reviews_per_day": _r(reviews / days if days else 0.0, 1),
        "declines": int(deny.sum()),
        "decline_rate": round(float(deny.sum()) / scored, 6) if scored else None,
        "net_value": _r(avoided - false_decline - review_cost),
    }


def money_delta(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """B - A of each number of two money views."""
    out: dict[str, Any] = {}
    for key, va in a.items():
        vb = b.get(key)
        out[key] = None if va is None or vb is None else round(vb - va, 6)
    return out


def costs_json(costs: Costs, source: str) -> dict[str, Any]:
    return {
        "review": costs.review,
        "chargeback_factor": costs.chargeback_factor,
        "false_decline_margin": costs.false_decline_margin,
        "review_capacity": costs.review_capacity,
        "max_decline_rate": costs.max_decline_rate,
        "source": source,
    }


# --------------------------------------------------------------------------- the decision policy, tabulated

#: Rule signature bits: which actions the rules that acted on a row asked for.
SIG_DENY, SIG_ALLOW, SIG_REVIEW = 1, 2, 4
#: The model's part: no reason, the review threshold's reason, the deny threshold's.
MODEL_NONE, MODEL_REVIEW, MODEL_DENY = 0, 1, 2


def decision_table() -> np.ndarray:
    """decision[signature, model part] as `engine.decision.decide` gives it (int8 Action values)."""
    table = np.zeros((8, 3), dtype=np.int8)
    for sig in range(8):
        rules = [
            Reason(f"R{action.name}", ReasonSource.RULE, "", action, rule_id=f"r{action.name}")
            for bit, action in ((SIG_DENY, Action.DENY), (SIG_ALLOW, Action.ALLOW), (SIG_REVIEW, Action.REVIEW))
            if sig & bit
        ]
        for part, action in ((MODEL_NONE, None), (MODEL_REVIEW, Action.REVIEW), (MODEL_DENY, Action.DENY)):
            model = [Reason("M", ReasonSource.MODEL, "", action)] if action is not None else []
            table[sig, part] = int(decide([*rules, *model])[0])
    return table


def rule_signatures(active_hits: np.ndarray, actions: Sequence[Action]) -> np.ndarray:
    """Per row, the signature of the rules that acted on it (bits SIG_*)."""
    sig = np.zeros(active_hits.shape[0], dtype=np.int8)
    for k, action in enumerate(actions):
        bit = {Action.DENY: SIG_DENY, Action.ALLOW: SIG_ALLOW, Action.REVIEW: SIG_REVIEW}[action]
        sig |= np.where(active_hits[:, k], bit, 0).astype(np.int8)
    return sig


def model_part(score: np.ndarray, review_at: float | None, deny_at: float | None) -> np.ndarray:
    """The model's part of each row's decision at these thresholds (NaN score: none, as in the pipeline)."""
    part = np.zeros(len(score), dtype=np.int8)
    with np.errstate(invalid="ignore"):
        if review_at is not None:
            part[score >= review_at] = MODEL_REVIEW
        if deny_at is not None:
            part[score >= deny_at] = MODEL_DENY
    return part


# --------------------------------------------------------------------------- the sweep


@dataclass(frozen=True)
class SweepInput:
    """What the sweep needs of a run, aligned by row (scored rows only)."""

    score: np.ndarray  # float64, NaN where the model gave none
    signature: np.ndarray  # int8 rule signatures (`rule_signatures`)
    fraud: np.ndarray  # bool
    genuine: np.ndarray  # bool
    amount: np.ndarray  # float64, major units of the base currency
    day: np.ndarray  # int64 UTC day number of each row


def _candidates(score: np.ndarray, current: Sequence[float | None], steps: int) -> list[float]:
    """Thresholds to try: the scores at flag rates from 0.01 % to 20 % (log-spaced), and the current ones."""
    s = score[~np.isnan(score)]
    if len(s) == 0:
        return []
    rates = np.geomspace(1e-4, 0.2, steps)
    values = {float(np.quantile(s, 1.0 - rate, method="higher")) for rate in rates}
    values |= {float(v) for v in current if v is not None}
    return sorted(values)


def sweep(
    data: SweepInput,
    costs: Costs,
    current: tuple[float | None, float | None],
    *,
    review_capacity: float | None = None,
    max_decline_rate: float | None = None,
    thresholds: Sequence[float] | None = None,
    steps: int = 40,
) -> dict[str, Any]:
    """Net value, reviews a day and decline rate of each (review_at, deny_at) pair, and the best that fits.

    `thresholds`: the values to try (default: `_candidates`); a pair has
    review_at <= deny_at, and deny_at may also be off (None). The values of
    all pairs come from prefix sums over rows sorted by score, so the sweep
    costs one sort.
    """
    n = len(data.score)
    days = len(np.unique(data.day)) if n else 0
    table = decision_table()
    # Per row and model part: the decision, and what it is worth.
    decisions = table[data.signature.astype(np.int64)]  # (n, 3)
    is_review = decisions == int(Action.REVIEW)
    is_deny = decisions == int(Action.DENY)
    flagged = is_review | is_deny
    value = (
        costs.chargeback_factor * np.where(data.fraud[:, None] & flagged, data.amount[:, None], 0.0)
        - costs.false_decline_margin * np.where(data.genuine[:, None] & is_deny, data.amount[:, None], 0.0)
        - costs.review * is_review
    )
    frauds_caught = (data.fraud[:, None] & flagged).astype(np.float64)
    quantities = {
        "net_value": value,
        "reviews": is_review.astype(np.float64),
        "declines": is_deny.astype(np.float64),
        "frauds_flagged": frauds_caught,
    }
    score = np.where(np.isnan(data.score), -np.inf, data.score)
    order = np.argsort(-score, kind="stable")
    desc = score[order]
    prefix = {name: np.concatenate([np.zeros((1, 3)), np.cumsum(q[order], axis=0)]) for name, q in quantities.items()}
    total_frauds = int(data.fraud.sum())

    def above(t: float | None) -> int:
        """Rows with a score at or above t (none when t is None)."""
        if t is None:
            return 0
        return int(np.searchsorted(-desc, -t, side="right"))

    def evaluate(review_at: float | None, deny_at: float | None) -> dict[str, Any]:
        kr = above(review_at) if review_at is not None else above(deny_at)
        kd = above(deny_at)
        got: dict[str, float] = {}
        for name, p in prefix.items():
            got[name] = float(p[kd, 2] + (p[kr, 1] - p[kd, 1]) + (p[n, 0] - p[kr, 0]))
        return {
            "review_at": review_at,
            "deny_at": deny_at,
            "net_value": _r(got["net_value"]),
            "reviews": round(got["reviews"]),
            "reviews_per_day": _r(got["reviews"] / days if days else 0.0, 1),
            "declines": round(got["declines"]),
            "decline_rate": round(got["declines"] / n, 6) if n else None,
            "recall": round(got["frauds_flagged"] / total_frauds, 4) if total_frauds else None,
        }

    def fits(row: dict[str, Any]) -> bool:
        if review_capacity is not None and row["reviews_per_day"] > review_capacity:
            return False
        return max_decline_rate is None or (row["decline_rate"] or 0.0) <= max_decline_rate

    values = list(thresholds) if thresholds is not None else _candidates(data.score, current, steps)
    grid = []
    for i, r in enumerate(values):
        for d in [*values[i:], None]:
            row = evaluate(r, d)
            row["fits"] = fits(row)
            grid.append(row)
    feasible = [row for row in grid if row["fits"]]
    best = max(feasible, key=lambda row: (row["net_value"], -row["reviews"])) if feasible else None
    now = evaluate(*current) if current != (None, None) else evaluate(None, None)
    now["fits"] = fits(now)
    out: dict[str, Any] = {
        "review_capacity": review_capacity,
        "max_decline_rate": max_decline_rate,
        "days": days,
        "pairs_tried": len(grid),
        "current": now,
        "recommended": best,
        "curve": [],
        "queue": None,
    }
    if best is not None:
        # The curve: the recommended deny threshold, every review threshold below it.
        out["curve"] = [row for row in grid if row["deny_at"] == best["deny_at"]]
        part = model_part(data.score, best["review_at"], best["deny_at"])
        per_day = np.bincount(
            (data.day - data.day.min())[decisions[np.arange(n), part] == int(Action.REVIEW)],
            minlength=int(data.day.max() - data.day.min()) + 1,
        )
        present = np.bincount(data.day - data.day.min()) > 0
        per_day = per_day[present]
        out["queue"] = {
            "mean_per_day": _r(per_day.mean(), 1) if len(per_day) else 0.0,
            "p95_per_day": _r(np.percentile(per_day, 95), 1) if len(per_day) else 0.0,
            "max_per_day": int(per_day.max()) if len(per_day) else 0,
        }
    return out


def reproduces(data: SweepInput, replayed: np.ndarray, current: tuple[float | None, float | None]) -> int:
    """How many rows the tabulated policy decides as the replay did, at the replay's thresholds."""
    part = model_part(data.score, *current)
    got = decision_table()[data.signature.astype(np.int64), part]
    return int((got == replayed).sum())
