"""The decision log: every scored transaction, appended to rotated JSON Lines files off the request path.

Writing. `DecisionLog.record` puts a reference to the (immutable) transaction
and result on a bounded queue and returns: a few microseconds on the request
thread, never a file operation. When the queue is full the record is dropped
and counted (`dropped_queue_full`), so a stalled disk can never slow or fail a
call. One background thread drains the queue in batches, turns each record
into one JSON line, appends the batch to the current file, flushes it to the
operating system after every batch and fsyncs at most once per
`fsync_interval_s` (and when a file is closed): a crash of the process loses
nothing that was written; a crash of the machine loses at most that
interval. A failed write (full disk, file system gone, permissions) loses
that batch, is counted (`write_failures`, records lost) and logged at most
once per `log_interval_s`, and the next batch opens a new file.

Files. `FOLDER/decisions-<UTC start time>-<sequence>.jsonl`; names sort in
time order. The current file is closed and a new one started when it would
pass `max_file_bytes` or is older than `rotate_s`; then the oldest files are
deleted while the folder's decision files total more than `max_total_bytes`.
One folder per server process.

Records (one JSON object per line, `"v": 1`): `decided_at_ms`, `transaction`
(the request as the engine read it: ids, `event_time_ms`, `amount_minor`,
`currency`, `channel`, `attributes`, ...), `decision`, `score` (null when the
model did not run), `degraded`, `reasons` and `shadow` (rules that fired,
acting and shadow, with code, source, rule id, action and message),
`features` (name -> number, null when unknown), `ruleset_version`,
`model_version`, `elapsed_us`, and `challenger` (null unless a challenger
model runs: the other model's `model_version`, `score`, the `decision` it
would have given, `challenger_decided` and `mode`; see
`engine.transaction.ChallengerResult`).

Exporting. `export` reads the files, keeps the transactions whose event time
lies in [since, until) (the last record of a transaction scored more than
once), joins labels from a feedback file (CSV or Parquet:
`transaction_id,label[,label_time]`) and writes a Parquet file in the
project's native schema plus `label`, the decision, score, versions and one
column per feature: `risk-engine train --data` and `backtest --data` read it
as it is. With a challenger, the columns `champion_version`,
`champion_score`, `champion_decision`, `challenger_version`,
`challenger_score`, `challenger_decision`, `challenger_mode` and
`challenger_decided` put both models side by side whichever one decided
(null where no challenger ran).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from engine.transaction import Reason, ScoreResult, Transaction

log = logging.getLogger("risk_engine.decision_log")

PREFIX = "decisions-"
SUFFIX = ".jsonl"
_STOP: Any = object()


def _finite(x: float) -> float | None:
    return None if math.isnan(x) or math.isinf(x) else x


def _reason(r: Reason) -> dict[str, Any]:
    out: dict[str, Any] = {
        "code": r.code,
        "source": r.source.value,
        "rule_id": r.rule_id,
        "action": r.action.name.lower(),
        "message": r.message,
    }
    if r.contributions:
        out["contributions"] = [
            {"feature": c.feature, "value": _finite(c.value), "contribution": c.contribution} for c in r.contributions
        ]
    return out


def to_record(decided_at: float, txn: Transaction, result: ScoreResult) -> dict[str, Any]:
    """The decision log record of one scored transaction."""
    return {
        "v": 1,
        "decided_at_ms": int(decided_at * 1000),
        "transaction": {
            "transaction_id": txn.transaction_id,
            "event_time_ms": txn.event_time_ms,
            "amount_minor": txn.amount_minor,
            "currency": txn.currency,
            "user_id": txn.user_id,
            "card_id": txn.card_id,
            "device_id": txn.device_id,
            "ip": txn.ip,
            "country": txn.country,
            "merchant_id": txn.merchant_id,
            "channel": txn.channel.value,
            "merchant_category": txn.merchant_category,
            "attributes": dict(txn.attributes),
        },
        "decision": result.decision.name.lower(),
        "score": _finite(result.score),
        "degraded": result.degraded,
        "reasons": [_reason(r) for r in result.reasons],
        "shadow": [_reason(r) for r in result.shadow],
        "features": {k: _finite(v) for k, v in result.features.items()},
        "ruleset_version": result.ruleset_version,
        "model_version": result.model_version,
        "elapsed_us": result.elapsed_us,
        "challenger": _challenger(result),
    }


def _challenger(result: ScoreResult) -> dict[str, Any] | None:
    c = result.challenger
    if c is None:
        return None
    return {
        "model_version": c.model_version,
        "score": _finite(c.score),
        "decision": c.decision.name.lower(),
        "challenger_decided": c.challenger_decided,
        "mode": c.mode,
    }


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


@dataclass
class DecisionLogStats:
    written: int = 0
    dropped_queue_full: int = 0
    write_failures: int = 0  # records lost to failed writes
    files_rotated: int = 0
    files_deleted: int = 0


class DecisionLog:
    """Appends decision records to rotated JSON Lines files from a background thread (module docstring)."""

    def __init__(
        self,
        folder: Path,
        *,
        max_file_bytes: int = 64 * 1024 * 1024,
        rotate_s: float = 3600.0,
        max_total_bytes: int = 1024 * 1024 * 1024,
        queue_size: int = 10_000,
        fsync_interval_s: float = 1.0,
        log_interval_s: float = 10.0,
        on_loss: Callable[[str, int], None] | None = None,
        opener: Callable[[Path], IO[bytes]] | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.max_file_bytes = max_file_bytes
        self.rotate_s = rotate_s
        self.max_total_bytes = max_total_bytes
        self.fsync_interval_s = fsync_interval_s
        self.log_interval_s = log_interval_s
        self.on_loss = on_loss or (lambda reason, n: None)
        self._open = opener or (lambda path: open(path, "ab"))
        self.stats = DecisionLogStats()
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._file: IO[bytes] | None = None
        self._path: Path | None = None
        self._opened_at = 0.0
        self._size = 0
        self._seq = 0
        self._last_fsync = 0.0
        self._last_error_log = -1e9
        self._errors_since_log = 0
        self._accepted = itertools.count(1)  # next() is atomic: no lock on the request thread
        self._enqueued = 0
        self._drop_lock = threading.Lock()
        self._last_drop_log = -1e9
        self._drops_since_log = 0
        self.folder.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name="decision-log", daemon=True)
        self._thread.start()

    # -- the request thread -------------------------------------------------
    def record(self, txn: Transaction, result: ScoreResult) -> bool:
        """Queue one record; never blocks. False when the queue was full (the record is dropped, counted)."""
        try:
            self._queue.put_nowait((time.time(), txn, result))
        except queue.Full:
            self._dropped()
            return False
        self._enqueued = next(self._accepted)
        return True

    def _dropped(self) -> None:
        now = time.monotonic()
        with self._drop_lock:
            self.stats.dropped_queue_full += 1
            self._drops_since_log += 1
            if now - self._last_drop_log < self.log_interval_s:
                count = 0
            else:
                count, self._drops_since_log, self._last_drop_log = self._drops_since_log, 0, now
        self.on_loss("queue_full", 1)
        if count:
            log.error(
                "decision log queue full: %d record(s) dropped since the last report (writer behind or stalled)",
                count,
                extra={"event": "decision_log", "dropped": count},
            )

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    # -- the writer thread --------------------------------------------------
    def _run(self) -> None:
        stop = False
        while not stop:
            try:
                item = self._queue.get(timeout=0.5)
            except queue.Empty:
                self._idle()
                continue
            batch = []
            while True:
                if item is _STOP:
                    stop = True
                    break
                batch.append(item)
                if len(batch) >= 2000:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if batch:
                self._write(batch)
        self._close_file()

    def _idle(self) -> None:
        try:
            if self._file is not None and time.monotonic() - self._opened_at > self.rotate_s:
                self._close_file()
                self.stats.files_rotated += 1
            elif self._file is not None and time.monotonic() - self._last_fsync > self.fsync_interval_s:
                self._sync()
        except OSError as exc:
            self._failed(0, exc)

    def _write(self, batch: list[tuple[float, Transaction, ScoreResult]]) -> None:
        try:
            lines = [
                json.dumps(to_record(*item), separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
                for item in batch
            ]
        except Exception as exc:  # noqa: BLE001 - a bad record must not stop the writer
            self._failed(len(batch), exc)
            return
        done = 0
        try:
            while done < len(lines):
                # As many lines as fit in the current file (at least one: a file holds one record or more).
                f = self._current(len(lines[done]))
                room = self.max_file_bytes - self._size
                end, size = done + 1, len(lines[done])
                while end < len(lines) and size + len(lines[end]) <= room:
                    size += len(lines[end])
                    end += 1
                f.write(b"".join(lines[done:end]))
                f.flush()
                self._size += size
                self.stats.written += end - done
                done = end
            if time.monotonic() - self._last_fsync >= self.fsync_interval_s:
                self._sync()
        except OSError as exc:
            self._close_file(quiet=True)
            self._failed(len(lines) - done, exc)

    def _current(self, incoming: int) -> IO[bytes]:
        now = time.monotonic()
        if self._file is not None and (
            (self._size > 0 and self._size + incoming > self.max_file_bytes) or now - self._opened_at > self.rotate_s
        ):
            self._close_file()
            self.stats.files_rotated += 1
            self._prune()
        if self._file is None:
            self._seq += 1
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%f")[:-3]
            path = self.folder / f"{PREFIX}{stamp}Z-{self._seq:06d}{SUFFIX}"
            self._file = self._open(path)
            self._path = path
            self._opened_at = now
            self._last_fsync = now
            self._size = 0
        return self._file

    def _sync(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
        self._last_fsync = time.monotonic()

    def _close_file(self, quiet: bool = False) -> None:
        f, self._file = self._file, None
        if f is None:
            return
        try:
            f.flush()
            os.fsync(f.fileno())
        except OSError as exc:
            if not quiet:
                self._failed(0, exc)
        finally:
            try:
                f.close()
            except OSError:
                pass

    def _prune(self) -> None:
        files = sorted(self.folder.glob(f"{PREFIX}*{SUFFIX}"))
        sizes = []
        for path in files:
            try:
                sizes.append(path.stat().st_size)
            except OSError:
                sizes.append(0)
        total = sum(sizes)
        for path, size in zip(files, sizes, strict=True):
            if total <= self.max_total_bytes:
                break
            if path == self._path and self._file is not None:
                continue
            try:
                path.unlink()
            except OSError:
                continue
            total -= size
            self.stats.files_deleted += 1

    def _failed(self, lost: int, exc: BaseException) -> None:
        self.stats.write_failures += lost
        if lost:
            self.on_loss("write_error", lost)
        self._errors_since_log += lost
        now = time.monotonic()
        if now - self._last_error_log >= self.log_interval_s:
            log.error(
                "decision log write failed (%d record(s) lost since the last report): %s: %s",
                self._errors_since_log,
                type(exc).__name__,
                exc,
                extra={"event": "decision_log", "lost": self._errors_since_log},
            )
            self._errors_since_log = 0
            self._last_error_log = now

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until every record queued so far is written or counted lost (tests, shutdown)."""
        deadline = time.monotonic() + timeout_s
        target = self._enqueued
        while time.monotonic() < deadline:
            if self.stats.written + self.stats.write_failures >= target:
                return True
            time.sleep(0.002)
        return False

    def close(self, timeout_s: float = 5.0) -> None:
        """Write what is queued, close the file, stop the thread."""
        try:
            self._queue.put(_STOP, timeout=timeout_s)
        except queue.Full:
            pass
        self._thread.join(timeout_s)


# -- reading and exporting ---------------------------------------------------


def files(folder: Path) -> list[Path]:
    return sorted(Path(folder).glob(f"{PREFIX}*{SUFFIX}"))


def read_records(folder: Path, bad: list[int] | None = None) -> Iterator[dict[str, Any]]:
    """Every record of the folder's files, oldest file first; torn or malformed lines are skipped (counted in bad)."""
    for path in files(folder):
        with open(path, "rb") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except ValueError:
                    if bad is not None:
                        bad.append(1)
                    continue
                if isinstance(record, dict) and record.get("v") == 1:
                    yield record
                elif bad is not None:
                    bad.append(1)


class ExportError(ValueError):
    pass


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


def _read_feedback(path: Path) -> dict[str, tuple[float, int | None]]:
    import pyarrow as pa
    import pyarrow.csv
    import pyarrow.parquet as pq

    if not path.exists():
        raise ExportError(f"--feedback {path}: no such file")
    if path.suffix.lower() == ".parquet":
        table = pq.read_table(path)
    else:
        table = pyarrow.csv.read_csv(
            path, convert_options=pyarrow.csv.ConvertOptions(column_types={"transaction_id": pa.string()})
        )
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
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not Path(folder).is_dir():
        raise ExportError(f"--log {folder}: no such folder")
    labels = _read_feedback(feedback) if feedback is not None else {}
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
    base = [
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
    ]
    columns: dict[str, Any] = {name: [r["transaction"][name] for r in rows] for name in base}
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
    columns["model_version"] = [r["model_version"] for r in rows]
    pairs = [_champion_and_challenger(r) for r in rows]
    for name in CHALLENGER_COLUMNS:
        kind = pa.float64() if name.endswith("_score") else pa.bool_() if name.endswith("_decided") else pa.string()
        columns[name] = pa.array([pair[name] for pair in pairs], kind)
    for name in feature_names:
        column = name if name not in columns else f"feature_{name}"
        columns[column] = pa.array([r["features"].get(name) for r in rows], pa.float64())
    schema_types = {"event_time_ms": pa.int64(), "amount_minor": pa.int64(), "decided_at_ms": pa.int64()}
    table = pa.table(
        {
            k: (v if isinstance(v, pa.Array) else pa.array(v, schema_types.get(k, pa.string() if k in base else None)))
            for k, v in columns.items()
        }
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out)
    labeled = sum(1 for f in found if f is not None)
    return ExportSummary(len(rows), labeled, duplicates, len(bad), out)
