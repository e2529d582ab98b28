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

Metric definitions (`DEFINITIONS` in `engine.offline.metrics`, repeated in the reports):

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
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from engine.iso import CURRENCY_EXPONENTS
from engine.model.predictor import Model, applicable_thresholds
from engine.offline.caveats import in_sample, missing_inputs, present_inputs, warm_up
from engine.offline.datasets import ColumnMapping, DatasetError, load_dataset, mapping_candidates
from engine.offline.metrics import DAY_MS, DEFINITIONS, compare_runs, summarize
from engine.offline.money import (
    SweepInput,
    costs_json,
    money_delta,
    money_view,
    reproduces,
    rule_signatures,
    sweep,
)
from engine.offline.period import Period, select_period
from engine.offline.rejections import DEFAULT_MAX_REJECTED, Rejections, TooManyRejected, find_rejections
from engine.offline.replay import label_events
from engine.offline.rule_value import cause_counts, change_causes, rule_value
from engine.offline.runs import DECISIONS, Run, changes_table, run_replay, transactions_table
from engine.rules.ruleset import Costs, RuleSet
from engine.transaction import Transaction

if TYPE_CHECKING:
    from engine.offline.spark.jobs import SparkOptions

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


@dataclass(frozen=True)
class Options:
    """What the analysis adds beyond the replay: the period, costs, the review budget, a second model."""

    period: Period = field(default_factory=Period)
    #: Cost settings from the command line (keys of `Costs`), over the rule set's `costs:`.
    costs: dict[str, float] | None = None
    compare_model: str | Path | None = None


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
    spark: SparkOptions | None = None,
    options: Options | None = None,
    max_rejected: float = DEFAULT_MAX_REJECTED,
) -> BacktestOutput:
    """Run a backtest and write its outputs into `out`; raises DatasetError on bad input (data, mapping, arguments).

    `mapping` None: the first of the rule set's `data_mapping` whose columns
    are in the file, else the native schema.
    RuleSetInvalid and ModelInvalid propagate (the CLI reports them).
    `spark`: run on the Spark engine (`engine.offline.spark`, docs/spark.md),
    which reads `data` by URI and writes `transactions.parquet` as a folder
    of Parquet files, identical in content; no `compare` there, and none of
    the analysis of `options` (what each rule adds, warnings, money).
    `options`: the period, costs and a second model (`Options`).
    Rows rejected by validation are summarized by field and reason
    (`rejections` of the summary); when more than `max_rejected` of the rows
    are, the outputs are written and TooManyRejected (a DatasetError) raised.
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
    options = options or Options()
    if options.compare_model is not None and model_a is None:
        raise DatasetError("--compare-model needs a model to compare with (drop --no-model)")
    other_model = load_model(options.compare_model, ruleset) if options.compare_model is not None else None
    costs = _costs(ruleset.costs, options.costs)
    out = Path(out)

    if spark is not None:
        if compare is not None or options.compare_model is not None or options.period.bounded:
            raise DatasetError(
                "--compare, --compare-model, --since and --until run on the local engine only (drop --engine spark)"
            )
        from engine.offline.spark.commands import backtest_on_spark

        mapping, summary, rate = backtest_on_spark(data, rules, model, ruleset, model_a, candidates, out, limit, spark)
        files = [out / "transactions.parquet"]
    else:
        mapping, summary, rate, files = _backtest_locally(
            data,
            ruleset,
            model_a,
            ruleset_b,
            model_b,
            candidates,
            out,
            limit,
            progress,
            timing,
            started,
            options,
            costs,
            other_model,
        )
    timing = summary.pop("timing", timing)
    summary = {
        "inputs": {
            "data": str(data),
            "mapping": Path(mapping).name if str(mapping).endswith((".yaml", ".yml")) else str(mapping),
            "rules": str(rules),
            "compare_rules": str(compare) if compare is not None else None,
            "model": str(model) if model is not None else None,
            "model_version": model_a.version if model_a is not None else None,
            "compare_model": str(options.compare_model) if options.compare_model is not None else None,
            "since": options.period.since_ms,
            "until": options.period.until_ms,
        },
        **summary,
        "definitions": DEFINITIONS,
        "timing": {k: round(v, 3) for k, v in timing.items()},
        "replay_rate_per_s": round(rate, 1),
    }
    summary = _json_safe(summary)
    files += report.write_reports(summary, out)
    rejections = summary.get("rejections")
    if rejections is None:  # the Spark engine counts rejected rows (and quotes the first) without the summary
        pop = summary["population"]
        rejections = Rejections(pop["rows"], pop["rejected"]).to_json()
    if rejections["share"] > max_rejected:
        raise TooManyRejected(Rejections.from_json(rejections), max_rejected, f"; the reports are in {out}")
    return BacktestOutput(out, summary, files)


def _costs(from_rules: Costs, overrides: dict[str, float] | None) -> tuple[Costs, str]:
    """The costs in force (command line over the rule set's `costs:` over the defaults) and where they came from."""
    given = dict(overrides or {})
    if not given:
        return from_rules, ("the rule set's costs:" if from_rules.given else "defaults (no costs: in the rule set)")
    return replace(from_rules, **given, given=tuple(sorted({*from_rules.given, *given}))), (
        "command line" + (" over the rule set's costs:" if from_rules.given else "")
    )


def _backtest_locally(
    data: str | Path,
    ruleset: RuleSet,
    model_a: Model | None,
    ruleset_b: RuleSet | None,
    model_b: Model | None,
    candidates: Sequence[tuple[str, ColumnMapping]],
    out: Path,
    limit: int | None,
    progress: bool,
    timing: dict[str, float],
    started: float,
    options: Options,
    costs_in_force: tuple[Costs, str],
    other_model: Model | None,
) -> tuple[str, dict[str, Any], float, list[Path]]:
    """The local engine's backtest: (mapping name, summary, replay rate, files written)."""
    if options.period.bounded:
        mapping, dataset = load_dataset(data, candidates)
        dataset = select_period(dataset, options.period, limit)
    else:
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
        Progress("replay A" if ruleset_b is not None else "replay") if progress else None,
        label_events(transactions, labels, dataset.label_times_ms, ruleset),
    )
    timing["replay_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    summary = summarize(run_a, labels, event_ms)
    # Replay counts a repeated id once in the windows (as a retry), but each row is scored and reported.
    summary["population"]["duplicate_ids"] = len(transactions) - len({t.transaction_id for t in transactions})
    costs, costs_source = costs_in_force
    summary.update(analyse(run_a, model_a, transactions, labels, event_ms, summary, costs))
    summary["money"] = {"costs": costs_json(costs, costs_source), "a": summary.pop("money_view")}
    summary["rejections"] = find_rejections(transactions, run_a.valid, ruleset, dataset.file_rows).to_json()
    timing["summary_s"] = time.perf_counter() - t0

    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    files = [out / "transactions.parquet"]
    if files[0].is_dir():  # the Spark engine's (a folder of Parquet files)
        shutil.rmtree(files[0])
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
        summary_b.update(analyse(run_b, model_b, transactions, labels, event_ms, summary_b, costs))
        changed, info = compare_runs(run_a, run_b, summary, summary_b)
        if labels is not None:
            info["changed_frauds"] = int((changed & (np.nan_to_num(labels) > 0.5) & ~np.isnan(labels)).sum())
        info["summary_b"] = {
            k: summary_b[k]
            for k in (
                "population",
                "decisions",
                "engine",
                "fraud_amount_caught",
                "rules",
                "daily",
                "rule_value",
                "warnings",
                "thresholds",
            )
        }
        summary["money"]["b"] = summary_b["money_view"]
        summary["money"]["delta"] = money_delta(summary["money"]["a"], summary_b["money_view"])
        causes = change_causes(run_a, run_b, changed)
        info["causes"] = cause_counts(causes, np.flatnonzero(changed), labels)
        summary["compare"] = info
        files.append(out / "changes.parquet")
        table = changes_table(run_a, run_b, changed, transactions, labels, event_ms)
        table = table.append_column("caused_by", pa.array(causes, pa.list_(pa.string())))
        pq.write_table(table, files[-1])
        timing["compare_s"] = time.perf_counter() - t0

    if other_model is not None:
        t0 = time.perf_counter()
        run_m = run_replay(
            transactions,
            ruleset,
            other_model,
            Progress("replay with the other model") if progress else None,
            label_events(transactions, labels, dataset.label_times_ms, ruleset),
        )
        summary["compare_model"] = compare_models(run_a, run_m, model_a, other_model, transactions, labels, event_ms)
        summary["compare_model"]["money"] = money_view(
            run_m.decision, *_truth(run_m, labels), run_m.valid, len(summary["daily"]), costs
        )
        timing["compare_model_s"] = time.perf_counter() - t0
    return mapping, summary, run_a.stats.rate, files


def _truth(run: Run, labels: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fraud, genuine, amount in major units) per row of a run."""
    lab = labels if labels is not None else np.full(len(run.valid), np.nan)
    labeled = run.valid & ~np.isnan(lab)
    fraud = labeled & (np.nan_to_num(lab) > 0.5)
    scale = 10.0 ** -CURRENCY_EXPONENTS[run.base_currency]
    return fraud, labeled & ~fraud, run.amount_minor * scale


def analyse(
    run: Run,
    model: Model | None,
    transactions: Sequence[Transaction],
    labels: np.ndarray | None,
    event_ms: np.ndarray,
    summary: dict[str, Any],
    costs: Costs,
) -> dict[str, Any]:
    """What a run adds to its summary: what each rule adds, the warnings, the money view, the threshold sweep."""
    scale = 10.0 ** -CURRENCY_EXPONENTS[run.base_currency]
    value = rule_value(run, labels, scale)
    fired = {r["rule_id"]: r["hits"] + r["shadow_hits"] for r in value["rules"]}
    present = present_inputs(transactions, run.valid, labels)
    warnings = {
        "inputs": {name: count for name, count in present.items()},
        "not_exercised": missing_inputs(run.ruleset, present, model is not None, fired),
        "in_sample": in_sample(run, model, labels, event_ms),
        "warm_up": warm_up(run.ruleset, event_ms, run.valid, present, model),
    }
    fraud, genuine, amount = _truth(run, labels)
    days = len(summary["daily"])
    out: dict[str, Any] = {
        "rule_value": value,
        "warnings": warnings,
        "money_view": money_view(run.decision, fraud, genuine, amount, run.valid, days, costs),
        "thresholds": None,
    }
    if model is not None and labels is not None:
        current = applicable_thresholds(run.ruleset, model)
        now = (
            current.review_at.value if current.review_at is not None else None,
            current.deny_at.value if current.deny_at is not None else None,
        )
        rows = run.valid
        data = SweepInput(
            score=run.score[rows],
            signature=rule_signatures(run.active_hits[rows], [r.action for r in run.ruleset.rules]),
            fraud=fraud[rows],
            genuine=genuine[rows],
            amount=amount[rows],
            day=event_ms[rows] // DAY_MS,
        )
        result = sweep(data, costs, now, review_capacity=costs.review_capacity, max_decline_rate=costs.max_decline_rate)
        result["reproduces"] = {"rows": int(rows.sum()), "same": reproduces(data, run.decision[rows], now)}
        out["thresholds"] = result
    return out


def compare_models(
    a: Run,
    b: Run,
    model_a: Model | None,
    model_b: Model,
    transactions: Sequence[Transaction],
    labels: np.ndarray | None,
    event_ms: np.ndarray,
) -> dict[str, Any]:
    """The same rows scored by two models: AUC ROC, AP and CP@100 (labeled rows both scored), decision changes."""
    from engine.offline.model_metrics import evaluate_scores

    both = a.valid & b.valid
    changed = both & (a.decision != b.decision)
    transitions: dict[str, int] = {}
    if changed.any():
        pair = a.decision[changed].astype(np.int64) * 4 + b.decision[changed]
        for code, count in zip(*np.unique(pair, return_counts=True), strict=True):
            transitions[f"{DECISIONS[int(code) // 4 - 1]} -> {DECISIONS[int(code) % 4 - 1]}"] = int(count)
    out: dict[str, Any] = {
        "a": {"version": model_a.version if model_a is not None else None},
        "b": {"version": model_b.version},
        "changed": int(changed.sum()),
        "transitions": transitions,
        "changed_frauds": None,
    }
    if labels is None:
        return out
    rows = both & ~np.isnan(labels) & ~np.isnan(a.score) & ~np.isnan(b.score)
    y = (labels[rows] > 0.5).astype(np.int64)
    out["changed_frauds"] = int((changed & ~np.isnan(labels) & (np.nan_to_num(labels) > 0.5)).sum())
    out["rows"] = int(rows.sum())
    if 0 < y.sum() < len(y):
        days = event_ms[rows] // DAY_MS
        cards = np.array([transactions[i].card_id for i in np.flatnonzero(rows).tolist()], dtype=object)
        for side, run in (("a", a), ("b", b)):
            out[side].update(evaluate_scores(run.score[rows], y, days, cards))
    return out


def read_summary(out: str | Path) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((Path(out) / "summary.json").read_text())
    return result
