"""The backtest's metrics: decision rates, per-rule and engine hits against labels, and the compare of two runs.

Definitions are in `engine.offline.backtest`'s docstring and in `DEFINITIONS`
(repeated in the reports).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from engine.iso import CURRENCY_EXPONENTS
from engine.offline.runs import DECISIONS, Run
from engine.transaction import Action

DAY_MS = 86_400_000

DEFINITIONS: dict[str, str] = {
    "scored": "rows replayed and scored; rows rejected by validation are excluded from every metric",
    "labeled": "rows whose label is not null/NaN; label > 0.5 is fraud, otherwise genuine",
    "decision rate": "share of scored rows (labeled or not) with that final decision",
    "hits": "rows hit (a rule fired / the engine flagged), labeled or not",
    "hit rate": "hits / scored rows",
    "precision": "frauds among hits / labeled hits",
    "recall": "frauds among hits / all frauds",
    "amount recall": "fraud amount among hits / all fraud amount (base currency)",
    "FPR": "false-positive rate: genuine rows among hits / all genuine rows",
    "flagged": "the engine's decision is review or deny",
    "fraud amount caught": "fraud amount (base currency) among flagged (or denied) rows",
    "shadow": "the rule fired in shadow mode (or the shadow part of a rollout): recorded, not acted on",
    "undefined": "a ratio whose denominator is 0 is null, shown as -",
}


# --------------------------------------------------------------------------- summary


def _ratio(num: int | float, den: int | float) -> float | None:
    return num / den if den else None


@dataclass(frozen=True)
class _Population:
    """The scored rows and their labels, shared by every metric of one run."""

    valid: np.ndarray
    fraud: np.ndarray  # bool, scored and labeled fraud
    genuine: np.ndarray  # bool, scored and labeled genuine
    amount_minor: np.ndarray
    scale: float  # minor -> major units of the base currency
    scored: int
    frauds: int
    genuines: int
    fraud_amount_minor: int


def _population(run: Run, labels: np.ndarray | None) -> _Population:
    valid = run.valid
    if labels is None:
        labels = np.full(len(valid), np.nan)
    labeled = valid & ~np.isnan(labels)
    fraud = labeled & (np.nan_to_num(labels) > 0.5)
    genuine = labeled & ~fraud
    amount = np.where(valid, run.amount_minor, 0)
    return _Population(
        valid=valid,
        fraud=fraud,
        genuine=genuine,
        amount_minor=amount,
        scale=10.0 ** -CURRENCY_EXPONENTS[run.base_currency],
        scored=int(valid.sum()),
        frauds=int(fraud.sum()),
        genuines=int(genuine.sum()),
        fraud_amount_minor=int(amount[fraud].sum()),
    )


def hit_metrics(pop: _Population, hit: np.ndarray) -> dict[str, Any]:
    """Hits, hit rate, precision, recall, amount-weighted recall and FPR of one hit set."""
    hit = hit & pop.valid
    hits = int(hit.sum())
    fraud_hits = int((hit & pop.fraud).sum())
    genuine_hits = int((hit & pop.genuine).sum())
    fraud_amount_minor = int(pop.amount_minor[hit & pop.fraud].sum())
    return {
        "hits": hits,
        "hit_rate": _ratio(hits, pop.scored),
        "labeled_hits": fraud_hits + genuine_hits,
        "fraud_hits": fraud_hits,
        "genuine_hits": genuine_hits,
        "fraud_amount": fraud_amount_minor * pop.scale,
        "precision": _ratio(fraud_hits, fraud_hits + genuine_hits),
        "recall": _ratio(fraud_hits, pop.frauds),
        "amount_recall": _ratio(fraud_amount_minor, pop.fraud_amount_minor),
        "fpr": _ratio(genuine_hits, pop.genuines),
    }


def _day(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).date().isoformat()


def summarize(run: Run, labels: np.ndarray | None, event_ms: np.ndarray) -> dict[str, Any]:
    """The metrics of one run (see the module docstring for the definitions)."""
    pop = _population(run, labels)
    valid = run.valid
    labeled = int(pop.frauds + pop.genuines)
    decisions = {}
    for k, name in enumerate(DECISIONS, start=1):
        count = int((run.decision == k).sum())
        decisions[name] = {"count": count, "rate": _ratio(count, pop.scored)}
    flagged = run.decision >= int(Action.REVIEW)
    denied = run.decision == int(Action.DENY)
    engine = {"flagged": hit_metrics(pop, flagged), "deny": hit_metrics(pop, denied)}

    rules = []
    for k, rule in enumerate(run.ruleset.rules):
        rules.append(
            {
                "id": rule.id,
                "reason_code": rule.reason_code,
                "action": rule.action.name.lower(),
                "mode": rule.mode,
                "rollout": float(rule.rollout),
                "active": hit_metrics(pop, run.active_hits[:, k]),
                "shadow": hit_metrics(pop, run.shadow_hits[:, k]),
            }
        )

    daily = []
    if pop.scored:
        days = event_ms[valid] // DAY_MS
        first = int(days.min())
        idx = days - first
        width = int(idx.max()) + 1
        dec = run.decision[valid]
        per = [np.bincount(idx[dec == k], minlength=width) for k in range(1, 4)]
        frauds = np.bincount(idx[pop.fraud[valid]], minlength=width)
        present = np.bincount(idx, minlength=width) > 0
        for d in np.flatnonzero(present).tolist():
            daily.append(
                {
                    "day": _day((first + d) * DAY_MS),
                    "allow": int(per[0][d]),
                    "review": int(per[1][d]),
                    "deny": int(per[2][d]),
                    "frauds": int(frauds[d]),
                }
            )
    stats = run.stats
    return {
        "ruleset": {"version": run.ruleset.version, "digest": run.ruleset.digest},
        "population": {
            "rows": len(valid),
            "scored": pop.scored,
            "rejected": stats.rejected,
            "first_errors": list(stats.first_errors or []),
            "labeled": labeled,
            "unlabeled": pop.scored - labeled,
            "frauds": pop.frauds,
            "genuine": pop.genuines,
            "fraud_rate": _ratio(pop.frauds, labeled),
            "amount": int(pop.amount_minor.sum()) * pop.scale,
            "fraud_amount": pop.fraud_amount_minor * pop.scale,
            "base_currency": run.base_currency,
            "degraded": int(run.degraded[valid].sum()),
            "from": _day(int(event_ms[valid].min())) if pop.scored else None,
            "to": _day(int(event_ms[valid].max())) if pop.scored else None,
        },
        "decisions": decisions,
        "engine": engine,
        "fraud_amount_caught": {
            "flagged": engine["flagged"]["fraud_amount"],
            "flagged_share": engine["flagged"]["amount_recall"],
            "deny": engine["deny"]["fraud_amount"],
            "deny_share": engine["deny"]["amount_recall"],
        },
        "rules": rules,
        "daily": daily,
    }


# --------------------------------------------------------------------------- compare


def _delta(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else b - a


def metric_rows(summary: Mapping[str, Any]) -> dict[str, float | None]:
    """The headline metrics of a summary, flat, for the A/B delta table."""
    out: dict[str, float | None] = {}
    for name in DECISIONS:
        out[f"{name} rate"] = summary["decisions"][name]["rate"]
    labels = {
        "hits": "hits",
        "precision": "precision",
        "recall": "recall",
        "amount_recall": "amount recall",
        "fpr": "FPR",
        "fraud_amount": "fraud amount caught",
    }
    for scope in ("flagged", "deny"):
        m = summary["engine"][scope]
        for key, label in labels.items():
            out[f"{scope} {label}"] = m[key]
    return out


def compare_runs(
    a: Run, b: Run, summary_a: Mapping[str, Any], summary_b: Mapping[str, Any]
) -> tuple[np.ndarray, dict[str, Any]]:
    """Rows whose decision changes (scored by both) and the metric deltas B - A."""
    both = a.valid & b.valid
    changed = both & (a.decision != b.decision)
    transitions: dict[str, int] = {}
    if changed.any():
        pair = a.decision[changed].astype(np.int64) * 4 + b.decision[changed]
        for code, count in zip(*np.unique(pair, return_counts=True), strict=True):
            transitions[f"{DECISIONS[int(code) // 4 - 1]} -> {DECISIONS[int(code) % 4 - 1]}"] = int(count)
    ma, mb = metric_rows(summary_a), metric_rows(summary_b)
    deltas = [{"metric": k, "a": ma[k], "b": mb[k], "delta": _delta(ma[k], mb[k])} for k in ma]
    rules_a = {r["id"]: r for r in summary_a["rules"]}
    rules_b = {r["id"]: r for r in summary_b["rules"]}
    rule_deltas = []
    for rid in list(rules_a) + [r for r in rules_b if r not in rules_a]:
        ra, rb = rules_a.get(rid), rules_b.get(rid)
        row: dict[str, Any] = {"id": rid, "in": "both" if ra and rb else ("a" if ra else "b")}
        for key in ("hits", "precision", "recall"):
            va = ra["active"][key] if ra else None
            vb = rb["active"][key] if rb else None
            row[key] = {"a": va, "b": vb, "delta": _delta(va, vb)}
        # shadow hits too: a candidate rule is usually compared while still in shadow
        va, vb = (ra["shadow"]["hits"] if ra else None), (rb["shadow"]["hits"] if rb else None)
        row["shadow_hits"] = {"a": va, "b": vb, "delta": _delta(va, vb)}
        rule_deltas.append(row)
    info = {
        "ruleset_b": summary_b["ruleset"],
        "changed": int(changed.sum()),
        "changed_frauds": None,  # filled by the caller, which has the labels
        "transitions": transitions,
        "metrics": deltas,
        "rules": rule_deltas,
        "only_scored_by_one": int((a.valid ^ b.valid).sum()),
    }
    return changed, info
