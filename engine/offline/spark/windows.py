"""The windows of a history on Spark: bind, then replay each series where it lies, then answers by row.

Step 1, `bind_events` (per batch of transactions): the pipeline's own
`add_to_windows` and `feedback` run on a `BindingStore`, which keeps what
they bound instead of applying it: validation, enrichment, filters and entity
values are the local replay's. Each valid transaction gives one event per
window group it touches (and a marker row saying it is valid); each label
that some window counts gives one event per label group, at the time it
became known (`label_events`, as the local replay feeds them).

Step 2, `series_answers`: events are partitioned by (group, entity value,
chunk) and sorted within each partition by (time, label before transaction,
event time, row key): the local replay's order, in which a label known at t
is fed before the transactions at t. Each series is replayed through one
`MemoryStore` (the compiled per-series loop), one series at a time
(`MemoryStore.forget_series` between two), and each transaction's raw
answers for the group come out with its row key. Hot series are split by
time first (`hotkeys`).

Step 3 (`with_answers`): the answers and the transactions are brought
together by row key in one shuffle, each transaction right after its
answers, for scoring (`engine.offline.spark.score`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as sf

from engine.offline.datasets import ColumnMapping, table_to_dataset
from engine.offline.replay import _ReplaySideStore, label_events
from engine.offline.spark import hotkeys
from engine.offline.spark.bundle import Bundle
from engine.offline.spark.inputs import ROW, restore_timestamps
from engine.pipeline import Pipeline
from engine.transaction import Feedback
from engine.validation import InvalidTransaction
from engine.windows.memory import MemoryStore
from engine.windows.spec import BoundGroup, BoundWindows, Group, WindowPlan
from engine.windows.store import WindowsOutcome

#: Group index of the marker row of a valid transaction (no group: it only says "valid").
VALID = -1
#: Event kinds, in the order the local replay feeds events of the same time.
LABEL, TRANSACTION = 0, 1

EVENTS_SCHEMA = pa.schema(
    [
        ("gi", pa.int32()),  # group index in the plan (VALID: marker)
        ("entity", pa.string()),
        ("t", pa.int64()),  # event time in the series: the transaction's, or when the label became known
        ("kind", pa.int8()),
        ("ev", pa.int64()),  # the transaction's event time (ties among labels)
        (ROW, pa.int64()),
        ("eid", pa.string()),  # event id: the transaction id, or 'label ' + it
        ("value", pa.string()),
        ("add", pa.bool_()),
    ]
)
EVENTS_DDL = "gi int, entity string, t long, kind byte, ev long, _row long, eid string, value string, add boolean"
ANSWERS_SCHEMA = pa.schema([(ROW, pa.int64()), ("gi", pa.int32()), ("vals", pa.list_(pa.int64()))])
ANSWERS_DDL = "_row long, gi int, vals array<long>"

#: A series with more events than this is split by time (unless told otherwise).
HOT_FLOOR = 100_000
#: Split times are picked from this many quantiles of a hot series' event times (at most so many chunks).
QUANTILE_GRID = 1000


#: The marker row's stand-in group (in no plan: its index is VALID). Its "entity" is the
#: row key, which spreads the markers over the partitions of step 2.
_MARKER = Group.make(("transaction_id",), None, (), 0)


class BindingStore(_ReplaySideStore):
    """A window store that keeps what the pipeline bound and answers zeros: step 1 of the Spark replay."""

    name = "binding"

    def __init__(self) -> None:
        self.bound: BoundWindows | None = None
        self._zeros: tuple[int, ...] = ()

    def apply(self, plan: WindowPlan, bound: BoundWindows, fingerprint: str) -> WindowsOutcome:
        self.bound = bound
        if len(self._zeros) != plan.raw_size:
            self._zeros = (0,) * plan.raw_size
        return WindowsOutcome(replay=None, raw=self._zeros)


def bind_events(
    batches: Iterator[pa.RecordBatch], bundle: Bundle, mapping: ColumnMapping, nanos: tuple[str, ...]
) -> Iterator[pa.RecordBatch]:
    """Step 1 (mapInArrow): the window events of a batch of transactions and of their labels."""
    ruleset, _ = bundle.load()
    plan = ruleset.windows
    index = {id(g): i for i, g in enumerate(plan.groups)}
    store = BindingStore()
    pipeline = Pipeline(ruleset, None, store, check_clock=False, record=False, explain=False)
    for batch in batches:
        table = restore_timestamps(pa.Table.from_batches([batch]), nanos)
        rows = table[ROW].to_pylist()
        dataset = table_to_dataset(table.drop_columns([ROW]), mapping, sort=False)
        columns: dict[str, list[Any]] = {name: [] for name in EVENTS_SCHEMA.names}
        txns = dataset.transactions
        for txn, key in zip(txns, rows, strict=True):
            store.bound = None
            try:
                pipeline.add_to_windows(txn)
            except InvalidTransaction:
                continue
            assert store.bound is not None
            bound = store.bound
            _emit(columns, index, bound, TRANSACTION, txn.event_time_ms, key)
            # The marker: this transaction is valid (scored), whatever groups it has.
            marker = BoundWindows(
                bound.transaction_id, bound.event_time_ms, (BoundGroup(_MARKER, str(key), "", False),)
            )
            _emit(columns, index, marker, TRANSACTION, txn.event_time_ms, key)
        for known, i, outcome in label_events(txns, dataset.labels, dataset.label_times_ms, ruleset):
            store.bound = None
            try:
                pipeline.feedback(Feedback(txns[i], outcome, known))
            except InvalidTransaction:
                continue  # its transaction was rejected too, or it was known before it happened
            assert store.bound is not None
            _emit(columns, index, store.bound, LABEL, txns[i].event_time_ms, rows[i])
        yield pa.RecordBatch.from_pydict(columns, schema=EVENTS_SCHEMA)


def _emit(
    columns: dict[str, list[Any]], index: dict[int, int], bound: BoundWindows, kind: int, ev: int, key: int
) -> None:
    """One event row per bound group (rows of EVENTS_SCHEMA)."""
    for bg in bound.groups:
        columns["gi"].append(index.get(id(bg.group), VALID))
        columns["entity"].append(bg.entity_value)
        columns["t"].append(bound.event_time_ms)
        columns["kind"].append(kind)
        columns["ev"].append(ev)
        columns[ROW].append(key)
        columns["eid"].append(bound.transaction_id)
        columns["value"].append(bg.value)
        columns["add"].append(bg.add)


def replay_series(batches: Iterator[pa.RecordBatch], bundle: Bundle) -> Iterator[pa.RecordBatch]:
    """Step 2 (mapInArrow, on events sorted by series then replay order): each transaction's answers per group.

    Rows carry a `chunk` and an `owner` flag (hot series, see `hotkeys`): a
    transaction's answer is reported by the chunk that owns it, not by the
    ones that replay it as warm-up. A series may continue into the next batch.
    """
    ruleset, _ = bundle.load()
    plan = ruleset.windows
    groups = plan.groups
    outputs = [tuple(w.output for w in g.windows) for g in groups]
    store = MemoryStore(remember_responses=False, expire_idle=False, new_ids=False)
    current: tuple[int, str, int] | None = None
    for batch in batches:
        c = batch.to_pydict()
        out_row: list[int] = []
        out_gi: list[int] = []
        out_vals: list[list[int]] = []
        series: list[BoundWindows] = []
        report: list[tuple[int, int]] = []  # (position in `series`, row key) of the answers to report

        rows = zip(
            c["gi"],
            c["entity"],
            c["chunk"],
            c["t"],
            c["kind"],
            c[ROW],
            c["eid"],
            c["value"],
            c["add"],
            c["owner"],
            strict=True,
        )
        for g, entity, chunk, t, kind, key, eid, value, add, owner in rows:
            if g == VALID:
                out_row.append(key)
                out_gi.append(VALID)
                out_vals.append([])
                continue
            here = (g, entity, chunk)
            if here != current:
                _finish(store, plan, series, report, current, outputs, out_row, out_gi, out_vals)
                store.forget_series()
                current = here
            if kind == TRANSACTION and owner:
                report.append((len(series), key))
            series.append(BoundWindows(eid, t, (BoundGroup(groups[g], entity, value, add),)))
        _finish(store, plan, series, report, current, outputs, out_row, out_gi, out_vals)
        yield pa.RecordBatch.from_pydict({ROW: out_row, "gi": out_gi, "vals": out_vals}, schema=ANSWERS_SCHEMA)


def _finish(
    store: MemoryStore,
    plan: WindowPlan,
    series: list[BoundWindows],
    report: list[tuple[int, int]],
    current: tuple[int, str, int] | None,
    outputs: list[tuple[int, ...]],
    out_row: list[int],
    out_gi: list[int],
    out_vals: list[list[int]],
) -> None:
    """Replay the events gathered for the current series (the store keeps its state for what follows)."""
    if not series:
        return
    assert current is not None
    g = current[0]
    raws = store.apply_many(plan, series)
    mine = outputs[g]
    for k, key in report:
        raw = raws[k]
        out_row.append(key)
        out_gi.append(g)
        out_vals.append([raw[o] for o in mine])
    series.clear()
    report.clear()


@dataclass
class HotKeys:
    """What the job did with hot series: how many, how many chunks, how many events replayed twice."""

    threshold: int
    series: int = 0
    chunks: int = 0
    dropped_splits: int = 0  # split points a repeated id straddled (see hotkeys.safe_splits)
    #: Events of the hot series (hot_events / chunks: about how many one chunk reports).
    hot_events: int = 0


def series_answers(
    spark: SparkSession, events: DataFrame, bundle: Bundle, partitions: int, hot_rows: int | None = None
) -> tuple[DataFrame, HotKeys]:
    """Step 2 on Spark: the answers of every transaction per group (rows of ANSWERS_DDL), and the hot-key report.

    `events` should be persisted by the caller: it is read more than once.
    `hot_rows`: a series with more events is split (None: the larger of
    HOT_FLOOR and the events over twice the cluster's cores).
    """
    from engine.offline.spark.session import parallelism

    ruleset, _ = bundle.load()
    cores = parallelism(spark)
    # One job: the number of events, and the series that may be hot (more than the floor).
    floor = min(HOT_FLOOR, hot_rows) if hot_rows is not None else HOT_FLOOR
    per_series = events.groupBy("gi", "entity").count()
    candidate = sf.when((sf.col("gi") >= 0) & (sf.col("count") > floor), sf.struct("gi", "entity", "count"))
    total, candidates = per_series.agg(sf.sum("count"), sf.collect_list(candidate)).collect()[0]
    total = int(total or 0)
    threshold = hot_rows if hot_rows is not None else max(HOT_FLOOR, total // (2 * cores))
    report = HotKeys(threshold)
    hot = [r for r in candidates if r["count"] > threshold]
    chunked = events
    if hot:
        chunked = _split_hot(spark, events, hot, threshold, ruleset.windows, report)
    else:
        chunked = events.withColumn(
            "chunks", sf.array(sf.struct(sf.lit(0).alias("chunk"), sf.lit(True).alias("owner")))
        )
    exploded = chunked.select("*", sf.inline("chunks")).drop("chunks")
    ordered = exploded.repartition(partitions, "gi", "entity", "chunk").sortWithinPartitions(
        "gi", "entity", "chunk", "t", "kind", "ev", ROW
    )

    def step2_series(it: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        return replay_series(it, bundle)

    answers = ordered.mapInArrow(step2_series, ANSWERS_DDL)
    return answers, report


def _split_hot(
    spark: SparkSession, events: DataFrame, hot: list[Any], threshold: int, plan: WindowPlan, report: HotKeys
) -> DataFrame:
    """Events with their chunks (array of (chunk, owner)): hot series split by time, see `hotkeys`."""
    keys = spark.createDataFrame(
        [(int(r["gi"]), r["entity"], int(r["count"])) for r in hot], "gi int, entity string, n long"
    )
    hot_events = events.join(sf.broadcast(keys), ["gi", "entity"])
    # Split times: quantiles of each hot series' event times, one chunk per `threshold` events
    # (percentile_approx takes constant fractions: a grid, from which each series picks its own).
    grid = [i / QUANTILE_GRID for i in range(1, QUANTILE_GRID)]
    quantiles = (
        hot_events.groupBy("gi", "entity", "n").agg(sf.percentile_approx("t", grid, 100_000).alias("q")).collect()
    )
    splits: dict[tuple[int, str], list[int]] = {}
    for r in quantiles:
        k = min(math.ceil(int(r["n"]) / threshold), QUANTILE_GRID)
        picks = [r["q"][round(i * QUANTILE_GRID / k) - 1] for i in range(1, k)]
        splits[(int(r["gi"]), r["entity"])] = hotkeys.split_points(picks)
    overlap = {i: hotkeys.overlap_ms(g) for i, g in enumerate(plan.groups)}
    # Repeated ids of hot series: a split whose warm-up start one straddles is dropped.
    split_rows = [(g, e, s, s - overlap[g]) for (g, e), ss in splits.items() for s in ss]
    if split_rows:
        starts = spark.createDataFrame(split_rows, "gi int, entity string, s long, w long")
        spans = (
            hot_events.filter(sf.col("add"))
            .groupBy("gi", "entity", "eid")
            .agg(sf.count("*").alias("k"), sf.min("t").alias("first"), sf.max("t").alias("last"))
            .filter(sf.col("k") > 1)
        )
        bad = {
            (int(r["gi"]), r["entity"], int(r["s"]))
            for r in spans.join(sf.broadcast(starts), ["gi", "entity"])
            .filter((sf.col("first") < sf.col("w")) & (sf.col("w") <= sf.col("last")))
            .select("gi", "entity", "s")
            .distinct()
            .collect()
        }
        report.dropped_splits = len(bad)
        splits = {(g, e): [s for s in ss if (g, e, s) not in bad] for (g, e), ss in splits.items()}
    report.series = len(splits)
    report.hot_events = sum(int(r["count"]) for r in hot)
    report.chunks = sum(len(ss) + 1 for ss in splits.values())
    table = spark.createDataFrame(
        [(g, e, ss, overlap[g]) for (g, e), ss in splits.items()],
        "gi int, entity string, splits array<long>, overlap long",
    )
    chunked = events.join(sf.broadcast(table), ["gi", "entity"], "left").withColumn(
        "chunks", sf.expr(hotkeys.chunk_expression())
    )
    return chunked.drop("splits", "overlap")


def with_answers(transactions: DataFrame, answers: DataFrame, partitions: int) -> DataFrame:
    """Transactions and their answers in one frame, partitioned by row key, each row's answers just before it.

    A union sorted by (row key, group index nulls last): one shuffle and one
    sort per task, which spills like any sort, instead of an aggregation and
    a join (two sorts in a task, which Spark may fail to fit in little memory).
    Answer rows carry `gi` and `vals`, transaction rows null there.
    """
    data = [c for c in transactions.columns if c != ROW]
    types = dict(transactions.dtypes)
    left = transactions.select(
        *[sf.col(f"`{c}`") for c in data],
        ROW,
        sf.lit(None).cast("int").alias("gi"),
        sf.lit(None).cast("array<long>").alias("vals"),
    )
    right = answers.select(*[sf.lit(None).cast(types[c]).alias(c) for c in data], ROW, "gi", "vals")
    return left.unionByName(right).repartition(partitions, ROW).sortWithinPartitions(ROW, sf.col("gi").asc_nulls_last())


def raw_answers(
    answers: list[tuple[int, list[int]]] | None, outputs: list[tuple[int, ...]], raw_size: int
) -> tuple[int, ...] | None:
    """One transaction's raw windows from its (group index, values) answers; None without a marker (rejected)."""
    if not answers:
        return None
    raw = [0] * raw_size
    valid = False
    for g, vals in answers:
        if g == VALID:
            valid = True
            continue
        for o, v in zip(outputs[g], vals, strict=True):
            raw[o] = v
    return tuple(raw) if valid else None
