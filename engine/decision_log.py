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

Reading. `files` and `read_records` read a folder back; `engine.offline.export`
turns it into a Parquet file for training and backtests.
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


# -- reading -------------------------------------------------------------------


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
