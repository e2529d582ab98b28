"""The offline commands' Spark jobs: a backtest's table and counts, and a training set's features.

Both start the same way (`windows_frame`): read the history where it lies,
bind its events, replay each series, and join each transaction's answers
back to it; then step 3 (`engine.offline.spark.score`) runs the pipeline per
partition. The driver only collects what is small (tallies, the first
errors, the hot-key report) or what the command needs whole anyway (the
feature matrix a model is fitted on).
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import reduce
from typing import TypeVar

import numpy as np
import pyarrow as pa
from pyspark import StorageLevel
from pyspark.errors import PySparkException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as sf
from pyspark.sql.pandas.types import from_arrow_schema

from engine.model.predictor import Model
from engine.offline.datasets import ColumnMapping
from engine.offline.metrics import Tally
from engine.offline.replay import ReplayStats
from engine.offline.spark import score
from engine.offline.spark.bundle import Bundle
from engine.offline.spark.inputs import ROW, Input, read_input
from engine.offline.spark.session import parallelism
from engine.offline.spark.windows import EVENTS_DDL, HotKeys, bind_events, series_answers, with_answers
from engine.rules.ruleset import RuleSet

_T = TypeVar("_T")


class SparkJobError(ValueError):
    """The job failed on bad data (a DatasetError on an executor): the CLI reports the line, no traceback."""


@dataclass
class SparkOptions:
    """How the Spark engine runs: master URL, extra settings, and the hot-series threshold (None: automatic)."""

    master: str = "local[*]"
    conf: dict[str, str] = field(default_factory=dict)
    hot_rows: int | None = None
    #: Partitions of each shuffle (None: `spark.sql.shuffle.partitions` when given in `conf`, else by size).
    partitions: int | None = None


#: Rows per shuffle partition when the engine chooses their number.
ROWS_PER_PARTITION = 200_000


def shuffle_partitions(spark: SparkSession, rows: int, options: SparkOptions) -> int:
    """How many partitions each shuffle of a job over `rows` transactions has; set for the session's next queries.

    At least two per core (a slow task does not idle the others), and about
    `ROWS_PER_PARTITION` transactions each on big inputs, so that memory per
    task stays bounded however large the history.
    """
    given = options.partitions or options.conf.get("spark.sql.shuffle.partitions")
    n = int(given) if given else max(2 * parallelism(spark), math.ceil(rows / ROWS_PER_PARTITION))
    spark.conf.set("spark.sql.shuffle.partitions", str(n))
    return n


@dataclass
class Windows:
    """A history with each transaction's answers brought back to it (`windows.with_answers`), and what it took."""

    input: Input
    joined: DataFrame
    events: DataFrame  # persisted: unpersist when done
    hot: HotKeys


def windows_frame(
    spark: SparkSession, data: str, bundle: Bundle, mapping: ColumnMapping, limit: int | None, options: SparkOptions
) -> Windows:
    """Steps 1 and 2 (see the package docstring) as a DataFrame of the input's rows with their answers."""
    source = read_input(spark, data, mapping, limit)
    partitions = shuffle_partitions(spark, source.rows, options)
    nanos = source.nanos

    # Named functions, not lambdas: their names label the stages in Spark's UI and event log.
    def step1_bind(it: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        return bind_events(it, bundle, mapping, nanos)

    events = source.frame.mapInArrow(step1_bind, EVENTS_DDL)
    events = events.persist(StorageLevel.DISK_ONLY)
    answers, hot = guarded(lambda: series_answers(spark, events, bundle, partitions, options.hot_rows))
    joined = with_answers(source.frame, answers, partitions)
    return Windows(source, joined, events, hot)


def guarded(action: Callable[[], _T]) -> _T:
    """Run a Spark action; a DatasetError raised on an executor becomes a SparkJobError with its message."""
    try:
        return action()
    except PySparkException as exc:
        found = re.search(r"(?:DatasetError|ArrowInvalid|BacktestError): ([^\n]+)", str(exc))
        if found:
            raise SparkJobError(found.group(1).strip()) from None
        raise


@dataclass
class BacktestCounts:
    """What the driver keeps of a Spark backtest: the summary's counts and the replay's rejections."""

    tally: Tally
    stats: ReplayStats
    duplicate_ids: int
    hot: HotKeys


def backtest(
    spark: SparkSession,
    data: str,
    ruleset: RuleSet,
    model: Model | None,
    bundle: Bundle,
    mapping: ColumnMapping,
    table_path: str,
    limit: int | None = None,
    options: SparkOptions | None = None,
) -> BacktestCounts:
    """Replay `data` on Spark; write the per-transaction table (a Parquet folder) at `table_path`; return the counts."""
    started = time.perf_counter()
    windows = windows_frame(spark, data, bundle, mapping, limit, options or SparkOptions())
    nanos = windows.input.nanos
    schema = score.output_schema(ruleset, model)

    def step3_score(it: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        return score.backtest_rows(it, bundle, mapping, nanos)

    rows = windows.joined.mapInArrow(step3_score, from_arrow_schema(schema)).persist(StorageLevel.DISK_ONLY)
    try:
        # One job: the tallies, and the distinct ids of every row, rejected ones too (the local
        # engine's duplicate_ids is len(transactions) - len(set(ids))).
        tallies, distinct = guarded(
            lambda: rows.agg(
                sf.collect_list(sf.when(sf.col("_kind") == score.TALLY, sf.col("_tally"))),
                sf.count_distinct(sf.when(sf.col("_kind") < score.TALLY, sf.col("transaction_id"))),
            ).collect()[0]
        )
        parts = [json.loads(text) for text in tallies]
        merged = reduce(Tally.merge, (Tally.from_json(p["tally"]) for p in parts), Tally())
        errors = [text for _, _, text in sorted(e for p in parts for e in p["errors"])[: score.FIRST_ERRORS]]
        columns = [
            sf.timestamp_millis("event_time").alias("event_time") if name == "event_time" else sf.col(f"`{name}`")
            for name in schema.names
            if name not in score.HIDDEN
        ]
        guarded(
            lambda: (
                rows.filter(sf.col("_kind") == score.SCORED)
                .orderBy("_ev", ROW)
                .select(*columns)
                .write.mode("overwrite")
                .parquet(table_path)
            )
        )
    finally:
        rows.unpersist()
        windows.events.unpersist()
    stats = ReplayStats(scored=merged.scored, rejected=merged.rows - merged.scored, first_errors=errors)
    stats.seconds = time.perf_counter() - started
    return BacktestCounts(merged, stats, merged.rows - int(distinct or 0), windows.hot)


@dataclass
class Features:
    """A training set's features on Spark, in the local engine's row order (event time, then file order)."""

    x: np.ndarray  # (rows, features)
    valid: np.ndarray  # bool: scored (not rejected)
    hot: HotKeys
    seconds: float


def features(
    spark: SparkSession,
    data: str,
    bundle: Bundle,
    mapping: ColumnMapping,
    names: Sequence[str],
    options: SparkOptions | None = None,
) -> Features:
    """The pipeline's values of `names` for every row of `data`, computed on Spark (see `score.feature_rows`)."""
    started = time.perf_counter()
    windows = windows_frame(spark, data, bundle, mapping, None, options or SparkOptions())
    nanos = windows.input.nanos
    schema = score.feature_schema(names)

    def step3_features(it: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        return score.feature_rows(it, bundle, mapping, nanos, names)

    rows = windows.joined.mapInArrow(step3_features, from_arrow_schema(schema))
    try:
        table: pa.Table = guarded(lambda: rows.orderBy("_ev", ROW).toArrow())
    finally:
        windows.events.unpersist()
    x = (
        np.column_stack([table[f"x{k}"].to_numpy() for k in range(len(names))])
        if names
        else np.zeros((table.num_rows, 0))
    )
    valid = table["_valid"].to_numpy(zero_copy_only=False).astype(bool)
    return Features(x, valid, windows.hot, time.perf_counter() - started)
