"""Parity audit of production: replay a decision log's transactions and compare with what was served.

`risk-engine audit --log DIR` reads the decision log a server wrote
(`engine.decisions`), replays its transactions through the offline engine
(local or Spark: the backtest's own replay, with the rule set and model
given) and compares, transaction by transaction, what was served with what is
recomputed: each feature, the score, the decision and the reasons. It
reports, for each, the share of transactions where the two differ, with
examples.

What it expects. Replay gives the answers live serving gives when the live
server saw the events in event-time order, ran the same rule set and model,
and answered nothing degraded. So 0 differences is the healthy result; a
difference points at one of:

- a rule set or model other than the one served (the versions are compared
  and reported first);
- degraded answers (windows unavailable: their window features are missing);
- events that reached the server out of order by more than `allowed_lateness`
  (replay sorts by event time);
- labels the server got that the audit did not (`--feedback FILE` gives them:
  `transaction_id,label[,label_time]`, as `decisions export`);
- a defect: serving and replay disagreeing, which the audit exists to catch.

Which answer of a transaction: the last one logged (as `decisions export`);
a retry answered from its record logs the same answer again. Transactions
keep the order the server decided them in among equal event times.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from engine.decision_log import read_records
from engine.offline.backtest import backtest
from engine.offline.datasets import DatasetError
from engine.offline.export import TRANSACTION_COLUMNS, read_feedback

ATTRIBUTE_PREFIX = "attribute:"


class AuditError(ValueError):
    """Bad input to an audit (no log, an empty log, bad feedback): a CLI error."""


@dataclass
class Item:
    """One compared value (a feature, the score, the decision, the reasons): where served and recomputed differ."""

    name: str
    kind: str  # feature, score, decision, reasons
    compared: int = 0
    differ: int = 0
    examples: list[dict[str, Any]] = field(default_factory=list)

    @property
    def share(self) -> float:
        return self.differ / self.compared if self.compared else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "item": self.name,
            "kind": self.kind,
            "compared": self.compared,
            "differ": self.differ,
            "share": self.share,
            "examples": self.examples,
        }


@dataclass
class AuditResult:
    records: int  # decision log records read
    transactions: int  # distinct transactions (the last answer of each)
    repeated: int  # records of a transaction logged more than once
    bad_lines: int
    replayed: int  # transactions the replay scored
    not_replayed: list[str]  # served, but rejected by the replay (first ones)
    degraded: int  # served answers that were degraded
    served_versions: dict[str, dict[str, int]]  # ruleset / model version -> records
    audited_versions: dict[str, str | None]
    items: list[Item]
    mismatched: int  # transactions with at least one difference
    engine: str

    @property
    def clean(self) -> bool:
        return self.mismatched == 0 and not self.not_replayed

    def to_json(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "transactions": self.transactions,
            "repeated": self.repeated,
            "bad_lines": self.bad_lines,
            "replayed": self.replayed,
            "not_replayed": self.not_replayed,
            "degraded": self.degraded,
            "served_versions": self.served_versions,
            "audited_versions": self.audited_versions,
            "engine": self.engine,
            "mismatched": self.mismatched,
            "share_mismatched": self.mismatched / self.transactions if self.transactions else 0.0,
            "items": [item.to_json() for item in self.items],
        }


def _latest(log: Path) -> tuple[list[dict[str, Any]], int, int, int]:
    """The last record of each transaction in (event time, decision time) order; records, repeats, bad lines."""
    if not log.is_dir():
        raise AuditError(f"--log {log}: no such folder")
    bad: list[int] = []
    latest: dict[str, dict[str, Any]] = {}
    records = repeated = 0
    for record in read_records(log, bad):
        records += 1
        tid = record["transaction"]["transaction_id"]
        seen = latest.get(tid)
        if seen is not None:
            repeated += 1
            if seen["decided_at_ms"] > record["decided_at_ms"]:
                continue
        latest[tid] = record
    if not latest:
        raise AuditError(f"--log {log}: no decision records (files decisions-*.jsonl)")
    rows = sorted(latest.values(), key=lambda r: (r["transaction"]["event_time_ms"], r["decided_at_ms"]))
    return rows, records, repeated, len(bad)


def _input_table(rows: Sequence[Mapping[str, Any]], labels: Mapping[str, tuple[float, int | None]]) -> pa.Table:
    """The logged transactions as the backtest reads them (rows in replay order)."""
    columns: dict[str, pa.Array] = {}
    for name in TRANSACTION_COLUMNS:
        values = [r["transaction"][name] for r in rows]
        kind = pa.int64() if name in ("event_time_ms", "amount_minor") else pa.string()
        columns[name] = pa.array(values, kind)
    found = [labels.get(r["transaction"]["transaction_id"]) for r in rows]
    columns["label"] = pa.array([f[0] if f else None for f in found], pa.float64())
    columns["label_time_ms"] = pa.array([f[1] if f else None for f in found], pa.int64())
    names = sorted({k for r in rows for k in r["transaction"]["attributes"]})
    for name in names:
        columns[ATTRIBUTE_PREFIX + name] = pa.array(
            [r["transaction"]["attributes"].get(name, "") for r in rows], pa.string()
        )
    return pa.table(columns)


def _mapping(attributes: Sequence[str]) -> dict[str, Any]:
    return {
        "preset": "native",
        "label_time": "label_time_ms",
        "extra": {name[len(ATTRIBUTE_PREFIX) :]: name for name in attributes},
    }


def _same(served: Any, recomputed: Any) -> bool:
    """Equal values, a missing one (null in the log, NaN in the table) equal to a missing one."""
    missing_a = served is None or (isinstance(served, float) and math.isnan(served))
    missing_b = recomputed is None or (isinstance(recomputed, float) and math.isnan(recomputed))
    if missing_a or missing_b:
        return missing_a and missing_b
    return bool(served == recomputed)


def audit(
    log: str | Path,
    rules: str | Path,
    *,
    model: str | Path | None,
    out: str | Path | None = None,
    feedback: str | Path | None = None,
    examples: int = 5,
    spark: Any = None,
) -> AuditResult:
    """Replay the log's transactions and compare (module docstring); writes audit.json (and the backtest) into `out`."""
    from engine.model.predictor import load_model
    from engine.rules.loader import load_ruleset

    rows, records, repeated, bad = _latest(Path(log))
    try:
        labels = read_feedback(Path(feedback)) if feedback is not None else {}
    except ValueError as exc:  # ExportError: a bad feedback file
        raise AuditError(str(exc)) from None
    ruleset = load_ruleset(rules)
    audited_model = load_model(model, ruleset).version if model is not None else None
    with tempfile.TemporaryDirectory(prefix="risk-engine-audit-") as scratch:
        work = Path(out) if out is not None else Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        table = _input_table(rows, labels)
        data = work / "audited-transactions.parquet"
        pq.write_table(table, data)
        mapping = work / "audited-mapping.yaml"
        attributes = [c for c in table.column_names if c.startswith(ATTRIBUTE_PREFIX)]
        mapping.write_text(yaml.safe_dump(_mapping(attributes), sort_keys=False))
        try:
            done = backtest(data, rules, work / "replay", model=model, mapping=mapping, progress=False, spark=spark)
        except DatasetError as exc:
            raise AuditError(str(exc)) from None
        replayed = pq.read_table(done.out / "transactions.parquet")
    result = compare(rows, replayed, examples)
    result.records, result.repeated, result.bad_lines = records, repeated, bad
    result.audited_versions = {"ruleset": ruleset.version, "model": audited_model}
    result.engine = "spark" if spark is not None else "local"
    if out is not None:
        (Path(out) / "audit.json").write_text(json.dumps(result.to_json(), indent=2) + "\n")
    return result


def compare(rows: Sequence[Mapping[str, Any]], replayed: pa.Table, examples: int = 5) -> AuditResult:
    """Served (decision log records) against recomputed (a backtest's per-transaction table), per item."""
    recomputed = {r["transaction_id"]: r for r in replayed.to_pylist()}
    features = sorted({name for r in rows for name in r["features"]})
    items = {name: Item(name, "feature") for name in features}
    items["score"] = Item("score", "score")
    items["decision"] = Item("decision", "decision")
    items["reasons"] = Item("reasons", "reasons")
    not_replayed: list[str] = []
    mismatched = 0
    versions: dict[str, Counter[str]] = {"ruleset": Counter(), "model": Counter()}
    for record in rows:
        tid = record["transaction"]["transaction_id"]
        versions["ruleset"][record["ruleset_version"]] += 1
        versions["model"][record["model_version"]] += 1
        mine = recomputed.get(tid)
        if mine is None:
            not_replayed.append(tid)
            continue
        pairs: list[tuple[Item, Any, Any]] = [
            (items[name], record["features"].get(name), mine.get(f"f_{name}")) for name in features
        ]
        pairs.append((items["score"], record["score"], mine["score"]))
        pairs.append((items["decision"], record["decision"], mine["decision"]))
        pairs.append((items["reasons"], [r["code"] for r in record["reasons"]], list(mine["reason_codes"] or [])))
        differs = False
        for item, served, again in pairs:
            item.compared += 1
            if _same(served, again):
                continue
            differs = True
            item.differ += 1
            if len(item.examples) < examples:
                item.examples.append(
                    {"transaction_id": tid, "served": served, "recomputed": again, "degraded": record["degraded"]}
                )
        mismatched += differs
    return AuditResult(
        records=len(rows),
        transactions=len(rows),
        repeated=0,
        bad_lines=0,
        replayed=len(rows) - len(not_replayed),
        not_replayed=not_replayed[:examples],
        degraded=sum(1 for r in rows if r["degraded"]),
        served_versions={k: dict(v) for k, v in versions.items()},
        audited_versions={},
        items=[items[k] for k in ("decision", "score", "reasons", *features)],
        mismatched=mismatched,
        engine="",
    )


def render(result: AuditResult) -> str:
    """The audit as text: versions, then each item that differs (or a line saying none does)."""
    lines = [
        f"audited {result.transactions:,} transactions ({result.records:,} records, {result.repeated:,} repeated, "
        f"{result.bad_lines} bad lines) on the {result.engine} engine",
        f"served with rule set(s) {_versions(result.served_versions['ruleset'])}, "
        f"model(s) {_versions(result.served_versions['model'])}",
        f"replayed with rule set {result.audited_versions.get('ruleset')}, "
        f"model {result.audited_versions.get('model') or '(none)'}",
        f"degraded answers served: {result.degraded:,}",
    ]
    if result.not_replayed:
        lines.append(f"served but rejected by the replay: {', '.join(result.not_replayed)}")
    differing = [item for item in result.items if item.differ]
    share = result.mismatched / result.transactions if result.transactions else 0.0
    lines.append(f"transactions with a difference: {result.mismatched:,} ({share:.4%})")
    if not differing:
        lines.append("every feature, score, decision and reason recomputed is the one served")
    for item in differing:
        lines.append(f"  {item.kind:8} {item.name:36} {item.differ:>8,} of {item.compared:,} ({item.share:.4%})")
        for ex in item.examples:
            flag = " (degraded)" if ex["degraded"] else ""
            lines.append(
                f"      {ex['transaction_id']}: served {ex['served']!r}, recomputed {ex['recomputed']!r}{flag}"
            )
    return "\n".join(lines)


def _versions(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{v or '(none)'} ({n:,})" for v, n in sorted(counts.items())) or "-"
