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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np
import pyarrow.parquet as pq

from engine.model.predictor import Model
from engine.offline.datasets import ColumnMapping, DatasetError, load_dataset, mapping_candidates
from engine.offline.metrics import DEFINITIONS, compare_runs, summarize
from engine.offline.rejections import DEFAULT_MAX_REJECTED, Rejections, TooManyRejected, find_rejections
from engine.offline.replay import label_events
from engine.offline.runs import changes_table, run_replay, transactions_table
from engine.rules.ruleset import RuleSet

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
    max_rejected: float = DEFAULT_MAX_REJECTED,
) -> BacktestOutput:
    """Run a backtest and write its outputs into `out`; raises DatasetError on bad input (data, mapping, arguments).

    `mapping` None: the first of the rule set's `data_mapping` whose columns
    are in the file, else the native schema.
    RuleSetInvalid and ModelInvalid propagate (the CLI reports them).
    `spark`: run on the Spark engine (`engine.offline.spark`, docs/spark.md),
    which reads `data` by URI and writes `transactions.parquet` as a folder
    of Parquet files, identical in content; no `compare` there.
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
    out = Path(out)

    if spark is not None:
        if compare is not None:
            raise DatasetError("--compare runs on the local engine only (drop --engine spark, or --compare)")
        from engine.offline.spark.commands import backtest_on_spark

        mapping, summary, rate = backtest_on_spark(data, rules, model, ruleset, model_a, candidates, out, limit, spark)
        files = [out / "transactions.parquet"]
    else:
        mapping, summary, rate, files = _backtest_locally(
            data, ruleset, model_a, ruleset_b, model_b, candidates, out, limit, progress, timing, started
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
) -> tuple[str, dict[str, Any], float, list[Path]]:
    """The local engine's backtest: (mapping name, summary, replay rate, files written)."""
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
        changed, info = compare_runs(run_a, run_b, summary, summary_b)
        if labels is not None:
            info["changed_frauds"] = int((changed & (np.nan_to_num(labels) > 0.5) & ~np.isnan(labels)).sum())
        info["summary_b"] = {k: summary_b[k] for k in ("population", "decisions", "engine", "fraud_amount_caught")}
        info["summary_b"]["rules"] = summary_b["rules"]
        summary["compare"] = info
        files.append(out / "changes.parquet")
        pq.write_table(changes_table(run_a, run_b, changed, transactions, labels, event_ms), files[-1])
        timing["compare_s"] = time.perf_counter() - t0
    return mapping, summary, run_a.stats.rate, files


def read_summary(out: str | Path) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((Path(out) / "summary.json").read_text())
    return result
