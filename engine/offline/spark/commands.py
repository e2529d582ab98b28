"""The offline commands on the Spark engine: what `backtest`, `train` and `audit` call with `--engine spark`.

Each takes what the command already loaded and checked on the driver (rule
set, model, column mapping candidates) and returns what the local engine's
path returns, so the command writes the same outputs from it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from engine.model.predictor import Model
from engine.offline.datasets import ColumnMapping, DatasetError, pick_mapping
from engine.offline.metrics import summary_of
from engine.offline.spark import jobs
from engine.offline.spark.bundle import Bundle
from engine.offline.spark.inputs import InputError, schema_columns
from engine.offline.spark.jobs import SparkJobError, SparkOptions
from engine.offline.spark.session import SparkUnavailable, start
from engine.rules.ruleset import RuleSet


def spark_uri(data: str | Path) -> str:
    """A local path as an absolute path (executors may run elsewhere); a URI as it is."""
    text = str(data)
    if "://" in text or text.startswith("file:"):
        return text
    return str(Path(text).resolve())


def _mapping(spark: Any, uri: str, candidates: Sequence[tuple[str, ColumnMapping]]) -> tuple[str, ColumnMapping]:
    columns = schema_columns(spark, uri)
    empty = pa.table({name: pa.array([], pa.null()) for name in columns})
    return pick_mapping(empty, candidates, uri)


def backtest_on_spark(
    data: str | Path,
    rules: str | Path,
    model_path: str | Path | None,
    ruleset: RuleSet,
    model: Model | None,
    candidates: Sequence[tuple[str, ColumnMapping]],
    out: Path,
    limit: int | None,
    options: SparkOptions,
) -> tuple[str, dict[str, Any], float]:
    """A backtest on Spark: (mapping name, summary without inputs, replay rate); the table written under `out`."""
    timing: dict[str, float] = {}
    t0 = time.perf_counter()
    try:
        spark = start(options.master, options.conf)
        uri = spark_uri(data)
        name, mapping = _mapping(spark, uri, candidates)
        bundle = Bundle.of(rules, model_path if model is not None else None)
        timing["load_s"] = time.perf_counter() - t0
        out.mkdir(parents=True, exist_ok=True)
        table = out / "transactions.parquet"
        if table.is_file():  # the local engine's (one file)
            table.unlink()
        t0 = time.perf_counter()
        counts = jobs.backtest(spark, uri, ruleset, model, bundle, mapping, str(table), limit, options)
        timing["replay_s"] = time.perf_counter() - t0
    except SparkJobError as exc:  # bad data found on an executor: said as the local engine says it
        raise DatasetError(f"{data}: {exc}") from None
    except (SparkUnavailable, InputError) as exc:
        raise DatasetError(str(exc)) from None
    t0 = time.perf_counter()
    summary = summary_of(counts.tally, ruleset, counts.stats)
    summary["population"]["duplicate_ids"] = counts.duplicate_ids
    timing["summary_s"] = time.perf_counter() - t0
    summary["timing"] = timing
    _report_hot(counts.hot)
    return name, summary, counts.stats.rate


def _report_hot(hot: jobs.HotKeys) -> None:
    if hot.series:
        print(
            f"  spark: {hot.series} hot series (over {hot.threshold:,} events, {hot.hot_events:,} in all) "
            f"split by time into {hot.chunks} chunks"
            + (f", {hot.dropped_splits} split(s) dropped for repeated ids" if hot.dropped_splits else ""),
            file=sys.stderr,
        )


def features_on_spark(
    data: str | Path,
    rules: str | Path,
    ruleset: RuleSet,
    mapping: ColumnMapping,
    names: Sequence[str],
    options: SparkOptions,
) -> jobs.Features:
    """The training features of every row of `data`, computed on Spark (rows in the local engine's order)."""
    try:
        spark = start(options.master, options.conf)
        return jobs.features(spark, spark_uri(data), Bundle.of(rules), mapping, names, options)
    except (SparkUnavailable, InputError, SparkJobError) as exc:
        raise ValueError(str(exc)) from None
