"""The export of a decision log: one Parquet file of what was decided, for training and backtests.

`export` reads a decision log folder (`engine.decision_log`), keeps the transactions whose event time
lies in [since, until) (the last record of a transaction scored more than
once), joins labels from a feedback file (CSV or Parquet:
`transaction_id,label[,label_time]`) and writes a Parquet file in the
project's native schema plus `label`, the decision, score, versions, the
rule set's digest (`ruleset_digest`), the enrichment (`enrichment`, JSON
like `attributes`) and one column per feature: `risk-engine train --data` and `backtest --data` read it
as it is. With a challenger, the columns `champion_version`,
`champion_score`, `champion_decision`, `challenger_version`,
`challenger_score`, `challenger_decision`, `challenger_mode` and
`challenger_decided` put both models side by side whichever one decided
(null where no challenger ran).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from engine.decision_log import read_records
from engine.offline.datasets import DatasetError, read_table


def _champion_and_challenger(record: dict[str, Any]) -> dict[str, Any]:
    """Both models of a record side by side, whichever one decided (all None without a challenger)."""
    other = record.get("challenger")
    if not other:
        return dict.fromkeys(CHALLENGER_COLUMNS)
    decided = {"version": record["model_version"], "score": record["score"], "decision": record["decision"]}
    slot = {"version": other["model_version"], "score": other["score"], "decision": other["decision"]}
    champion, challenger = (slot, decided) if other["challenger_decided"] else (decided, slot)
    return {
        **{f"champion_{k}": v for k, v in champion.items()},
        **{f"challenger_{k}": v for k, v in challenger.items()},
        "challenger_mode": other["mode"],
        "challenger_decided": other["challenger_decided"],
    }


#: The export's champion/challenger columns (`_champion_and_challenger`).
CHALLENGER_COLUMNS = (
    "champion_version",
    "champion_score",
    "champion_decision",
    "challenger_version",
    "challenger_score",
    "challenger_decision",
    "challenger_mode",
    "challenger_decided",
)


class ExportError(ValueError):
    """Bad input to an export (folder, times, feedback file): reported without a traceback."""


def parse_time(text: str) -> int:
    """Milliseconds since the epoch of an ISO 8601 date or date-time (naive = UTC), or of integer ms."""
    text = text.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ExportError(f"not a date or time: {text!r} (use e.g. 2026-01-31 or 2026-01-31T12:00:00Z)") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


@dataclass(frozen=True)
class ExportSummary:
    rows: int
    labeled: int
    duplicates: int  # records of a transaction scored more than once (the last one kept)
    bad_lines: int
    path: Path


#: The transaction's own columns in the native schema, as a decision log record holds them (export and audit).
TRANSACTION_COLUMNS = (
    "transaction_id",
    "event_time_ms",
    "amount_minor",
    "currency",
    "user_id",
    "card_id",
    "device_id",
    "ip",
    "country",
    "merchant_id",
    "channel",
    "merchant_category",
)


def read_feedback(path: Path) -> dict[str, tuple[float, int | None]]:
    try:
        table = read_table(path, strings=("transaction_id",))
    except DatasetError as exc:
        raise ExportError(f"--feedback {exc}") from None
    for column in ("transaction_id", "label"):
        if column not in table.column_names:
            raise ExportError(f"--feedback {path}: no '{column}' column (expected transaction_id,label[,label_time])")
    ids = table["transaction_id"].cast(pa.string()).to_pylist()
    labels = table["label"].to_pylist()
    times: list[Any] = table["label_time"].to_pylist() if "label_time" in table.column_names else [None] * len(ids)
    out: dict[str, tuple[float, int | None]] = {}
    for i, (tid, label, when) in enumerate(zip(ids, labels, times, strict=True)):
        if tid is None or label is None:
            continue
        if isinstance(label, str):
            low = label.strip().lower()
            if low in ("1", "true", "fraud", "yes"):
                value = 1.0
            elif low in ("0", "false", "genuine", "legit", "no"):
                value = 0.0
            else:
                raise ExportError(f"--feedback {path}: row {i + 2}: label {label!r} is not 0/1")
        else:
            value = float(label)
            if value not in (0.0, 1.0):
                raise ExportError(f"--feedback {path}: row {i + 2}: label {label!r} is not 0/1")
        when_ms: int | None
        if when is None:
            when_ms = None
        elif isinstance(when, datetime):
            when_ms = int((when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp() * 1000)
        else:
            when_ms = parse_time(str(when))
        out[str(tid)] = (value, when_ms)  # the last label of an id wins (a charge-back after a dispute)
    return out


def export(
    folder: Path,
    out: Path,
    *,
    since_ms: int | None = None,
    until_ms: int | None = None,
    feedback: Path | None = None,
) -> ExportSummary:
    """Write the decisions with event time in [since, until) to a Parquet file (module docstring)."""
    if not Path(folder).is_dir():
        raise ExportError(f"--log {folder}: no such folder")
    labels = read_feedback(feedback) if feedback is not None else {}
    bad: list[int] = []
    latest: dict[str, dict[str, Any]] = {}
    duplicates = 0
    for record in read_records(folder, bad):
        t = record["transaction"]
        when = t["event_time_ms"]
        if (since_ms is not None and when < since_ms) or (until_ms is not None and when >= until_ms):
            continue
        tid = t["transaction_id"]
        if tid in latest:
            duplicates += 1
            if latest[tid]["decided_at_ms"] > record["decided_at_ms"]:
                continue
        latest[tid] = record
    rows = sorted(latest.values(), key=lambda r: (r["transaction"]["event_time_ms"], r["decided_at_ms"]))
    feature_names = sorted({name for r in rows for name in r["features"]})
    columns: dict[str, Any] = {name: [r["transaction"][name] for r in rows] for name in TRANSACTION_COLUMNS}
    columns["event_time"] = pa.array(columns["event_time_ms"], pa.timestamp("ms", tz="UTC"))
    columns["attributes"] = [json.dumps(r["transaction"]["attributes"], sort_keys=True) for r in rows]
    found = [labels.get(r["transaction"]["transaction_id"]) for r in rows]
    columns["label"] = pa.array([f[0] if f else None for f in found], pa.float64())
    columns["label_time_ms"] = pa.array([f[1] if f else None for f in found], pa.int64())
    columns["decided_at_ms"] = [r["decided_at_ms"] for r in rows]
    columns["decision"] = [r["decision"] for r in rows]
    columns["score"] = pa.array([r["score"] for r in rows], pa.float64())
    columns["degraded"] = [r["degraded"] for r in rows]
    columns["reasons"] = pa.array([[x["code"] for x in r["reasons"]] for r in rows], pa.list_(pa.string()))
    columns["rules_fired"] = pa.array(
        [[x["rule_id"] for x in r["reasons"] if x["rule_id"]] for r in rows], pa.list_(pa.string())
    )
    columns["shadow_rules_fired"] = pa.array(
        [[x["rule_id"] for x in r["shadow"] if x["rule_id"]] for r in rows], pa.list_(pa.string())
    )
    columns["ruleset_version"] = [r["ruleset_version"] for r in rows]
    columns["ruleset_digest"] = [r.get("ruleset_digest", "") for r in rows]  # '' in records of older versions
    columns["enrichment"] = [json.dumps(r.get("enrichment", {}), sort_keys=True) for r in rows]
    columns["model_version"] = [r["model_version"] for r in rows]
    pairs = [_champion_and_challenger(r) for r in rows]
    for name in CHALLENGER_COLUMNS:
        kind = pa.float64() if name.endswith("_score") else pa.bool_() if name.endswith("_decided") else pa.string()
        columns[name] = pa.array([pair[name] for pair in pairs], kind)
    for name in feature_names:
        column = name if name not in columns else f"feature_{name}"
        columns[column] = pa.array([r["features"].get(name) for r in rows], pa.float64())
    schema_types = {name: pa.string() for name in TRANSACTION_COLUMNS}
    schema_types |= {"event_time_ms": pa.int64(), "amount_minor": pa.int64(), "decided_at_ms": pa.int64()}
    table = pa.table(
        {k: v if isinstance(v, pa.Array) else pa.array(v, schema_types.get(k)) for k, v in columns.items()}
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out)
    labeled = sum(1 for f in found if f is not None)
    return ExportSummary(len(rows), labeled, duplicates, len(bad), out)
