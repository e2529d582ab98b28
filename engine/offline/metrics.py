"""The backtest's metrics: decision rates, per-rule and engine hits against labels, and the compare of two runs.

Definitions are in `engine.offline.backtest`'s docstring and in `DEFINITIONS`
(repeated in the reports).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import numpy as np

from engine.iso import CURRENCY_EXPONENTS
from engine.offline.replay import ReplayStats
from engine.offline.runs import DECISIONS, Run
from engine.rules.ruleset import RuleSet
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


#: The hit sets of a run whose metrics the summary gives, besides each rule's (`Tally.hits`).
ENGINE_HITS = ("flagged", "deny")


@dataclass
class Tally:
    """The counts every metric of a run is computed from, mergeable across parts of the run.

    `summarize` tallies a whole run; the Spark engine tallies each part on
    its executors and merges them (`merge`): integer counts and sums in
    minor units, so the merged summary is the very one of the whole run.
    Per hit set (`ENGINE_HITS`, then `active:<rule id>` and `shadow:<rule id>`):
    [hits, fraud hits, genuine hits, fraud amount (minor units)]. Per UTC day
    number: [allow, review, deny, frauds].
    """

    rows: int = 0
    scored: int = 0
    frauds: int = 0
    genuines: int = 0
    amount_minor: int = 0
    fraud_amount_minor: int = 0
    degraded: int = 0
    decisions: list[int] = field(default_factory=lambda: [0, 0, 0])
    hits: dict[str, list[int]] = field(default_factory=dict)
    days: dict[int, list[int]] = field(default_factory=dict)
    first_ms: int | None = None  # event time of the first and last scored rows
    last_ms: int | None = None

    def merge(self, other: Tally) -> Tally:
        """This tally plus `other` (both left unchanged)."""
        out = Tally(
            rows=self.rows + other.rows,
            scored=self.scored + other.scored,
            frauds=self.frauds + other.frauds,
            genuines=self.genuines + other.genuines,
            amount_minor=self.amount_minor + other.amount_minor,
            fraud_amount_minor=self.fraud_amount_minor + other.fraud_amount_minor,
            degraded=self.degraded + other.degraded,
            decisions=[a + b for a, b in zip(self.decisions, other.decisions, strict=True)],
            first_ms=min((t for t in (self.first_ms, other.first_ms) if t is not None), default=None),
            last_ms=max((t for t in (self.last_ms, other.last_ms) if t is not None), default=None),
        )
        out.hits = _add_counts(self.hits, other.hits)
        out.days = _add_counts(self.days, other.days)
        return out

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "days": {str(k): v for k, v in self.days.items()}}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Tally:
        return cls(**{**data, "days": {int(k): list(v) for k, v in data["days"].items()}})


_K = TypeVar("_K")


def _add_counts(a: Mapping[_K, list[int]], b: Mapping[_K, list[int]]) -> dict[_K, list[int]]:
    """Counts per key of two tallies added up."""
    out = {key: list(counts) for key, counts in a.items()}
    for key, counts in b.items():
        mine = out.get(key)
        out[key] = [x + y for x, y in zip(mine, counts, strict=True)] if mine else list(counts)
    return out


def _hit_counts(
    valid: np.ndarray, fraud: np.ndarray, genuine: np.ndarray, amount: np.ndarray, hit: np.ndarray
) -> list[int]:
    hit = hit & valid
    return [int(hit.sum()), int((hit & fraud).sum()), int((hit & genuine).sum()), int(amount[hit & fraud].sum())]


def tally(run: Run, labels: np.ndarray | None, event_ms: np.ndarray) -> Tally:
    """The counts of one run (or part of a run: see `Tally`)."""
    valid = run.valid
    if labels is None:
        labels = np.full(len(valid), np.nan)
    labeled = valid & ~np.isnan(labels)
    fraud = labeled & (np.nan_to_num(labels) > 0.5)
    genuine = labeled & ~fraud
    amount = np.where(valid, run.amount_minor, 0)
    out = Tally(
        rows=len(valid),
        scored=int(valid.sum()),
        frauds=int(fraud.sum()),
        genuines=int(genuine.sum()),
        amount_minor=int(amount.sum()),
        fraud_amount_minor=int(amount[fraud].sum()),
        degraded=int(run.degraded[valid].sum()),
        decisions=[int((run.decision == k).sum()) for k in range(1, len(DECISIONS) + 1)],
    )
    engine = {"flagged": run.decision >= int(Action.REVIEW), "deny": run.decision == int(Action.DENY)}
    for name in ENGINE_HITS:
        out.hits[name] = _hit_counts(valid, fraud, genuine, amount, engine[name])
    for k, rule in enumerate(run.ruleset.rules):
        out.hits[f"active:{rule.id}"] = _hit_counts(valid, fraud, genuine, amount, run.active_hits[:, k])
        out.hits[f"shadow:{rule.id}"] = _hit_counts(valid, fraud, genuine, amount, run.shadow_hits[:, k])
    if out.scored:
        days = event_ms[valid] // DAY_MS
        first = int(days.min())
        idx = days - first
        width = int(idx.max()) + 1
        dec = run.decision[valid]
        per = [np.bincount(idx[dec == k], minlength=width) for k in range(1, 4)]
        frauds = np.bincount(idx[fraud[valid]], minlength=width)
        present = np.bincount(idx, minlength=width) > 0
        for d in np.flatnonzero(present).tolist():
            out.days[first + d] = [int(per[0][d]), int(per[1][d]), int(per[2][d]), int(frauds[d])]
        out.first_ms = int(event_ms[valid].min())
        out.last_ms = int(event_ms[valid].max())
    return out


def hit_metrics(t: Tally, counts: Sequence[int], scale: float) -> dict[str, Any]:
    """Hits, hit rate, precision, recall, amount-weighted recall and FPR of one hit set (its `Tally.hits`)."""
    hits, fraud_hits, genuine_hits, fraud_amount_minor = counts
    return {
        "hits": hits,
        "hit_rate": _ratio(hits, t.scored),
        "labeled_hits": fraud_hits + genuine_hits,
        "fraud_hits": fraud_hits,
        "genuine_hits": genuine_hits,
        "fraud_amount": fraud_amount_minor * scale,
        "precision": _ratio(fraud_hits, fraud_hits + genuine_hits),
        "recall": _ratio(fraud_hits, t.frauds),
        "amount_recall": _ratio(fraud_amount_minor, t.fraud_amount_minor),
        "fpr": _ratio(genuine_hits, t.genuines),
    }


def _day(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).date().isoformat()


def summarize(run: Run, labels: np.ndarray | None, event_ms: np.ndarray) -> dict[str, Any]:
    """The metrics of one run (see the module docstring for the definitions)."""
    return summary_of(tally(run, labels, event_ms), run.ruleset, run.stats)


def summary_of(t: Tally, ruleset: RuleSet, stats: ReplayStats) -> dict[str, Any]:
    """The metrics of a run from its counts (`tally`, merged over its parts) and its replay's rejections."""
    scale = 10.0 ** -CURRENCY_EXPONENTS[ruleset.enricher.money.base]
    labeled = t.frauds + t.genuines
    decisions = {
        name: {"count": count, "rate": _ratio(count, t.scored)}
        for name, count in zip(DECISIONS, t.decisions, strict=True)
    }
    engine = {name: hit_metrics(t, t.hits[name], scale) for name in ENGINE_HITS}
    rules = [
        {
            "id": rule.id,
            "reason_code": rule.reason_code,
            "action": rule.action.name.lower(),
            "mode": rule.mode,
            "rollout": float(rule.rollout),
            "active": hit_metrics(t, t.hits[f"active:{rule.id}"], scale),
            "shadow": hit_metrics(t, t.hits[f"shadow:{rule.id}"], scale),
        }
        for rule in ruleset.rules
    ]
    daily = [
        {"day": _day(day * DAY_MS), "allow": per[0], "review": per[1], "deny": per[2], "frauds": per[3]}
        for day, per in sorted(t.days.items())
    ]
    return {
        "ruleset": {"version": ruleset.version, "digest": ruleset.digest},
        "population": {
            "rows": t.rows,
            "scored": t.scored,
            "rejected": stats.rejected,
            "first_errors": list(stats.first_errors or []),
            "labeled": labeled,
            "unlabeled": t.scored - labeled,
            "frauds": t.frauds,
            "genuine": t.genuines,
            "fraud_rate": _ratio(t.frauds, labeled),
            "amount": t.amount_minor * scale,
            "fraud_amount": t.fraud_amount_minor * scale,
            "base_currency": ruleset.enricher.money.base,
            "degraded": t.degraded,
            "from": _day(t.first_ms) if t.first_ms is not None else None,
            "to": _day(t.last_ms) if t.last_ms is not None else None,
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
        va, vb = (ra["shadow"]["precision"] if ra else None), (rb["shadow"]["precision"] if rb else None)
        row["shadow_precision"] = {"a": va, "b": vb, "delta": _delta(va, vb)}
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
