"""Step 3 of the Spark replay: each partition of transactions scored by the pipeline, on the windows of step 2.

Per Arrow batch of transactions, each after its answers (`windows.with_answers`):
the transactions are mapped by `table_to_dataset` (as locally), an
`AnswerStore` is loaded with each valid one's raw windows, and the local
engine's own `run_replay` runs the pipeline over them: validation,
enrichment, derived features, model, rules, decision. What comes out is the
local engine's too:

- `backtest_rows`: the rows of `backtest.transactions_table` (the very
  function), a row per rejected transaction with its error, and the
  partition's `backtest.Tally` (merged on the driver into the summary's counts);
- `feature_rows`: the values of the training features (`train`).

Every row carries its event time and row key, by which the driver orders them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from engine.enrich import prepare
from engine.model.predictor import Model
from engine.offline.datasets import ColumnMapping, Dataset, table_to_dataset
from engine.offline.metrics import Tally, tally
from engine.offline.replay import AnswerStore, ReplayStats, replay
from engine.offline.runs import Run, run_replay, transactions_table
from engine.offline.spark.bundle import Bundle
from engine.offline.spark.inputs import ROW, restore_timestamps
from engine.offline.spark.windows import raw_answers
from engine.rules.ruleset import RuleSet
from engine.transaction import Transaction
from engine.validation import InvalidTransaction, Limits

#: Row kinds of `backtest_rows`.
SCORED, REJECTED, TALLY = 0, 1, 2
HIDDEN = ("_kind", "_ev", ROW, "_error", "_tally")
#: Rejected transactions whose error the summary quotes (`ReplayStats.first_errors`).
FIRST_ERRORS = 10


class SparkAnswers(AnswerStore):
    origin = "Spark windows"


def _transactions(
    batches: Iterator[pa.RecordBatch], mapping: ColumnMapping, nanos: tuple[str, ...], ruleset: RuleSet
) -> Iterator[tuple[Dataset, list[int], list[tuple[int, ...] | None]]]:
    """Per batch: its transactions (file order kept), their row keys and raw windows (None: rejected).

    The answers of a transaction come before it (`with_answers`), in its
    batch or an earlier one: they wait in `pending` until it arrives.
    """
    plan = ruleset.windows
    outputs = [tuple(w.output for w in g.windows) for g in plan.groups]
    pending: dict[int, list[tuple[int, list[int]]]] = {}
    for batch in batches:
        table = pa.Table.from_batches([batch])
        answer = pc.is_valid(table["gi"])
        for key, g, vals in zip(*(table.filter(answer)[name].to_pylist() for name in (ROW, "gi", "vals")), strict=True):
            pending.setdefault(key, []).append((g, vals))
        rows = table.filter(pc.invert(answer)).drop_columns(["gi", "vals"])
        if not rows.num_rows:
            continue
        keys = rows[ROW].to_pylist()
        raws = [raw_answers(pending.pop(key, None), outputs, plan.raw_size) for key in keys]
        rows = restore_timestamps(rows.drop_columns([ROW]), nanos)
        yield table_to_dataset(rows, mapping, sort=False), keys, raws


def _store(dataset: Dataset, raws: Sequence[tuple[int, ...] | None]) -> SparkAnswers:
    return SparkAnswers(
        [(t.transaction_id, raw) for t, raw in zip(dataset.transactions, raws, strict=True) if raw is not None]
    )


def output_schema(ruleset: RuleSet, model: Model | None) -> pa.Schema:
    """The Arrow schema of `backtest_rows`: hidden columns, then `transactions_table`'s (event time as ms)."""
    empty = run_replay([], ruleset, model)
    table = transactions_table(empty, [], None, np.zeros(0, dtype=np.int64))
    fields = [
        pa.field("_kind", pa.int8()),
        pa.field("_ev", pa.int64()),
        pa.field(ROW, pa.int64()),
        pa.field("_error", pa.string()),
        pa.field("_tally", pa.string()),
    ]
    for f in table.schema:
        fields.append(pa.field(f.name, pa.int64()) if f.name == "event_time" else f)
    return pa.schema(fields)


def backtest_rows(
    batches: Iterator[pa.RecordBatch], bundle: Bundle, mapping: ColumnMapping, nanos: tuple[str, ...]
) -> Iterator[pa.RecordBatch]:
    """mapInArrow: the scored rows and the rejected rows of each batch, then one tally row for the partition."""
    ruleset, model = bundle.load()
    schema = output_schema(ruleset, model)
    limits = Limits()
    counts = Tally()
    errors: list[tuple[int, int, str]] = []
    for dataset, rows, raws in _transactions(batches, mapping, nanos, ruleset):
        txns = dataset.transactions
        run: Run = run_replay(txns, ruleset, model, store=_store(dataset, raws))
        _check_valid(run.valid, raws)
        event_ms = np.fromiter((t.event_time_ms for t in txns), dtype=np.int64, count=len(txns))
        scored = transactions_table(run, txns, dataset.labels, event_ms)
        index = np.flatnonzero(run.valid)
        n = len(index)
        keys = np.asarray(rows, dtype=np.int64)
        columns: dict[str, pa.Array] = {
            "_kind": pa.array(np.full(n, SCORED, dtype=np.int8)),
            "_ev": pa.array(event_ms[index]),
            ROW: pa.array(keys[index]),
            "_error": pa.nulls(n, pa.string()),
            "_tally": pa.nulls(n, pa.string()),
        }
        for name in scored.column_names:
            column = scored[name]
            columns[name] = pc.cast(column, pa.int64()) if name == "event_time" else column
        yield from pa.table(columns, schema=schema).to_batches()
        rejected = np.flatnonzero(~run.valid).tolist()
        if rejected:
            bad = [txns[i] for i in rejected]
            texts = [_error(ruleset, limits, t) for t in bad]
            yield from _rows(schema, REJECTED, texts, bad, keys[rejected].tolist()).to_batches()
            # The partition's first errors in replay order: the job's first ones are among them.
            errors = sorted([*errors, *zip(event_ms[rejected].tolist(), keys[rejected].tolist(), texts, strict=True)])
            del errors[FIRST_ERRORS:]
        counts = counts.merge(tally(run, dataset.labels, event_ms))
    summary = {"tally": counts.to_json(), "errors": errors}
    yield from _rows(schema, TALLY, [json.dumps(summary)], [], []).to_batches()


def _check_valid(valid: np.ndarray, raws: Sequence[tuple[int, ...] | None]) -> None:
    """The pipeline scored exactly the transactions step 1 found valid (else the two steps disagree)."""
    expected = np.array([raw is not None for raw in raws], dtype=bool)
    if not np.array_equal(valid, expected):
        raise RuntimeError(
            f"Spark windows out of step: step 1 found {int(expected.sum())} valid transactions, "
            f"the pipeline scored {int(valid.sum())}"
        )


def _error(ruleset: RuleSet, limits: Limits, txn: Transaction) -> str:
    """The replay's message for a rejected transaction (`ReplayStats.first_errors`)."""
    try:
        prepare(ruleset.enricher, txn, limits, None)
    except InvalidTransaction as exc:
        return f"{txn.transaction_id}: {exc}"
    raise RuntimeError(f"{txn.transaction_id} was rejected by the replay but passes validation")


def _rows(schema: pa.Schema, kind: int, texts: list[str], txns: Sequence[Transaction], keys: Sequence[int]) -> pa.Table:
    """Rejected rows (texts: their errors) or a tally row (text: the tally as JSON), the other columns null."""
    n = len(texts)
    columns = {f.name: pa.nulls(n, f.type) for f in schema}
    columns["_kind"] = pa.array([kind] * n, pa.int8())
    if kind == REJECTED:
        columns["_ev"] = pa.array([t.event_time_ms for t in txns], pa.int64())
        columns[ROW] = pa.array(keys, pa.int64())
        columns["_error"] = pa.array(texts, pa.string())
        columns["transaction_id"] = pa.array([t.transaction_id for t in txns], pa.string())
    else:
        columns["_tally"] = pa.array(texts, pa.string())
    return pa.table(columns, schema=schema)


def feature_schema(names: Sequence[str]) -> pa.Schema:
    return pa.schema(
        [("_ev", pa.int64()), (ROW, pa.int64()), ("_valid", pa.bool_())]
        + [(f"x{i}", pa.float64()) for i in range(len(names))]
    )


def feature_rows(
    batches: Iterator[pa.RecordBatch],
    bundle: Bundle,
    mapping: ColumnMapping,
    nanos: tuple[str, ...],
    names: Sequence[str],
) -> Iterator[pa.RecordBatch]:
    """mapInArrow: per transaction, whether it was scored and its values of the features `names` (as `train`)."""
    ruleset, _ = bundle.load()
    schema = feature_schema(names)
    for dataset, rows, raws in _transactions(batches, mapping, nanos, ruleset):
        txns = dataset.transactions
        n = len(txns)
        x = np.full((n, len(names)), np.nan, dtype=np.float64)
        valid = np.zeros(n, dtype=bool)
        stats = ReplayStats()
        for i, scored in replay(txns, ruleset, None, stats, store=_store(dataset, raws)):
            fields = scored.fields
            x[i] = [float(fields[f]) for f in names]
            valid[i] = True
        _check_valid(valid, raws)
        columns = [
            pa.array(np.fromiter((t.event_time_ms for t in txns), dtype=np.int64, count=n)),
            pa.array(np.asarray(rows, dtype=np.int64)),
            pa.array(valid),
            *[pa.array(x[:, k]) for k in range(len(names))],
        ]
        yield pa.RecordBatch.from_arrays(columns, schema=schema)
