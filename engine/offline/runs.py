"""One replay of a data set as column arrays (`Run`), and the per-transaction tables written from it.

`run_replay` replays transactions through `engine.offline.replay` (the
serving pipeline) and keeps, per row, whether it was scored, its decision,
score, reasons, the rules that fired (acting and shadow) and its features;
`transactions_table` and `changes_table` are the backtest's Parquet outputs.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.csv

from engine.iso import CURRENCY_EXPONENTS
from engine.model.predictor import Model
from engine.offline.replay import LabelEvent, ReplayStats, replay
from engine.rules.ruleset import RuleSet
from engine.transaction import ReasonSource, Transaction
from engine.windows.store import WindowStore

DECISIONS = ("allow", "review", "deny")  # index d-1 for Action value d


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
    store: WindowStore | None = None,
) -> Run:
    """Replay (with its label feedback) and collect decisions, scores, reasons, rule hits and features.

    `store`: windows computed elsewhere (see `replay`), for the Spark engine.
    """
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

    for i, scored in replay(transactions, ruleset, model, stats, labels=labels, store=store):
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
