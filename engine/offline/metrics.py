"""Backtest: replay labeled history through the serving pipeline and measure the decisions.

`risk-engine backtest` reads a Parquet or CSV file (through a column mapping),
replays it in event-time order through `engine.offline.replay` (the same
pipeline as the server, with the in-process window store), and writes into
the output folder:

- `transactions.parquet`: one row per scored transaction: `transaction_id`,
  `event_time` (UTC), `label` (null when unlabeled), `amount` (base currency,
  major units), `decision` (allow/review/deny), `score` (NaN without a model),
  `degraded`, `reason_codes` (in decision order), `rule_ids` (active rules
  that fired), `shadow_rule_ids` (shadow rules that fired), and one column
  `f_<name>` per numeric feature of the response;
- `summary.json`, `summary.md`, `report.html` (see `engine.offline.report`);
- with a second rule set (`--compare`), `changes.parquet`: the transactions
  whose decision differs, with `label`, `amount`, `decision_a`, `decision_b`,
  `reasons_a`, `reasons_b`.

Metric definitions (`DEFINITIONS` below, repeated in the reports):

- Rows rejected by validation are not scored and appear in no metric (they
  are counted, with the first errors). Every other metric is over scored rows.
- A row is *labeled* when its label is not null/NaN; a label > 0.5 is fraud,
  otherwise genuine. Unlabeled rows count in decision rates, hits and hit
  rates, and nowhere else (their number is reported).
- Decision rates: the share of scored rows whose final decision is allow,
  review, deny (all scored rows, labeled or not).
- For a set of rows H that something "hit" (a rule fired, or the engine
  flagged):
  hits = |H|; hit rate = hits / scored rows;
  precision = frauds in H / labeled rows in H;
  recall = frauds in H / all frauds;
  amount-weighted recall = fraud amount in H / all fraud amount;
  false-positive rate = genuine rows in H / all genuine rows.
  A ratio with a zero denominator is null (undefined), not 0.
- Per rule, separately for active hits (the rule's reason is in the response)
  and shadow hits (the rule fired in shadow mode or in the shadow part of a
  rollout: recorded, not acted on).
- The engine: *flagged* = the decision is review or deny; *deny* = deny alone.
  Amount-weighted fraud caught = the fraud amount among flagged (and among
  denied) rows, as an amount and as a share of all fraud amount.
- Amounts are the base-currency amount the rules see (`amount`), summed in
  minor units, so sums are exact.
- Decision mix over time: per UTC day of the event time, the number of allow,
  review and deny decisions (and of labeled frauds).
- Compare: the same data and model replayed with the second rule set; a
  change is a transaction whose final decision differs; each metric's delta
  is B - A.
"""

from __future__ import annotations

import json
import math
import operator
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import pyarrow as pa
import pyarrow.csv
import pyarrow.parquet as pq

from engine.iso import CURRENCY_EXPONENTS
from engine.model.predictor import Model
from engine.offline.datasets import load_dataset, mapping_candidates
from engine.offline.replay import LabelEvent, ReplayStats, label_events, replay
from engine.rules.ruleset import RuleSet
from engine.transaction import Action, ReasonSource, Transaction

DAY_MS = 86_400_000
DECISIONS = ("allow", "review", "deny")  # index d-1 for Action value d

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


# --------------------------------------------------------------------------- replay into columns


@dataclass
class Run:
    """One replay as column arrays, aligned with the dataset's rows (sorted by event time)."""

    ruleset: RuleSet
    valid: np.ndarray  # bool: scored (False: rejected by validation)
    decision: np.ndarray  # int8 Action value, 0 when not scored
    score: np.ndarray  # float64
    degraded: np.ndarray  # bool
    amount_minor: np.ndarray  # int64, base currency minor units
    reason_offsets: np.ndarray  # int64, n + 1
    reason_codes: list[str]  # flat, in decision order
    rule_ids: list[str]  # rule order of the hit matrices
    active_hits: np.ndarray  # bool (n, rules)
    shadow_hits: np.ndarray  # bool (n, rules)
    feature_names: tuple[str, ...]
    features: np.ndarray  # float64 (n, features)
    stats: ReplayStats

    @property
    def base_currency(self) -> str:
        return self.ruleset.enricher.money.base

    def reasons_array(self) -> pa.ListArray:
        return pa.ListArray.from_arrays(
            pa.array(self.reason_offsets.astype(np.int32)), pa.array(self.reason_codes, pa.string())
        )


def run_replay(
    transactions: list[Transaction],
    ruleset: RuleSet,
    model: Model | None,
    progress: Callable[[int, int], None] | None = None,
    labels: Sequence[LabelEvent] = (),
) -> Run:
    """Replay (with its label feedback) and collect decisions, scores, reasons, rule hits and features."""
    n = len(transactions)
    rule_ids = [r.id for r in ruleset.rules]
    col_of = {rid: k for k, rid in enumerate(rule_ids)}
    from engine.pipeline import make_snapshot

    feature_names = make_snapshot(ruleset, model).feature_names
    valid = np.zeros(n, dtype=bool)
    decision = np.zeros(n, dtype=np.int8)
    score = np.full(n, np.nan)
    degraded = np.zeros(n, dtype=bool)
    amount_minor = np.zeros(n, dtype=np.int64)
    counts = np.zeros(n, dtype=np.int64)
    codes: list[str] = []
    active_hits = np.zeros((n, len(rule_ids)), dtype=bool)
    shadow_hits = np.zeros((n, len(rule_ids)), dtype=bool)
    features = np.full((n, len(feature_names)), np.nan)
    rule_source = ReasonSource.RULE
    stats = ReplayStats()
    tick = 0
    # Per-transaction values are gathered in plain lists and written into the
    # arrays a chunk at a time (one numpy call per column instead of one per value).
    rows: list[int] = []
    row_decision: list[int] = []
    row_score: list[float] = []
    row_degraded: list[bool] = []
    row_amount: list[int] = []
    row_features: list[tuple[float, ...]] = []
    features_of = operator.itemgetter(*feature_names) if len(feature_names) > 1 else None
    no_features = (math.nan,) * len(feature_names)

    def flush() -> None:
        if rows:
            valid[rows] = True
            decision[rows] = row_decision
            score[rows] = row_score
            degraded[rows] = row_degraded
            amount_minor[rows] = row_amount
            if row_features:
                features[rows] = row_features
            for column in (rows, row_decision, row_score, row_degraded, row_amount, row_features):
                column.clear()

    for i, scored in replay(transactions, ruleset, model, stats, labels=labels):
        if progress is not None and i >= tick:
            progress(i, n)
            tick = i + 2_000
        result = scored.result
        rows.append(i)
        row_decision.append(result.decision)
        row_score.append(result.score)
        row_degraded.append(result.degraded)
        row_amount.append(scored.fields["amount_base_minor"])
        reasons = result.reasons
        if reasons:
            counts[i] = len(reasons)
            for r in reasons:
                codes.append(r.code)
                if r.source is rule_source and r.rule_id:
                    active_hits[i, col_of[r.rule_id]] = True
        shadow = result.shadow
        if shadow:
            for r in shadow:
                shadow_hits[i, col_of[r.rule_id]] = True
        feats = result.features
        if features_of is not None:
            row_features.append(features_of(feats) if feats else no_features)
        elif feats:
            features[i] = [feats[name] for name in feature_names]
        if len(rows) >= 4096:
            flush()
    flush()
    if progress is not None:
        progress(n, n)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return Run(
        ruleset=ruleset,
        valid=valid,
        decision=decision,
        score=score,
        degraded=degraded,
        amount_minor=amount_minor,
        reason_offsets=offsets,
        reason_codes=codes,
        rule_ids=rule_ids,
        active_hits=active_hits,
        shadow_hits=shadow_hits,
        feature_names=feature_names,
        features=features,
        stats=stats,
    )


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


# --------------------------------------------------------------------------- tables


def _labels_array(labels: np.ndarray | None, n: int) -> pa.Array:
    values = labels if labels is not None else np.full(n, np.nan)
    return pa.array(values, pa.float64(), mask=np.isnan(values))


def _strings_of(index: np.ndarray, run: Run, which: str) -> pa.ListArray:
    """Per-row rule ids of a hit matrix as a list column (rows in `index`)."""
    hits = (run.active_hits if which == "active" else run.shadow_hits)[index]
    rows, cols = np.nonzero(hits)
    offsets = np.zeros(len(index) + 1, dtype=np.int32)
    np.cumsum(np.bincount(rows, minlength=len(index)), out=offsets[1:])
    ids = np.array(run.rule_ids, dtype=object)[cols] if len(cols) else np.array([], dtype=object)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(ids, pa.string()))


def _decision_names(decision: np.ndarray) -> pa.Array:
    names = pa.array(["", *DECISIONS])
    return pa.DictionaryArray.from_arrays(pa.array(decision.astype(np.int32)), names).cast(pa.string())


def transactions_table(
    run: Run, transactions: list[Transaction], labels: np.ndarray | None, event_ms: np.ndarray
) -> pa.Table:
    """The per-transaction table of the scored rows, in event-time order."""
    index = np.flatnonzero(run.valid)
    ids = pa.array([transactions[i].transaction_id for i in index.tolist()], pa.string())
    reasons = run.reasons_array().take(pa.array(index))
    scale = 10.0 ** -CURRENCY_EXPONENTS[run.base_currency]
    columns: dict[str, pa.Array] = {
        "transaction_id": ids,
        "event_time": pa.array(event_ms[index], pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
        "label": _labels_array(labels, len(run.valid)).take(pa.array(index)),
        "amount": pa.array(run.amount_minor[index] * scale),
        "decision": _decision_names(run.decision[index]),
        "score": pa.array(run.score[index]),
        "degraded": pa.array(run.degraded[index]),
        "reason_codes": reasons,
        "rule_ids": _strings_of(index, run, "active"),
        "shadow_rule_ids": _strings_of(index, run, "shadow"),
    }
    for k, name in enumerate(run.feature_names):
        columns[f"f_{name}"] = pa.array(run.features[index, k])
    return pa.table(columns)


def changes_table(
    a: Run,
    b: Run,
    changed: np.ndarray,
    transactions: list[Transaction],
    labels: np.ndarray | None,
    event_ms: np.ndarray,
) -> pa.Table:
    index = np.flatnonzero(changed)
    take = pa.array(index)
    scale = 10.0 ** -CURRENCY_EXPONENTS[a.base_currency]
    return pa.table(
        {
            "transaction_id": pa.array([transactions[i].transaction_id for i in index.tolist()], pa.string()),
            "event_time": pa.array(event_ms[index], pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
            "label": _labels_array(labels, len(a.valid)).take(take),
            "amount": pa.array(a.amount_minor[index] * scale),
            "decision_a": _decision_names(a.decision[index]),
            "decision_b": _decision_names(b.decision[index]),
            "reasons_a": a.reasons_array().take(take),
            "reasons_b": b.reasons_array().take(take),
        }
    )


# --------------------------------------------------------------------------- progress


class Progress:
    """A one-line progress bar with rate and time left, on stderr.

    On a terminal it redraws one line (at most 4 times a second); otherwise
    it writes a line every 10 seconds, so logs stay short.
    """

    def __init__(self, label: str, stream: TextIO | None = None) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.started = time.perf_counter()
        self.tty = self.stream.isatty()
        self.every = 0.25 if self.tty else 10.0
        self.last = -math.inf
        self.finished = False

    def __call__(self, done: int, total: int) -> None:
        now = time.perf_counter()
        if self.finished or (done < total and now - self.last < self.every):
            return
        self.last = now
        elapsed = now - self.started
        rate = done / elapsed if elapsed > 0 else 0.0
        left = f"{(total - done) / rate:.0f} s left" if rate else ""
        width = 30
        filled = int(width * done / max(total, 1))
        line = f"  {self.label} [{'#' * filled}{'.' * (width - filled)}] {done:,}/{total:,}  {rate:,.0f}/s  " + (
            f"done in {elapsed:.1f} s" if done >= total else left
        )
        self.stream.write(("\r" + line + "\x1b[K") if self.tty else line + "\n")
        if done >= total:
            self.finished = True
            if self.tty:
                self.stream.write("\n")
        self.stream.flush()


# --------------------------------------------------------------------------- the command


@dataclass
class BacktestOutput:
    out: Path
    summary: dict[str, Any]
    files: list[Path]


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def backtest(
    data: str | Path,
    rules: str | Path,
    out: str | Path,
    *,
    model: str | Path | None = None,
    compare: str | Path | None = None,
    mapping: str | Path | None = None,
    limit: int | None = None,
    progress: bool = True,
) -> BacktestOutput:
    """Run a backtest and write its outputs into `out`; raises DatasetError on bad input (data, mapping, arguments).

    `mapping` None: the first of the rule set's `data_mapping` whose columns
    are in the file, else the native schema.
    RuleSetInvalid and ModelInvalid propagate (the CLI reports them).
    """
    from engine.model.predictor import load_model
    from engine.offline import report
    from engine.rules.loader import load_ruleset

    timing: dict[str, float] = {}
    started = time.perf_counter()
    ruleset = load_ruleset(rules)
    candidates = mapping_candidates(ruleset, mapping)
    ruleset_b = load_ruleset(compare) if compare is not None else None
    model_a = load_model(model, ruleset) if model is not None else None
    model_b = load_model(model, ruleset_b) if model is not None and ruleset_b is not None else None

    mapping, dataset = load_dataset(data, candidates, limit)
    transactions = dataset.transactions
    labels = dataset.labels
    event_ms = np.fromiter((t.event_time_ms for t in transactions), dtype=np.int64, count=len(transactions))
    timing["load_s"] = time.perf_counter() - started

    t0 = time.perf_counter()
    run_a = run_replay(
        transactions,
        ruleset,
        model_a,
        Progress("replay A" if compare else "replay") if progress else None,
        label_events(transactions, labels, dataset.label_times_ms, ruleset),
    )
    timing["replay_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    summary = summarize(run_a, labels, event_ms)
    # Replay counts a repeated id once in the windows (as a retry), but each row is scored and reported.
    summary["population"]["duplicate_ids"] = len(transactions) - len({t.transaction_id for t in transactions})
    timing["summary_s"] = time.perf_counter() - t0

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    files = [out / "transactions.parquet"]
    pq.write_table(transactions_table(run_a, transactions, labels, event_ms), files[0])
    timing["table_s"] = time.perf_counter() - t0

    if ruleset_b is not None:
        t0 = time.perf_counter()
        run_b = run_replay(
            transactions,
            ruleset_b,
            model_b,
            Progress("replay B") if progress else None,
            label_events(transactions, labels, dataset.label_times_ms, ruleset_b),
        )
        timing["replay_b_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        summary_b = summarize(run_b, labels, event_ms)
        changed, info = compare_runs(run_a, run_b, summary, summary_b)
        if labels is not None:
            info["changed_frauds"] = int((changed & (np.nan_to_num(labels) > 0.5) & ~np.isnan(labels)).sum())
        info["summary_b"] = {k: summary_b[k] for k in ("population", "decisions", "engine", "fraud_amount_caught")}
        info["summary_b"]["rules"] = summary_b["rules"]
        summary["compare"] = info
        files.append(out / "changes.parquet")
        pq.write_table(changes_table(run_a, run_b, changed, transactions, labels, event_ms), files[-1])
        timing["compare_s"] = time.perf_counter() - t0

    summary = {
        "inputs": {
            "data": str(data),
            "mapping": Path(mapping).name if str(mapping).endswith((".yaml", ".yml")) else str(mapping),
            "rules": str(rules),
            "compare_rules": str(compare) if compare is not None else None,
            "model": str(model) if model is not None else None,
            "model_version": model_a.version if model_a is not None else None,
        },
        **summary,
        "definitions": DEFINITIONS,
        "timing": {k: round(v, 3) for k, v in timing.items()},
        "replay_rate_per_s": round(run_a.stats.rate, 1),
    }
    summary = _json_safe(summary)
    files += report.write_reports(summary, out)
    return BacktestOutput(out, summary, files)


def read_summary(out: str | Path) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((Path(out) / "summary.json").read_text())
    return result
